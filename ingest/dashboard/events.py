"""Live events for dashboards: a hub with one bounded queue per listener.

Publishing never blocks ingestion: a listener that does not keep up loses its oldest
events (counted in ``dropped``) and is sent a ``resync`` event, after which the page reloads
the whole ward from the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: events a slow listener may fall behind by before its oldest are dropped
LISTENER_QUEUE = 256


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        return f"event: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


_CLOSE = Event("close", {})


class EventHub:
    def __init__(self, queue_size: int = LISTENER_QUEUE) -> None:
        self._queue_size = queue_size
        self._listeners: set[asyncio.Queue[Event]] = set()
        self.published = 0
        self.dropped = 0
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Fan an event out to every listener; call from the event loop's thread."""
        event = Event(kind, data)
        self.published += 1
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
                if not queue.full():
                    queue.put_nowait(Event("resync", {}))
                continue
            queue.put_nowait(event)

    def close(self) -> None:
        """End every listener's stream (service shutdown): streams must not hold the stop."""
        self._closed = True
        for queue in self._listeners:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(_CLOSE)

    async def listen(self, heartbeat_s: float = 15.0) -> AsyncIterator[Event]:
        """Events until the caller stops iterating or the hub closes; a ``ping`` every
        ``heartbeat_s`` of silence (keeps proxies from closing an idle stream)."""
        if self._closed:
            return
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._listeners.add(queue)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), heartbeat_s)
                except TimeoutError:
                    event = Event("ping", {})
                if event is _CLOSE:
                    return
                yield event
        finally:
            self._listeners.discard(queue)

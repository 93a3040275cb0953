"""An :class:`~vitalgate.mqtt_session.MqttSession` for synchronous code: served by an event
loop in a thread of its own (:class:`SessionThread`).

The simulators' publisher and recorder (:mod:`simulators.mqtt_out`) and the test probe
(``tests/support/probe.py``) call it from plain code; everything MQTT (options, the client, the
session's rules) is :mod:`vitalgate.mqtt_session`'s, this module only runs it on a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from vitalgate.mqtt_session import Message, MqttError, MqttOptions, MqttSession, broker_label


class SessionThread:
    """An :class:`MqttSession` served by an event loop in a thread of its own, for the
    synchronous tools (simulators, the test probe). ``on_message`` and ``on_link`` run in
    that thread."""

    def __init__(self, options: MqttOptions, *, on_message: Callable[[Message], None] | None = None,
                 **session: Any) -> None:
        self.options = options
        self._on_message = on_message
        self._session_kwargs = session
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.session: MqttSession | None = None

    def start(self) -> MqttSession:
        """Connect (and subscribe); :class:`MqttError` naming the broker when it cannot."""
        timeout_s = float(self._session_kwargs.get("connect_timeout_s", 10.0)) + 10.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name=f"mqtt-session-{self.options.client_id}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise MqttError(f"MQTT session with {broker_label(self.options.broker)} did not "
                            f"start within {timeout_s}s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise self._error
        assert self.session is not None
        return self.session

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with MqttSession(self.options, **self._session_kwargs) as session:
                self.session = session
                self._ready.set()
                reader = asyncio.create_task(self._read(session))
                await self._stop.wait()
                reader.cancel()
        except MqttError as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _read(self, session: MqttSession) -> None:
        async for message in session.messages():
            if self._on_message is not None:
                self._on_message(message)

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> concurrent.futures.Future[None]:
        """From any thread: a future done on the PUBACK (failed as :meth:`MqttSession.publish`)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop, session = self._loop, self.session
        if loop is None or session is None:
            done.set_exception(MqttError(f"publish to {topic}: not connected"))
            return done

        def settle(fut: asyncio.Future[None]) -> None:
            exc = fut.exception()
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def start() -> None:
            session.publish(topic, payload, qos=qos, retain=retain).add_done_callback(settle)

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the session's loop is gone
            done.set_exception(MqttError(f"publish to {topic}: the session has ended"))
        return done

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close the session (disconnect) and end its thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

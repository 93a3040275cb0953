"""Connection slots of the gateway's adapters, handed out fairly.

A Bluetooth controller holds only a few LE connections at once (``slots_per_adapter``,
default 3). When more devices want a connection than there are slots, they queue here in the
order they asked (first come, first served; a device that gave its slot up queues at the
back), and :class:`gateway.ble.manager.SessionManager` ends a connected device's session after
``rotation_session_s`` (and its first history sync) whenever somebody waits — so every device
gets its turn and its history sync fills what it missed while it waited.

The budget is what we believe; the controller has the last word. When it refuses a connect
for want of a slot although the budget had one free (another program holds a connection, or
the controller has fewer than configured), the adapter's capacity is lowered to the number of
our other devices holding a slot on it at that moment, counted as ``refused`` and logged once. It is
not raised again until the gateway restarts (a controller does not grow slots).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class AdapterSlots:
    name: str
    budget: int
    capacity: int
    used: set[str] = field(default_factory=set)
    grants: int = 0
    refused: int = 0

    def free(self) -> int:
        return self.capacity - len(self.used)

    def snapshot(self) -> dict[str, Any]:
        return {"adapter": self.name, "budget": self.budget, "capacity": self.capacity,
                "used": len(self.used), "grants": self.grants, "refused": self.refused}


class Slots:
    def __init__(self, adapters: Sequence[str], per_adapter: int) -> None:
        if not adapters:
            raise ValueError("at least one adapter is needed")
        self.adapters = {a: AdapterSlots(a, per_adapter, per_adapter) for a in adapters}
        self._waiting: OrderedDict[str, asyncio.Future[str]] = OrderedDict()
        #: set while anybody waits (connected sessions watch it to know when to yield)
        self.demand = asyncio.Event()

    def waiting(self) -> int:
        return len(self._waiting)

    def snapshot(self) -> dict[str, Any]:
        return {"waiting": self.waiting(),
                "total": sum(a.capacity for a in self.adapters.values()),
                "used": sum(len(a.used) for a in self.adapters.values()),
                "adapters": [a.snapshot() for a in self.adapters.values()]}

    async def acquire(self, device_id: str) -> str:
        """A slot for ``device_id``; returns the adapter it is on. Waits its turn (FIFO)."""
        if device_id in self._waiting or any(device_id in a.used for a in self.adapters.values()):
            raise RuntimeError(f"{device_id} asks for a second slot")
        if not self._waiting:
            adapter = self._roomiest()
            if adapter is not None:
                return self._take(adapter, device_id)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[device_id] = fut
        self.demand.set()
        try:
            return await fut
        except asyncio.CancelledError:
            self._waiting.pop(device_id, None)
            if fut.done() and not fut.cancelled():  # granted just as we were cancelled
                self.release(fut.result(), device_id)
            self._update_demand()
            raise

    def release(self, adapter: str, device_id: str) -> None:
        self.adapters[adapter].used.discard(device_id)
        self._grant()

    def refused(self, adapter: str, device_id: str) -> None:
        """The controller refused ``device_id`` for want of a slot: believe it. Call it before
        releasing the refused device's slot. The others holding a slot on the adapter are
        connected or about to be; counting them all errs high, which the next refusal corrects
        (capacity only goes down), never low."""
        a = self.adapters[adapter]
        a.refused += 1
        held = len(a.used - {device_id})
        if held >= 1 and held < a.capacity:
            if a.capacity == a.budget:
                log.warning("%s refused a connection with %d of its %d budgeted slots in use: "
                            "using %d slots on it from now on", adapter, held, a.budget, held)
            a.capacity = held

    # ------------------------------------------------------------------ internals

    def _roomiest(self) -> AdapterSlots | None:
        best = max(self.adapters.values(), key=lambda a: a.free())
        return best if best.free() > 0 else None

    def _take(self, adapter: AdapterSlots, device_id: str) -> str:
        adapter.used.add(device_id)
        adapter.grants += 1
        return adapter.name

    def _grant(self) -> None:
        while self._waiting:
            adapter = self._roomiest()
            if adapter is None:
                break
            device_id, fut = self._waiting.popitem(last=False)
            if fut.done():
                continue
            fut.set_result(self._take(adapter, device_id))
        self._update_demand()

    def _update_demand(self) -> None:
        if self._waiting:
            self.demand.set()
        else:
            self.demand.clear()

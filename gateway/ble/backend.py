"""Which bleak backend the gateway drives — decided here and nowhere else.

On a Raspberry Pi it is bleak's own (BlueZ over D-Bus): both classes are ``None`` and bleak
picks its platform backend. With ``--simulate`` the composition root hands the gateway another
``BleBackend`` (the bumble local link of ``simulators.simulate``, on which virtual E86 watches
advertise); the rest of the gateway runs the same bleak code path either way and never imports
the simulators.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bleak import BleakClient, BleakScanner

log = logging.getLogger(__name__)

BLUEZ: Final = "org.bluez"
#: how long one D-Bus call to bluetoothd may take before we give up on it (seconds).
DBUS_TIMEOUT_S: Final = 5.0


class RadioControl(Protocol):
    """What the gateway asks of an adapter beyond scanning and connecting."""

    async def forget_device(self, address: str, adapter: str) -> bool:
        """Drop the adapter's cached state of ``address``; True if there was some."""
        ...

    async def power_cycle(self, adapter: str) -> None:
        """Power the adapter off and on again."""
        ...


class BlueZControl:
    """BlueZ over D-Bus (dbus-fast, which bleak uses on Linux).

    * ``forget_device``: ``org.bluez.Adapter1.RemoveDevice(/org/bluez/hciN/dev_AA_BB_…)``,
      which drops BlueZ's device object and its attribute cache — what bleak-retry-connector's
      ``clear_cache`` sends after connection failures that point at a stale cache.
    * ``power_cycle``: ``Powered`` false then true on ``org.bluez.Adapter1``.
    Not exercised against a real bluetoothd here (no BlueZ on the build machine)."""

    async def _call(self, path: str, interface: str, member: str, signature: str,
                    body: list[Any]) -> bool:
        import asyncio

        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            async with asyncio.timeout(DBUS_TIMEOUT_S):
                reply = await bus.call(Message(destination=BLUEZ, path=path, interface=interface,
                                               member=member, signature=signature, body=body))
        finally:
            bus.disconnect()
        ok = reply is not None and reply.message_type == MessageType.METHOD_RETURN
        if not ok:
            log.debug("%s %s on %s: %s", interface, member, path,
                      reply.error_name if reply is not None else "no reply")
        return ok

    async def forget_device(self, address: str, adapter: str) -> bool:
        device = f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"
        return await self._call(f"/org/bluez/{adapter}", "org.bluez.Adapter1", "RemoveDevice",
                                "o", [device])

    async def power_cycle(self, adapter: str) -> None:
        from dbus_fast import Variant

        for on in (False, True):
            await self._call(f"/org/bluez/{adapter}", "org.freedesktop.DBus.Properties", "Set",
                             "ssv", ["org.bluez.Adapter1", "Powered", Variant("b", on)])


@dataclass(frozen=True, slots=True)
class BleBackend:
    name: str
    scanner_backend: type[Any] | None = None
    client_backend: type[Any] | None = None
    #: the adapters this backend offers (the gateway connects through each of them)
    adapters: tuple[str, ...] = ("hci0",)
    control: RadioControl = field(default_factory=BlueZControl)

    def scanner_kwargs(self) -> dict[str, Any]:
        return {"backend": self.scanner_backend} if self.scanner_backend is not None else {}

    def client_kwargs(self, adapter: str | None = None) -> dict[str, Any]:
        """``BleakClient`` keywords for a connection through ``adapter`` (bleak's BlueZ
        backend takes ``bluez={"adapter": "hci1"}``; so does the simulated one)."""
        kw: dict[str, Any] = {"backend": self.client_backend} if self.client_backend is not None else {}
        if adapter is not None and len(self.adapters) > 1:
            kw["bluez"] = {"adapter": adapter}
        return kw

    async def forget_device(self, address: str, adapter: str) -> bool:
        return await self.control.forget_device(address, adapter)

    async def power_cycle(self, adapter: str) -> None:
        await self.control.power_cycle(adapter)

    def scanner(self, **kwargs: Any) -> BleakScanner:
        return BleakScanner(**kwargs, **self.scanner_kwargs())

    def client_class(self) -> type[BleakClient]:
        return BleakClient


def bluez(adapters: Sequence[str] = ("hci0",)) -> BleBackend:
    """bleak's platform backend (BlueZ on Linux) on ``adapters`` (setting ``adapters``)."""
    return BleBackend("bluez", adapters=tuple(adapters))


@dataclass(frozen=True, slots=True)
class BleInUse:
    """A backend opened for ``gateway run``: the backend, the watches it brings (MAC → user_code,
    added to ``devices``) and how the start log line names it."""

    backend: BleBackend
    devices: Mapping[str, str]
    description: str

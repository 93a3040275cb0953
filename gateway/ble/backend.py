"""Which bleak backend the gateway drives — decided here and nowhere else.

On a Raspberry Pi it is bleak's own (BlueZ over D-Bus): both classes are ``None`` and bleak
picks its platform backend. With ``--simulate`` it is the bumble local link of
:mod:`simulators.bleak_bumble`, on which virtual E86 watches advertise; the rest of the gateway
runs the same bleak code path either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bleak import BleakClient, BleakScanner

if TYPE_CHECKING:
    from simulators.bleak_bumble import BumbleLink


@dataclass(frozen=True, slots=True)
class BleBackend:
    name: str
    scanner_backend: type[Any] | None = None
    client_backend: type[Any] | None = None

    def scanner_kwargs(self) -> dict[str, Any]:
        return {"backend": self.scanner_backend} if self.scanner_backend is not None else {}

    def client_kwargs(self) -> dict[str, Any]:
        return {"backend": self.client_backend} if self.client_backend is not None else {}

    def scanner(self, **kwargs: Any) -> BleakScanner:
        return BleakScanner(**kwargs, **self.scanner_kwargs())

    def client_class(self) -> type[BleakClient]:
        return BleakClient


def bluez() -> BleBackend:
    """bleak's platform backend (BlueZ on Linux)."""
    return BleBackend("bluez")


def simulated(link: BumbleLink) -> BleBackend:
    """The bumble local link (virtual watches in this process)."""
    return BleBackend("bumble", link.scanner_backend, link.client_backend)

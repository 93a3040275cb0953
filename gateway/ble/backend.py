"""Which bleak backend the gateway drives — decided here and nowhere else.

On a Raspberry Pi it is bleak's own (BlueZ over D-Bus): both classes are ``None`` and bleak
picks its platform backend. With ``--simulate`` the composition root hands the gateway another
``BleBackend`` (the bumble local link of ``simulators.simulate``, on which virtual E86 watches
advertise); the rest of the gateway runs the same bleak code path either way and never imports
the simulators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bleak import BleakClient, BleakScanner


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


@dataclass(frozen=True, slots=True)
class BleInUse:
    """A backend opened for ``gateway run``: the backend, the watches it brings (MAC → user_code,
    added to ``devices``) and how the start log line names it."""

    backend: BleBackend
    devices: Mapping[str, str]
    description: str

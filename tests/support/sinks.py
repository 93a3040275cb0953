"""A gateway ``Sink`` that records what the buffer would get (tests of BLE sessions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.buffer import Measurement
from vitalgate.contract import EcgChunk, Reading, device_id_from_mac


class _HasMac(Protocol):
    mac: str


class ListSink:
    def __init__(self) -> None:
        self.items: list[Measurement] = []

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]:
        self.items.extend(items)
        return []

    def add_ecg(self, chunk: EcgChunk) -> None:
        raise AssertionError("no ECG from a standard health device")

    def of(self, device: _HasMac) -> list[Measurement]:
        """What a virtual device (anything with a ``mac``) produced."""
        return [m for m in self.items if m.device_id == device_id_from_mac(device.mac)]

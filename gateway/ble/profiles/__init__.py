"""Which session serves a connected device: the one choice point.

An E86 watch (its vendor service) gets :class:`gateway.ble.session.WatchSession`; a device
offering one of the standard health services gets that profile's session (first match in
:data:`PROFILES` order, so a device with several services is served by one session). Adding a
device type = a session class here (see docs/gateway.md, "Device types").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

from bleak import BleakClient

from e86.constants import SERVICE_UUID
from gateway.ble.profiles.base import HealthSession
from gateway.ble.profiles.blood_pressure import BloodPressureSession
from gateway.ble.profiles.heart_rate import HeartRateSession
from gateway.ble.profiles.pulse_oximeter import PulseOximeterSession
from gateway.ble.profiles.thermometer import ThermometerSession
from gateway.ble.session import Sink, WatchInfo, WatchSession
from gateway.clock_sync import SyncedClock
from gateway.settings import GatewaySettings

#: in order of preference: a PLX that also offers Heart Rate is served as an oximeter.
PROFILES: Final[tuple[type[HealthSession], ...]] = (
    PulseOximeterSession, BloodPressureSession, ThermometerSession, HeartRateSession,
)
HEALTH_SERVICES: Final = frozenset(p.service for p in PROFILES)


class Session(Protocol):
    """What the manager needs of a session (WatchSession and every HealthSession)."""

    watch: WatchInfo
    counters: Any
    battery: int | None
    last_reading_ms: int | None

    @property
    def ready(self) -> Any: ...

    async def run(self) -> None: ...

    def frame_stats(self) -> dict[str, int]: ...

    def request_sync(self) -> None: ...

    async def record_ecg(self, seconds: float) -> str: ...


def is_health_device(service_uuids: Iterable[str]) -> bool:
    """An advertisement announcing one of the standard health services."""
    return not HEALTH_SERVICES.isdisjoint(u.lower() for u in service_uuids)


def profile_for(service_uuids: Iterable[str]) -> type[HealthSession] | None:
    offered = {u.lower() for u in service_uuids}
    return next((p for p in PROFILES if p.service in offered), None)


def make_session(client: BleakClient, watch: WatchInfo, settings: GatewaySettings, sink: Sink,
                 clock: SyncedClock) -> Session:
    """The session for the services the connected device offers (E86 first)."""
    offered = {s.uuid.lower() for s in client.services}
    profile = None if SERVICE_UUID in offered else profile_for(offered)
    if profile is None:
        return WatchSession(client, watch, settings, sink, clock)
    return profile(client, watch, settings, sink, clock)


__all__ = ["HEALTH_SERVICES", "PROFILES", "HealthSession", "Session", "is_health_device",
           "make_session", "profile_for"]

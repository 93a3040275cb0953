"""Health Thermometer profile (service 0x1809): Temperature Measurement (0x2A1C, indicated),
°F converted to °C. A thermometer keeps the measurements it could not deliver and indicates
them on the next connection: a measurement stamped more than ``STORED_AGE_MS`` before its
reception is a stored one (``source=history``), a newer one is live (``realtime``)."""

from __future__ import annotations

from typing import ClassVar, Final

from gateway.ble.profiles.base import HealthSession
from gatt.health import HEALTH_THERMOMETER_SERVICE, TEMPERATURE_MEASUREMENT, GattMeasurement
from vitalgate.contract import Source

#: a measurement delivered later than this after its own time stamp was stored on the device
#: (a live one arrives within a second or two; two minutes leave room for a slow reconnect
#: and a device clock a little off).
STORED_AGE_MS: Final = 120_000


def stored_or_live(device_ms: int | None, received_ms: int) -> Source:
    if device_ms is not None and received_ms - device_ms > STORED_AGE_MS:
        return Source.HISTORY
    return Source.REALTIME


class ThermometerSession(HealthSession):
    profile: ClassVar[str] = "thermometer"
    service: ClassVar[str] = HEALTH_THERMOMETER_SERVICE
    measurements: ClassVar[tuple[str, ...]] = (TEMPERATURE_MEASUREMENT,)
    expected: ClassVar[frozenset[str]] = frozenset({"temperature"})

    def source_of(self, uuid: str, measurement: GattMeasurement, device_ms: int | None,
                  received_ms: int) -> Source:
        return stored_or_live(device_ms, received_ms)

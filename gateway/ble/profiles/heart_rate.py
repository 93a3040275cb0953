"""Heart Rate profile (service 0x180D): a chest strap's Heart Rate Measurement (0x2A37,
notified). The rate becomes ``heart_rate`` (realtime, stamped on reception: the measurement
carries no time). RR intervals are not a contract vital: they are counted (``rr_intervals``)
and not published. A measurement without skin contact (or rate 0) carries no value: counted in
``no_contact``."""

from __future__ import annotations

from typing import ClassVar

from gateway.ble.profiles.base import HealthSession
from gatt.health import (
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    GattMeasurement,
    HeartRateMeasurement,
)


class HeartRateSession(HealthSession):
    profile: ClassVar[str] = "heart_rate"
    service: ClassVar[str] = HEART_RATE_SERVICE
    measurements: ClassVar[tuple[str, ...]] = (HEART_RATE_MEASUREMENT,)
    expected: ClassVar[frozenset[str]] = frozenset({"heart_rate"})

    def on_measurement(self, uuid: str, measurement: GattMeasurement) -> None:
        if isinstance(measurement, HeartRateMeasurement):
            self.counters.rr_intervals += len(measurement.rr_intervals)

    def specials(self, measurement: GattMeasurement, vitals: dict[str, float]) -> int:
        if not vitals:
            self.counters.no_contact += 1
        return 0

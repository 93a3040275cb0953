"""Blood Pressure profile (service 0x1810): Blood Pressure Measurement (0x2A35, indicated),
kPa converted to mmHg; systolic, diastolic and the pulse rate become vitals (the mean arterial
pressure is not a contract vital). A cuff indicates its stored measurements right after the
central subscribes (there is no RACP in this profile): those are stamped by the cuff minutes to
days ago and become ``source=history``; a measurement taken during the connection is
``realtime`` (the rule of :func:`gateway.ble.profiles.thermometer.stored_or_live`). A cuff
sends its whole memory on every connection: ingest's history identity (device, ts, vital)
absorbs the re-sent records."""

from __future__ import annotations

from typing import ClassVar

from gateway.ble.profiles.base import HealthSession
from gateway.ble.profiles.thermometer import stored_or_live
from gatt.health import BLOOD_PRESSURE_MEASUREMENT, BLOOD_PRESSURE_SERVICE, GattMeasurement
from vitalgate.contract import Source


class BloodPressureSession(HealthSession):
    profile: ClassVar[str] = "blood_pressure"
    service: ClassVar[str] = BLOOD_PRESSURE_SERVICE
    measurements: ClassVar[tuple[str, ...]] = (BLOOD_PRESSURE_MEASUREMENT,)
    expected: ClassVar[frozenset[str]] = frozenset({"systolic_bp", "diastolic_bp"})

    def source_of(self, uuid: str, measurement: GattMeasurement, device_ms: int | None,
                  received_ms: int) -> Source:
        return stored_or_live(device_ms, received_ms)

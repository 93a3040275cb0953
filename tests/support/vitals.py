"""Vitals of test patients, as the keyword arguments of ``ingest_service.reading``."""

from __future__ import annotations

from typing import Final

#: the vitals of successive readings of a deteriorating patient: each changes its NEWS2 score
DETERIORATING: Final[tuple[dict[str, float], ...]] = (
    {"heart_rate": 72.0, "spo2": 97.0, "systolic_bp": 121.0, "diastolic_bp": 79.0,
     "temperature": 36.8, "respiratory_rate": 16.0},
    {"heart_rate": 96.0, "spo2": 95.0, "systolic_bp": 108.0, "diastolic_bp": 70.0,
     "temperature": 38.4, "respiratory_rate": 21.0},
    {"heart_rate": 118.0, "spo2": 92.0, "systolic_bp": 98.0, "diastolic_bp": 62.0,
     "temperature": 39.2, "respiratory_rate": 25.0},
)

"""Field codecs shared by the E86 messages: byte ranges, "no value" rules, temperature.

"No value" rules (reference: SpO2 0 and respiratory rate 0 mean no value; temperature tenths
15 means error). vitalgate extends "0 = no value" to heart rate and blood pressure (a living
patient never measures 0) and treats a tenths byte above 9 or an integer part of 0 as no value.
"""

from __future__ import annotations

from typing import Final

from e86.constants import TEMPERATURE_TENTHS_ERROR
from e86.errors import PayloadError

#: Contract names of the six vitals, in contract order.
VITAL_NAMES: Final = (
    "heart_rate",
    "spo2",
    "systolic_bp",
    "diastolic_bp",
    "temperature",
    "respiratory_rate",
)


def check_uint(name: str, value: int, bits: int) -> int:
    """Raise PayloadError unless value is an int fitting ``bits`` unsigned bits."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise PayloadError(f"{name} must be an integer 0..{(1 << bits) - 1}, got {value!r}")
    return value


def check_u8(name: str, value: int) -> int:
    return check_uint(name, value, 8)


def need(payload: bytes, size: int, what: str) -> None:
    """Raise PayloadError naming ``what`` unless payload has at least ``size`` bytes."""
    if len(payload) < size:
        raise PayloadError(f"{what} needs {size} payload bytes, got {len(payload)}")


def nonzero(value: int) -> int | None:
    """0 = no value."""
    return value or None


def or_zero(value: int | None) -> int:
    return 0 if value is None else value


def temperature_from_bytes(integer: int, tenths: int) -> float | None:
    """36, 7 → 36.7 °C; tenths 15 (error), tenths > 9 or integer 0 → None."""
    if tenths == TEMPERATURE_TENTHS_ERROR or tenths > 9 or integer == 0:
        return None
    return (integer * 10 + tenths) / 10


def temperature_to_bytes(value: float | None) -> tuple[int, int]:
    """36.7 → (36, 7); None → (0, 15), the watch's error code."""
    if value is None:
        return 0, TEMPERATURE_TENTHS_ERROR
    integer, tenths = divmod(round(value * 10), 10)
    if not 1 <= integer <= 0xFF:
        raise PayloadError(f"temperature {value} does not fit the watch's 1..255 °C")
    return integer, tenths


def present(**values: float | None) -> dict[str, float]:
    """The values that are not None, as floats (contract vitals)."""
    return {k: float(v) for k, v in values.items() if v is not None}

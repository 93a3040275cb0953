"""Standard Bluetooth health characteristics (for other watches and bedside devices).

Decoders AND encoders (tests and simulators) for Heart Rate Measurement (0x2A37), PLX
Spot-Check (0x2A5E) and Continuous (0x2A5F) Measurement, Blood Pressure Measurement (0x2A35)
and Temperature Measurement (0x2A1C), with the IEEE 11073-20601 SFLOAT / FLOAT number
formats. Every measurement is a frozen dataclass: ``Cls.from_bytes(data)`` decodes,
``bytes(m)`` encodes, ``m.vitals()`` gives the present vitals under the MQTT contract's names
in its units (kPa → mmHg, °F → °C). ``DECODERS`` maps characteristic UUIDs (full 128-bit,
lower case) to decoders, so a bedside device is configured by UUID. Beside them: Current
Time (0x2A2B, how the gateway sets a device's clock) and the Record Access Control Point
(0x2A52) commands and responses (how it asks a PLX for its stored records).

Bad bytes raise only ``GattDecodeError`` (a ValueError) naming what is wrong: too short for
what the flags announce, odd RR-interval bytes. Reserved flag bits and bytes after the last
announced field are ignored (later revisions of the specifications append fields). The
reserved number codes NaN, NRes, +INF, −INF and "reserved" all decode to None ("no value").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from enum import IntEnum
from typing import Final, Literal, Protocol, Self

# ------------------------------------------------------------------ errors


class GattDecodeError(ValueError):
    """Bytes that are not a valid measurement of the characteristic."""


class UnknownCharacteristic(GattDecodeError):
    """No decoder is registered for this characteristic UUID."""


# ------------------------------------------------------------------ UUIDs

_BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """0x2A37 → "00002a37-0000-1000-8000-00805f9b34fb"."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {short!r}")
    return f"0000{short:04x}{_BASE_UUID_SUFFIX}"


_SHORT_RE: Final = re.compile(r"^(0x)?([0-9a-f]{4})$")
_FULL_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def normalise_uuid(uuid: str | int) -> str:
    """ "2A37", "0x2a37", 0x2A37 or the full form → the full lower-case 128-bit form."""
    if isinstance(uuid, int):
        return uuid16(uuid)
    text = uuid.strip().lower()
    if m := _SHORT_RE.match(text):
        return uuid16(int(m[2], 16))
    if _FULL_RE.match(text):
        return text
    raise ValueError(f"not a UUID: {uuid!r}")


HEART_RATE_SERVICE: Final = uuid16(0x180D)
HEART_RATE_MEASUREMENT: Final = uuid16(0x2A37)
PULSE_OXIMETER_SERVICE: Final = uuid16(0x1822)
PLX_SPOT_CHECK: Final = uuid16(0x2A5E)
PLX_CONTINUOUS: Final = uuid16(0x2A5F)
RECORD_ACCESS_CONTROL_POINT: Final = uuid16(0x2A52)
BLOOD_PRESSURE_SERVICE: Final = uuid16(0x1810)
BLOOD_PRESSURE_MEASUREMENT: Final = uuid16(0x2A35)
HEALTH_THERMOMETER_SERVICE: Final = uuid16(0x1809)
TEMPERATURE_MEASUREMENT: Final = uuid16(0x2A1C)

#: 1 kPa in mmHg.
MMHG_PER_KPA: Final = 7.500615758

# ------------------------------------------------------------------ IEEE 11073 numbers

def _decode_number(raw: int, mantissa_bits: int, exponent_bits: int) -> float:
    mantissa = raw & ((1 << mantissa_bits) - 1)
    if mantissa >= 1 << (mantissa_bits - 1):
        mantissa -= 1 << mantissa_bits
    exponent = raw >> mantissa_bits
    if exponent >= 1 << (exponent_bits - 1):
        exponent -= 1 << exponent_bits
    scale: int = pow(10, abs(exponent))
    return float(mantissa * scale) if exponent >= 0 else mantissa / scale


def _encode_number(
    value: float,
    exponent: int | None,
    mantissa_bits: int,
    exponent_bits: int,
    specials: frozenset[int],
    what: str,
) -> int:
    e_min, e_max = -(1 << (exponent_bits - 1)), (1 << (exponent_bits - 1)) - 1
    m_min, m_max = -(1 << (mantissa_bits - 1)), (1 << (mantissa_bits - 1)) - 1
    if not math.isfinite(value):
        raise ValueError(f"{what} cannot encode {value}: use None for no value")

    def pack(m: int, e: int) -> int:
        return ((e & ((1 << exponent_bits) - 1)) << mantissa_bits) | (
            m & ((1 << mantissa_bits) - 1)
        )

    def mantissa(e: int) -> int:
        scale: int = pow(10, abs(e))
        scaled: float = value * scale if e < 0 else value / scale
        return round(scaled)

    def fits(m: int, e: int) -> bool:
        return m_min <= m <= m_max and pack(m, e) not in specials

    if exponent is not None:
        if not e_min <= exponent <= e_max:
            raise ValueError(f"{what} exponent {exponent} is outside {e_min}..{e_max}")
        m = mantissa(exponent)
        if not fits(m, exponent):
            raise ValueError(f"{what} cannot represent {value} with exponent {exponent}")
        return pack(m, exponent)
    if value == 0:
        return 0
    # start a little below the exponent that leaves all mantissa digits for the value
    first = max(e_min, math.floor(math.log10(abs(value))) - len(str(m_max)))
    for e in range(first, e_max + 1):
        m = mantissa(e)
        if m == 0:
            return 0
        if fits(m, e):
            while m % 10 == 0 and e < e_max and fits(m // 10, e + 1):
                m //= 10
                e += 1
            return pack(m, e)
    raise ValueError(f"{what} cannot represent {value}")


@dataclass(frozen=True, slots=True)
class NumberFormat:
    """An IEEE 11073-20601 number: a signed base-10 exponent over a signed mantissa. The five
    codes with exponent 0 around the mantissa's midpoint are reserved (NaN, NRes, ±INFINITY,
    reserved for future use) and all mean "no value" here."""

    name: str
    mantissa_bits: int
    exponent_bits: int

    @property
    def nan(self) -> int:
        """The "not a number" code: what None (no value) encodes to."""
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def specials(self) -> frozenset[int]:
        mid = 1 << (self.mantissa_bits - 1)  # NRes; NaN = mid - 1, +INF = mid - 2, -INF = mid + 2
        return frozenset({mid - 2, mid - 1, mid, mid + 1, mid + 2})

    def from_raw(self, raw: int) -> float | None:
        """Raw bits → value; a reserved code → None."""
        if raw in self.specials:
            return None
        return _decode_number(raw, self.mantissa_bits, self.exponent_bits)

    def to_raw(self, value: float | None, exponent: int | None = None) -> int:
        """Value → raw bits; None → NaN. Without ``exponent`` the most precise one is chosen
        (then trailing zeros are moved into the exponent); a reserved code is never produced."""
        if value is None:
            return self.nan
        return _encode_number(value, exponent, self.mantissa_bits, self.exponent_bits,
                              self.specials, self.name)


#: 16-bit SFLOAT (4-bit exponent, 12-bit mantissa) and 32-bit FLOAT (8-bit exponent, 24-bit).
SFLOAT: Final = NumberFormat("SFLOAT", 12, 4)
FLOAT: Final = NumberFormat("FLOAT", 24, 8)
SFLOAT_NAN: Final = SFLOAT.nan
SFLOAT_SPECIAL: Final = SFLOAT.specials
FLOAT_NAN: Final = FLOAT.nan
FLOAT_SPECIAL: Final = FLOAT.specials
sfloat_from_raw: Final = SFLOAT.from_raw
float_from_raw: Final = FLOAT.from_raw
sfloat_to_raw: Final = SFLOAT.to_raw
float_to_raw: Final = FLOAT.to_raw


# ------------------------------------------------------------------ reading helpers


class _Reader:
    """Reads fields in order; running out of bytes raises GattDecodeError naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise GattDecodeError(
                f"{self.what}: {field} needs bytes {self.pos}..{self.pos + n - 1}, "
                f"only {len(self.data)} bytes"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")

    def sfloat(self, field: str) -> float | None:
        return sfloat_from_raw(self.uint(2, field))

    def float32(self, field: str) -> float | None:
        return float_from_raw(self.uint(4, field))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _sf(value: float | None) -> bytes:
    return sfloat_to_raw(value).to_bytes(2, "little")


def _flag(flags: int, bit: int) -> bool:
    return bool(flags & (1 << bit))


@dataclass(frozen=True, slots=True)
class DateTime:
    """The Date Time characteristic format (7 bytes): year u16 (0 = unknown), month, day
    (0 = unknown), hours, minutes, seconds. Kept raw; ``to_datetime`` interprets it."""

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0

    SIZE = 7

    @classmethod
    def read(cls, reader: _Reader) -> Self:
        year = reader.uint(2, "time stamp")
        month, day, hour, minute, second = reader.take(5, "time stamp")
        return cls(year, month, day, hour, minute, second)

    def __bytes__(self) -> bytes:
        return self.year.to_bytes(2, "little") + bytes(
            (self.month, self.day, self.hour, self.minute, self.second)
        )

    @classmethod
    def from_datetime(cls, moment: datetime) -> Self:
        return cls(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)

    def to_datetime(self, tz: tzinfo | None = None) -> datetime | None:
        """The wall time (in ``tz`` if given), or None if unknown or invalid."""
        try:
            return datetime(
                self.year, self.month, self.day, self.hour, self.minute, self.second, tzinfo=tz
            )
        except ValueError:
            return None


def _present(**values: float | None) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None}


# ------------------------------------------------------------------ Heart Rate 0x2A37


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """0x2A37. Flags: bit0 u16 heart rate, bit1 contact detected, bit2 contact supported,
    bit3 energy expended (u16 kJ) present, bit4 RR intervals (u16, 1/1024 s) present.

    ``sensor_contact`` is None when contact detection is not supported. ``vitals()`` is
    empty when the sensor reports no skin contact, or the rate is 0.
    """

    heart_rate: int
    sensor_contact: bool | None = None
    energy_expended: int | None = None
    rr_intervals: tuple[int, ...] = ()
    wide: bool = False

    @property
    def rr_seconds(self) -> tuple[float, ...]:
        return tuple(rr / 1024 for rr in self.rr_intervals)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "heart rate measurement")
        flags = r.uint(1, "flags")
        wide = _flag(flags, 0)
        hr = r.uint(2 if wide else 1, "heart rate")
        contact = _flag(flags, 1) if _flag(flags, 2) else None
        energy = r.uint(2, "energy expended") if _flag(flags, 3) else None
        rr: tuple[int, ...] = ()
        if _flag(flags, 4):
            if r.remaining % 2:
                raise GattDecodeError(
                    f"heart rate measurement: RR intervals take an even number of bytes, got {r.remaining}"
                )
            rr = tuple(r.uint(2, "RR interval") for _ in range(r.remaining // 2))
        return cls(hr, contact, energy, rr, wide)

    def __bytes__(self) -> bytes:
        wide = self.wide or self.heart_rate > 0xFF
        flags = (
            int(wide)
            | (int(bool(self.sensor_contact)) << 1)
            | (int(self.sensor_contact is not None) << 2)
            | (int(self.energy_expended is not None) << 3)
            | (int(bool(self.rr_intervals)) << 4)
        )
        out = bytes((flags,)) + self.heart_rate.to_bytes(2 if wide else 1, "little")
        if self.energy_expended is not None:
            out += self.energy_expended.to_bytes(2, "little")
        return out + b"".join(rr.to_bytes(2, "little") for rr in self.rr_intervals)

    def vitals(self) -> dict[str, float]:
        if self.sensor_contact is False or self.heart_rate == 0:
            return {}
        return {"heart_rate": float(self.heart_rate)}


# ------------------------------------------------------------------ PLX 0x2A5E / 0x2A5F


def _read_plx_status(r: _Reader, flags: int, bit: int) -> tuple[int | None, int | None, float | None]:
    """The tail both PLX measurements share, present by flag bits ``bit`` … ``bit + 2``:
    measurement status u16, device and sensor status u24, pulse amplitude index SFLOAT."""
    ms = r.uint(2, "measurement status") if _flag(flags, bit) else None
    ds = r.uint(3, "device and sensor status") if _flag(flags, bit + 1) else None
    pai = r.sfloat("pulse amplitude index") if _flag(flags, bit + 2) else None
    return ms, ds, pai


def _plx_status(ms: int | None, ds: int | None, pai: float | None, bit: int) -> tuple[int, bytes]:
    """The shared tail written: its flag bits (from ``bit``) and its bytes."""
    flags = ((int(ms is not None) << bit) | (int(ds is not None) << (bit + 1))
             | (int(pai is not None) << (bit + 2)))
    out = b"" if ms is None else ms.to_bytes(2, "little")
    out += b"" if ds is None else ds.to_bytes(3, "little")
    return flags, out + (b"" if pai is None else _sf(pai))


@dataclass(frozen=True, slots=True)
class PlxSpotCheck:
    """0x2A5E. SpO2 SFLOAT, pulse rate SFLOAT, then by flags: bit0 time stamp, bit1
    measurement status u16, bit2 device and sensor status u24, bit3 pulse amplitude index
    SFLOAT; bit4 = device clock not set."""

    spo2: float | None
    pulse_rate: float | None
    timestamp: DateTime | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: float | None = None
    clock_not_set: bool = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "PLX spot-check")
        flags = r.uint(1, "flags")
        spo2 = r.sfloat("SpO2")
        pr = r.sfloat("pulse rate")
        ts = DateTime.read(r) if _flag(flags, 0) else None
        return cls(spo2, pr, ts, *_read_plx_status(r, flags, 1), _flag(flags, 4))

    def __bytes__(self) -> bytes:
        status_flags, status = _plx_status(self.measurement_status, self.device_status,
                                           self.pulse_amplitude_index, 1)
        flags = int(self.timestamp is not None) | status_flags | (int(self.clock_not_set) << 4)
        out = bytes((flags,)) + _sf(self.spo2) + _sf(self.pulse_rate)
        if self.timestamp is not None:
            out += bytes(self.timestamp)
        return out + status

    def vitals(self) -> dict[str, float]:
        return _present(spo2=self.spo2, heart_rate=self.pulse_rate)


@dataclass(frozen=True, slots=True)
class PlxContinuous:
    """0x2A5F. SpO2PR-Normal (SpO2, pulse rate SFLOATs), then by flags: bit0 SpO2PR-Fast,
    bit1 SpO2PR-Slow, bit2 measurement status u16, bit3 device and sensor status u24, bit4
    pulse amplitude index SFLOAT. ``vitals()`` uses the normal pair."""

    spo2: float | None
    pulse_rate: float | None
    spo2_fast: float | None = None
    pulse_rate_fast: float | None = None
    spo2_slow: float | None = None
    pulse_rate_slow: float | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: float | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "PLX continuous")
        flags = r.uint(1, "flags")
        spo2 = r.sfloat("SpO2")
        pr = r.sfloat("pulse rate")
        fast = (
            (r.sfloat("SpO2 fast"), r.sfloat("pulse rate fast"))
            if _flag(flags, 0)
            else (None, None)
        )
        slow = (
            (r.sfloat("SpO2 slow"), r.sfloat("pulse rate slow"))
            if _flag(flags, 1)
            else (None, None)
        )
        ms, ds, pai = _read_plx_status(r, flags, 2)
        return cls(spo2, pr, *fast, *slow, measurement_status=ms, device_status=ds,
                   pulse_amplitude_index=pai)

    def __bytes__(self) -> bytes:
        fast = self.spo2_fast is not None or self.pulse_rate_fast is not None
        slow = self.spo2_slow is not None or self.pulse_rate_slow is not None
        status_flags, status = _plx_status(self.measurement_status, self.device_status,
                                           self.pulse_amplitude_index, 2)
        out = bytes((int(fast) | (int(slow) << 1) | status_flags,)) + _sf(self.spo2) + _sf(self.pulse_rate)
        if fast:
            out += _sf(self.spo2_fast) + _sf(self.pulse_rate_fast)
        if slow:
            out += _sf(self.spo2_slow) + _sf(self.pulse_rate_slow)
        return out + status

    def vitals(self) -> dict[str, float]:
        return _present(spo2=self.spo2, heart_rate=self.pulse_rate)


# ------------------------------------------------------------------ Blood Pressure 0x2A35

PressureUnit = Literal["mmHg", "kPa"]


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    """0x2A35. Flags: bit0 unit kPa (else mmHg), bit1 time stamp, bit2 pulse rate SFLOAT,
    bit3 user id u8, bit4 measurement status u16. Systolic, diastolic, mean arterial pressure
    SFLOATs come first, in ``unit``; ``vitals()`` converts to mmHg."""

    systolic: float | None
    diastolic: float | None
    mean_arterial: float | None
    unit: PressureUnit = "mmHg"
    timestamp: DateTime | None = None
    pulse_rate: float | None = None
    user_id: int | None = None
    measurement_status: int | None = None

    def _mmhg(self, value: float | None) -> float | None:
        if value is None or self.unit == "mmHg":
            return value
        return round(value * MMHG_PER_KPA, 1)

    @property
    def systolic_mmhg(self) -> float | None:
        return self._mmhg(self.systolic)

    @property
    def diastolic_mmhg(self) -> float | None:
        return self._mmhg(self.diastolic)

    @property
    def mean_arterial_mmhg(self) -> float | None:
        return self._mmhg(self.mean_arterial)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "blood pressure measurement")
        flags = r.uint(1, "flags")
        sys_ = r.sfloat("systolic")
        dia = r.sfloat("diastolic")
        mean = r.sfloat("mean arterial pressure")
        unit: PressureUnit = "kPa" if _flag(flags, 0) else "mmHg"
        ts = DateTime.read(r) if _flag(flags, 1) else None
        pr = r.sfloat("pulse rate") if _flag(flags, 2) else None
        uid = r.uint(1, "user id") if _flag(flags, 3) else None
        ms = r.uint(2, "measurement status") if _flag(flags, 4) else None
        return cls(sys_, dia, mean, unit, ts, pr, uid, ms)

    def __bytes__(self) -> bytes:
        flags = (
            int(self.unit == "kPa")
            | (int(self.timestamp is not None) << 1)
            | (int(self.pulse_rate is not None) << 2)
            | (int(self.user_id is not None) << 3)
            | (int(self.measurement_status is not None) << 4)
        )
        out = bytes((flags,)) + _sf(self.systolic) + _sf(self.diastolic) + _sf(self.mean_arterial)
        if self.timestamp is not None:
            out += bytes(self.timestamp)
        if self.pulse_rate is not None:
            out += _sf(self.pulse_rate)
        if self.user_id is not None:
            out += bytes((self.user_id,))
        if self.measurement_status is not None:
            out += self.measurement_status.to_bytes(2, "little")
        return out

    def vitals(self) -> dict[str, float]:
        return _present(
            systolic_bp=self.systolic_mmhg,
            diastolic_bp=self.diastolic_mmhg,
            heart_rate=self.pulse_rate,
        )


# ------------------------------------------------------------------ Temperature 0x2A1C


@dataclass(frozen=True, slots=True)
class TemperatureMeasurement:
    """0x2A1C. Flags: bit0 unit °F (else °C), bit1 time stamp, bit2 temperature type u8.
    The value is a 32-bit FLOAT; ``vitals()`` gives °C."""

    value: float | None
    fahrenheit: bool = False
    timestamp: DateTime | None = None
    temperature_type: int | None = None

    @property
    def celsius(self) -> float | None:
        if self.value is None or not self.fahrenheit:
            return self.value
        return round((self.value - 32) * 5 / 9, 2)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "temperature measurement")
        flags = r.uint(1, "flags")
        value = r.float32("temperature")
        ts = DateTime.read(r) if _flag(flags, 1) else None
        ttype = r.uint(1, "temperature type") if _flag(flags, 2) else None
        return cls(value, _flag(flags, 0), ts, ttype)

    def __bytes__(self) -> bytes:
        flags = (
            int(self.fahrenheit)
            | (int(self.timestamp is not None) << 1)
            | (int(self.temperature_type is not None) << 2)
        )
        out = bytes((flags,)) + float_to_raw(self.value).to_bytes(4, "little")
        if self.timestamp is not None:
            out += bytes(self.timestamp)
        if self.temperature_type is not None:
            out += bytes((self.temperature_type,))
        return out

    def vitals(self) -> dict[str, float]:
        return _present(temperature=self.celsius)


# ------------------------------------------------------------------ registry


class GattMeasurement(Protocol):
    def vitals(self) -> dict[str, float]: ...

    def __bytes__(self) -> bytes: ...


GattDecoder = Callable[[bytes], GattMeasurement]

DECODERS: Final[dict[str, GattDecoder]] = {
    HEART_RATE_MEASUREMENT: HeartRateMeasurement.from_bytes,
    PLX_SPOT_CHECK: PlxSpotCheck.from_bytes,
    PLX_CONTINUOUS: PlxContinuous.from_bytes,
    BLOOD_PRESSURE_MEASUREMENT: BloodPressureMeasurement.from_bytes,
    TEMPERATURE_MEASUREMENT: TemperatureMeasurement.from_bytes,
}

#: Health service → its measurement characteristics (what to subscribe to).
SERVICE_MEASUREMENTS: Final[dict[str, tuple[str, ...]]] = {
    HEART_RATE_SERVICE: (HEART_RATE_MEASUREMENT,),
    PULSE_OXIMETER_SERVICE: (PLX_SPOT_CHECK, PLX_CONTINUOUS),
    BLOOD_PRESSURE_SERVICE: (BLOOD_PRESSURE_MEASUREMENT,),
    HEALTH_THERMOMETER_SERVICE: (TEMPERATURE_MEASUREMENT,),
}


def decoder_for(uuid: str | int) -> GattDecoder:
    """The decoder of a characteristic (any UUID spelling); UnknownCharacteristic if none."""
    try:
        key = normalise_uuid(uuid)
    except ValueError as exc:
        raise UnknownCharacteristic(str(exc)) from None
    try:
        return DECODERS[key]
    except KeyError:
        raise UnknownCharacteristic(f"no decoder for characteristic {key}") from None


def decode_characteristic(uuid: str | int, data: bytes) -> GattMeasurement:
    """Decode a notification / indication of characteristic ``uuid``."""
    return decoder_for(uuid)(data)


# ------------------------------------------------------------------ Current Time 0x2A2B, RACP 0x2A52

CURRENT_TIME_SERVICE: Final = uuid16(0x1805)
CURRENT_TIME: Final = uuid16(0x2A2B)

#: Adjust Reason bit 0: the time was set by hand (here: by the gateway, from its clock).
ADJUST_MANUAL: Final = 0x01


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """0x2A2B (10 bytes): Date Time, day of week (1 = Monday .. 7, 0 = unknown),
    fractions of a second in 1/256 s, adjust reason flags. The device's local time."""

    time: DateTime
    day_of_week: int = 0
    fractions256: int = 0
    adjust_reason: int = ADJUST_MANUAL

    SIZE = 10

    @classmethod
    def from_datetime(cls, moment: datetime) -> Self:
        return cls(DateTime.from_datetime(moment), moment.isoweekday(),
                   moment.microsecond * 256 // 1_000_000)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "current time")
        ts = DateTime.read(r)
        dow, frac, reason = r.take(3, "day of week, fractions, adjust reason")
        return cls(ts, dow, frac, reason)

    def __bytes__(self) -> bytes:
        return bytes(self.time) + bytes((self.day_of_week, self.fractions256, self.adjust_reason))


class RacpOp(IntEnum):
    """Record Access Control Point op codes (PLX, Glucose, CGM profiles)."""

    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    REPORT_NUMBER_OF_RECORDS = 0x04
    NUMBER_OF_RECORDS = 0x05
    RESPONSE = 0x06


class RacpResult(IntEnum):
    """Response Code values: how a RACP request ended."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    NO_RECORDS_FOUND = 0x06


class RacpOperator(IntEnum):
    """Which stored records a RACP request is about (:class:`RacpCommand`'s operator)."""

    ALL_RECORDS = 0x01


@dataclass(frozen=True, slots=True)
class RacpCommand:
    """A RACP write (op code, operator, operand bytes)."""

    op: int
    operator: int = RacpOperator.ALL_RECORDS
    operand: bytes = b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "RACP command")
        op, operator = r.take(2, "op code and operator")
        return cls(op, operator, r.take(r.remaining, "operand"))

    def __bytes__(self) -> bytes:
        return bytes((self.op, self.operator)) + self.operand


@dataclass(frozen=True, slots=True)
class RacpResponse:
    """A RACP indication: Response Code (0x06, operator 0 (null), request op code, result) or
    Number of Stored Records (0x05, operator 0, u16)."""

    op: int
    request_op: int = 0
    result: int = RacpResult.SUCCESS
    count: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _Reader(data, "RACP response")
        op, _operator = r.take(2, "op code and operator")
        if op == RacpOp.NUMBER_OF_RECORDS:
            return cls(op, RacpOp.REPORT_NUMBER_OF_RECORDS, RacpResult.SUCCESS, r.uint(2, "count"))
        if op != RacpOp.RESPONSE:
            raise GattDecodeError(f"RACP response: op code {op:#04x} is not a response")
        request_op, result = r.take(2, "request op code and result")
        return cls(op, request_op, result)

    def __bytes__(self) -> bytes:
        if self.op == RacpOp.NUMBER_OF_RECORDS:
            return bytes((self.op, 0)) + (self.count or 0).to_bytes(2, "little")
        return bytes((self.op, 0, self.request_op, self.result))

"""Real-time uploads (watch → app, group 0x06): decode for the gateway, encode for the
virtual watch.

``decode_realtime(frame)`` returns a ``RealtimeValues`` (keys 0x00–0x03, 0x07),
``EcgSamples`` (0x05) or ``PpgRaw`` (0x04); an unknown key raises ``UnknownMessage`` and a
payload too short for its key raises ``PayloadError``. Blood pressure is decoded by position:
the first byte is SYSTOLIC although the vendor SDK names it ``bloodDBP``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from e86.constants import (
    ECG_SAMPLE_RATE,
    ECG_SAMPLE_SIZE,
    MAX_PAYLOAD,
    Group,
    RealtimeKey,
)
from e86.errors import PayloadError, UnknownMessage
from e86.frame import Frame
from e86.values import (
    check_u8,
    check_uint,
    need,
    nonzero,
    or_zero,
    present,
    temperature_from_bytes,
    temperature_to_bytes,
)

#: Which RealtimeValues fields each key carries (the others must be None).
FIELDS_BY_KEY: Final = {
    RealtimeKey.SPORT: frozenset({"steps", "distance", "calories"}),
    RealtimeKey.HEART_RATE: frozenset({"heart_rate"}),
    RealtimeKey.SPO2: frozenset({"spo2"}),
    RealtimeKey.BLOOD_PRESSURE: frozenset(
        {"systolic_bp", "diastolic_bp", "heart_rate", "hrv", "spo2", "temperature"}
    ),
    RealtimeKey.RESPIRATORY_RATE: frozenset({"respiratory_rate"}),
}
_ALL_FIELDS: Final = frozenset().union(*FIELDS_BY_KEY.values())
#: Most ECG samples one frame can carry.
MAX_ECG_SAMPLES_PER_FRAME: Final = MAX_PAYLOAD // ECG_SAMPLE_SIZE
_S24_MIN: Final = -(1 << 23)
_S24_MAX: Final = (1 << 23) - 1


@dataclass(frozen=True, slots=True)
class RealtimeValues:
    """The values of one real-time frame; None = not carried or "no value" (0, error code).

    ``key`` says which frame it came from (and how ``to_frame`` encodes it).
    """

    key: RealtimeKey
    heart_rate: int | None = None
    spo2: int | None = None
    systolic_bp: int | None = None
    diastolic_bp: int | None = None
    temperature: float | None = None
    respiratory_rate: int | None = None
    hrv: int | None = None
    steps: int | None = None
    distance: int | None = None
    calories: int | None = None

    def __post_init__(self) -> None:
        if self.key not in FIELDS_BY_KEY:
            raise PayloadError(f"real-time key {self.key!r} does not carry values")
        object.__setattr__(self, "key", RealtimeKey(self.key))
        allowed = FIELDS_BY_KEY[self.key]
        for name in _ALL_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name not in allowed:
                raise PayloadError(f"real-time frame {self.key.name} does not carry {name}")
            if name == "temperature":
                temperature_to_bytes(value)  # range check
            elif name in ("steps", "distance", "calories"):
                check_uint(name, value, 16)
            else:
                check_u8(name, value)

    def vitals(self) -> dict[str, float]:
        """Present vitals under the contract's names."""
        return present(
            heart_rate=self.heart_rate,
            spo2=self.spo2,
            systolic_bp=self.systolic_bp,
            diastolic_bp=self.diastolic_bp,
            temperature=self.temperature,
            respiratory_rate=self.respiratory_rate,
        )

    def to_frame(self) -> Frame:
        key = self.key
        if key == RealtimeKey.SPORT:
            payload = b"".join(
                or_zero(v).to_bytes(2, "little") for v in (self.steps, self.distance, self.calories)
            )
        elif key == RealtimeKey.HEART_RATE:
            payload = bytes((or_zero(self.heart_rate),))
        elif key == RealtimeKey.SPO2:
            payload = bytes((or_zero(self.spo2),))
        elif key == RealtimeKey.RESPIRATORY_RATE:
            payload = bytes((or_zero(self.respiratory_rate),))
        else:
            fields = [
                or_zero(self.systolic_bp),
                or_zero(self.diastolic_bp),
                or_zero(self.heart_rate),
            ]
            if self.temperature is not None:
                fields += [
                    or_zero(self.hrv),
                    or_zero(self.spo2),
                    *temperature_to_bytes(self.temperature),
                ]
            elif self.spo2 is not None:
                fields += [or_zero(self.hrv), self.spo2]
            elif self.hrv is not None:
                fields += [self.hrv]
            payload = bytes(fields)
        return Frame(Group.REALTIME, key, payload)

    def __bytes__(self) -> bytes:
        return bytes(self.to_frame())


def realtime_sport(steps: int, distance: int, calories: int) -> RealtimeValues:
    """``06 00``: steps, distance, calories (u16 each)."""
    return RealtimeValues(RealtimeKey.SPORT, steps=steps, distance=distance, calories=calories)


def realtime_heart_rate(heart_rate: int | None) -> RealtimeValues:
    """``06 01``: heart rate u8."""
    return RealtimeValues(RealtimeKey.HEART_RATE, heart_rate=heart_rate)


def realtime_spo2(spo2: int | None) -> RealtimeValues:
    """``06 02``: SpO2 u8 (None is sent as 0)."""
    return RealtimeValues(RealtimeKey.SPO2, spo2=spo2)


def realtime_respiratory_rate(rate: int | None) -> RealtimeValues:
    """``06 07``: respiratory rate u8 (None is sent as 0)."""
    return RealtimeValues(RealtimeKey.RESPIRATORY_RATE, respiratory_rate=rate)


def realtime_blood_pressure(
    systolic: int | None,
    diastolic: int | None,
    heart_rate: int | None = None,
    *,
    hrv: int | None = None,
    spo2: int | None = None,
    temperature: float | None = None,
) -> RealtimeValues:
    """``06 03``: [systolic, diastolic, hr, (hrv), (spo2), (temp int, temp tenths)]; the
    trailing fields are sent only up to the last one given."""
    return RealtimeValues(
        RealtimeKey.BLOOD_PRESSURE,
        systolic_bp=systolic,
        diastolic_bp=diastolic,
        heart_rate=heart_rate,
        hrv=hrv,
        spo2=spo2,
        temperature=temperature,
    )


@dataclass(frozen=True, slots=True)
class EcgSamples:
    """``06 05``: raw ECG, signed 24-bit little-endian samples at 250 samples/s.

    ``trailing`` keeps the bytes of an incomplete last sample (normally empty; the gateway
    counts them as dropped).
    """

    samples: tuple[int, ...]
    trailing: bytes = b""

    #: samples per second.
    fs: ClassVar[float] = float(ECG_SAMPLE_RATE)

    def __post_init__(self) -> None:
        if not isinstance(self.samples, tuple):
            object.__setattr__(self, "samples", tuple(self.samples))
        for s in self.samples:
            if not isinstance(s, int) or not _S24_MIN <= s <= _S24_MAX:
                raise PayloadError(f"ECG sample {s!r} does not fit a signed 24-bit integer")
        if len(self.trailing) >= ECG_SAMPLE_SIZE:
            raise PayloadError(f"ECG trailing bytes must be fewer than {ECG_SAMPLE_SIZE}")

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        whole = len(payload) - len(payload) % ECG_SAMPLE_SIZE
        samples = tuple(
            int.from_bytes(payload[i : i + ECG_SAMPLE_SIZE], "little", signed=True)
            for i in range(0, whole, ECG_SAMPLE_SIZE)
        )
        return cls(samples, payload[whole:])

    def to_frame(self) -> Frame:
        payload = b"".join(s.to_bytes(ECG_SAMPLE_SIZE, "little", signed=True) for s in self.samples)
        return Frame(Group.REALTIME, RealtimeKey.ECG, payload + self.trailing)

    def __bytes__(self) -> bytes:
        return bytes(self.to_frame())

    def vitals(self) -> dict[str, float]:
        return {}


def ecg_frames(samples: Iterable[int], per_frame: int = 120) -> list[Frame]:
    """Split samples into ``06 05`` frames of at most ``per_frame`` samples (watch side)."""
    if not 1 <= per_frame <= MAX_ECG_SAMPLES_PER_FRAME:
        raise ValueError(f"per_frame must be 1..{MAX_ECG_SAMPLES_PER_FRAME}")
    values: Sequence[int] = tuple(samples)
    return [
        EcgSamples(tuple(values[i : i + per_frame])).to_frame()
        for i in range(0, len(values), per_frame)
    ]


@dataclass(frozen=True, slots=True)
class PpgRaw:
    """``06 04``: raw PPG, layout unknown; bytes kept as they came."""

    data: bytes

    def to_frame(self) -> Frame:
        return Frame(Group.REALTIME, RealtimeKey.PPG, self.data)

    def __bytes__(self) -> bytes:
        return bytes(self.to_frame())

    def vitals(self) -> dict[str, float]:
        return {}


RealtimeMessage = RealtimeValues | EcgSamples | PpgRaw


def decode_realtime(frame: Frame) -> RealtimeMessage:
    """Decode a group 0x06 frame.

    Raises PayloadError (not group 0x06, or payload too short for its key) or
    UnknownMessage (a key vitalgate does not know).
    """
    if frame.group != Group.REALTIME:
        raise PayloadError(
            f"frame {frame.group:02x} {frame.key:02x} is not a real-time upload (06 kk)"
        )
    p = frame.payload
    key = frame.key
    if key == RealtimeKey.ECG:
        return EcgSamples.from_payload(p)
    if key == RealtimeKey.PPG:
        return PpgRaw(p)
    if key == RealtimeKey.SPORT:
        need(p, 6, "real-time sport")
        return RealtimeValues(
            RealtimeKey.SPORT,
            steps=int.from_bytes(p[0:2], "little"),
            distance=int.from_bytes(p[2:4], "little"),
            calories=int.from_bytes(p[4:6], "little"),
        )
    if key == RealtimeKey.HEART_RATE:
        need(p, 1, "real-time heart rate")
        return RealtimeValues(RealtimeKey.HEART_RATE, heart_rate=nonzero(p[0]))
    if key == RealtimeKey.SPO2:
        need(p, 1, "real-time SpO2")
        return RealtimeValues(RealtimeKey.SPO2, spo2=nonzero(p[0]))
    if key == RealtimeKey.RESPIRATORY_RATE:
        need(p, 1, "real-time respiratory rate")
        return RealtimeValues(RealtimeKey.RESPIRATORY_RATE, respiratory_rate=nonzero(p[0]))
    if key == RealtimeKey.BLOOD_PRESSURE:
        need(p, 3, "real-time blood pressure")
        return RealtimeValues(
            RealtimeKey.BLOOD_PRESSURE,
            systolic_bp=nonzero(p[0]),  # the vendor's "bloodDBP": by position it is SYSTOLIC
            diastolic_bp=nonzero(p[1]),
            heart_rate=nonzero(p[2]),
            hrv=nonzero(p[3]) if len(p) >= 4 else None,
            spo2=nonzero(p[4]) if len(p) >= 5 else None,
            temperature=temperature_from_bytes(p[5], p[6]) if len(p) >= 7 else None,
        )
    raise UnknownMessage(frame.group, frame.key, "unknown real-time upload")

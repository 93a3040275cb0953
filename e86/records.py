"""History records (group 0x05 record frames): layouts as data, one generic codec.

Each record kind's byte layout is a row of :data:`LAYOUTS`-style field tables (``Field(name,
size)``, little-endian unsigned integers, or ``raw`` bytes kept whole); :class:`Record` reads
and writes any of them, and checks every field against its width. The record classes add
only what is particular to them: their fields and what they mean as vitals ("0 = no value").
Sport and sleep records have no known layout: a :class:`RawRecord` keeps their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple, Self

from e86.commands import expect
from e86.constants import HISTORY_KIND_BY_RECORD_KEY, HISTORY_KINDS, Group, HistoryKey, HistoryKind
from e86.errors import PayloadError, UnknownMessage
from e86.frame import Frame
from e86.values import check_u8, check_uint, nonzero, present, temperature_from_bytes


class Field(NamedTuple):
    """One field of a record layout: ``size`` bytes, an unsigned little-endian integer unless
    ``raw`` (bytes kept as they are)."""

    name: str
    size: int
    raw: bool = False


class Record:
    """Mixin of the record dataclasses: ``from_bytes`` / ``bytes(record)`` / field checks, all
    read from the class's ``LAYOUT``. ``WHAT`` names the kind in errors."""

    __slots__ = ()
    KEY: ClassVar[int]
    WHAT: ClassVar[str]
    LAYOUT: ClassVar[tuple[Field, ...]]

    @classmethod
    def size(cls) -> int:
        return sum(f.size for f in cls.LAYOUT)

    def __post_init__(self) -> None:
        for f in self.LAYOUT:
            value = getattr(self, f.name)
            if f.raw:
                if not isinstance(value, bytes) or len(value) != f.size:
                    raise PayloadError(f"{f.name} must be {f.size} bytes, got {value!r}")
            else:
                check_uint(f.name, value, 8 * f.size)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        size = cls.size()
        if len(data) != size:
            raise PayloadError(f"{cls.WHAT} record is {size} bytes, got {len(data)}")
        values: dict[str, int | bytes] = {}
        at = 0
        for f in cls.LAYOUT:
            chunk = data[at : at + f.size]
            values[f.name] = bytes(chunk) if f.raw else int.from_bytes(chunk, "little")
            at += f.size
        return cls(**values)

    def __bytes__(self) -> bytes:
        out = bytearray()
        for f in self.LAYOUT:
            value = getattr(self, f.name)
            out += value if f.raw else value.to_bytes(f.size, "little")
        return bytes(out)

    def vitals(self) -> dict[str, float]:
        raise NotImplementedError


_T = Field("t", 4)  # watch time, seconds (e86.clock)
_MODE = Field("mode", 1)


@dataclass(frozen=True, slots=True)
class HeartRateRecord(Record):
    """``05 15`` record, 6 bytes: t u32, mode u8, heart rate u8. Raw bytes are kept;
    ``vitals()`` applies the "0 = no value" rule."""

    KEY: ClassVar[int] = HistoryKey.HEART_RATE_RECORDS
    WHAT: ClassVar[str] = "heart-rate"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_T, _MODE, Field("heart_rate", 1))

    t: int
    mode: int
    heart_rate: int

    def vitals(self) -> dict[str, float]:
        return present(heart_rate=nonzero(self.heart_rate))


@dataclass(frozen=True, slots=True)
class BloodPressureRecord(Record):
    """``05 17`` record, 8 bytes: t u32, mode u8, systolic u8, diastolic u8, unknown u8."""

    KEY: ClassVar[int] = HistoryKey.BLOOD_PRESSURE_RECORDS
    WHAT: ClassVar[str] = "blood-pressure"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _T, _MODE, Field("systolic", 1), Field("diastolic", 1), Field("unknown", 1))

    t: int
    mode: int
    systolic: int
    diastolic: int
    unknown: int = 0

    def vitals(self) -> dict[str, float]:
        return present(systolic_bp=nonzero(self.systolic), diastolic_bp=nonzero(self.diastolic))


@dataclass(frozen=True, slots=True)
class AllRecord(Record):
    """``05 18`` record, 20 bytes: t u32, steps u16, heart rate, systolic, diastolic, SpO2,
    respiratory rate, HRV, CVRR, temp integer, temp tenths (u8 each), 5 reserved bytes."""

    KEY: ClassVar[int] = HistoryKey.ALL_RECORDS
    WHAT: ClassVar[str] = "all-values"
    LAYOUT: ClassVar[tuple[Field, ...]] = (
        _T,
        Field("steps", 2),
        *(Field(name, 1) for name in ("heart_rate", "systolic", "diastolic", "spo2", "respiratory_rate",
                                      "hrv", "cvrr", "temp_integer", "temp_tenths")),
        Field("reserved", 5, raw=True),
    )

    t: int
    steps: int = 0
    heart_rate: int = 0
    systolic: int = 0
    diastolic: int = 0
    spo2: int = 0
    respiratory_rate: int = 0
    hrv: int = 0
    cvrr: int = 0
    temp_integer: int = 0
    temp_tenths: int = 15
    reserved: bytes = bytes(5)

    @property
    def temperature(self) -> float | None:
        return temperature_from_bytes(self.temp_integer, self.temp_tenths)

    def vitals(self) -> dict[str, float]:
        return present(
            heart_rate=nonzero(self.heart_rate),
            spo2=nonzero(self.spo2),
            systolic_bp=nonzero(self.systolic),
            diastolic_bp=nonzero(self.diastolic),
            temperature=self.temperature,
            respiratory_rate=nonzero(self.respiratory_rate),
        )


@dataclass(frozen=True, slots=True)
class Spo2Record(Record):
    """``05 22`` record, 6 bytes: t u32, mode u8, SpO2 u8."""

    KEY: ClassVar[int] = HistoryKey.SPO2_RECORDS
    WHAT: ClassVar[str] = "SpO2"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_T, _MODE, Field("spo2", 1))

    t: int
    mode: int
    spo2: int

    def vitals(self) -> dict[str, float]:
        return present(spo2=nonzero(self.spo2))


@dataclass(frozen=True, slots=True)
class TemperatureRecord(Record):
    """``05 26`` record, 7 bytes: t u32, mode u8, temp integer u8, temp tenths u8."""

    KEY: ClassVar[int] = HistoryKey.TEMPERATURE_RECORDS
    WHAT: ClassVar[str] = "temperature"
    LAYOUT: ClassVar[tuple[Field, ...]] = (_T, _MODE, Field("temp_integer", 1), Field("temp_tenths", 1))

    t: int
    mode: int
    temp_integer: int
    temp_tenths: int

    @property
    def temperature(self) -> float | None:
        return temperature_from_bytes(self.temp_integer, self.temp_tenths)

    def vitals(self) -> dict[str, float]:
        return present(temperature=self.temperature)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """The payload of one sport (``05 11``) or sleep (``05 13``) record frame: their layout is
    not in the reference, so the bytes are kept whole. No vitals, no time."""

    key: int
    data: bytes

    def __post_init__(self) -> None:
        check_u8("key", self.key)

    def __bytes__(self) -> bytes:
        return self.data

    def vitals(self) -> dict[str, float]:
        return {}


HistoryRecord = (
    HeartRateRecord | BloodPressureRecord | AllRecord | Spo2Record | TemperatureRecord | RawRecord
)
TimedRecord = HeartRateRecord | BloodPressureRecord | AllRecord | Spo2Record | TemperatureRecord

#: record key → record class (kinds whose layout is known).
RECORD_TYPES: Final[dict[int, type[TimedRecord]]] = {
    cls.KEY: cls
    for cls in (HeartRateRecord, BloodPressureRecord, AllRecord, Spo2Record, TemperatureRecord)
}


def record_key(record: HistoryRecord) -> int:
    """The record-frame key ``record`` travels in."""
    return record.key if isinstance(record, RawRecord) else record.KEY


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """The records of one record frame; an incomplete trailing record is a counted skip."""

    kind: HistoryKind
    records: tuple[HistoryRecord, ...]
    #: incomplete records at the end of the frame (0 or 1).
    skipped: int = 0
    skipped_bytes: int = 0

    def to_frame(self) -> Frame:
        """The record frame carrying these records (an incomplete trailing record is gone)."""
        key = HISTORY_KINDS[self.kind].record_key
        return Frame(Group.HISTORY, key, b"".join(bytes(r) for r in self.records))


def decode_records(frame: Frame) -> RecordBatch:
    """Split a record frame (``05 11/13/15/17/18/22/26``) into records."""
    expect(frame, Group.HISTORY, None, "history record frame")
    kind = HISTORY_KIND_BY_RECORD_KEY.get(frame.key)
    if kind is None:
        raise UnknownMessage(frame.group, frame.key, "not a history record frame")
    p = frame.payload
    record_type = RECORD_TYPES.get(frame.key)
    if record_type is None:
        return RecordBatch(kind, (RawRecord(frame.key, p),) if p else ())
    size = record_type.size()
    whole = len(p) - len(p) % size
    records = tuple(record_type.from_bytes(p[i : i + size]) for i in range(0, whole, size))
    rest = len(p) - whole
    return RecordBatch(kind, records, 1 if rest else 0, rest)


def records_frame(records: Sequence[HistoryRecord]) -> Frame:
    """One record frame carrying ``records`` back to back (all of one kind)."""
    if not records:
        raise ValueError("a record frame needs at least one record")
    keys = {record_key(r) for r in records}
    if len(keys) != 1:
        raise ValueError(f"records of several kinds in one frame: {sorted(keys)}")
    return Frame(Group.HISTORY, keys.pop(), b"".join(bytes(r) for r in records))

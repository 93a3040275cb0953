"""History sync (group 0x05): requests, header, records, block end, acknowledgement, delete.

Gateway side: ``HistoryReceiver`` is a sans-IO state machine: ``feed(frame)`` returns the
records that became safe (their block's CRC matched) and the reply frame to write (block
accepted / resend). Watch side: ``history_reply()`` / ``history_frames()`` build the header
and the blocks the virtual watch sends.

Sequence: app ``05 kk`` (empty) → watch ``05 kk`` header (record count u16, block count u32,
total bytes u32; ≤ 2 bytes = nothing stored) → per block: record frames (``05 rr``, records
back to back) then ``05 80`` (packet count u16, byte count u16, CRC-16 of the block's record
bytes u16) → app ``05 80 [00]`` accepted or ``[04]`` resend. Afterwards ``05 4x`` deletes.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Final, Self

from e86.commands import CommandReply, Message, expect
from e86.constants import (
    BLOCK_END_SIZE,
    CRC_INIT,
    HISTORY_EMPTY_MAX,
    HISTORY_HEADER_SIZE,
    HISTORY_KIND_BY_DELETE_KEY,
    HISTORY_KIND_BY_RECORD_KEY,
    HISTORY_KINDS,
    MAX_PAYLOAD,
    BlockStatus,
    Group,
    HistoryKey,
    HistoryKind,
)
from e86.errors import E86Error, PayloadError, UnknownMessage
from e86.frame import Frame
from e86.values import (
    check_u8,
    check_uint,
    nonzero,
    present,
    temperature_from_bytes,
)

log = logging.getLogger(__name__)


def _kind(value: int) -> HistoryKind:
    try:
        return HistoryKind(value)
    except ValueError:
        raise PayloadError(f"history kind {value!r} is unknown") from None


# ------------------------------------------------------------------ records


def _check_record(record: object) -> None:
    for name, bits in getattr(record, "_BITS", {}).items():
        check_uint(name, getattr(record, name), bits)
    reserved = getattr(record, "reserved", None)
    if reserved is not None and (not isinstance(reserved, bytes) or len(reserved) != 5):
        raise PayloadError(f"reserved must be 5 bytes, got {reserved!r}")


def _exact(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise PayloadError(f"{what} record is {size} bytes, got {len(data)}")


@dataclass(frozen=True, slots=True)
class HeartRateRecord:
    """``05 15`` record, 6 bytes: t u32, mode u8, heart rate u8. Raw bytes are kept;
    ``vitals()`` applies the "0 = no value" rule."""

    KEY: ClassVar[int] = HistoryKey.HEART_RATE_RECORDS
    SIZE: ClassVar[int] = 6
    _BITS: ClassVar[dict[str, int]] = {"t": 32, "mode": 8, "heart_rate": 8}

    t: int
    mode: int
    heart_rate: int

    def __post_init__(self) -> None:
        _check_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        _exact(data, cls.SIZE, "heart-rate")
        return cls(int.from_bytes(data[0:4], "little"), data[4], data[5])

    def __bytes__(self) -> bytes:
        return self.t.to_bytes(4, "little") + bytes((self.mode, self.heart_rate))

    def vitals(self) -> dict[str, float]:
        return present(heart_rate=nonzero(self.heart_rate))


@dataclass(frozen=True, slots=True)
class BloodPressureRecord:
    """``05 17`` record, 8 bytes: t u32, mode u8, systolic u8, diastolic u8, unknown u8."""

    KEY: ClassVar[int] = HistoryKey.BLOOD_PRESSURE_RECORDS
    SIZE: ClassVar[int] = 8
    _BITS: ClassVar[dict[str, int]] = {
        "t": 32,
        "mode": 8,
        "systolic": 8,
        "diastolic": 8,
        "unknown": 8,
    }

    t: int
    mode: int
    systolic: int
    diastolic: int
    unknown: int = 0

    def __post_init__(self) -> None:
        _check_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        _exact(data, cls.SIZE, "blood-pressure")
        return cls(int.from_bytes(data[0:4], "little"), data[4], data[5], data[6], data[7])

    def __bytes__(self) -> bytes:
        return self.t.to_bytes(4, "little") + bytes(
            (self.mode, self.systolic, self.diastolic, self.unknown)
        )

    def vitals(self) -> dict[str, float]:
        return present(systolic_bp=nonzero(self.systolic), diastolic_bp=nonzero(self.diastolic))


@dataclass(frozen=True, slots=True)
class AllRecord:
    """``05 18`` record, 20 bytes: t u32, steps u16, heart rate, systolic, diastolic, SpO2,
    respiratory rate, HRV, CVRR, temp integer, temp tenths (u8 each), 5 reserved bytes."""

    KEY: ClassVar[int] = HistoryKey.ALL_RECORDS
    SIZE: ClassVar[int] = 20
    _BITS: ClassVar[dict[str, int]] = {
        "t": 32,
        "steps": 16,
        "heart_rate": 8,
        "systolic": 8,
        "diastolic": 8,
        "spo2": 8,
        "respiratory_rate": 8,
        "hrv": 8,
        "cvrr": 8,
        "temp_integer": 8,
        "temp_tenths": 8,
    }

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

    def __post_init__(self) -> None:
        _check_record(self)

    @property
    def temperature(self) -> float | None:
        return temperature_from_bytes(self.temp_integer, self.temp_tenths)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        _exact(data, cls.SIZE, "all-values")
        hr, sys_, dia, spo2, rr, hrv, cvrr, t_int, t_tenths = data[6:15]
        return cls(
            t=int.from_bytes(data[0:4], "little"),
            steps=int.from_bytes(data[4:6], "little"),
            heart_rate=hr,
            systolic=sys_,
            diastolic=dia,
            spo2=spo2,
            respiratory_rate=rr,
            hrv=hrv,
            cvrr=cvrr,
            temp_integer=t_int,
            temp_tenths=t_tenths,
            reserved=data[15:20],
        )

    def __bytes__(self) -> bytes:
        return (
            self.t.to_bytes(4, "little")
            + self.steps.to_bytes(2, "little")
            + bytes(
                (
                    self.heart_rate,
                    self.systolic,
                    self.diastolic,
                    self.spo2,
                    self.respiratory_rate,
                    self.hrv,
                    self.cvrr,
                    self.temp_integer,
                    self.temp_tenths,
                )
            )
            + self.reserved
        )

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
class Spo2Record:
    """``05 22`` record, 6 bytes: t u32, mode u8, SpO2 u8."""

    KEY: ClassVar[int] = HistoryKey.SPO2_RECORDS
    SIZE: ClassVar[int] = 6
    _BITS: ClassVar[dict[str, int]] = {"t": 32, "mode": 8, "spo2": 8}

    t: int
    mode: int
    spo2: int

    def __post_init__(self) -> None:
        _check_record(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        _exact(data, cls.SIZE, "SpO2")
        return cls(int.from_bytes(data[0:4], "little"), data[4], data[5])

    def __bytes__(self) -> bytes:
        return self.t.to_bytes(4, "little") + bytes((self.mode, self.spo2))

    def vitals(self) -> dict[str, float]:
        return present(spo2=nonzero(self.spo2))


@dataclass(frozen=True, slots=True)
class TemperatureRecord:
    """``05 26`` record, 7 bytes: t u32, mode u8, temp integer u8, temp tenths u8."""

    KEY: ClassVar[int] = HistoryKey.TEMPERATURE_RECORDS
    SIZE: ClassVar[int] = 7
    _BITS: ClassVar[dict[str, int]] = {"t": 32, "mode": 8, "temp_integer": 8, "temp_tenths": 8}

    t: int
    mode: int
    temp_integer: int
    temp_tenths: int

    def __post_init__(self) -> None:
        _check_record(self)

    @property
    def temperature(self) -> float | None:
        return temperature_from_bytes(self.temp_integer, self.temp_tenths)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        _exact(data, cls.SIZE, "temperature")
        return cls(int.from_bytes(data[0:4], "little"), data[4], data[5], data[6])

    def __bytes__(self) -> bytes:
        return self.t.to_bytes(4, "little") + bytes(
            (self.mode, self.temp_integer, self.temp_tenths)
        )

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
    size = record_type.SIZE
    whole = len(p) - len(p) % size
    records = tuple(record_type.from_bytes(p[i : i + size]) for i in range(0, whole, size))
    rest = len(p) - whole
    return RecordBatch(kind, records, 1 if rest else 0, rest)


def records_frame(records: Sequence[HistoryRecord]) -> Frame:
    """One record frame carrying ``records`` back to back (all of one kind)."""
    if not records:
        raise ValueError("a record frame needs at least one record")
    keys = {r.key if isinstance(r, RawRecord) else r.KEY for r in records}
    if len(keys) != 1:
        raise ValueError(f"records of several kinds in one frame: {sorted(keys)}")
    return Frame(Group.HISTORY, keys.pop(), b"".join(bytes(r) for r in records))


# ------------------------------------------------------------------ control messages


@dataclass(frozen=True, slots=True)
class HistoryRequest(Message):
    """``05 kk`` with an empty payload: ask for the history of one kind."""

    kind: HistoryKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _kind(self.kind))

    def to_frame(self) -> Frame:
        return Frame(Group.HISTORY, HISTORY_KINDS[self.kind].request_key)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, None, "history request")
        return cls(_kind(frame.key))


@dataclass(frozen=True, slots=True)
class HistoryHeader(Message):
    """The watch's answer to a request: record count u16, block count u32, total bytes u32.

    All zero = nothing stored, sent as the 2-byte payload ``00 00`` (any payload of 2 bytes or
    less decodes as nothing stored)."""

    kind: HistoryKind
    record_count: int = 0
    block_count: int = 0
    total_bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _kind(self.kind))
        check_uint("record_count", self.record_count, 16)
        check_uint("block_count", self.block_count, 32)
        check_uint("total_bytes", self.total_bytes, 32)

    @property
    def empty(self) -> bool:
        return self.record_count == 0 and self.block_count == 0 and self.total_bytes == 0

    def to_frame(self) -> Frame:
        key = HISTORY_KINDS[self.kind].request_key
        if self.empty:
            return Frame(Group.HISTORY, key, bytes(2))
        payload = (
            self.record_count.to_bytes(2, "little")
            + self.block_count.to_bytes(4, "little")
            + self.total_bytes.to_bytes(4, "little")
        )
        return Frame(Group.HISTORY, key, payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, None, "history header")
        kind = _kind(frame.key)
        p = frame.payload
        if len(p) <= HISTORY_EMPTY_MAX:
            return cls(kind)
        if len(p) < HISTORY_HEADER_SIZE:
            raise PayloadError(
                f"history header needs {HISTORY_HEADER_SIZE} payload bytes (or ≤ {HISTORY_EMPTY_MAX}), got {len(p)}"
            )
        return cls(
            kind,
            int.from_bytes(p[0:2], "little"),
            int.from_bytes(p[2:6], "little"),
            int.from_bytes(p[6:10], "little"),
        )


def block_crc(payloads: Iterable[bytes]) -> int:
    """CRC-16/CCITT-FALSE over the concatenated record bytes of a block."""
    crc = CRC_INIT
    for p in payloads:
        crc = _crc_continue(p, crc)
    return crc


def _crc_continue(data: bytes, crc: int) -> int:
    # crc_hqx(data, value) continues a CRC from value: crc(a + b) == crc_hqx(b, crc(a)).
    return binascii.crc_hqx(data, crc)


@dataclass(frozen=True, slots=True)
class BlockEnd(Message):
    """``05 80`` from the watch: packet count u16, byte count u16, CRC-16 u16 of the block."""

    packet_count: int
    byte_count: int
    crc: int

    def __post_init__(self) -> None:
        check_uint("packet_count", self.packet_count, 16)
        check_uint("byte_count", self.byte_count, 16)
        check_uint("crc", self.crc, 16)

    @classmethod
    def for_frames(cls, frames: Sequence[Frame]) -> Self:
        """The block end the watch sends after these record frames."""
        return cls(
            len(frames),
            sum(len(f.payload) for f in frames),
            block_crc(f.payload for f in frames),
        )

    def to_frame(self) -> Frame:
        payload = (
            self.packet_count.to_bytes(2, "little")
            + self.byte_count.to_bytes(2, "little")
            + self.crc.to_bytes(2, "little")
        )
        return Frame(Group.HISTORY, HistoryKey.BLOCK_END, payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, HistoryKey.BLOCK_END, "block end")
        p = frame.payload
        if len(p) < BLOCK_END_SIZE:
            raise PayloadError(f"block end needs {BLOCK_END_SIZE} payload bytes, got {len(p)}")
        return cls(
            int.from_bytes(p[0:2], "little"),
            int.from_bytes(p[2:4], "little"),
            int.from_bytes(p[4:6], "little"),
        )


@dataclass(frozen=True, slots=True)
class BlockAck(Message):
    """``05 80 [status]`` from the app: 00 accepted, 04 resend."""

    status: BlockStatus

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "status", BlockStatus(self.status))
        except ValueError:
            raise PayloadError(f"block status {self.status!r} is unknown") from None

    @property
    def accepted(self) -> bool:
        return self.status == BlockStatus.ACCEPTED

    def to_frame(self) -> Frame:
        return Frame(Group.HISTORY, HistoryKey.BLOCK_END, bytes((self.status,)))

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, HistoryKey.BLOCK_END, "block acknowledgement")
        if len(frame.payload) != 1:
            raise PayloadError(f"block acknowledgement is 1 byte, got {len(frame.payload)}")
        return cls(frame.payload[0])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class HistoryDelete(Message):
    """``05 40``…``05 47`` (empty payload): delete the watch's records of one kind."""

    kind: HistoryKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _kind(self.kind))

    def to_frame(self) -> Frame:
        return Frame(Group.HISTORY, HISTORY_KINDS[self.kind].delete_key)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, None, "history delete")
        kind = HISTORY_KIND_BY_DELETE_KEY.get(frame.key)
        if kind is None:
            raise UnknownMessage(frame.group, frame.key, "not a history delete")
        return cls(kind)


_REQUEST_KEYS: Final = frozenset(int(k) for k in HistoryKind)

HistoryMessage = HistoryHeader | RecordBatch | BlockEnd | CommandReply


def decode_history(frame: Frame) -> HistoryMessage:
    """Decode a group 0x05 frame from the watch: header, records, block end, or the reply to a
    delete (a CommandReply). Raises PayloadError or UnknownMessage."""
    expect(frame, Group.HISTORY, None, "history frame")
    key = frame.key
    if key == HistoryKey.BLOCK_END:
        return BlockEnd.from_frame(frame)
    if key in HISTORY_KIND_BY_RECORD_KEY:
        return decode_records(frame)
    if key in HISTORY_KIND_BY_DELETE_KEY:
        return CommandReply.from_frame(frame)
    if key in _REQUEST_KEYS:
        return HistoryHeader.from_frame(frame)
    raise UnknownMessage(frame.group, frame.key, "unknown history message")


# ------------------------------------------------------------------ watch side


def history_frames(
    kind: HistoryKind,
    records: Sequence[HistoryRecord],
    *,
    records_per_frame: int = 10,
    records_per_block: int = 50,
) -> list[list[Frame]]:
    """The blocks the watch sends for ``records``: each a list of record frames ending with
    its ``05 80`` block-end frame."""
    info = HISTORY_KINDS[_kind(kind)]
    if records_per_frame < 1 or records_per_block < 1:
        raise ValueError("records_per_frame and records_per_block must be at least 1")
    for r in records:
        key = r.key if isinstance(r, RawRecord) else r.KEY
        if key != info.record_key:
            raise ValueError(f"a {type(r).__name__} is not a {info.kind.name} record")
    size = info.record_size or max((len(bytes(r)) for r in records), default=1)
    if records_per_frame * size > MAX_PAYLOAD:
        raise ValueError(f"{records_per_frame} records of {size} bytes exceed one frame")
    blocks: list[list[Frame]] = []
    for b in range(0, len(records), records_per_block):
        block = records[b : b + records_per_block]
        frames = [
            records_frame(block[i : i + records_per_frame])
            for i in range(0, len(block), records_per_frame)
        ]
        frames.append(BlockEnd.for_frames(frames).to_frame())
        blocks.append(frames)
    return blocks


def history_reply(
    kind: HistoryKind,
    records: Sequence[HistoryRecord],
    *,
    records_per_frame: int = 10,
    records_per_block: int = 50,
) -> tuple[HistoryHeader, list[list[Frame]]]:
    """Header and blocks the watch sends in answer to ``HistoryRequest(kind)``."""
    blocks = history_frames(
        kind, records, records_per_frame=records_per_frame, records_per_block=records_per_block
    )
    header = HistoryHeader(
        kind,
        record_count=len(records),
        block_count=len(blocks),
        total_bytes=sum(len(bytes(r)) for r in records),
    )
    return header, blocks


# ------------------------------------------------------------------ gateway side


@dataclass(slots=True)
class HistoryStats:
    """Counters of one HistoryReceiver; every dropped record or frame is counted."""

    #: records released (their block's CRC matched).
    records: int = 0
    #: blocks accepted.
    blocks: int = 0
    #: blocks whose CRC / byte count did not match (a resend was asked, or the sync failed).
    bad_blocks: int = 0
    #: records discarded with a bad block (the watch resends them).
    discarded_records: int = 0
    #: incomplete records at the end of a record frame, and their bytes.
    skipped_records: int = 0
    skipped_bytes: int = 0
    #: frames that did not belong here (other group, other kind, after the end).
    unexpected_frames: int = 0
    #: group 0x05 frames of this sync whose payload could not be decoded.
    bad_frames: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HistoryStep:
    """What one ``feed`` produced: records now safe, the frame to write (if any), errors."""

    records: tuple[HistoryRecord, ...] = ()
    reply: Frame | None = None
    header: HistoryHeader | None = None
    errors: tuple[E86Error, ...] = ()
    done: bool = False


@dataclass(slots=True)
class _Block:
    records: list[HistoryRecord] = field(default_factory=list)
    packets: int = 0
    nbytes: int = 0
    crc: int = CRC_INIT


class HistoryReceiver:
    """Sans-IO receiver of one history sync of one kind.

    ``request()`` gives the frame to send first; then ``feed(frame)`` every group 0x05 frame
    from the watch. Records are held until their block end arrives: if its CRC and byte count
    match they are released and ``05 80 [00]`` is the reply; otherwise they are discarded and
    ``05 80 [04]`` asks for the block again. After ``max_resends`` consecutive bad copies of a
    block the sync fails (``failed`` says why; no reply, the caller ends the sync). ``done``
    is set when the header says nothing is stored or every announced block was accepted.
    """

    def __init__(self, kind: HistoryKind, *, max_resends: int = 3) -> None:
        self.kind = _kind(kind)
        self.info = HISTORY_KINDS[self.kind]
        self.max_resends = max_resends
        self.header: HistoryHeader | None = None
        self.done = False
        self.failed: str | None = None
        self.stats = HistoryStats()
        self._block = _Block()
        self._resends = 0

    def request(self) -> Frame:
        return HistoryRequest(self.kind).to_frame()

    def delete(self) -> Frame:
        """The delete command to send once the records are safe."""
        return HistoryDelete(self.kind).to_frame()

    @property
    def expected(self) -> int | None:
        """Records announced by the header (None before it)."""
        return None if self.header is None else self.header.record_count

    @property
    def missing(self) -> int | None:
        """Announced records not (yet) received."""
        return (
            None if self.header is None else max(0, self.header.record_count - self.stats.records)
        )

    def feed(self, frame: Frame) -> HistoryStep:
        if self.done or frame.group != Group.HISTORY:
            self.stats.unexpected_frames += 1
            return HistoryStep(done=self.done)
        try:
            if frame.key == self.info.request_key:
                return self._on_header(HistoryHeader.from_frame(frame))
            if frame.key == self.info.record_key:
                return self._on_records(frame)
            if frame.key == HistoryKey.BLOCK_END:
                return self._on_block_end(BlockEnd.from_frame(frame))
        except E86Error as exc:
            self.stats.bad_frames += 1
            log.warning("history %s: bad frame: %s", self.kind.name, exc)
            return HistoryStep(errors=(exc,), done=self.done)
        self.stats.unexpected_frames += 1
        return HistoryStep()

    def _on_header(self, header: HistoryHeader) -> HistoryStep:
        self.header = header
        if header.empty or header.record_count == 0:
            self.done = True
        return HistoryStep(header=header, done=self.done)

    def _on_records(self, frame: Frame) -> HistoryStep:
        batch = decode_records(frame)
        block = self._block
        block.records.extend(batch.records)
        block.packets += 1
        block.nbytes += len(frame.payload)
        block.crc = _crc_continue(frame.payload, block.crc)
        self.stats.skipped_records += batch.skipped
        self.stats.skipped_bytes += batch.skipped_bytes
        return HistoryStep()

    def _on_block_end(self, end: BlockEnd) -> HistoryStep:
        block, self._block = self._block, _Block()
        if end.crc == block.crc and end.byte_count == block.nbytes:
            self._resends = 0
            self.stats.blocks += 1
            self.stats.records += len(block.records)
            needed = max(1, self.header.block_count) if self.header is not None else None
            if needed is not None and self.stats.blocks >= needed:
                self.done = True
            return HistoryStep(
                records=tuple(block.records),
                reply=BlockAck(BlockStatus.ACCEPTED).to_frame(),
                done=self.done,
            )
        self.stats.bad_blocks += 1
        self.stats.discarded_records += len(block.records)
        self._resends += 1
        reason = (
            f"block {self.stats.blocks + 1}: CRC 0x{block.crc:04x}/{block.nbytes} bytes received, "
            f"watch says 0x{end.crc:04x}/{end.byte_count} bytes"
        )
        if self._resends > self.max_resends:
            self.failed = f"{reason}; gave up after {self.max_resends} resends"
            self.done = True
            log.warning("history %s failed: %s", self.kind.name, self.failed)
            return HistoryStep(done=True)
        log.info("history %s: %s; asking for a resend", self.kind.name, reason)
        return HistoryStep(reply=BlockAck(BlockStatus.RESEND).to_frame())

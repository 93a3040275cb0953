"""History sync (group 0x05): requests, header, block end, acknowledgement, delete, and
``decode_history`` for what the watch sends.

Sequence: app ``05 kk`` (empty) → watch ``05 kk`` header (record count u16, block count u32,
total bytes u32; ≤ 2 bytes = nothing stored) → per block: record frames (``05 rr``, records
back to back; :mod:`e86.records`) then ``05 80`` (packet count u16, byte count u16, CRC-16 of
the block's record bytes u16) → app ``05 80 [00]`` accepted or ``[04]`` resend. Afterwards
``05 4x`` deletes. The gateway's side is :mod:`e86.history_receiver`, the watch's
:mod:`e86.history_builder`.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Self

from e86.commands import CommandReply, Message, expect
from e86.constants import (
    BLOCK_END_SIZE,
    CRC_INIT,
    HISTORY_EMPTY_MAX,
    HISTORY_HEADER_SIZE,
    HISTORY_KIND_BY_DELETE_KEY,
    HISTORY_KIND_BY_RECORD_KEY,
    HISTORY_KINDS,
    BlockStatus,
    Group,
    HistoryKey,
    HistoryKind,
)
from e86.errors import PayloadError, UnknownMessage
from e86.frame import Frame
from e86.records import RecordBatch, decode_records
from e86.values import check_uint


def history_kind(value: int) -> HistoryKind:
    """``value`` as a HistoryKind, or PayloadError naming it."""
    try:
        return HistoryKind(value)
    except ValueError:
        raise PayloadError(f"history kind {value!r} is unknown") from None


# ------------------------------------------------------------------ control messages


@dataclass(frozen=True, slots=True)
class HistoryRequest(Message):
    """``05 kk`` with an empty payload: ask for the history of one kind."""

    kind: HistoryKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", history_kind(self.kind))

    def to_frame(self) -> Frame:
        return Frame(Group.HISTORY, HISTORY_KINDS[self.kind].request_key)

    @classmethod
    def from_frame(cls, frame: Frame) -> Self:
        expect(frame, Group.HISTORY, None, "history request")
        return cls(history_kind(frame.key))


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
        object.__setattr__(self, "kind", history_kind(self.kind))
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
        kind = history_kind(frame.key)
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
        crc = crc_continue(p, crc)
    return crc


def crc_continue(data: bytes, crc: int) -> int:
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
        object.__setattr__(self, "kind", history_kind(self.kind))

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



"""The gateway side of a history sync: :class:`HistoryReceiver`, a sans-IO state machine.

``feed(frame)`` returns the records that became safe (their block's CRC matched) and the
reply frame to write (block accepted / resend); every dropped record or frame is counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from e86.constants import CRC_INIT, HISTORY_KINDS, BlockStatus, Group, HistoryKey, HistoryKind
from e86.errors import E86Error
from e86.frame import Frame
from e86.history import (
    BlockAck,
    BlockEnd,
    HistoryDelete,
    HistoryHeader,
    HistoryRequest,
    crc_continue,
    history_kind,
)
from e86.records import HistoryRecord, decode_records

log = logging.getLogger(__name__)


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
        self.kind = history_kind(kind)
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
        block.crc = crc_continue(frame.payload, block.crc)
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

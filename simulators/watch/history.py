"""The watch's bounded history memory and its block-by-block sync session."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.e86.constants import HISTORY_KINDS, HistoryKind
from gateway.e86.frame import crc16_ccitt_false

#: Kinds the virtual watch records on every measurement (sport/sleep are not simulated).
RECORDED_KINDS: tuple[HistoryKind, ...] = (
    HistoryKind.ALL,
    HistoryKind.HEART_RATE,
    HistoryKind.BLOOD_PRESSURE,
    HistoryKind.SPO2,
    HistoryKind.TEMPERATURE,
)
#: Records per block (vitalgate assumption: the SDK does not say; a block ends with 05 80).
RECORDS_PER_BLOCK = 40


class HistoryStore:
    """Per-kind FIFO of encoded records, bounded: the oldest record goes first when full."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"history capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._records: dict[HistoryKind, deque[bytes]] = {k: deque() for k in RECORDED_KINDS}
        #: records pushed out by newer ones, per kind.
        self.dropped: dict[HistoryKind, int] = dict.fromkeys(RECORDED_KINDS, 0)
        #: records handed to the last sync of each kind, deleted by the matching delete command.
        self._synced: dict[HistoryKind, int] = dict.fromkeys(RECORDED_KINDS, 0)

    def add(self, kind: HistoryKind, record: bytes) -> None:
        records = self._records[kind]
        if len(records) >= self.capacity:
            records.popleft()
            self.dropped[kind] += 1
            self._synced[kind] = max(0, self._synced[kind] - 1)
        records.append(record)

    def count(self, kind: HistoryKind) -> int:
        return len(self._records.get(kind, ()))

    def snapshot(self, kind: HistoryKind) -> list[bytes]:
        """The records a sync of ``kind`` sends now; remembered for the delete that follows."""
        records = list(self._records.get(kind, ()))
        if kind in self._synced:
            self._synced[kind] = len(records)
        return records

    def delete_synced(self, kind: HistoryKind) -> int:
        """Delete what the last sync of ``kind`` sent (records measured since are kept).

        A real watch deletes everything of that kind; deleting only what was sent keeps the
        simulator lossless when a measurement lands between the sync and the delete.
        """
        if kind not in self._records:
            return 0
        n = min(self._synced[kind], len(self._records[kind]))
        for _ in range(n):
            self._records[kind].popleft()
        self._synced[kind] = 0
        return n


@dataclass
class Block:
    """One history block: its record frames' payloads and the block-end fields."""

    payloads: list[bytes]
    byte_count: int
    crc: int


@dataclass
class SyncSession:
    """The watch side of one history sync: blocks sent in turn, resent on ``05 80 [04]``."""

    kind: HistoryKind
    blocks: list[Block]
    index: int = 0
    resends: int = field(default=0)

    @property
    def record_key(self) -> int:
        return HISTORY_KINDS[self.kind].record_key

    @property
    def done(self) -> bool:
        return self.index >= len(self.blocks)


def make_session(kind: HistoryKind, records: list[bytes], frame_payload_max: int) -> SyncSession:
    """Cut records into blocks of RECORDS_PER_BLOCK, each block into frames that fit
    ``frame_payload_max`` bytes of records (whole records only)."""
    size = HISTORY_KINDS[kind].record_size or 1
    per_frame = max(1, frame_payload_max // size)
    blocks: list[Block] = []
    for b in range(0, len(records), RECORDS_PER_BLOCK):
        block_records = records[b : b + RECORDS_PER_BLOCK]
        payloads = [
            b"".join(block_records[i : i + per_frame])
            for i in range(0, len(block_records), per_frame)
        ]
        data = b"".join(payloads)
        blocks.append(Block(payloads, len(data), crc16_ccitt_false(data)))
    return SyncSession(kind, blocks)

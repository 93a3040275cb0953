"""The watch's bounded history memory and its block-by-block sync session.

Header, record frames and block ends are built by ``e86.history_builder.history_reply`` (the
same code the gateway decodes with); this module only keeps the records and the watch's
progress through one sync.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Final

from e86.constants import HISTORY_KINDS, MAX_PAYLOAD, VITAL_HISTORY_KINDS, HistoryKind
from e86.frame import Frame
from e86.history import HistoryHeader
from e86.history_builder import history_reply
from e86.records import TimedRecord

#: Kinds the virtual watch records on every measurement: the vital ones (sport/sleep are not
#: simulated), in the order of e86's history table.
RECORDED_KINDS: Final = tuple(VITAL_HISTORY_KINDS.values())
#: Records per block (vitalgate assumption: the SDK does not say; a block ends with 05 80).
RECORDS_PER_BLOCK: Final = 40
#: Most records one sync announces: the header's record count is a u16. Records beyond it
#: stay on the watch for the next sync (the delete only removes what was sent).
SYNC_RECORDS_MAX: Final = 0xFFFF


class HistoryStore:
    """Per-kind FIFO of records, bounded: the oldest record goes first when full."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"history capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._records: dict[HistoryKind, deque[TimedRecord]] = {k: deque() for k in RECORDED_KINDS}
        #: records pushed out by newer ones, per kind.
        self.dropped: dict[HistoryKind, int] = dict.fromkeys(RECORDED_KINDS, 0)
        #: records handed to the last sync of each kind, deleted by the matching delete command.
        self._synced: dict[HistoryKind, int] = dict.fromkeys(RECORDED_KINDS, 0)

    def add(self, kind: HistoryKind, record: TimedRecord) -> None:
        records = self._records[kind]
        if len(records) >= self.capacity:
            records.popleft()
            self.dropped[kind] += 1
            self._synced[kind] = max(0, self._synced[kind] - 1)
        records.append(record)

    def count(self, kind: HistoryKind) -> int:
        return len(self._records.get(kind, ()))

    def snapshot(self, kind: HistoryKind, limit: int = SYNC_RECORDS_MAX) -> list[TimedRecord]:
        """The (oldest ``limit``) records a sync of ``kind`` sends now; remembered for the
        delete that follows."""
        records = list(islice(self._records.get(kind, ()), limit))
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
class SyncSession:
    """The watch side of one history sync: blocks sent in turn, resent on ``05 80 [04]``.

    Each block is its record frames followed by its ``05 80`` block-end frame."""

    kind: HistoryKind
    header: HistoryHeader
    blocks: list[list[Frame]]
    index: int = 0
    resends: int = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.blocks)


def make_session(
    kind: HistoryKind, records: list[TimedRecord], frame_payload_max: int
) -> SyncSession:
    """Cut records into blocks of RECORDS_PER_BLOCK, each block into frames that fit
    ``frame_payload_max`` bytes of records (whole records only, at least one per frame)."""
    size = HISTORY_KINDS[kind].record_size or 1
    per_frame = max(1, min(frame_payload_max, MAX_PAYLOAD) // size)
    header, blocks = history_reply(
        kind, records, records_per_frame=per_frame, records_per_block=RECORDS_PER_BLOCK
    )
    return SyncSession(kind, header, blocks)

"""The watch side of a history sync: the header and blocks a watch sends for its records
(the virtual watch, and tests of the receiver)."""

from __future__ import annotations

from collections.abc import Sequence

from e86.constants import HISTORY_KINDS, MAX_PAYLOAD, HistoryKind
from e86.frame import Frame
from e86.history import BlockEnd, HistoryHeader, history_kind
from e86.records import HistoryRecord, record_key, records_frame


def history_frames(
    kind: HistoryKind,
    records: Sequence[HistoryRecord],
    *,
    records_per_frame: int = 10,
    records_per_block: int = 50,
) -> list[list[Frame]]:
    """The blocks the watch sends for ``records``: each a list of record frames ending with
    its ``05 80`` block-end frame."""
    info = HISTORY_KINDS[history_kind(kind)]
    if records_per_frame < 1 or records_per_block < 1:
        raise ValueError("records_per_frame and records_per_block must be at least 1")
    for r in records:
        if record_key(r) != info.record_key:
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

"""A takeover's plan for one patient (issue 13): which stored readings rebuild its scorer,
which are scored now, and which wait for a predecessor in the feed's per-device order.

The new owner of a patient reads its recent readings from the shared store
(:func:`ingest.db.catchup.recent_readings`) and its last recorded EWS point. The readings up
to that point's event time were scored by the previous owner: they rebuild the scorer window
silently. The readings after it are scored now, in event-time order, as the previous owner
would have, but only as far as each device's ``seq`` runs without a hole: a reading whose
predecessor is not committed yet (stored by another instance, or still queued in a dead
member's broker session) would otherwise be scored before it, and its predecessor would then
arrive late for the scorer, which one instance receiving in broker order never sees. So the
rest is handed to the feed's :class:`ingest.feed.Reorder`, which releases it when the hole is
filled, or after its hold time, exactly as for readings that arrive by notification; and the
feed expects each device's next ``seq`` from where the store left off. A device the store
shows for the first time, from a seq above 0, is left to the feed's rule for a device never
seen (it waits briefly for seq 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class Stored(NamedTuple):
    """A stored reading as a takeover reads it (:func:`ingest.db.catchup.recent_readings`'s
    row): ``ts`` event time, ``received_at`` processing time (the storing instance's clock)."""

    user_code: str
    vital: str
    value: float
    ts: int
    received_at: int
    device_id: str
    seq: int | None  #: None: not a sequenced reading (ECG-derived): never held

    def item(self) -> tuple[str, str, float, int]:
        """What the scorer takes."""
        return self.user_code, self.vital, self.value, self.ts


@dataclass
class Plan:
    before: list[Stored] = field(default_factory=list)  #: scored already: rebuild silently
    after: list[Stored] = field(default_factory=list)  #: score now, in event-time order
    deferred: list[Stored] = field(default_factory=list)  #: after a hole: to the feed's order
    nexts: dict[str, int] = field(default_factory=dict)  #: device → the seq the feed expects


def plan(rows: Sequence[Stored], upto: int | None) -> Plan:
    """Split one patient's stored readings (event-time order) at its last point's event time
    ``upto`` (None: nothing recorded yet, every reading is to be scored), holding back what
    follows a hole in a device's ``seq``."""
    p = Plan()
    for r in rows:
        (p.before if upto is not None and r.ts <= upto else p.after).append(r)
    seen: dict[str, int] = {}  # device → highest seq scored already
    for r in p.before:
        if r.seq is not None and r.device_id:
            seen[r.device_id] = max(seen.get(r.device_id, r.seq), r.seq)
    fresh: dict[str, set[int]] = {}
    for r in p.after:
        if r.seq is not None and r.device_id:
            fresh.setdefault(r.device_id, set()).add(r.seq)
    gap: dict[str, int] = {}  # device → its first missing seq after what was scored
    # a device the store shows for the first time, from a seq above 0: its first readings
    # may still be on their way (stored by another instance a moment later; measured: a new
    # patient's seq 0 committed after seq 1, across a takeover, and its first point was
    # emitted for seq 1). The feed's rule for a device it has never seen decides, as for one
    # arriving by notification: it waits FIRST_HOLD_MS for seq 0 (ingest.feed.Reorder)
    unseen = {dev for dev, seqs in fresh.items() if dev not in seen and min(seqs) > 0}
    for dev, seqs in fresh.items():
        if dev in unseen:
            continue
        nxt = seen[dev] + 1 if dev in seen else min(seqs)
        while nxt in seqs:
            nxt += 1
        gap[dev] = nxt
    p.nexts = {**{d: s + 1 for d, s in seen.items()}, **gap}
    if gap or unseen:
        now: list[Stored] = []
        later: list[Stored] = []
        for r in p.after:
            dev, seq = r.device_id, r.seq
            held = seq is not None and (dev in unseen or (dev in gap and seq > gap[dev]))
            (later if held else now).append(r)
        p.after, p.deferred = now, later
    return p

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
feed expects each device's next ``seq`` from where the store left off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: a stored reading as a takeover reads it: (user_code, vital, value, ts, received_at,
#: device_id, seq); seq None: not a sequenced reading (never held).
Stored = tuple[str, str, float, int, int, str, int | None]


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
        (p.before if upto is not None and r[3] <= upto else p.after).append(r)
    seen: dict[str, int] = {}  # device → highest seq scored already
    for r in p.before:
        if r[6] is not None and r[5]:
            seen[r[5]] = max(seen.get(r[5], r[6]), r[6])
    fresh: dict[str, set[int]] = {}
    for r in p.after:
        if r[6] is not None and r[5]:
            fresh.setdefault(r[5], set()).add(r[6])
    gap: dict[str, int] = {}  # device → its first missing seq after what was scored
    for dev, seqs in fresh.items():
        nxt = seen[dev] + 1 if dev in seen else min(seqs)
        while nxt in seqs:
            nxt += 1
        gap[dev] = nxt
    p.nexts = {**{d: s + 1 for d, s in seen.items()}, **gap}
    if gap:
        now: list[Stored] = []
        later: list[Stored] = []
        for r in p.after:
            dev, seq = r[5], r[6]
            (later if seq is not None and dev in gap and seq > gap[dev] else now).append(r)
        p.after, p.deferred = now, later
    return p

"""Continuous NEWS2 for many patients at once: latest fresh vitals in numpy arrays.

The ingestion service feeds batches of readings with :meth:`StreamScorer.update` and publishes
what :meth:`StreamScorer.rescore` returns: the patients whose inputs changed, plus those whose
data stopped arriving since the last call.

Two clocks, and which rule uses which (news2.md "Streams, not spot checks"):

* **Event time** is a reading's own ``ts``: when it was measured. Each patient has an *event
  clock*, the time of its newest reading (:meth:`StreamScorer.event_time`). Freshness and the
  median window are measured on it: a value counts while it is at most ``freshness_ms`` older
  than the patient's newest reading. So a recorded stay replayed at any speed, or a history
  sync arriving hours late, is scored as the patient was at that time. A reading that arrives
  already older than the patient's newest by more than ``freshness_ms`` is stored by the
  service as history but can never become a current value here (counted as ``old``).
* **Processing time** is the injected ``clock``: when the service saw a reading. It has one
  rule: a patient whose event clock has not advanced for ``arrival_timeout_ms`` of processing
  time (default ``freshness_ms``) is *stale* (score invalid, reason ``no fresh vital signs``),
  so a feed that stops — or a device whose clock is wrong — is never hidden behind a score
  that looks fresh on its own timeline. :meth:`patient_clock` combines both for rate limits:
  the event clock while data arrives, running on processing time once it pauses.

Future readings are the consumer's business (it rejects ``ts`` further ahead than its skew
with reason ``future``); this module trusts the ``ts`` it is given.

Storage is one window of the last ``median_k`` readings (by reading time, not arrival) per
patient and vital: ``values[patient, vital, slot]`` and ``ts[patient, vital, slot]``. A reading
takes the slot of the oldest reading in the window if it is newer than that one, or the slot of
a reading with the same time (a QoS 1 duplicate); so late history fills the window in time order
and never displaces a newer value. The value scored is the median of the window's fresh readings
(``median_k=1``: simply the latest), which suppresses single-sample artefacts.

Results stay arrays: :meth:`StreamScorer.rescore` returns a :class:`Scores` (a struct of arrays
that is also a sequence of the one score type, :class:`ews.score.Score`); a ``Score`` object
is built only for a row a consumer asks for (the EWS engine asks only for the points it emits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from functools import cached_property
from itertools import repeat
from typing import Any, Final, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ews.news2 import (
    ASSUMED,
    NO_VITALS,
    SCALE_ASSUMED,
    ScoreResult,
    _compile,
    consciousness_codes,
    score_arrays,
)
from ews.score import Score
from ews.tables import NEWS2, ScoringTable

log = logging.getLogger(__name__)

NO_TS: Final = np.iinfo(np.int64).min  #: an empty window slot / a patient without readings
NEVER: Final = np.iinfo(np.int64).max  #: no deadline
NO_FRESH: Final = "no fresh vital signs"


def epoch_ms() -> int:
    """The default clock: Unix epoch milliseconds now."""
    return time.time_ns() // 1_000_000


class Scores(Sequence[Score]):
    """Scores of ``len(self)`` patients as arrays (row ``r`` is patient ``idx[r]``).

    The arrays (``idx``, ``points``, ``band``, ``valid``, ``produce_at``) cost nothing more
    to read; ``self[r]``, iteration and :meth:`materialise` build :class:`Score` objects,
    only for the rows asked for. Compares equal to any sequence of the same scores
    (``scorer.rescore() == []``)."""

    __slots__ = ("__dict__", "_names", "_result", "_values", "_vitals", "idx", "produce_at")

    def __init__(
        self,
        names: Sequence[str],
        vitals: Sequence[str],
        index: NDArray[np.intp],
        result: ScoreResult,
        values: NDArray[np.float64],
        produce_at: NDArray[np.int64],
    ) -> None:
        self._names = names
        self._vitals = vitals
        self.idx = index  #: the scorer's patient index of each row
        self._result = result
        self._values = values  #: (rows, vitals) as scored, NaN where missing or stale
        self.produce_at = produce_at  #: event time of the newest fresh vital, NO_TS if none

    @property
    def points(self) -> NDArray[np.int8]:
        """Total points, -1 where not valid."""
        return self._result.points

    @property
    def band(self) -> NDArray[np.int8]:
        """Index into ``ews.news2.BAND_NAMES`` / RESULT_WORDS / RISK_WORDS, -1 where not valid."""
        return self._result.band

    @property
    def valid(self) -> NDArray[np.bool_]:
        return self._result.valid

    def patient(self, r: int) -> str:
        return self._names[int(self.idx[r])]

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @overload
    def __getitem__(self, r: int) -> Score: ...
    @overload
    def __getitem__(self, r: slice) -> list[Score]: ...
    def __getitem__(self, r: int | slice) -> Score | list[Score]:
        if isinstance(r, slice):
            return self._all[r]
        n = len(self)
        if not -n <= r < n:
            raise IndexError(f"row {r} of {n} scores")
        if "_all" in self.__dict__:
            return self._all[r]
        return self.materialise(np.array([r % n], np.intp))[0]

    def __iter__(self) -> Iterator[Score]:
        return iter(self._all)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Scores({len(self)} patients)"

    @cached_property
    def _all(self) -> list[Score]:
        return self.materialise(np.arange(len(self), dtype=np.intp))

    def materialise(self, rows: ArrayLike) -> list[Score]:
        """Score objects of ``rows`` (positions in this batch), in that order."""
        rows = np.asarray(rows, np.intp)
        if rows.size == 0:
            return []
        res = self._result.take(rows)
        val = self._values[rows]
        points = res.points.tolist()
        results = res.result.tolist()
        risks = res.risk.tolist()
        partial = res.partial.tolist()
        valid = res.valid.tolist()
        causes, missing, reasons = res.cause, res.missing, res.reason
        sub_names = list(res.subscores)
        sub_lists = [res.subscores[s].tolist() for s in sub_names]
        val_lists = val.T.tolist()
        newest_l = self.produce_at[rows].tolist()
        complete: list[bool] = np.all(~np.isnan(val), axis=1).tolist()
        names = self._names
        vitals = self._vitals
        n_sub = len(sub_names)
        out: list[Score] = []
        append = out.append
        for r, (i, sub_row, val_row) in enumerate(
            zip(
                self.idx[rows].tolist(),
                zip(*sub_lists, strict=True),
                zip(*val_lists, strict=True),
                strict=True,
            )
        ):
            # fast path: every parameter scored / every vital present (dict(zip) runs in C)
            if min(sub_row) >= 0:
                components = dict(zip(sub_names, sub_row, strict=True))
            else:
                components = {sub_names[j]: sub_row[j] for j in range(n_sub) if sub_row[j] >= 0}
            if complete[r]:
                values = dict(zip(vitals, val_row, strict=True))
            else:
                values = {v: c for v, c in zip(vitals, val_row, strict=True) if c == c}
            reason = reasons[r]
            append(
                _make(
                    names[i],
                    points[r],
                    results[r],
                    risks[r],
                    causes[r],
                    partial[r],
                    missing[r],
                    components,
                    newest_l[r] if newest_l[r] != NO_TS else None,
                    valid[r],
                    NO_FRESH if reason == NO_VITALS else reason,
                    values,
                )
            )
        return out


class StreamScorer:
    """Latest vitals and context of a growing set of patients; vectorised rescoring."""

    def __init__(
        self,
        table: ScoringTable = NEWS2,
        *,
        freshness_ms: int = 15 * 60_000,
        median_k: int = 1,
        clock: Callable[[], int] = epoch_ms,
        arrival_timeout_ms: int | None = None,
    ) -> None:
        if freshness_ms <= 0:
            raise ValueError(f"freshness_ms must be > 0, got {freshness_ms}")
        if not 1 <= median_k <= 64:
            raise ValueError(f"median_k must be 1..64, got {median_k}")
        if arrival_timeout_ms is not None and arrival_timeout_ms <= 0:
            raise ValueError(f"arrival_timeout_ms must be > 0, got {arrival_timeout_ms}")
        self.table = table
        self.freshness_ms = int(freshness_ms)  #: event time: how old a value may be
        #: processing time: how long a patient's event clock may stand still before it is stale
        self.arrival_timeout_ms = int(arrival_timeout_ms or freshness_ms)
        self.median_k = int(median_k)
        self._clock = clock
        self._vitals = table.vitals
        self._vindex = {name: i for i, name in enumerate(self._vitals)}
        comp = _compile(table)
        # plausibility edges (with the table's tolerance), per vital, for rejecting readings
        self._low_edge = np.array([cb.edges[0] for cb in comp.bands])
        self._high_edge = np.array([cb.edges[-2] for cb in comp.bands])
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._cap = 0
        n_v = len(self._vitals)
        self._wv = np.empty((0, n_v, self.median_k), np.float64)
        self._wt = np.empty((0, n_v, self.median_k), np.int64)
        self._cons = np.empty(0, np.int8)
        self._oxy = np.empty(0, np.int8)
        self._scale = np.empty(0, np.int8)
        self._changed = np.empty(0, np.bool_)
        self._event = np.empty(0, np.int64)  # newest reading time (event clock), NO_TS if none
        self._arrived = np.empty(0, np.int64)  # processing time the event clock last advanced
        self._deadline = np.empty(0, np.int64)  # processing time at which to rescore it stale
        #: every reading accounted for: accepted, late (older than the stored latest; kept in
        #: the window), duplicate, superseded (beyond the window), rejected (impossible or NaN),
        #: ignored (not a vital of the table, e.g. diastolic_bp). ``old`` counts in addition
        #: (each is also in one of those) the plausible readings that arrived older than their
        #: patient's newest reading by more than ``freshness_ms``: the service stores them as
        #: history; here they can never be a current value.
        self.counters: dict[str, int] = dict.fromkeys(
            ("accepted", "late", "duplicate", "superseded", "rejected", "ignored", "old"), 0
        )
        self._grow(64)

    # -- patients ------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap)
        extra = cap - self._cap
        n_v, k = len(self._vitals), self.median_k
        self._wv = np.concatenate([self._wv, np.full((extra, n_v, k), np.nan)])
        self._wt = np.concatenate([self._wt, np.full((extra, n_v, k), NO_TS, np.int64)])
        self._cons = np.concatenate([self._cons, np.full(extra, ASSUMED, np.int8)])
        self._oxy = np.concatenate([self._oxy, np.full(extra, ASSUMED, np.int8)])
        self._scale = np.concatenate([self._scale, np.full(extra, SCALE_ASSUMED, np.int8)])
        self._changed = np.concatenate([self._changed, np.zeros(extra, np.bool_)])
        self._event = np.concatenate([self._event, np.full(extra, NO_TS, np.int64)])
        self._arrived = np.concatenate([self._arrived, np.full(extra, NO_TS, np.int64)])
        self._deadline = np.concatenate([self._deadline, np.full(extra, NEVER, np.int64)])
        self._cap = cap

    def _add(self, patient: str) -> int:
        if not isinstance(patient, str) or not patient:
            raise ValueError(f"patient id must be a non-empty str, got {patient!r}")
        i = len(self._names)
        self._grow(i + 1)
        self._ids[patient] = i
        self._names.append(patient)
        return i

    def indices(self, patients: Sequence[str]) -> NDArray[np.intp]:
        """The patients' indices (the row of each in every array), adding unknown ones."""
        ids = self._ids
        try:
            return np.fromiter(map(ids.__getitem__, patients), np.intp, len(patients))
        except KeyError:
            return np.fromiter(
                (ids[p] if p in ids else self._add(p) for p in patients), np.intp, len(patients)
            )

    def index(self, patient: str) -> int | None:
        """The patient's index, None if unknown."""
        return self._ids.get(patient)

    @property
    def names(self) -> Sequence[str]:
        """Patient ids by index (a live view: do not modify)."""
        return self._names

    def patients(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def event_time(self, idx: ArrayLike) -> NDArray[np.int64]:
        """The patients' event clocks: the time of each one's newest reading (NO_TS if none)."""
        return self._event[np.asarray(idx, np.intp)]

    def patient_clock(self, idx: ArrayLike, now: int | NDArray[np.int64]) -> NDArray[np.int64]:
        """Per patient, its event clock advanced by the processing time elapsed since that clock
        last moved: equal to the event clock when a reading has just arrived (so a replay's
        rules follow its own timeline), running on with processing time while the data pauses
        (so a rate limit or heartbeat still comes due). NO_TS for a patient without readings.
        ``now``: one processing time, or one per patient of ``idx``."""
        i = np.asarray(idx, np.intp)
        event, arrived = self._event[i], self._arrived[i]
        known = event != NO_TS
        pause = np.maximum(0, now - np.where(known, arrived, now))
        return np.where(known, event + pause, NO_TS)

    # -- input -----------------------------------------------------------------------------------
    def update(
        self,
        patients: Sequence[str],
        vitals: Sequence[str],
        values: ArrayLike,
        ts_ms: ArrayLike,
        *,
        arrived_ms: ArrayLike | None = None,
    ) -> None:
        """Add one batch of readings (reading i: ``patients[i]``'s ``vitals[i]`` at ``ts_ms[i]``,
        event time). ``arrived_ms`` is when they arrived (processing time, one value or one per
        reading; default the clock now); a warm start passes when they were first seen."""
        x = np.asarray(values, np.float64).ravel()
        t = np.asarray(ts_ms, np.int64).ravel()
        if not (len(patients) == len(vitals) == x.size == t.size):
            raise ValueError(
                f"update needs equal lengths: {len(patients)} patients, {len(vitals)} vitals, "
                f"{x.size} values, {t.size} timestamps"
            )
        if x.size == 0:
            return
        a: NDArray[np.int64] | None = None
        if arrived_ms is not None and np.ndim(arrived_ms):
            a = np.asarray(arrived_ms, np.int64).ravel()
            if a.size != x.size:
                raise ValueError(f"update needs one arrival time per reading, got {a.size}")
        vindex = self._vindex
        vid = np.fromiter(map(vindex.get, vitals, repeat(-1)), np.intp, x.size)
        pid = self.indices(patients)

        known = vid >= 0
        vk = np.where(known, vid, 0)
        ok = known & (x > self._low_edge[vk]) & (x <= self._high_edge[vk])  # NaN fails
        if not ok.all():
            ignored = int(x.size - np.count_nonzero(known))
            rejected = int(np.count_nonzero(known & ~ok))
            self.counters["ignored"] += ignored
            if rejected:
                self.counters["rejected"] += rejected
                log.debug("rejected %d impossible or non-numeric readings", rejected)
            pid, vid, x, t = pid[ok], vid[ok], x[ok], t[ok]
            a = a[ok] if a is not None else None
            if x.size == 0:
                return

        # order by (patient, vital), then time; drop repeats of the same (patient, vital, time)
        key = pid * len(self._vitals) + vid
        if t.size and t.min() == t.max():  # one reading time (a live batch): key order suffices
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((t, key))
        key, pid, vid, x, t = key[order], pid[order], vid[order], x[order], t[order]
        a = a[order] if a is not None else None
        same = (key[1:] == key[:-1]) & (t[1:] == t[:-1])
        if same.any():
            self.counters["duplicate"] += int(np.count_nonzero(same))
            keep = np.append(~same, True)  # the last of each run of repeats wins
            key, pid, vid, x, t = key[keep], pid[keep], vid[keep], x[keep], t[keep]
            a = a[keep] if a is not None else None
        last = _boundaries(key)
        ends = np.flatnonzero(last)

        # the event clocks: each patient's newest reading (the batch is sorted by patient, so
        # the newest of each patient is a maximum over its groups' ends)
        pe, te = pid[ends], t[ends]
        p_first = np.flatnonzero(_starts(pe))
        newest = np.maximum.reduceat(te, p_first)
        pu = pe[p_first]
        advanced = newest > self._event[pu]
        if advanced.any():
            pa = pu[advanced]
            arrived: NDArray[np.int64] | int
            if a is not None:
                arrived = np.maximum.reduceat(a[ends], p_first)[advanced]
            elif arrived_ms is not None:
                arrived = int(np.asarray(arrived_ms))
            else:
                arrived = int(self._clock())
            self._event[pa] = newest[advanced]
            self._arrived[pa] = np.maximum(self._arrived[pa], arrived)
            self._deadline[pa] = self._arrived[pa] + self.arrival_timeout_ms
        old = t < self._event[pid] - self.freshness_ms
        if old.any():
            self.counters["old"] += int(np.count_nonzero(old))

        if ends.size == key.size:  # one reading per (patient, vital): the common case
            self._insert(pid, vid, x, t)
            return
        # rank within each (patient, vital) group, 0 = newest of this batch
        group = np.cumsum(np.append(True, last[:-1])) - 1
        rank = ends[group] - np.arange(key.size)
        k = self.median_k
        self.counters["superseded"] += int(np.count_nonzero(rank >= k))
        for r in range(min(k, int(rank.max()) + 1)):
            sel = rank == r
            self._insert(pid[sel], vid[sel], x[sel], t[sel])

    def _insert(
        self,
        pid: NDArray[np.intp],
        vid: NDArray[np.intp],
        x: NDArray[np.float64],
        t: NDArray[np.int64],
    ) -> None:
        """Insert readings with distinct (patient, vital) into their windows."""
        if self.median_k == 1:
            wt1 = self._wt[pid, vid, 0]
            dup = wt1 == t
            take = dup | (t > wt1)
            n_dup = int(np.count_nonzero(dup))
            n_take = int(np.count_nonzero(take))
            self.counters["duplicate"] += n_dup
            self.counters["accepted"] += n_take - n_dup
            self.counters["superseded"] += t.size - n_take
            self.counters["late"] += t.size - n_take  # older than the one stored value
            if n_take == t.size:
                self._wt[pid, vid, 0] = t
                self._wv[pid, vid, 0] = x
                self._changed[pid] = True
            else:
                p, v = pid[take], vid[take]
                self._wt[p, v, 0] = t[take]
                self._wv[p, v, 0] = x[take]
                self._changed[p] = True
            return
        wt = self._wt[pid, vid]  # (m, k)
        dup = wt == t[:, None]
        has_dup = dup.any(axis=1)
        slot = np.where(has_dup, dup.argmax(axis=1), wt.argmin(axis=1))
        rows = np.arange(pid.size)
        newest = wt.max(axis=1)
        take = has_dup | (t > wt[rows, slot])
        self.counters["duplicate"] += int(np.count_nonzero(has_dup))
        self.counters["accepted"] += int(np.count_nonzero(take & ~has_dup))
        self.counters["superseded"] += int(np.count_nonzero(~take))
        self.counters["late"] += int(np.count_nonzero(~has_dup & (t < newest)))
        p, v, s = pid[take], vid[take], slot[take]
        self._wt[p, v, s] = t[take]
        self._wv[p, v, s] = x[take]
        self._changed[p] = True

    def set_context(
        self,
        patient: str,
        *,
        consciousness: str = "A",
        on_oxygen: bool = False,
        spo2_scale: int = 1,
    ) -> None:
        """Clinician-supplied context; explicitly given context is no longer 'assumed'."""
        code = int(consciousness_codes(consciousness, self.table))
        if code < 0:
            raise ValueError(
                f"consciousness={consciousness!r} is not one of {', '.join(self.table.levels)}"
            )
        allowed = (1, 2) if self.table.has_scale2 else (1,)
        if spo2_scale not in allowed:
            raise ValueError(
                f"spo2_scale={spo2_scale!r} must be one of {allowed} for {self.table.name}"
            )
        i = self._ids[patient] if patient in self._ids else self._add(patient)
        self._cons[i] = code
        self._oxy[i] = 1 if on_oxygen else 0
        self._scale[i] = spo2_scale
        self._changed[i] = True

    # -- output ------------------------------------------------------------------------------------
    def rescore(self) -> Scores:
        """Scores of the patients changed since the last call and of those that went stale
        since then (no new reading for ``arrival_timeout_ms`` by the injected clock)."""
        now = int(self._clock())
        n = len(self._names)
        due = np.flatnonzero(self._changed[:n] | (self._deadline[:n] < now))
        scores = self._score(due, now)
        if due.size:
            # once stale, a patient is not rescored again until new data (or context) arrives
            deadline = self._deadline[due]
            self._deadline[due] = np.where(deadline < now, NEVER, deadline)
            self._changed[due] = False
        return scores

    def score(self, idx: ArrayLike) -> Scores:
        """Scores of the patients at ``idx`` now, without consuming their changes."""
        return self._score(np.asarray(idx, np.intp), int(self._clock()))

    def current(self, patient: str) -> Score | None:
        """The patient's score now (None for an unknown patient); does not consume changes."""
        i = self._ids.get(patient)
        if i is None:
            return None
        return self._score(np.array([i], np.intp), int(self._clock()))[0]

    def _score(self, idx: NDArray[np.intp], now: int) -> Scores:
        wv, wt = self._wv[idx], self._wt[idx]  # (m, V, k)
        event = self._event[idx]
        # event time: fresh = at most freshness_ms older than the patient's newest reading;
        # processing time: nothing is fresh once the data stopped arriving
        alive = (event != NO_TS) & (self._arrived[idx] >= now - self.arrival_timeout_ms)
        since = np.where(alive, event - self.freshness_ms, NEVER)
        if self.median_k == 1:
            t0 = wt[..., 0]
            fresh0 = (t0 >= since[:, None]) & (t0 != NO_TS)
            val = np.where(fresh0, wv[..., 0], np.nan)
            newest = np.where(fresh0, t0, NO_TS).max(axis=1, initial=NO_TS)
        else:
            fresh = (wt >= since[:, None, None]) & (wt != NO_TS)
            val = _fresh_median(wv, fresh)
            newest = np.where(fresh, wt, NO_TS).max(axis=(1, 2), initial=NO_TS)
        cols = val.T.copy()  # (V, m): each vital's column contiguous
        columns = {name: cols[j] for j, name in enumerate(self._vitals)}
        res = score_arrays(
            columns, self._cons[idx], self._oxy[idx], self._scale[idx], self.table, n=idx.size
        )
        return Scores(self._names, self._vitals, idx, res, val, newest)


_FIELDS: Final = tuple(f.name for f in fields(Score))


def _boundaries(key: NDArray[np.intp]) -> NDArray[np.bool_]:
    """True at the last element of each run of equal keys (``key`` sorted)."""
    out = np.empty(key.size, np.bool_)
    np.not_equal(key[1:], key[:-1], out=out[:-1])
    out[-1] = True
    return out


def _starts(key: NDArray[np.intp]) -> NDArray[np.bool_]:
    """True at the first element of each run of equal keys (``key`` sorted)."""
    out = np.empty(key.size, np.bool_)
    np.not_equal(key[1:], key[:-1], out=out[1:])
    out[0] = True
    return out


def _make(*args: Any) -> Score:
    """Score(*args) without the frozen dataclass __init__, which sets each of the 12
    fields through object.__setattr__ (the slowest part of materialising many scores)."""
    obj = object.__new__(Score)
    obj.__dict__.update(zip(_FIELDS, args, strict=True))
    return obj


def _fresh_median(wv: NDArray[np.float64], fresh: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Median over the last axis of the fresh entries (NaN where none), without warnings."""
    v = np.where(fresh, wv, np.nan)
    v.sort(axis=-1)  # NaN sort last
    count = fresh.sum(axis=-1)
    lo = np.maximum((count - 1) // 2, 0)[..., None]
    hi = np.maximum(count // 2, 0).clip(max=v.shape[-1] - 1)[..., None]
    med: NDArray[np.float64] = (
        np.take_along_axis(v, lo, axis=-1)[..., 0] + np.take_along_axis(v, hi, axis=-1)[..., 0]
    ) / 2
    return np.where(count > 0, med, np.nan)

"""Continuous NEWS2 for many patients at once: latest fresh vitals in numpy arrays.

The ingestion service feeds batches of readings with :meth:`StreamScorer.update` and publishes
what :meth:`StreamScorer.rescore` returns: the patients whose inputs changed, plus those whose
values went stale since the last call (a value older than ``freshness_ms`` by the injected clock
stops counting, news2.md "Streams, not spot checks").

Storage is one window of the last ``median_k`` readings (by reading time, not arrival) per
patient and vital: ``values[patient, vital, slot]`` and ``ts[patient, vital, slot]``. A reading
takes the slot of the oldest reading in the window if it is newer than that one, or the slot of
a reading with the same time (a QoS 1 duplicate); so late history fills the window in time order
and never displaces a newer value. The value scored is the median of the window's fresh readings
(``median_k=1``: simply the latest), which suppresses single-sample artefacts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ews.news2 import (
    ASSUMED,
    NO_VITALS,
    SCALE_ASSUMED,
    _compile,
    consciousness_codes,
    score_arrays,
)
from ews.tables import NEWS2, ScoringTable

log = logging.getLogger(__name__)

NO_TS: Final = np.iinfo(np.int64).min  #: an empty window slot
NEVER: Final = np.iinfo(np.int64).max  #: no counted value that could go stale
NO_FRESH: Final = "no fresh vital signs"


def epoch_ms() -> int:
    """The default clock: Unix epoch milliseconds now."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class PatientScore:
    """One patient's current score (a Cexup EWS record plus what it was computed from)."""

    patient: str
    point: int  #: -1 when not valid
    result: str  #: normal / rendah / sedang / tinggi ('' when not valid)
    risk: str  #: low / low-medium / medium / high ('' when not valid)
    cause: tuple[str, ...]
    partial: bool
    missing: tuple[str, ...]  #: missing or stale vitals and assumed context
    components: dict[str, int]  #: points of each scored parameter
    produce_at: int | None  #: epoch ms of the newest vital used
    valid: bool
    reason: str
    values: dict[str, float]  #: the vital values used (medians when median_k > 1)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (``produce_at`` stays a number)."""
        return {
            "patient": self.patient,
            "point": self.point,
            "result": self.result,
            "risk": self.risk,
            "cause": list(self.cause),
            "partial": self.partial,
            "missing": list(self.missing),
            "components": dict(self.components),
            "produce_at": self.produce_at,
            "valid": self.valid,
            "reason": self.reason,
            "values": dict(self.values),
        }


class StreamScorer:
    """Latest vitals and context of a growing set of patients; vectorised rescoring."""

    def __init__(
        self,
        table: ScoringTable = NEWS2,
        *,
        freshness_ms: int = 15 * 60_000,
        median_k: int = 1,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        if freshness_ms <= 0:
            raise ValueError(f"freshness_ms must be > 0, got {freshness_ms}")
        if not 1 <= median_k <= 64:
            raise ValueError(f"median_k must be 1..64, got {median_k}")
        self.table = table
        self.freshness_ms = int(freshness_ms)
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
        self._expiry = np.empty(0, np.int64)
        #: every reading accounted for: accepted, late (older than the stored latest; kept in
        #: the window), duplicate, superseded (beyond the window), rejected (impossible or NaN),
        #: ignored (not a vital of the table, e.g. diastolic_bp).
        self.counters: dict[str, int] = dict.fromkeys(
            ("accepted", "late", "duplicate", "superseded", "rejected", "ignored"), 0
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
        self._expiry = np.concatenate([self._expiry, np.full(extra, NEVER, np.int64)])
        self._cap = cap

    def _add(self, patient: str) -> int:
        if not isinstance(patient, str) or not patient:
            raise ValueError(f"patient id must be a non-empty str, got {patient!r}")
        i = len(self._names)
        self._grow(i + 1)
        self._ids[patient] = i
        self._names.append(patient)
        return i

    def _indices(self, patients: Sequence[str]) -> NDArray[np.intp]:
        ids = self._ids
        try:
            return np.fromiter(map(ids.__getitem__, patients), np.intp, len(patients))
        except KeyError:
            return np.fromiter(
                (ids[p] if p in ids else self._add(p) for p in patients), np.intp, len(patients)
            )

    def patients(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    # -- input -----------------------------------------------------------------------------------
    def update(
        self, patients: Sequence[str], vitals: Sequence[str], values: ArrayLike, ts_ms: ArrayLike
    ) -> None:
        """Add one batch of readings (reading i: ``patients[i]``'s ``vitals[i]`` at ``ts_ms[i]``)."""
        x = np.asarray(values, np.float64).ravel()
        t = np.asarray(ts_ms, np.int64).ravel()
        if not (len(patients) == len(vitals) == x.size == t.size):
            raise ValueError(
                f"update needs equal lengths: {len(patients)} patients, {len(vitals)} vitals, "
                f"{x.size} values, {t.size} timestamps"
            )
        if x.size == 0:
            return
        vindex = self._vindex
        vid = np.fromiter((vindex.get(v, -1) for v in vitals), np.intp, x.size)
        pid = self._indices(patients)

        known = vid >= 0
        self.counters["ignored"] += int(x.size - np.count_nonzero(known))
        vk = np.where(known, vid, 0)
        ok = known & (x > self._low_edge[vk]) & (x <= self._high_edge[vk])  # NaN fails
        rejected = int(np.count_nonzero(known & ~ok))
        if rejected:
            self.counters["rejected"] += rejected
            log.debug("rejected %d impossible or non-numeric readings", rejected)
        if not ok.all():
            pid, vid, x, t = pid[ok], vid[ok], x[ok], t[ok]
        if x.size == 0:
            return

        # order by (patient, vital), then time; drop repeats of the same (patient, vital, time)
        key = pid * len(self._vitals) + vid
        order = np.lexsort((t, key))
        key, pid, vid, x, t = key[order], pid[order], vid[order], x[order], t[order]
        same = (key[1:] == key[:-1]) & (t[1:] == t[:-1])
        if same.any():
            self.counters["duplicate"] += int(np.count_nonzero(same))
            keep = np.append(~same, True)  # the last of each run of repeats wins
            key, pid, vid, x, t = key[keep], pid[keep], vid[keep], x[keep], t[keep]
        # rank within each (patient, vital) group, 0 = newest of this batch
        last = np.append(key[1:] != key[:-1], True)
        ends = np.flatnonzero(last)
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
    def rescore(self) -> list[PatientScore]:
        """Scores of the patients changed since the last call and of those whose values went
        stale since then, by the injected clock."""
        now = int(self._clock())
        n = len(self._names)
        due = np.flatnonzero(self._changed[:n] | (self._expiry[:n] < now))
        if due.size == 0:
            return []
        scores, expiry = self._score(due, now)
        self._expiry[due] = expiry
        self._changed[due] = False
        return scores

    def current(self, patient: str) -> PatientScore | None:
        """The patient's score now (None for an unknown patient); does not consume changes."""
        i = self._ids.get(patient)
        if i is None:
            return None
        return self._score(np.array([i], np.intp), int(self._clock()))[0][0]

    def _score(
        self, idx: NDArray[np.intp], now: int
    ) -> tuple[list[PatientScore], NDArray[np.int64]]:
        wv, wt = self._wv[idx], self._wt[idx]  # (m, V, k)
        fresh = (wt != NO_TS) & (wt >= now - self.freshness_ms)
        if self.median_k == 1:
            val = np.where(fresh[..., 0], wv[..., 0], np.nan)
        else:
            val = _fresh_median(wv, fresh)
        fresh_t = np.where(fresh, wt, NO_TS)
        newest = fresh_t.max(axis=(1, 2))
        expiry = np.where(fresh, wt, NEVER).min(axis=(1, 2))
        expiry = np.where(expiry == NEVER, NEVER, expiry + self.freshness_ms)

        m = idx.size
        columns = {name: np.ascontiguousarray(val[:, j]) for j, name in enumerate(self._vitals)}
        res = score_arrays(
            columns, self._cons[idx], self._oxy[idx], self._scale[idx], self.table, n=m
        )
        points = res.points.tolist()
        results = res.result.tolist()
        risks = res.risk.tolist()
        partial = res.partial.tolist()
        valid = res.valid.tolist()
        causes, missing, reasons = res.cause, res.missing, res.reason
        sub_names = list(res.subscores)
        sub_lists = [res.subscores[s].tolist() for s in sub_names]
        val_lists = [columns[v].tolist() for v in self._vitals]
        newest_l = newest.tolist()
        complete: list[bool] = np.all(~np.isnan(val), axis=1).tolist()
        names = self._names
        vitals = self._vitals
        n_sub = len(sub_names)
        out: list[PatientScore] = []
        append = out.append
        for r, (i, sub_row, val_row) in enumerate(
            zip(
                idx.tolist(),
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
        return out, expiry


_FIELDS: Final = tuple(f.name for f in fields(PatientScore))


def _make(*args: Any) -> PatientScore:
    """PatientScore(*args) without the frozen dataclass __init__, which sets each of the 12
    fields through object.__setattr__ (the slowest part of rescoring ~1,000 patients)."""
    obj = object.__new__(PatientScore)
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

"""NEWS2 scorer benchmark: vectorised batch vs a plain per-row Python scorer, and stream updates.

Run: ``python -m benchmarks.scorer`` (``--rows``, ``--baseline-rows``, ``--repeat`` to change
sizes). Prints rows/s of ``ews.score_news2`` over 1,000,000 rows and of a per-row Python
implementation of the same chart (timed on fewer rows, rate extrapolated), their ratio, and the
time of one stream update (1,000 readings across 10,000 patients) plus ``rescore()``.
Targets: ≥ 20 M rows/s, ≥ 20× the per-row rate, ≤ 5 ms per stream update + rescore.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from ews import NEWS2, ScoringTable, score_news2
from ews.stream import StreamScorer

VITALS = ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")


def ward_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic wearable readings: whole numbers, temperature to 0.1 °C, 1 % missing each."""
    rng = np.random.default_rng(seed)
    cols = {
        "respiratory_rate": rng.normal(17, 4, n).round().clip(4, 45),
        "spo2": rng.normal(95.5, 2.5, n).round().clip(70, 100),
        "systolic_bp": rng.normal(122, 22, n).round().clip(60, 260),
        "heart_rate": rng.normal(84, 18, n).round().clip(30, 200),
        "temperature": rng.normal(37.0, 0.7, n).round(1).clip(33, 42),
    }
    for v in cols.values():
        v[rng.random(n) < 0.01] = np.nan
    return cols


def per_row_score(row: dict[str, float], table: ScoringTable = NEWS2) -> int:
    """The baseline: one row at a time in plain Python, same chart, same tolerance."""
    total = 0
    for p in table.parameters:
        x = row[p.name]
        if math.isnan(x):
            continue
        pts = p.bands.points[-1]
        for edge, points in zip(p.bands.edges, p.bands.points, strict=False):
            if x <= edge + table.tolerance * max(1.0, abs(edge)):
                pts = points
                break
        total += pts
    return total


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_batch(rows: int, baseline_rows: int, repeat: int) -> None:
    cols = ward_rows(rows)
    vec = best_of(repeat, lambda: score_news2(cols))
    res = score_news2(cols)
    words = best_of(repeat, lambda: score_news2(cols).result)
    sub = {k: v[:baseline_rows] for k, v in cols.items()}
    dict_rows = [
        dict(zip(VITALS, vals, strict=True))
        for vals in zip(*(sub[v].tolist() for v in VITALS), strict=True)
    ]
    loop = best_of(max(1, repeat // 3), lambda: [per_row_score(r) for r in dict_rows])
    # same answers (rows where every vital is valid; missing ones score 0 in both)
    ref = np.array([per_row_score(r) for r in dict_rows])
    assert np.array_equal(ref, res.points[:baseline_rows]), "baseline and vectorised disagree"
    vec_rate, loop_rate = rows / vec, baseline_rows / loop
    print(
        f"batch: score_news2 on {rows:,} rows: {vec * 1e3:.1f} ms = {vec_rate / 1e6:.1f} M rows/s"
    )
    print(
        f"       with result words materialised: {words * 1e3:.1f} ms = {rows / words / 1e6:.1f} M rows/s"
    )
    print(
        f"       per-row Python on {baseline_rows:,} rows: {loop * 1e3:.0f} ms = {loop_rate / 1e6:.2f} M rows/s"
    )
    print(
        f"       ratio vectorised / per-row: {vec_rate / loop_rate:.0f}x (targets >= 20 M rows/s, >= 20x)"
    )


def bench_stream(patients: int, batch: int, repeat: int) -> None:
    now = [1_700_000_000_000]
    scorer = StreamScorer(clock=lambda: now[0])
    rng = np.random.default_rng(1)
    ids = [f"patient-{i:05d}" for i in range(patients)]
    cols = ward_rows(patients, seed=2)
    all_p = [p for p in ids for _ in VITALS]
    all_v = [v for _ in ids for v in VITALS]
    all_x = np.stack([cols[v] for v in VITALS], axis=1).ravel()
    scorer.update(all_p, all_v, all_x, np.full(all_x.size, now[0]))
    scorer.rescore()
    mids = {
        "respiratory_rate": 17,
        "spo2": 96,
        "systolic_bp": 122,
        "heart_rate": 84,
        "temperature": 37.0,
    }
    times, changed = [], []
    for _ in range(repeat):
        now[0] += 5_000
        pi = rng.integers(0, patients, batch)
        vi = rng.integers(0, len(VITALS), batch)
        pat = [ids[i] for i in pi.tolist()]
        vit = [VITALS[i] for i in vi.tolist()]
        val = np.array([mids[v] for v in vit]) + rng.normal(0, 3, batch).round()
        ts = np.full(batch, now[0])
        t0 = time.perf_counter()
        scorer.update(pat, vit, val, ts)
        out = scorer.rescore()
        times.append(time.perf_counter() - t0)
        changed.append(len(out))
    print(
        f"stream: update {batch:,} readings across {patients:,} patients + rescore "
        f"({statistics.mean(changed):.0f} patients rescored): median {statistics.median(times) * 1e3:.2f} ms, "
        f"best {min(times) * 1e3:.2f} ms (target <= 5 ms)"
    )
    # baseline: rescoring the changed patients one at a time with current()
    pat_once = list(dict.fromkeys(pat))
    t0 = time.perf_counter()
    for p in pat_once:
        scorer.current(p)
    one = time.perf_counter() - t0
    print(
        f"        baseline: the same {len(pat_once)} patients scored one by one with current(): {one * 1e3:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1_000)
    args = ap.parse_args()
    bench_batch(args.rows, args.baseline_rows, args.repeat)
    bench_stream(args.patients, args.batch, max(args.repeat, 20))


if __name__ == "__main__":
    main()

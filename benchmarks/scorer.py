"""NEWS2 scorer benchmark: vectorised batch vs a plain per-row Python scorer and vs memory
bandwidth, and stream updates vs scoring the same patients one at a time.

Run: ``python -m benchmarks.scorer`` (``--rows``, ``--baseline-rows``, ``--repeat`` to change
sizes). Prints, all measured in this run:

* batch: rows/s of ``ews.score_news2`` over 1,000,000 rows; the same with the whole-array body
  (no cache blocking); a per-row Python implementation of the same chart (fewer rows, rate
  extrapolated); and the memory-bandwidth baseline, ``np.copyto`` of the same bytes (the five
  float64 vital columns) into a preallocated array, with the ratio of scoring to that copy;
* stream: one ``update`` of 1,000 readings across 10,000 patients plus ``rescore()`` (which
  returns arrays: ``ews.stream.Scores``); the same with every rescored patient materialised as a
  ``ews.score.Score`` (what rescore cost before); and the baseline, the same patients scored one at
  a time with ``current()``, with the ratio;
* engine: ``EwsEngine.observe`` of the same batches (SQLite file in a temp dir): rescoring, the
  vectorised emission decision, and objects and rows only for the points emitted.

Targets: ≥ 50 M rows/s (or an explanation against the bandwidth baseline), ≥ 20× per-row;
≤ 1 ms per stream update + rescore and ≥ 200× the one-at-a-time baseline.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ews import NEWS2, ScoringTable, news2, score_news2
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
    return min(timings(repeat, fn))


def timings(repeat: int, fn: Callable[[], object]) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def whole_array_body() -> Callable[[], None]:
    """Switch ews.news2 to its whole-array body (no cache blocking); returns the undo."""
    saved = news2.BLOCK
    news2.BLOCK = 1 << 62

    def undo() -> None:
        news2.BLOCK = saved

    return undo


def interleaved(repeat: int, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median time of each fn, the fns taking turns (so a load change on the shared machine
    colours all of them alike)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_batch(rows: int, baseline_rows: int, repeat: int) -> None:
    cols = ward_rows(rows)
    res = score_news2(cols)
    src = np.stack([cols[v] for v in VITALS])
    dst = np.empty_like(src)
    comp = news2._compile(NEWS2)
    scratch = np.empty(rows, np.bool_)
    scratch[:] = False
    count = np.zeros(rows, np.uint8)
    count2 = np.zeros(rows, np.uint8)
    out16 = np.empty(rows, np.uint16)
    acc = res.accumulator.copy()

    def whole() -> None:
        undo = whole_array_body()
        try:
            score_news2(cols)
        finally:
            undo()

    block = news2.BLOCK

    def compares() -> None:  # every comparison pass of the body, block by block, nothing else
        for lo in range(0, rows, block):
            hi = min(lo + block, rows)
            for p, cb in zip(comp.params, comp.bands, strict=True):
                x = cols[p.name][lo:hi]
                for edge in cb.edges:
                    np.less_equal(x, edge, out=scratch[lo:hi])

    def lookups() -> None:  # the code look-ups, the count and accumulator sums, the result
        for lo in range(0, rows, block):
            hi = min(lo + block, rows)
            for cb in comp.bands:
                for _ in cb.edges[1:]:  # (count stays 0/1 so the look-up below stays in range)
                    np.add(count[lo:hi], scratch[lo:hi].view(np.uint8), out=count2[lo:hi])
                cb.lut.take(count2[lo:hi], out=out16[lo:hi])
                np.add(acc[lo:hi], out16[lo:hi], out=acc[lo:hi])
        comp.points_band_lut.take(res.accumulator)

    med = interleaved(max(repeat, 15), {
        "score": lambda: score_news2(cols), "words": lambda: score_news2(cols).result,
        "whole": whole, "copy": lambda: np.copyto(dst, src), "compares": compares,
        "lookups": lookups,
    })
    undo = whole_array_body()
    try:
        assert np.array_equal(score_news2(cols).accumulator, res.accumulator)
    finally:
        undo()
    sub = {k: v[:baseline_rows] for k, v in cols.items()}
    dict_rows = [
        dict(zip(VITALS, vals, strict=True))
        for vals in zip(*(sub[v].tolist() for v in VITALS), strict=True)
    ]
    loop = best_of(max(1, repeat // 3), lambda: [per_row_score(r) for r in dict_rows])
    # same answers (rows where every vital is valid; missing ones score 0 in both)
    ref = np.array([per_row_score(r) for r in dict_rows])
    assert np.array_equal(ref, res.points[:baseline_rows]), "baseline and vectorised disagree"
    vec = med["score"]
    vec_rate, loop_rate = rows / vec, baseline_rows / loop
    n_cmp = sum(len(cb.edges) for cb in comp.bands)
    print(f"batch: score_news2 on {rows:,} rows: median {vec * 1e3:.1f} ms = {vec_rate / 1e6:.1f} M rows/s"
          " (target >= 50 M rows/s)")
    print(f"       with result words materialised: {med['words'] * 1e3:.1f} ms = "
          f"{rows / med['words'] / 1e6:.1f} M rows/s")
    print(f"       whole-array body (no cache blocking): {med['whole'] * 1e3:.1f} ms = "
          f"{rows / med['whole'] / 1e6:.1f} M rows/s; blocking gains {med['whole'] / vec:.2f}x")
    print(f"       per-row Python on {baseline_rows:,} rows: {loop * 1e3:.0f} ms = {loop_rate / 1e6:.2f} M rows/s")
    print(f"       ratio vectorised / per-row: {vec_rate / loop_rate:.0f}x (target >= 20x)")
    print(f"       bandwidth baseline: np.copyto of the same {src.nbytes / 1e6:.0f} MB of vitals: "
          f"{med['copy'] * 1e3:.1f} ms ({2 * src.nbytes / med['copy'] / 1e9:.1f} GB/s read+write); "
          f"scoring = {vec / med['copy']:.1f}x that copy")
    print(f"       where it goes: the {n_cmp} comparison passes alone {med['compares'] * 1e3:.1f} ms "
          f"({med['compares'] / vec:.0%}; {med['compares'] / n_cmp * 1e3:.2f} ms each = "
          f"{rows * 8 / (med['compares'] / n_cmp) / 1e9:.0f} GB/s of float64 compared), count sums + code "
          f"look-ups + accumulator + result look-up {med['lookups'] * 1e3:.1f} ms ({med['lookups'] / vec:.0%})")


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
    batches = [_batch(rng, ids, batch) for _ in range(repeat)]
    times, mat_times, changed = [], [], []
    gc.collect()
    for pat, vit, val in batches:
        now[0] += 5_000
        ts = np.full(batch, now[0])
        t0 = time.perf_counter()
        scorer.update(pat, vit, val, ts)
        out = scorer.rescore()
        times.append(time.perf_counter() - t0)
        changed.append(len(out))
    gc.collect()
    for pat, vit, val in batches[: repeat // 2]:  # the same, every rescored patient materialised
        now[0] += 5_000
        ts = np.full(batch, now[0])
        t0 = time.perf_counter()
        scorer.update(pat, vit, val + 1, ts)
        list(scorer.rescore())
        mat_times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"stream: update {batch:,} readings across {patients:,} patients + rescore "
        f"({statistics.mean(changed):.0f} patients rescored, as arrays): median {med * 1e3:.3f} ms, "
        f"best {min(times) * 1e3:.3f} ms (target <= 1 ms)"
    )
    print(
        f"        same + every rescored patient materialised as a Score: "
        f"median {statistics.median(mat_times) * 1e3:.2f} ms"
    )
    # baseline: scoring the rescored patients one at a time with current()
    gc.collect()
    pat_once = list(dict.fromkeys(batches[-1][0]))
    t0 = time.perf_counter()
    for p in pat_once:
        scorer.current(p)
    one = time.perf_counter() - t0
    per_patient = one / len(pat_once)
    base = per_patient * statistics.mean(changed)
    print(
        f"        baseline: {len(pat_once)} patients scored one at a time with current(): {one * 1e3:.1f} ms "
        f"({per_patient * 1e6:.0f} us each); ratio for the {statistics.mean(changed):.0f} rescored: "
        f"{base / med:.0f}x (target >= 200x)"
    )


def _batch(rng: np.random.Generator, ids: list[str], batch: int) -> tuple[list[str], list[str], np.ndarray]:
    mids = {"respiratory_rate": 17, "spo2": 96, "systolic_bp": 122, "heart_rate": 84, "temperature": 37.0}
    pi = rng.integers(0, len(ids), batch)
    vi = rng.integers(0, len(VITALS), batch)
    pat = [ids[i] for i in pi.tolist()]
    vit = [VITALS[i] for i in vi.tolist()]
    val = np.array([mids[v] for v in vit]) + rng.normal(0, 3, batch).round()
    return pat, vit, val


def bench_engine(patients: int, batch: int, repeat: int) -> None:
    from ingest.ews_engine import EwsEngine

    now = [1_700_000_000_000]
    rng = np.random.default_rng(3)
    ids = [f"patient-{i:05d}" for i in range(patients)]
    cols = ward_rows(patients, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        eng = EwsEngine(Path(tmp) / "ews.sqlite3", clock=lambda: now[0], median_k=3)
        eng.observe([(p, v, float(cols[v][i]), now[0]) for i, p in enumerate(ids) for v in VITALS])
        times, emitted = [], []
        for _ in range(repeat):
            now[0] += 5_000
            pat, vit, val = _batch(rng, ids, batch)
            items = [(p, v, x, now[0]) for p, v, x in zip(pat, vit, val.tolist(), strict=True)]
            t0 = time.perf_counter()
            out = eng.observe(items)
            times.append(time.perf_counter() - t0)
            emitted.append(len(out))
        eng.close()
    print(
        f"engine: observe {batch:,} readings across {patients:,} patients (median_k=3, SQLite): "
        f"median {statistics.median(times) * 1e3:.2f} ms, {statistics.mean(emitted):.1f} points emitted "
        f"(and materialised) per batch"
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
    bench_stream(args.patients, args.batch, max(args.repeat, 40))
    bench_engine(args.patients, args.batch, max(args.repeat, 20))


if __name__ == "__main__":
    main()

"""The readings store's group commit on SQLite vs PostgreSQL, in the same run (issue 13).

Run: ``python -m benchmarks.store_engines`` (``--readings 20000``, ``--batch 100``,
``--repeat 3``: every figure is the median of interleaved runs, each engine's ratio to SQLite
FULL taken within its own run, then the median of those ratios).

What is timed is what the consumer does per batch: ``store.commit_batch`` inside one
``Database.write`` transaction (registry touch, readings with their identities, gap tracking),
``--batch`` readings of five vitals each per transaction, durable commits:

* SQLite: WAL, ``synchronous=NORMAL`` (the tests') and ``FULL`` (ingest's default);
* PostgreSQL 15: a private server started by :mod:`vitalgate.postgres` (fsync on,
  synchronous_commit on), the daily partitions of the window made ahead, the identities'
  ``unnest … ON CONFLICT DO NOTHING RETURNING`` into ``reading_ids`` and the readings' COPY.

Then the first 20 % of the readings are delivered again (all duplicates) and the count is
asserted unchanged: the identities absorb every redelivery. Figures: readings/s committed and
the ratio PostgreSQL / SQLite FULL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ingest import store
from ingest.db import Location
from vitalgate.contract import Reading, Vitals
from vitalgate.postgres import PostgresServer

T0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC
DAY = 86_400_000
DEVICES = 200
REDELIVER = 0.2


def _batches(n: int, batch: int) -> list[list[store.Item]]:
    out: list[list[store.Item]] = []
    items: list[store.Item] = []
    for i in range(n):
        dev = f"d061ae{i % DEVICES:06x}"
        seq = i // DEVICES
        r = Reading(device_id=dev, seq=seq, ts=T0 + seq * 1000, user_code=f"P{i % DEVICES}",
                    stream="0123456789abcdef",
                    vitals=Vitals(heart_rate=70, spo2=97, respiratory_rate=16,
                                  temperature=36.8, systolic_bp=120))
        items.append(store.ReadingsIn("gw", dev, [r], T0 + seq * 1000))
        if len(items) == batch:
            out.append(items)
            items = []
    if items:
        out.append(items)
    return out


def _run(db: store.Database, batches: list[list[store.Item]]) -> float:
    """Seconds to commit ``batches``, one transaction each."""
    start = time.perf_counter()
    for items in batches:
        now = max(i.received_at for i in items)  # type: ignore[union-attr]
        db.write_sync(lambda c, it=items, t=now: store.commit_batch(c, it, now=t, holder="bench"))
    return time.perf_counter() - start


def measure(open_db: Callable[[], store.Database], batches: list[list[store.Item]],
            n: int) -> tuple[float, float]:
    """(readings/s first delivery, readings/s of a redelivery of 20 %)."""
    db = open_db()
    try:
        first = _run(db, batches)
        stored = db.read_sync(store.count_readings)
        assert stored == n * 5, (stored, n * 5)
        again = batches[: max(1, int(len(batches) * REDELIVER))]
        redo = _run(db, again)
        assert db.read_sync(store.count_readings) == stored, "a redelivery was stored twice"
        return n / first, sum(len(b) for b in again) / redo
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    batches = _batches(args.readings, args.batch)
    span = (T0 - DAY, T0 + (args.readings // DEVICES) * 1000 + DAY)
    work = Path(tempfile.mkdtemp(prefix="vitalgate-bench-engines-"))
    work.chmod(0o755)
    server = PostgresServer(workdir=work / "pg", fsync=True)
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        server.start()
        for run in range(args.repeat):
            url = server.create_database(f"bench{run}")
            engines: dict[str, Callable[[], store.Database]] = {
                "sqlite NORMAL": lambda r=run: store.Database(
                    work / f"n{r}.sqlite3", synchronous="NORMAL"),
                "sqlite FULL": lambda r=run: store.Database(work / f"f{r}.sqlite3",
                                                            synchronous="FULL"),
                "postgres": lambda u=url: store.Database(
                    Location.parse(u, default_path=work / "unused"), window=span),
            }
            for name, open_db in engines.items():
                runs.setdefault(name, []).append(measure(open_db, batches, args.readings))
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)
    base = runs["sqlite FULL"]
    load = os.getloadavg()
    print(f"commit_batch: {args.readings} readings x 5 vitals, {args.batch} readings per "
          f"transaction, median of {args.repeat} interleaved runs; load average at the end"
          f" {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    for name, got in runs.items():
        rate = statistics.median(g[0] for g in got)
        redo = statistics.median(g[1] for g in got)
        ratio = statistics.median(g[0] / b[0] for g, b in zip(got, base, strict=True))
        each = ", ".join(f"{g[0]:,.0f}" for g in got)
        print(f"  {name:14s} {rate:9,.0f} readings/s  redelivery {redo:9,.0f} readings/s"
              f"  ratio vs sqlite FULL (same run) {ratio:.2f}  [runs: {each}]")


if __name__ == "__main__":
    main()

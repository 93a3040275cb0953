"""The readings store's group commit on SQLite vs PostgreSQL, in the same run (issue 13).

Run: ``python -m benchmarks.store_engines`` (``--readings 20000``, ``--batch 100``,
``--repeat 3``: every figure is the best of interleaved runs).

What is timed is what the consumer does per batch: ``store.commit_batch`` inside one
``Database.write`` transaction (registry touch, readings with their identities, gap tracking),
``--batch`` readings of five vitals each per transaction, durable commits:

* SQLite: WAL, ``synchronous=NORMAL`` (the tests') and ``FULL`` (ingest's default);
* PostgreSQL 15: a private server started by :mod:`vitalgate.postgres` (fsync on,
  synchronous_commit on), the daily partitions of the window made ahead, the batched
  ``unnest`` inserts into ``reading_ids`` and ``readings`` returning the new rows.

Then the first 20 % of the readings are delivered again (all duplicates) and the count is
asserted unchanged: the identities absorb every redelivery. Figures: readings/s committed and
the ratio PostgreSQL / SQLite FULL.
"""

from __future__ import annotations

import argparse
import shutil
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
    best: dict[str, tuple[float, float]] = {}
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
                got = measure(open_db, batches, args.readings)
                old = best.get(name, (0.0, 0.0))
                best[name] = (max(old[0], got[0]), max(old[1], got[1]))
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)
    base = best["sqlite FULL"][0]
    print(f"commit_batch: {args.readings} readings x 5 vitals, {args.batch} readings per "
          f"transaction, best of {args.repeat}")
    for name, (rate, redo) in best.items():
        print(f"  {name:14s} {rate:9,.0f} readings/s  redelivery {redo:9,.0f} readings/s"
              f"  ratio vs sqlite FULL {rate / base:.2f}")


if __name__ == "__main__":
    main()

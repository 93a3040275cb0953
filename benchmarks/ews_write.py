"""One EWS emission batch's write: its history and outbox rows as one multi-row statement each
vs one INSERT per row (the baseline, the same store functions in the same run):

    python -m benchmarks.ews_write               # 1 000 patients a batch, 20 batches
    python -m benchmarks.ews_write --quick       # 5 batches

What ``EwsEngine._record`` writes for a batch in its transaction: each point's history row,
then its outbox rows (cexup's and one extra channel's). Timed per transaction on SQLite (a
file, the store's default settings) and PostgreSQL 15 (the test server, fsync off); the
median of the batches. The machine is shared: compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ingest.db import Conn, Database, outbox
from ingest.db import ews as ews_store
from vitalgate.postgres import PostgresServer


def _rows(batch: int, patients: int, now: int) -> list[ews_store.HistoryRow]:
    return [ews_store.HistoryRow(
        user_code=f"P{n:05d}", point=n % 7, result="rendah", risk="low",
        cause=["Respiration 22"], partial=False, missing=[],
        components={"respiratory_rate": 2, "spo2": 0, "heart_rate": 0}, produce_at=now,
        emitted_at=now, trigger="change", source="vitalgate", seq=batch + 1)
        for n in range(patients)]


def _messages(r: ews_store.HistoryRow, row_id: int) -> list[outbox.Message]:
    key = f"ews:{row_id}"
    return [outbox.Message("cexup", r.user_code, key, {"user_code": r.user_code, "point": r.point,
                                                       "result": r.result,
                                                       "produce_at": str(r.produce_at)},
                           outbox.State.PENDING, row_id),
            outbox.Message("fhir", r.user_code, key, {"resourceType": "Observation",
                                                      "subject": r.user_code, "id": row_id},
                           outbox.State.PENDING, row_id)]


def row_by_row(conn: Conn, rows: list[ews_store.HistoryRow], now: int) -> None:
    """The write before multi-row statements: one INSERT per history row, one per outbox row."""
    for r in rows:
        row_id = ews_store.insert_history(
            conn, user_code=r.user_code, point=r.point, result=r.result, risk=r.risk,
            cause=r.cause, partial=r.partial, missing=r.missing, components=dict(r.components),
            produce_at=r.produce_at, emitted_at=r.emitted_at, trigger=r.trigger,
            source=r.source, seq=r.seq)
        assert row_id is not None
        for m in _messages(r, row_id):
            outbox.enqueue(conn, channel=m.channel, user_code=m.user_code,
                           dedup_key=m.dedup_key, body=m.body, state=m.state, now=now,
                           history_id=m.history_id)


def multi_row(conn: Conn, rows: list[ews_store.HistoryRow], now: int) -> None:
    """One statement for the history rows, one for the outbox rows."""
    ids = ews_store.insert_history_many(conn, rows)
    outbox.enqueue_many(conn, [m for r in rows for m in _messages(r, ids[(r.user_code, r.seq)])],
                        now=now)


def _time(db: Database, write: Callable[[Conn, list[ews_store.HistoryRow], int], None], *,
          patients: int, batches: int, offset: int) -> float:
    """Median seconds of one batch's write transaction."""
    times = []
    for b in range(batches):
        now = 1_700_000_000_000 + (offset + b) * 1000
        rows = _rows(offset + b, patients, now)
        t = time.perf_counter()
        db.write_sync(lambda c, rows=rows, now=now: write(c, rows, now))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(db: Database, *, patients: int, batches: int) -> tuple[float, float]:
    """(row by row, multi-row) medians, alternating halves so drift hits both alike."""
    half = max(1, batches // 2)
    a1 = _time(db, row_by_row, patients=patients, batches=half, offset=0)
    b1 = _time(db, multi_row, patients=patients, batches=half, offset=half)
    a2 = _time(db, row_by_row, patients=patients, batches=half, offset=2 * half)
    b2 = _time(db, multi_row, patients=patients, batches=half, offset=3 * half)
    return (a1 + a2) / 2, (b1 + b2) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    batches = 4 if args.quick else args.batches
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workdir = Path(tempfile.mkdtemp(prefix="vitalgate-bench-ews-write-"))
        workdir.chmod(0o755)
        pg = PostgresServer(workdir=workdir, fsync=False)
        pg.start()
        try:
            print(f"one emission batch's write ({args.patients} points: history + cexup + fhir"
                  " outbox rows), median per transaction:")
            for name, where in (("SQLite", tmp / ews_store.FILE_NAME),
                                ("PostgreSQL", pg.create_database("bench_ews_write"))):
                db = ews_store.open_store(where, tmp)
                try:
                    base, multi = run(db, patients=args.patients, batches=batches)
                finally:
                    db.close()
                print(f"  {name:10s} row by row {base * 1000:8.1f} ms   multi-row"
                      f" {multi * 1000:8.1f} ms   ratio {base / multi:.1f} × faster")
        finally:
            pg.remove()


if __name__ == "__main__":
    main()

"""PostgreSQL baseline for issue 13's storage layer: how fast reading-shaped rows are committed
with redelivery absorbed, against SQLite in the same run.

Run: ``python -m benchmarks.postgres_baseline`` (``--rows 40000``, ``--batches 100,1000``,
``--repeat 3``: every figure is the best of three interleaved runs).
A private PostgreSQL 15 is started by :mod:`vitalgate.postgres` (fsync on, synchronous_commit
on: every batch is a durable commit, as ingest acknowledges MQTT only after commit), and one
connection commits the same rows, batch by batch, one transaction per batch, with:

* ``multirow``:   one ``INSERT … VALUES (…),(…) … ON CONFLICT DO NOTHING`` per batch
* ``executemany``: psycopg's ``executemany`` of a one-row insert (pipelined), same conflict rule
* ``unnest``:    one ``INSERT … SELECT * FROM unnest(%s::text[], …) ON CONFLICT DO NOTHING``
                  per batch: ten array parameters whatever the batch size, one prepared plan
* ``copy``:       ``COPY`` into a temporary staging table, then
                  ``INSERT … SELECT … ON CONFLICT DO NOTHING`` (the staging rows go on commit)

into a plain table (unique identity ``(device_id, seq, vital)``) and into a table partitioned by
``ts`` (native declarative range partitions, one per day, made ahead; PostgreSQL requires the
partition key in every unique index, so its identity is ``(device_id, seq, vital, ts)``).
The baseline is SQLite ``executemany`` of ``INSERT OR IGNORE`` (WAL, ``synchronous=NORMAL``
as ingest runs it today, and ``FULL``), same rows, same batches, same indexes. One extra
PostgreSQL row (``copy`` with ``synchronous_commit=off``) shows what share of the cost is the
WAL flush at each commit.

Each run then redelivers the first 20 % of the rows (all duplicates) and asserts the table
still holds exactly the distinct rows: the conflict rule absorbs every redelivery.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from vitalgate.postgres import PostgresServer

#: (device_id, user_code, gateway_id, stream, seq, vital, value, ts, source, received_at)
Row = tuple[str, str, str, str, int, str, float, int, str, int]
COLUMNS = "device_id, user_code, gateway_id, stream, seq, vital, value, ts, source, received_at"
VITALS = ("hr", "spo2", "rr", "temp", "sbp")
DEVICES = 200
T0 = datetime(2026, 12, 1, tzinfo=UTC)
#: one reading (five vitals) per device per hour of event time, so that 40,000 rows span
#: 40 hours: three daily partitions
STEP_MS = 60 * 60 * 1000
REDELIVER = 0.2

PG_TABLE = """
CREATE TABLE readings (
  id bigint GENERATED ALWAYS AS IDENTITY,
  device_id text NOT NULL, user_code text, gateway_id text, stream text,
  seq bigint NOT NULL, vital text NOT NULL, value double precision NOT NULL,
  ts bigint NOT NULL, source text NOT NULL, received_at bigint NOT NULL
){partition};
CREATE UNIQUE INDEX readings_identity ON readings (device_id, seq, vital{identity_tail});
CREATE INDEX readings_patient ON readings (user_code, vital, ts);
"""
SQLITE_TABLE = """
CREATE TABLE readings (
  id INTEGER PRIMARY KEY,
  device_id TEXT NOT NULL, user_code TEXT, gateway_id TEXT, stream TEXT,
  seq INTEGER NOT NULL, vital TEXT NOT NULL, value REAL NOT NULL,
  ts INTEGER NOT NULL, source TEXT NOT NULL, received_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX readings_identity ON readings (device_id, seq, vital);
CREATE INDEX readings_patient ON readings (user_code, vital, ts);
"""


def make_rows(n: int) -> list[Row]:
    """``n`` reading-shaped rows in arrival order (devices interleaved, as a consumer sees)."""
    rows: list[Row] = []
    seq = 0
    base = int(T0.timestamp() * 1000)
    while len(rows) < n:
        for d in range(DEVICES):
            device = f"d061ae{d:06x}"
            ts = base + seq * STEP_MS + d * 997
            for k, vital in enumerate(VITALS):
                rows.append((device, f"U{d:012d}", "ward3-bed12", f"{d:08x}{0:08x}", seq, vital,
                             60.0 + (seq * 7 + d + k) % 40, ts, "live", ts + 150))
                if len(rows) == n:
                    return rows
        seq += 1
    return rows


def batches(rows: Sequence[Row], size: int) -> Iterator[Sequence[Row]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def pg_create(conn: psycopg.Connection[tuple[object, ...]], partitioned: bool, rows: Sequence[Row]) -> None:
    conn.execute("DROP TABLE IF EXISTS readings")
    conn.execute(PG_TABLE.format(
        partition=" PARTITION BY RANGE (ts)" if partitioned else "",
        identity_tail=", ts" if partitioned else "",
    ))
    if partitioned:
        last = datetime.fromtimestamp(max(r[7] for r in rows) / 1000, UTC)
        day = T0
        while day <= last:
            lo, hi = int(day.timestamp() * 1000), int((day + timedelta(days=1)).timestamp() * 1000)
            conn.execute(
                f"CREATE TABLE readings_{day:%Y%m%d} PARTITION OF readings FOR VALUES FROM ({lo}) TO ({hi})"
            )
            day += timedelta(days=1)
    conn.commit()


def pg_multirow(conn: psycopg.Connection[tuple[object, ...]], batch: Sequence[Row]) -> None:
    one = "(" + ",".join(["%s"] * len(COLUMNS.split(","))) + ")"
    sql = f"INSERT INTO readings ({COLUMNS}) VALUES " + ",".join([one] * len(batch)) + " ON CONFLICT DO NOTHING"
    with conn.transaction():
        conn.execute(sql, [v for row in batch for v in row])


def pg_executemany(conn: psycopg.Connection[tuple[object, ...]], batch: Sequence[Row]) -> None:
    one = ",".join(["%s"] * len(COLUMNS.split(",")))
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(f"INSERT INTO readings ({COLUMNS}) VALUES ({one}) ON CONFLICT DO NOTHING", batch)


#: column types for the unnest variant, in COLUMNS order
PG_TYPES = ("text", "text", "text", "text", "bigint", "text", "float8", "bigint", "text", "bigint")


def pg_unnest(conn: psycopg.Connection[tuple[object, ...]], batch: Sequence[Row]) -> None:
    arrays = [list(col) for col in zip(*batch, strict=True)]
    args = ", ".join(f"%s::{t}[]" for t in PG_TYPES)
    with conn.transaction():
        conn.execute(
            f"INSERT INTO readings ({COLUMNS}) SELECT * FROM unnest({args}) ON CONFLICT DO NOTHING",
            arrays,
        )


def pg_copy(conn: psycopg.Connection[tuple[object, ...]], batch: Sequence[Row]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(f"COPY staging ({COLUMNS}) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        cur.execute(f"INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM staging ON CONFLICT DO NOTHING")


PG_METHODS: dict[str, Callable[[psycopg.Connection[tuple[object, ...]], Sequence[Row]], None]] = {
    "multirow": pg_multirow,
    "executemany": pg_executemany,
    "unnest": pg_unnest,
    "copy": pg_copy,
}


def run_pg(
    url: str, method: str, size: int, rows: Sequence[Row], partitioned: bool, durable: bool = True
) -> tuple[float, float]:
    """(rows/s first delivery, rows/s redelivery) for one method and batch size."""
    insert = PG_METHODS[method]
    with psycopg.connect(url) as conn:
        if not durable:  # how much of the cost is the WAL flush at each commit
            conn.execute("SET synchronous_commit = off")
            conn.commit()
        pg_create(conn, partitioned, rows)
        if method == "copy":
            conn.execute(
                "CREATE TEMP TABLE staging (device_id text, user_code text, gateway_id text,"
                " stream text, seq bigint, vital text, value double precision, ts bigint,"
                " source text, received_at bigint) ON COMMIT DELETE ROWS"
            )
            conn.commit()
        t0 = time.perf_counter()
        for batch in batches(rows, size):
            insert(conn, batch)
        first = time.perf_counter() - t0
        again = rows[: int(len(rows) * REDELIVER)]
        t0 = time.perf_counter()
        for batch in batches(again, size):
            insert(conn, batch)
        redo = time.perf_counter() - t0
        count = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert count == (len(rows),), f"{method}/{size}: {count} rows, expected {len(rows)}"
    return len(rows) / first, len(again) / redo


def run_sqlite(path: Path, synchronous: str, size: int, rows: Sequence[Row]) -> tuple[float, float]:
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.executescript(SQLITE_TABLE)
        sql = f"INSERT OR IGNORE INTO readings ({COLUMNS}) VALUES ({','.join('?' * 10)})"

        def deliver(rs: Sequence[Row]) -> float:
            t0 = time.perf_counter()
            for batch in batches(rs, size):
                conn.execute("BEGIN")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
            return time.perf_counter() - t0

        first = deliver(rows)
        again = rows[: int(len(rows) * REDELIVER)]
        redo = deliver(again)
        count = conn.execute("SELECT count(*) FROM readings").fetchone()
    finally:
        conn.close()
    assert count == (len(rows),), f"sqlite/{size}: {count} rows, expected {len(rows)}"
    return len(rows) / first, len(again) / redo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--batches", default="100,1000")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many interleaved runs")
    args = ap.parse_args(argv)
    if not 1_000 <= args.rows <= 2_000_000:
        ap.error("--rows must be 1000..2000000")
    if not 1 <= args.repeat <= 20:
        ap.error("--repeat must be 1..20")
    sizes = [int(s) for s in args.batches.split(",")]
    if not all(1 <= s <= 5_000 for s in sizes):
        ap.error("--batches: each size must be 1..5000 (10 parameters per row, 65535 max)")
    rows = make_rows(args.rows)
    days = (max(r[7] for r in rows) - min(r[7] for r in rows)) / 86_400_000
    work = Path(tempfile.mkdtemp(prefix="vitalgate-bench-pg-"))
    work.chmod(0o755)
    server = PostgresServer(workdir=work / "pg")  # fsync on: durable commits, as in production
    try:
        server.start()
        url = server.create_database("bench")
        assert server.binaries is not None
        print(f"PostgreSQL {server.binaries.version} (fsync on, synchronous_commit on) vs SQLite "
              f"{sqlite3.sqlite_version}; {len(rows):,} rows from {DEVICES} devices over {days:.1f} days "
              f"of event time; load average {os.getloadavg()[0]:.1f}")
        best: dict[tuple[object, ...], tuple[float, float]] = {}

        def keep(key: tuple[object, ...], got: tuple[float, float]) -> None:
            old = best.get(key, (0.0, 0.0))
            best[key] = (max(old[0], got[0]), max(old[1], got[1]))

        for _ in range(args.repeat):  # interleaved, so that a load spike hits every variant
            for size in sizes:
                keep(("sqlite", "NORMAL", size), run_sqlite(work / "bench.sqlite", "NORMAL", size, rows))
                keep(("sqlite", "FULL", size), run_sqlite(work / "bench.sqlite", "FULL", size, rows))
                for partitioned in (False, True):
                    for method in PG_METHODS:
                        keep(("pg", method, size, partitioned), run_pg(url, method, size, rows, partitioned))
                keep(("pg", "copy", size, "async"), run_pg(url, "copy", size, rows, False, durable=False))
        for size in sizes:
            base, base_redo = best[("sqlite", "NORMAL", size)]
            full, _ = best[("sqlite", "FULL", size)]
            print(f"\nbatch {size}: SQLite executemany (baseline) NORMAL {base:,.0f} rows/s "
                  f"(redelivery {base_redo:,.0f} rows/s), FULL {full:,.0f} rows/s "
                  f"(ratio {full / base:.2f})")
            variants = [(m, p) for p in (False, True) for m in PG_METHODS] + [("copy", "async")]
            for method, part in variants:
                table = {False: "plain table", True: "partitioned by day",
                         "async": "plain, sync_commit off"}[part]
                rate, redo = best[("pg", method, size, part)]
                print(f"  PostgreSQL {method:11s} {table:22s} {rate:9,.0f} rows/s "
                      f"ratio {rate / base:.2f} vs SQLite NORMAL; redelivery {redo:9,.0f} rows/s "
                      f"ratio {redo / base_redo:.2f}")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

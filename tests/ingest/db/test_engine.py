"""ingest.db.engine on both engines: one SQL text, the same results, the same errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ingest.db import Conn, Database, Dialect, IntegrityError, Location, StoreOpenError, redact
from ingest.db.engine import render_ddl, to_psycopg
from ingest.db.migrate import Migration, SchemaTooNew, apply, current

DDL = """
CREATE TABLE IF NOT EXISTS t (
  id {id},
  k TEXT NOT NULL UNIQUE,   -- the identity; a '?' or ';' in a comment is harmless
  n BIGINT NOT NULL,
  x DOUBLE PRECISION,
  b {blob}
);
"""


def open_db(url: str, tmp_path: Path) -> Database:
    loc = Location.parse(url, default_path=tmp_path / "unused.sqlite3")
    return Database(loc, setup=lambda c: c.script(DDL), name="test")


def test_same_sql_same_results(database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url, tmp_path)
    try:
        def put(c: Conn) -> list[int]:
            ids = [c.execute("INSERT INTO t (k, n, x, b) VALUES (?, ?, ?, ?) RETURNING id",
                             (f"k{i}", 2**53 - i, 0.1 * i, bytes([0, i]))).fetchone()[0]
                   for i in range(3)]
            c.execute("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT DO NOTHING", ("k0", 5))
            c.executemany("INSERT INTO t (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE"
                          " SET n = excluded.n", [("k1", 7), ("k9", 9)])
            return ids

        ids = db.write_sync(put)
        assert len(set(ids)) == 3
        rows = db.read_sync(lambda c: c.execute(
            "SELECT k, n, x, b FROM t WHERE k LIKE 'k%' ORDER BY k").fetchall())
        assert [(r[0], r[1]) for r in rows] == [("k0", 2**53), ("k1", 7), ("k2", 2**53 - 2),
                                                 ("k9", 9)]
        assert bytes(rows[2][3]) == b"\x00\x02" and rows[2][2] == pytest.approx(0.2)
        total = db.read_sync(lambda c: c.execute(
            f"SELECT CAST(SUM(n) AS BIGINT), {c.greatest('n', '8')} FROM t WHERE k = 'k1'"
            " GROUP BY n").fetchone())
        assert tuple(total) == (7, 8) and isinstance(total[0], int)
    finally:
        db.close()


def test_failed_transaction_rolls_back_and_savepoint_isolates(database_url: str,
                                                              tmp_path: Path) -> None:
    db = open_db(database_url, tmp_path)
    try:
        def bad(c: Conn) -> None:
            c.execute("INSERT INTO t (k, n) VALUES ('a', 1)")
            c.execute("INSERT INTO t (k, n) VALUES ('a', 2)")

        with pytest.raises(IntegrityError):
            db.write_sync(bad)
        assert db.read_sync(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0

        def isolated(c: Conn) -> int:
            c.execute("INSERT INTO t (k, n) VALUES ('a', 1)")
            refused = 0
            for k in ("a", "b"):
                try:
                    with c.savepoint():
                        c.execute("INSERT INTO t (k, n) VALUES (?, 3)", (k,))
                except IntegrityError:
                    refused += 1
            return refused

        assert db.write_sync(isolated) == 1
        keys = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")])
        assert keys == ["a", "b"]
    finally:
        db.close()


def test_reads_run_beside_a_write(database_url: str, tmp_path: Path) -> None:
    """A reader is not blocked by an open write transaction and sees only committed rows."""
    db = open_db(database_url, tmp_path)
    inside, release = threading.Event(), threading.Event()
    try:
        def slow(c: Conn) -> None:
            c.execute("INSERT INTO t (k, n) VALUES ('w', 1)")
            inside.set()
            assert release.wait(10)

        writer = threading.Thread(target=db.write_sync, args=(slow,))
        writer.start()
        assert inside.wait(10)
        seen = db.read_sync(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        release.set()
        writer.join(10)
        assert seen == 0
        assert db.read_sync(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    finally:
        release.set()
        db.close()


def test_migrations_run_once_in_order_and_refuse_newer(database_url: str, tmp_path: Path) -> None:
    ran: list[int] = []

    def step(v: int) -> Migration:
        return Migration(v, f"step {v}", lambda c: ran.append(v))

    db = open_db(database_url, tmp_path)
    try:
        assert db.write_sync(lambda c: apply(c, "x", schema=DDL, migrations=(step(1),),
                                             legacy=lambda c: 0)) == 0
        assert ran == [1]
        assert db.write_sync(lambda c: apply(c, "x", schema=DDL,
                                             migrations=(step(1), step(2), step(3)))) == 1
        assert ran == [1, 2, 3]
        assert db.write_sync(lambda c: apply(c, "x", schema=DDL,
                                             migrations=(step(1), step(2), step(3)))) == 3
        assert ran == [1, 2, 3]
        assert db.read_sync(lambda c: current(c, "x")) == 3
        with pytest.raises(SchemaTooNew, match="newer than this"):
            db.write_sync(lambda c: apply(c, "x", schema=DDL, migrations=(step(1),)))
    finally:
        db.close()


def test_location_parsing_and_redaction(tmp_path: Path) -> None:
    default = tmp_path / "d.sqlite3"
    assert Location.parse(None, default_path=default) == Location(Dialect.SQLITE, path=default)
    assert Location.parse("sqlite:///x/y.db", default_path=default).path == Path("/x/y.db")
    pg = Location.parse("postgresql://u:s3cret@h:5/db", default_path=default)
    assert pg.dialect is Dialect.POSTGRES and "s3cret" not in pg.redacted()
    assert redact("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    for bad in ("mysql://h/db", "postgresql://h", "sqlite://rel/path"):
        with pytest.raises(ValueError) as err:
            Location.parse(bad.replace("h", "u:pw@h", 1), default_path=default)
        assert "pw" not in str(err.value)


def test_unreachable_server_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    from vitalgate.broker import free_port

    loc = Location.parse(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db",
                         default_path=tmp_path / "x")
    with pytest.raises(StoreOpenError) as err:
        Database(loc, name="store")
    assert "hunter2" not in str(err.value) and "127.0.0.1" in str(err.value)


def test_sql_translation() -> None:
    assert to_psycopg("SELECT ? WHERE a LIKE '%?' AND b = ?") == "SELECT %s WHERE a LIKE '%%?' AND b = %s"
    assert "GENERATED" in render_ddl("{id}", Dialect.POSTGRES)
    assert render_ddl("{id} {blob}{without_rowid} {other}", Dialect.SQLITE) == \
        "INTEGER PRIMARY KEY AUTOINCREMENT BLOB WITHOUT ROWID {other}"


def test_ids_are_never_reused(database_url: str, tmp_path: Path) -> None:
    """A deleted newest row's id is not given again (outbox dedup keys and device moves refer
    to ids: a reused one would inherit another row's references)."""
    db = open_db(database_url, tmp_path)
    try:
        def put(c: Conn, k: str) -> int:
            return int(c.execute("INSERT INTO t (k, n) VALUES (?, 0) RETURNING id", (k,)).fetchone()[0])

        first = db.write_sync(lambda c: put(c, "a"))
        db.write_sync(lambda c: c.execute("DELETE FROM t WHERE id = ?", (first,)))
        assert db.write_sync(lambda c: put(c, "b")) > first
    finally:
        db.close()


def test_close_interrupts_a_write_in_progress(database_url: str, tmp_path: Path) -> None:
    """A process stopping on SIGTERM closes its store while a write still runs (measured in
    the failover e2e: a stopping instance isolating a 500-message batch was SIGKILLed after
    15 s). close() interrupts the write's statements until it ends; the write raises an
    error :func:`ingest.db.interrupted` recognises, even when it catches errors per item."""
    from ingest.db import interrupted

    d = open_db(database_url, tmp_path)
    d.write_sync(lambda c: (c.execute("CREATE TABLE slow_t (id INTEGER PRIMARY KEY, v INTEGER)"),
                            c.execute("INSERT INTO slow_t VALUES (1, 0)")))
    started = threading.Event()
    outcome: list[BaseException | str] = []
    holder = None
    if d.location.url is not None:  # PostgreSQL: the write waits for a row another holds
        import psycopg
        holder = psycopg.connect(d.location.url)
        holder.execute("UPDATE slow_t SET v = 1 WHERE id = 1")  # holds the row lock, uncommitted

    def slow(c: Conn) -> None:
        started.set()
        caught = 0
        for _ in range(1000):  # errors caught per statement, as the consumer's isolation does
            try:
                with c.savepoint():
                    if c.is_postgres:
                        c.execute("UPDATE slow_t SET v = 2 WHERE id = 1")
                    else:
                        c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                                  " WHERE i < 1000000000) SELECT count(*) FROM n").fetchone()
            except Exception as exc:
                if interrupted(exc):
                    raise
                caught += 1
        outcome.append(f"ran to the end ({caught} caught)")

    def write() -> None:
        try:
            d.write_sync(slow)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert started.wait(20)
        closer = threading.Thread(target=d.close)
        closer.start()
        closer.join(30)
        assert not closer.is_alive(), "close() waited for the write"
        writer.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], BaseException)
        assert interrupted(outcome[0]), outcome[0]
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
        writer.join(60)

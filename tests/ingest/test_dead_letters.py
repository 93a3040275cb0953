"""The bounded dead-letter table on its own, on SQLite and PostgreSQL: capped payloads, row and
byte bounds with counted eviction, repeats; the migration of a table made before the bounds
(a SQLite file of an earlier release: SQLite only)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest import store
from ingest.db import Location, dead_letters

T0 = 1_700_000_000_000


@pytest.fixture
def db(database_url: str) -> Iterator[store.Database]:
    db = store.Database(Location.parse(database_url, default_path=Path("unused")),
                        synchronous="NORMAL")
    yield db
    db.close()


def _commit(db: store.Database, letters: list[store.DeadLetter],
            limits: dead_letters.Limits = store.DEFAULT_DEAD_LIMITS) -> store.CommitResult:
    return db.write_sync(lambda c: store.commit_batch(c, letters, now=T0, holder="RS",
                                                      dead_limits=limits))


def _letter(i: int, payload: bytes | None = None) -> store.DeadLetter:
    return store.DeadLetter("vitals/v1/gw/status", payload if payload is not None else b"junk %d" % i,
                            "json", "payload is not UTF-8 JSON", T0 + i)


def test_a_10_mb_payload_costs_its_prefix_and_keeps_size_and_digest(db: store.Database) -> None:
    big = b"x" * (10 * 2**20)
    _commit(db, [_letter(0, big)])
    (item,), total = db.read_sync(lambda c: dead_letters.list_dead_letters(c, 1, 10))
    assert total == 1
    assert item["size"] == len(big) and item["stored"] == 4096 and item["truncated"] is True
    assert item["sha256"] == hashlib.sha256(big).hexdigest()
    assert len(item["payload"]) == 2048  # the API shows at most 2 KiB of it
    stored = db.read_sync(lambda c: c.execute("SELECT length(payload) FROM dead_letters").fetchone())
    assert stored == (4096,)
    (hidden,), _ = db.read_sync(lambda c: store.dead_letters(c, 1, 10, with_payload=False))
    assert "payload" not in hidden and hidden["sha256"] == item["sha256"]


def test_rows_bound_evicts_the_oldest_and_counts_it(db: store.Database) -> None:
    limits = dead_letters.Limits(max_rows=10)
    evicted = sum(_commit(db, [_letter(i)], limits).dead_evicted for i in range(25))
    assert evicted == 15
    items, total = db.read_sync(lambda c: dead_letters.list_dead_letters(c, 1, 100))
    assert total == 10 and [i["received_at"] for i in items] == [T0 + i for i in range(24, 14, -1)]
    s = db.read_sync(dead_letters.stats)
    assert (s.rows, s.evicted) == (10, 15)


def test_bytes_bound_evicts_until_it_holds(db: store.Database) -> None:
    limits = dead_letters.Limits(max_rows=10_000, max_bytes=64 * 1024, payload_bytes=4096)
    for i in range(100):
        _commit(db, [_letter(i, bytes([i]) * 10_000)], limits)
    s = db.read_sync(dead_letters.stats)
    assert s.bytes <= limits.max_bytes and s.rows + s.evicted == 100 and s.evicted > 0
    exact = db.read_sync(lambda c: c.execute(
        "SELECT count(*), sum(length(payload) + length(topic) + length(detail)) FROM dead_letters"
    ).fetchone())
    assert exact == (s.rows, s.bytes)  # the store's accounting keeps the stats exact


def test_the_same_letter_again_is_counted_not_stored(db: store.Database) -> None:
    results = [_commit(db, [_letter(1), _letter(2)]) for _ in range(3)]
    assert [r.dead_repeats for r in results] == [0, 2, 2]
    items, total = db.read_sync(lambda c: dead_letters.list_dead_letters(c, 1, 10))
    assert total == 2 and [i["repeats"] for i in items] == [2, 2]


def test_retention_keeps_the_stats_exact(db: store.Database) -> None:
    _commit(db, [_letter(i) for i in range(5)])
    db.write_sync(lambda c: store.retention_step(c, T0 + 3, 100))
    s = db.read_sync(dead_letters.stats)
    assert s.rows == 2 and s.evicted == 0


def test_a_table_made_before_the_bounds_is_migrated(tmp_path: Path) -> None:
    """SQLite only: a file of a release before the bounds."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,"
            " received_at INTEGER NOT NULL);")
        conn.execute("INSERT INTO dead_letters (topic, payload, reason, detail, received_at)"
                     " VALUES ('t', x'00010203', 'json', 'bad', 1)")
    db = store.Database(path, synchronous="NORMAL")
    (item,), _ = db.read_sync(lambda c: dead_letters.list_dead_letters(c, 1, 10))
    assert item["size"] == 4 and item["repeats"] == 0 and item["sha256"] is None
    assert db.read_sync(dead_letters.stats).rows == 1
    _commit(db, [_letter(1)])
    assert db.read_sync(dead_letters.stats).rows == 2
    db.close()
    again = store.Database(path, synchronous="NORMAL")  # idempotent
    assert again.read_sync(dead_letters.stats).rows == 2
    again.close()

"""Patient partitions leased in a real PostgreSQL 15: fair shares, rebalancing, takeover after
expiry on the database's clock, the fence that keeps a paused ex-owner from writing, and the
members' recorded MQTT client ids (also in a database of the release before them)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Mapping

import pytest

from ingest.adopt import client_id_for
from ingest.db import leases, migrate
from ingest.db.engine import Conn, Database, Dialect, Location
from ingest.ownership import PARTITIONS, LeasedOwner, LeasePolicy, SoleOwner, partition_of

N = 16  # partitions in the direct tests: small enough to read, the same rules


@pytest.fixture
def db(postgres_db: str, tmp_path: object) -> Iterator[Database]:
    database = Database(Location.parse(postgres_db, default_path=None),  # type: ignore[arg-type]
                        setup=lambda c: leases.setup(c, N), name="leases-test")
    try:
        yield database
    finally:
        database.close()


def beat(db: Database, me: str, held: Mapping[int, int], lease_ms: int = 60_000,
         client_id: str | None = None) -> leases.Round:
    return db.write_sync(lambda c: leases.heartbeat(c, me, lease_ms=lease_ms, held=held,
                                                    partitions=N, started_at=0,
                                                    client_id=client_id))


def wait_db_past(db: Database, t_ms: int) -> None:
    """Until the database's clock is past ``t_ms`` (ordering on its clock, not a duration)."""
    while db.read_sync(leases.db_now) <= t_ms:
        time.sleep(0.01)


def owners(db: Database) -> dict[int, str | None]:
    return dict(db.read_sync(lambda c: c.execute(
        "SELECT part, owner FROM partition_leases ORDER BY part").fetchall()))


def test_partition_of_is_stable_and_spreads() -> None:
    # the value is fixed: every process and release must put a patient in the same partition
    assert partition_of("P0001") == partition_of("P0001") == 46  # crc32 2766738222 mod 64
    counts = Counter(partition_of(f"P{i:05d}") for i in range(6400))
    assert set(counts) == set(range(PARTITIONS))
    assert min(counts.values()) > 0.6 * 100


def test_fair_shares_sum_to_the_partitions() -> None:
    for k in range(1, 9):
        live = [f"i{j}" for j in range(k)]
        shares = [leases.fair_share(live, me, 64) for me in live]
        assert sum(shares) == 64 and max(shares) - min(shares) <= 1
    assert leases.fair_share([], "alone", 64) == 64


def test_alone_takes_all_a_joiner_gets_its_share_back(db: Database) -> None:
    a = beat(db, "a", {})
    assert len(a.held) == N and a.live == ("a",)
    assert all(e == 1 for e in a.held.values())
    b = beat(db, "b", {})  # joins: all held by a, nothing free yet
    assert b.held == {} and b.quota == N // 2
    a = beat(db, "a", a.held)  # a sees two members and gives half back
    assert len(a.released) == N // 2 and len(a.held) == N // 2
    b = beat(db, "b", b.held)
    assert len(b.held) == N // 2 and set(a.held).isdisjoint(b.held)
    assert all(e == 2 for e in b.held.values())  # a new epoch for each takeover
    assert Counter(owners(db).values()) == {"a": N // 2, "b": N // 2}
    log = db.read_sync(leases.intervals)
    assert leases.overlaps(log) == []
    assert {i.end_reason for i in log if i.ended_at is not None} == {"released"}


def test_a_dead_instance_is_taken_over_only_after_its_lease_on_the_db_clock(db: Database) -> None:
    a = beat(db, "a", {}, lease_ms=60_000)
    b = beat(db, "b", {}, lease_ms=60_000)
    a = beat(db, "a", a.held)
    b = beat(db, "b", b.held)
    assert len(b.held) == N // 2
    # b stops (killed); a's round before b's lease ends takes nothing of b's
    a = beat(db, "a", a.held)
    assert len(a.held) == N // 2 and a.acquired == ()
    # b's last heartbeat with a short lease, then silence
    b = beat(db, "b", b.held, lease_ms=200)
    wait_db_past(db, b.now_ms + 200)
    a = beat(db, "a", a.held)
    assert len(a.held) == N and a.live == ("a",)
    taken = {h.part for h in a.acquired}
    assert taken == set(b.held)
    log = db.read_sync(leases.intervals)
    assert leases.overlaps(log) == []
    ended = {(i.part, i.epoch): i for i in log if i.owner == "b"}
    assert all(i.end_reason == "expired" and i.ended_at == b.now_ms + 200
               for i in ended.values())


def test_renewal_does_not_revive_an_expired_lease(db: Database) -> None:
    a = beat(db, "a", {}, lease_ms=100)
    wait_db_past(db, a.now_ms + 100)
    again = beat(db, "a", a.held)
    # the expired leases were not extended under the old epoch: lost, then re-acquired anew
    assert set(again.lost) == set(a.held)
    assert all(again.held[p] == a.held[p] + 1 for p in a.held)


def test_fence_refuses_a_paused_ex_owner_and_blocks_a_takeover_until_commit(db: Database) -> None:
    a = beat(db, "a", {}, lease_ms=200)
    held = dict(a.held)
    assert db.write_sync(lambda c: leases.fence(c, "a", held)) == set(held)
    wait_db_past(db, a.now_ms + 200)
    # a is paused past its lease: its fence now refuses, before and after a takeover
    assert db.write_sync(lambda c: leases.fence(c, "a", held)) == set()
    b = beat(db, "b", {})
    assert len(b.held) == N
    assert db.write_sync(lambda c: leases.fence(c, "a", held)) == set()
    assert db.write_sync(lambda c: leases.fence(c, "b", b.held)) == set(b.held)
    # while b's emission transaction is open (lease rows locked FOR SHARE), nobody takes
    # them, even once the lease has expired: the takeover waits for the emission's commit
    b = beat(db, "b", b.held, lease_ms=300)
    with db.dedicated() as pg_b, pg_b.transaction():
        ok = leases.fence(Conn(pg_b, Dialect.POSTGRES), "b", b.held)
        assert ok == set(b.held)
        wait_db_past(db, b.now_ms + 300)
        c = beat(db, "c", {})
        assert c.held == {}  # skipped: locked by b's open emission
    c = beat(db, "c", {})
    assert len(c.held) == N  # after b's commit (b's membership expired with its lease)
    log = db.read_sync(leases.intervals)
    emitted = {i.owner for i in log if i.emissions}
    assert emitted == {"a", "b"}
    assert leases.overlaps(log) == []


#: ingest/db/leases.py SCHEMA of the release before the recorded client id (leases v0, 1d4b324),
#: copied verbatim
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_instances (
  instance_id  TEXT PRIMARY KEY,
  started_at   BIGINT NOT NULL,
  heartbeat_at BIGINT NOT NULL,
  expires_at   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_leases (
  part       BIGINT PRIMARY KEY,
  owner      TEXT,
  epoch      BIGINT NOT NULL DEFAULT 0,
  expires_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS partition_lease_log (
  part          BIGINT NOT NULL,
  epoch         BIGINT NOT NULL,
  owner         TEXT   NOT NULL,
  acquired_at   BIGINT NOT NULL,
  ended_at      BIGINT,          -- released, or the lease's expiry when the next owner took it
  end_reason    TEXT,            -- released | expired | restarted
  first_emit_at BIGINT,
  last_emit_at  BIGINT,
  emissions     BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (part, epoch)
);
CREATE INDEX IF NOT EXISTS partition_lease_log_owner ON partition_lease_log (owner, acquired_at);
"""


def _v0_database(url: str) -> None:
    """The leases tables as the previous release left them: version 0, a member "old" whose
    membership expired (a row without a client id), the partitions held by it."""
    with Database(Location.parse(url, default_path=None),  # type: ignore[arg-type]
                  name="leases-v0") as d:
        def make(c: Conn) -> None:
            c.script(migrate.VERSIONS_DDL)
            c.script(V0_SCHEMA)
            c.execute("INSERT INTO schema_versions VALUES ('leases', 0, 1)")
            c.execute(f"INSERT INTO ingest_instances VALUES ('old', 1, {leases.DB_NOW_MS} - 100,"
                      f" {leases.DB_NOW_MS} - 50)")
            c.executemany("INSERT INTO partition_leases VALUES (?, 'old', 1, 0)",
                          [(p,) for p in range(N)])
        d.write_sync(make)


def test_members_record_their_client_id_also_in_a_database_of_the_previous_release(
        postgres_db: str) -> None:
    _v0_database(postgres_db)
    d = Database(Location.parse(postgres_db, default_path=None),  # type: ignore[arg-type]
                 setup=lambda c: leases.setup(c, N), name="leases-upgrade")
    try:
        assert d.read_sync(lambda c: migrate.current(c, "leases")) == 1
        assert "client_id" in d.read_sync(lambda c: c.columns("ingest_instances"))
        # the old member's row is kept (no client id); its partitions are free to take
        a = beat(d, "a", {}, client_id="vitalgate-ingest-a")
        assert len(a.held) == N and a.expired == ("old",) and a.expired_client_ids == {}
        assert client_id_for(a, "old") == "vitalgate-ingest-old"  # derived: none recorded
        # a member with a hand-set client id records it; when it dies, the round says so
        h = beat(d, "hand", {}, lease_ms=200, client_id="operator-chosen")
        assert d.read_sync(lambda c: c.execute(
            "SELECT instance_id, client_id FROM ingest_instances ORDER BY instance_id"
        ).fetchall()) == [("a", "vitalgate-ingest-a"), ("hand", "operator-chosen"), ("old", None)]
        wait_db_past(d, h.now_ms + 200)
        a = beat(d, "a", a.held, client_id="vitalgate-ingest-a")
        assert a.expired == ("hand", "old") and a.expired_client_ids == {"hand": "operator-chosen"}
        assert client_id_for(a, "hand") == "operator-chosen"
        # a restart under another client id replaces the recorded one
        beat(d, "hand", {}, client_id="operator-chose-again")
        assert d.read_sync(lambda c: c.execute(
            "SELECT client_id FROM ingest_instances WHERE instance_id = 'hand'").fetchone()) \
            == ("operator-chose-again",)
    finally:
        d.close()
    # opened again: the migration is not repeated, the version stays
    again = Database(Location.parse(postgres_db, default_path=None),  # type: ignore[arg-type]
                     setup=lambda c: leases.setup(c, N), name="leases-again")
    try:
        assert again.read_sync(lambda c: migrate.current(c, "leases")) == 1
    finally:
        again.close()


def test_overlaps_finds_two_epochs_emitting_at_once() -> None:
    a = leases.Interval(3, 1, "a", 0, 100, "expired", 10, 150, 5)
    b = leases.Interval(3, 2, "b", 120, None, None, 130, 200, 5)
    assert leases.overlaps([a, b]) == [(a, b)]
    ok = leases.Interval(3, 1, "a", 0, 100, "expired", 10, 90, 5)
    assert leases.overlaps([ok, b]) == []


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[int]]] = []

    async def acquired(self, parts: frozenset[int]) -> None:
        self.events.append(("acquired", parts))

    async def released(self, parts: frozenset[int]) -> None:
        self.events.append(("released", parts))


async def test_two_leased_owners_rebalance_and_take_over(postgres_db: str) -> None:
    policy = LeasePolicy(lease_ms=900, margin_ms=200)
    url = Location.parse(postgres_db, default_path=None)  # type: ignore[arg-type]
    dbs = [Database(url, name=f"own{i}") for i in range(2)]
    try:
        a, b = (LeasedOwner(d, name, policy) for d, name in zip(dbs, "ab", strict=True))
        ra, rb = Recorder(), Recorder()
        ta = asyncio.create_task(a.run(ra))
        async with asyncio.timeout(30):
            while len(a.owned()) < PARTITIONS:
                await asyncio.sleep(0.05)
        tb = asyncio.create_task(b.run(rb))
        async with asyncio.timeout(30):
            while len(b.owned()) < PARTITIONS // 2 or len(a.owned()) > PARTITIONS // 2:
                await asyncio.sleep(0.05)
        assert a.owned().isdisjoint(b.owned())
        assert ("released", frozenset(b.owned())) in ra.events or \
            set().union(*(p for k, p in ra.events if k == "released")) >= b.owned()
        # b dies without a word: its heartbeats stop, a takes everything after the lease
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
        async with asyncio.timeout(30):
            while len(a.owned()) < PARTITIONS:
                await asyncio.sleep(0.05)
        # a clean stop gives everything back at once
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        await a.leave()
        assert dbs[0].read_sync(lambda c: c.execute(
            "SELECT COUNT(*) FROM partition_leases WHERE owner IS NOT NULL").fetchone()[0]) == 0
        log = dbs[0].read_sync(leases.intervals)
        assert leases.overlaps(log) == []
    finally:
        for d in dbs:
            d.close()


async def test_sole_owner_owns_everything() -> None:
    sole = SoleOwner("one")
    assert sole.owns("anyone") and len(sole.owned()) == PARTITIONS
    rec = Recorder()
    task = asyncio.create_task(sole.run(rec))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rec.events == [("acquired", frozenset(range(PARTITIONS)))]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

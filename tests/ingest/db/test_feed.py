"""The feed on a real PostgreSQL 15: notifications are delivered at commit (never for a
rollback or a rolled-back savepoint), chunked under the payload limit, read back exactly;
the listener feeds only owned partitions, fans events out, and catches up on takeover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from ingest import feed
from ingest.db.engine import Database, Location
from ingest.ownership import PARTITIONS, partition_of

ROWS = [(f"P{i:05d}", "heart_rate", 60.0 + i / 7, 1_700_000_000_000 + i, 1_700_000_000_500 + i,
         f"{i:012x}", i % 3 or None) for i in range(2000)]


@pytest.fixture
def db(postgres_db: str) -> Iterator[Database]:
    database = Database(Location.parse(postgres_db, default_path=None),  # type: ignore[arg-type]
                        name="feed-test")
    try:
        yield database
    finally:
        database.close()


def test_chunks_stay_under_the_payload_limit_and_round_trip() -> None:
    chunks = feed.encode(ROWS, PARTITIONS)
    assert len(chunks) > 1
    assert all(len(c.encode()) < feed.MAX_PAYLOAD for c in chunks)
    back = [r for c in chunks for r in feed.decode(c)[0]]
    assert [(r.user_code, r.vital, r.value, r.ts, r.received_at, r.device_id, r.seq)
            for r in back] == ROWS
    assert all(r.part == partition_of(r.user_code) for r in back)


def test_unreadable_lines_are_counted_not_raised() -> None:
    rows, bad = feed.decode("1\tP1\theart_rate\t60.0\t1\t2\td1\t7\nnonsense\n"
                            "3\tP3\tspo2\tx\t1\t2\td3\t")
    assert [r.user_code for r in rows] == ["P1"] and bad == 2


def test_delivered_at_commit_only(db: Database) -> None:
    with db.dedicated() as listener:
        listener.execute(f"LISTEN {feed.READINGS}")

        def commit(c: Any) -> None:
            feed.announce(c, ROWS[:3], PARTITIONS)
            with pytest.raises(RuntimeError), c.savepoint():
                feed.announce(c, ROWS[3:5], PARTITIONS)
                raise RuntimeError("rolled back savepoint")

        def rollback(c: Any) -> None:
            feed.announce(c, ROWS[5:8], PARTITIONS)
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            db.write_sync(rollback)
        db.write_sync(commit)
        got = [r.user_code for n in listener.notifies(timeout=2.0, stop_after=5)
               for r in feed.decode(n.payload)[0]]
    assert got == [r[0] for r in ROWS[:3]]


class Owner:
    instance_id = "one"
    partitions = PARTITIONS

    def __init__(self, parts: set[int]) -> None:
        self.parts = parts

    def owns(self, user_code: str) -> bool:
        return partition_of(user_code) in self.parts

    def owns_partition(self, part: int) -> bool:
        return part in self.parts

    def owned(self) -> frozenset[int]:
        return frozenset(self.parts)

    def fence(self, conn: Any, user_codes: Any) -> set[str]:
        return set(user_codes)

    async def run(self, changes: Any) -> None:
        await asyncio.Event().wait()

    async def leave(self) -> None:
        return None


class Scoring:
    def __init__(self) -> None:
        self.scored: list[str] = []
        self.taken: list[frozenset[int]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def score(self, rows: Sequence[feed.Fed]) -> None:
        self.scored += [r.user_code for r in rows]

    async def take(self, parts: frozenset[int]) -> None:
        self.taken.append(parts)

    async def drop(self, parts: frozenset[int]) -> None:
        return None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


async def test_the_listener_feeds_owned_partitions_and_fans_events_out(db: Database) -> None:
    mine = {partition_of(r[0]) for r in ROWS[:40:2]}
    owner = Owner(mine)
    scoring = Scoring()
    f = feed.Feed(db, owner, scoring)
    task = asyncio.create_task(f.run())
    try:
        async with asyncio.timeout(20):
            await f.connected.wait()
        await db.write(lambda c: feed.announce(c, ROWS[:40], PARTITIONS))
        f.publish_event("ews", {"user_code": "P00001", "point": 5})
        expected = [r[0] for r in ROWS[:40] if partition_of(r[0]) in mine]
        async with asyncio.timeout(20):
            while scoring.scored != expected or not any(k == "ews" for k, _ in scoring.events):
                await asyncio.sleep(0.05)
        assert ("ews", {"user_code": "P00001", "point": 5}) in scoring.events
        assert ("readings", {"count": 40}) in scoring.events  # every instance's dashboard
        # a partition taken: its catch-up runs, in order with the notifications
        other = next(p for p in range(PARTITIONS) if p not in mine)
        owner.parts.add(other)
        await f.acquired(frozenset({other}))
        async with asyncio.timeout(20):
            while frozenset({other}) not in scoring.taken:
                await asyncio.sleep(0.05)
        assert f.stats.bad_lines == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _fed(dev: str, seq: int | None, part: int = 1) -> feed.Fed:
    return feed.Fed(part, "P1", "heart_rate", 60.0, 1000 + (seq or 0), 0, dev, seq)


def test_reorder_scores_a_device_in_seq_order_and_never_waits_forever() -> None:
    now = [0.0]
    r = feed.Reorder(hold_ms=3000, clock=lambda: now[0])
    assert [x.seq for x in r.push([_fed("d", 5)])] == [5]  # first seen: accepted
    assert r.push([_fed("d", 7), _fed("d", 8)]) == []  # 6 is still on its way
    assert [x.seq for x in r.push([_fed("d", 6)])] == [6, 7, 8]
    assert [x.seq for x in r.push([_fed("d", 4)])] == [4]  # late: the scorer decides
    assert [x.seq for x in r.push([_fed("e", None)])] == [None]  # unsequenced: never held
    assert r.push([_fed("d", 11)]) == []  # 9 and 10 lost
    now[0] = 2.9
    assert r.expire() == []
    now[0] = 3.0
    assert [x.seq for x in r.expire()] == [11]
    assert r.released_by_timeout == 1 and r.waiting == 0
    assert [x.seq for x in r.push([_fed("d", 12)])] == [12]
    assert [x.seq for x in r.push([_fed("f", 5000)])] == [5000]
    assert [x.seq for x in r.push([_fed("f", 3)])] == [3]  # far below: a new stream
    assert r.push([_fed("f", 5), _fed("d", 14)]) == []  # each waits for its predecessor
    r.forget({1})  # partition given up: nothing held, nothing expected
    assert r.waiting == 0 and [x.seq for x in r.push([_fed("d", 9)])] == [9]


def test_reorder_each_gap_waits_the_hold_from_its_own_oldest_reading() -> None:
    """Two gaps of one device in a row (measured in the failover e2e under load: a dead
    member's share adopted late, then the next reading stored late by a busy instance): the
    second gap's readings wait the whole hold from their arrival, not what was left of the
    first gap's hold, and a timeout releases each gap when its own hold runs out."""
    now = [0.0]
    r = feed.Reorder(hold_ms=3000, clock=lambda: now[0])
    assert [x.seq for x in r.push([_fed("d", 5)])] == [5]
    assert r.push([_fed("d", 8)]) == []  # waits for 6 and 7 from t=0
    now[0] = 2.0
    assert r.push([_fed("d", 12)]) == []  # waits for 9..11 from t=2
    now[0] = 2.5
    assert [x.seq for x in r.push([_fed("d", 6), _fed("d", 7)])] == [6, 7, 8]
    now[0] = 4.9  # the first gap's hold would have run out at 3.0: 12 has waited 2.9 s
    assert r.expire() == []
    assert [x.seq for x in r.push([_fed("d", 9), _fed("d", 10), _fed("d", 11)])] == [
        9, 10, 11, 12]
    assert r.released_by_timeout == 0 and r.waiting == 0
    # two gaps that both time out: each when its own oldest reading has waited the hold
    now[0] = 10.0
    assert r.push([_fed("d", 20)]) == []  # 13..19 lost
    now[0] = 11.0
    assert r.push([_fed("d", 25)]) == []  # 21..24 lost too
    now[0] = 13.0
    assert [x.seq for x in r.expire()] == [20]
    now[0] = 13.9
    assert r.expire() == []
    now[0] = 14.0
    assert [x.seq for x in r.expire()] == [25]
    # one expire() releases every gap whose hold ran out, in seq order
    now[0] = 20.0
    assert r.push([_fed("d", 30)]) == [] and r.push([_fed("d", 40)]) == []
    now[0] = 23.0
    assert [x.seq for x in r.expire()] == [30, 40]
    assert r.released_by_timeout == 4 and r.waiting == 0


def test_reorder_first_waits_and_a_takeover_seeds_where_the_store_left_off() -> None:
    """In the feed a device's first readings come from several instances too: one above seq 0
    waits for its predecessors; a takeover says where each device's seq goes on and hands
    over what the store holds after a hole (ingest.handover)."""
    now = [0.0]
    r = feed.Reorder(hold_ms=3000, first_waits=True, first_hold_ms=1000, clock=lambda: now[0])
    assert r.push([_fed("d", 1)]) == []  # 0 may be committed later by another instance
    assert [x.seq for x in r.push([_fed("d", 0)])] == [0, 1]
    assert r.push([_fed("e", 4)]) == []
    now[0] = 0.9
    assert r.expire() == []
    now[0] = 1.0
    assert [x.seq for x in r.expire()] == [4]  # a device that starts above 0 waits once, briefly
    assert r.push([_fed("e", 7)]) == []  # then a gap waits the whole hold
    now[0] = 3.9
    assert r.expire() == []
    now[0] = 4.0
    assert [x.seq for x in r.expire()] == [7]
    assert [x.seq for x in r.push([_fed("e", 8)])] == [8]
    # a takeover: the store ran to seq 20 of "t", then had 22 and 23 (21 not committed yet)
    taken = feed.Taken({"t": (1, 21)}, [_fed("t", 22), _fed("t", 23)])
    assert r.seed(taken) == []
    assert [x.seq for x in r.push([_fed("t", 20)])] == [20]  # scored already: the scorer decides
    assert [x.seq for x in r.push([_fed("t", 21)])] == [21, 22, 23]
    assert [x.seq for x in r.seed(feed.Taken({"u": (1, 7)}, []))] == []
    assert [x.seq for x in r.push([_fed("u", 7)])] == [7]  # seeded: no wait


class BusyScoring(Scoring):
    """An owner whose first scoring call takes ``busy_s`` (a loaded loop, a long catch-up);
    meanwhile the next notification reaches the queue (``during``)."""

    def __init__(self, busy_s: float, during: Any) -> None:
        super().__init__()
        self.busy_s = busy_s
        self.during = during
        self.seqs: list[int | None] = []

    async def score(self, rows: Sequence[feed.Fed]) -> None:
        first = not self.seqs
        self.seqs += [r.seq for r in rows]
        if first:
            self.during()
            await asyncio.sleep(self.busy_s)


async def test_the_hold_does_not_count_the_time_an_owner_spends_behind_its_queue(
        db: Database) -> None:
    """A reading held for its predecessor, whose notification is already queued while the
    owner is busy longer than the hold: the owner reads the queue before giving up on it, so
    the device is still scored in seq order (timed on the present, the hold released seq 7
    first: the busy owner's own lag counted as the predecessor's)."""
    def line(seq: int) -> str:
        row = ("P1", "heart_rate", 60.0 + seq, 1_000 + seq, 1_500 + seq, "dev", seq)
        return feed.encode([row], PARTITIONS)[0]

    owner = Owner(set(range(PARTITIONS)))
    f: feed.Feed
    scoring = BusyScoring(0.6, lambda: f._offer((feed.READINGS, line(6), time.monotonic())))
    f = feed.Feed(db, owner, scoring)
    f.reorder = feed.Reorder(hold_ms=200, clock=f._progress)
    now = time.monotonic()
    f._offer((feed.READINGS, line(5), now))
    f._offer((feed.READINGS, line(7), now))
    task = asyncio.create_task(f._work())
    try:
        async with asyncio.timeout(20):
            while len(scoring.seqs) < 3:
                await asyncio.sleep(0.05)
        assert scoring.seqs == [5, 6, 7]
        assert f.reorder.released_by_timeout == 0
        # with nothing queued the hold runs on the present: a lost predecessor still times out
        f._offer((feed.READINGS, line(9), time.monotonic()))
        async with asyncio.timeout(20):
            while len(scoring.seqs) < 4:
                await asyncio.sleep(0.05)
        assert scoring.seqs[-1] == 9 and f.reorder.released_by_timeout == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_new_device_waits_the_whole_hold_for_seq_0_while_a_member_is_dead(
        db: Database) -> None:
    """A patient whose stream begins during an outage: its seq 0 may be queued in the dead
    member's broker session until it is adopted (measured 5.6 s after seq 1, past the 5 s
    first wait). While a lease round shows a dead member, a device never seen waits the
    whole hold; once none is, the short first wait again."""
    now = [0.0]
    f = feed.Feed(db, Owner(set(range(PARTITIONS))), Scoring())
    f.reorder = feed.Reorder(hold_ms=20_000, first_waits=True, first_hold_ms=5_000,
                             clock=lambda: now[0])
    f.members_missing(True)
    assert f.reorder.push([_fed("new", 1)]) == []
    now[0] = 19.9
    assert f.reorder.expire() == []  # 5 s would have released it
    assert [x.seq for x in f.reorder.push([_fed("new", 0)])] == [0, 1]
    f.members_missing(False)
    assert f.reorder.push([_fed("other", 3)]) == []
    now[0] = 24.9
    assert [x.seq for x in f.reorder.expire()] == [3]  # the short first wait

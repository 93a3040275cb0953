"""Export marks and the catch-up on both engines (the readings store and the EWS store, real
SQLite files / one PostgreSQL database): a batch enqueued after a newer one advanced the mark,
then a crash, is still caught up (the margin); copies are absorbed by the outbox's dedup keys;
a page never splits one message's rows; another instance's stale mark is raised."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ingest.db import Conn, Database, Location, exports, schema
from ingest.db import ews as ews_store
from ingest.db import outbox as outbox_db
from ingest.db import readings as readings_db
from ingest.db.migrate import current
from ingest.export_catchup import Enqueue, ExportMarks
from ingest.store import StoredReading

T0 = 1_760_000_000_000  # event and processing times of the rows (ms; any fixed instant)
CHANNEL = "hl7"


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    loc = Location.parse(database_url, default_path=tmp_path / "ingest.sqlite3")
    rdb = schema.open_store(loc, now=T0, window=(T0 - 86_400_000, T0 + 86_400_000))
    edb = ews_store.open_store(ews_store.location(database_url, tmp_path))
    try:
        yield rdb, edb
    finally:
        edb.close()
        rdb.close()


def commit(rdb: Database, device: str, seq: int, received_at: int,
           vitals: Sequence[str] = ("heart_rate",)) -> list[StoredReading]:
    rows = [StoredReading(device, "PAT-1", "gw-1", v, 70.0, T0 - 60_000 + seq, seq,
                          "realtime", False, received_at, "", 0) for v in vitals]
    assert all(rdb.write_sync(lambda c: readings_db.insert(c, rows)))
    return rows


def enqueuer(edb: Database, marks: ExportMarks, clock: list[int]) -> Enqueue:
    async def enqueue(rows: Sequence[StoredReading]) -> int | None:
        def write(c: Conn) -> int:
            added = 0
            for r in rows:
                key = f"{r.device_id}/{r.seq}/{r.vital}"
                if outbox_db.enqueue(c, channel=CHANNEL, user_code=str(r.user_code),
                                     dedup_key=key, body=key, now=clock[0]) is not None:
                    added += 1
            marks.advance(c, rows)
            return added
        return await edb.write(write)
    return enqueue


def outbox_keys(edb: Database) -> list[str]:
    return sorted(r["dedup_key"] for r in edb.read_sync(lambda c: outbox_db.rows(c, CHANNEL)))


def marks_for(rdb: Database, edb: Database, clock: list[int], instance: str = "i1",
              margin_ms: int = 120_000, page: int = 500) -> ExportMarks:
    return ExportMarks(CHANNEL, readings=rdb, ews=edb, instance=instance,
                       clock=lambda: clock[0], margin_ms=margin_ms, page=page)


async def test_a_batch_overtaken_then_a_crash_is_caught_up_once(
        stores: tuple[Database, Database]) -> None:
    rdb, edb = stores
    assert edb.read_sync(lambda c: current(c, exports.COMPONENT)) is not None
    clock = [T0]
    first = marks_for(rdb, edb, clock)
    assert await first.catch_up(enqueuer(edb, first, clock)) == 0  # first start: a mark
    a = commit(rdb, "dev-a", 1, T0 + 1_000, ("systolic_bp", "diastolic_bp"))  # received first
    b = commit(rdb, "dev-b", 1, T0 + 30_000)
    assert await first.offer(b, enqueuer(edb, first, clock)) == 1  # B overtakes A...
    clock[0] = T0 + 40_000  # ...and the process dies before A's enqueue
    assert edb.read_sync(lambda c: exports.oldest(c, CHANNEL)) == T0 + 30_000

    again = marks_for(rdb, edb, clock)  # the restart
    assert again.behind
    added = await again.catch_up(enqueuer(edb, again, clock))
    assert added == 2 and again.caught_up_readings == 3 and not again.behind
    assert outbox_keys(edb) == sorted(f"{r.device_id}/1/{r.vital}" for r in a + b)
    # a second restart re-reads, enqueues nothing new
    third = marks_for(rdb, edb, clock)
    assert await third.catch_up(enqueuer(edb, third, clock)) == 0
    assert third.caught_up_readings == 3
    assert len(outbox_keys(edb)) == 3


async def test_without_the_margin_the_overtaken_batch_would_be_lost(
        stores: tuple[Database, Database]) -> None:
    rdb, edb = stores
    clock = [T0]
    m = marks_for(rdb, edb, clock, margin_ms=1_000)
    await m.catch_up(enqueuer(edb, m, clock))
    commit(rdb, "dev-a", 1, T0 + 1_000)
    b = commit(rdb, "dev-b", 1, T0 + 30_000)
    await m.offer(b, enqueuer(edb, m, clock))
    again = marks_for(rdb, edb, clock, margin_ms=1_000)
    await again.catch_up(enqueuer(edb, again, clock))
    assert outbox_keys(edb) == ["dev-b/1/heart_rate"]  # A is older than mark - margin


async def test_pages_keep_a_message_together_and_stale_marks_are_raised(
        stores: tuple[Database, Database]) -> None:
    rdb, edb = stores
    clock = [T0]
    edb.write_sync(lambda c: exports.advance(c, CHANNEL, "gone", T0 - 500_000, T0))
    edb.write_sync(lambda c: exports.advance(c, CHANNEL, "gone", T0 - 900_000, T0))  # no lower
    assert edb.read_sync(lambda c: exports.oldest(c, CHANNEL)) == T0 - 500_000
    for seq in range(3):
        commit(rdb, "dev-a", seq, T0 + 5_000, ("systolic_bp", "diastolic_bp"))  # one message
    commit(rdb, "dev-c", 9, T0 + 6_000)
    page = rdb.read_sync(lambda c: readings_db.received_page(c, T0, 2))
    assert len(page) == 6 and {r.received_at for r in page} == {T0 + 5_000}
    m = marks_for(rdb, edb, clock, page=2)
    assert await m.catch_up(enqueuer(edb, m, clock)) == 7  # from the oldest mark, "gone"'s
    assert m.caught_up_readings == 7
    assert edb.read_sync(lambda c: exports.oldest(c, CHANNEL)) == T0 + 6_000  # all raised


async def test_a_commit_waiting_on_a_catch_up_is_still_enqueued(
        stores: tuple[Database, Database]) -> None:
    """A commit that lands after a catch-up's last read, while that catch-up runs, is enqueued
    once the catch-up is done (it did not see it)."""
    import asyncio

    rdb, edb = stores
    clock = [T0]
    m = marks_for(rdb, edb, clock)
    commit(rdb, "dev-a", 1, T0 + 1_000)
    real = enqueuer(edb, m, clock)
    gate = asyncio.Event()

    async def slow(rows: Sequence[StoredReading]) -> int | None:
        await gate.wait()  # the catch-up has read its (last) page
        return await real(rows)

    catching = asyncio.create_task(m.catch_up(slow))
    await asyncio.sleep(0.2)
    y = commit(rdb, "dev-y", 1, T0 + 2_000)  # committed after the catch-up's read
    offered = asyncio.create_task(m.offer(y, real))
    await asyncio.sleep(0.1)
    gate.set()
    assert await catching == 1
    assert await offered == 1
    assert outbox_keys(edb) == ["dev-a/1/heart_rate", "dev-y/1/heart_rate"]

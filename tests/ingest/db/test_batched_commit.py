"""The group commit's set-based statements (registry, gaps, dead letters): the same rows as
one by one, and on PostgreSQL a number of statements per batch that does not grow with the
batch's devices (round trips per batch, not per device)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest import registry, store
from ingest.db import Location, dead_letters
from vitalgate.contract import Reading, Vitals, mac_from_device_id

T0 = 1_764_547_200_000
DAY = 86_400_000


@pytest.fixture
def db(database_url: str) -> Iterator[store.Database]:
    d = store.Database(Location.parse(database_url, default_path=Path("unused")),
                       window=(T0 - DAY, T0 + DAY))
    try:
        yield d
    finally:
        d.close()


def _items(devices: int, seq: int, gateway: str = "gw") -> list[store.Item]:
    out: list[store.Item] = []
    for i in range(devices):
        dev = f"d061ae{i:06x}"
        r = Reading(device_id=dev, seq=seq, ts=T0 + seq * 1000, user_code=f"P{i}", stream="0123456789abcdef",
                    vitals=Vitals(heart_rate=70 + i % 3, spo2=97))
        out.append(store.ReadingsIn(gateway, dev, [r], T0 + seq * 1000))
    return out


def _commit(db: store.Database, items: list[store.Item], now: int) -> store.CommitResult:
    return db.write_sync(lambda c: store.commit_batch(c, items, now=now, holder="h"))


def test_a_batch_registers_refreshes_and_keeps_api_assignments(db: store.Database) -> None:
    _commit(db, _items(20, 0), T0)
    # the API assigns device 3's patient: MQTT never overrides it
    db.write_sync(lambda c: c.execute(
        "UPDATE devices SET user_code = 'API3', user_code_source = 'api' WHERE device_mac = ?",
        (mac_from_device_id("d061ae000003"),)))
    res = _commit(db, _items(20, 1), T0 + 1000)
    assert len(res.readings) == 40
    assert {r.user_code for r in res.readings if r.device_id == "d061ae000003"} == {"API3"}
    rows = db.read_sync(lambda c: registry.lookup(c, [f"d061ae{i:06x}" for i in range(20)]))
    assert len(rows) == 20
    assert rows["d061ae000003"][1:3] == ("API3", "api")
    assert rows["d061ae000004"][1:3] == ("P4", "status")
    assert {r[3] for r in rows.values()} == {T0 + 1000}  # last_seen: the newest event time
    assert {r[5] for r in rows.values()} == {"gw"}
    # another gateway's readings of them are refused, the owner kept
    res = _commit(db, _items(20, 2, gateway="gw2"), T0 + 2000)
    assert not res.readings and [d.reason for d in res.dead] == ["foreign_device"] * 20


def test_dead_letters_of_a_batch_count_repeats_as_one_by_one(db: store.Database) -> None:
    def letter(payload: bytes, at: int) -> dead_letters.DeadLetter:
        return dead_letters.DeadLetter("t/x", payload, "bad_json", "not JSON", at)

    limits = dead_letters.Limits()
    got = db.write_sync(lambda c: dead_letters.insert_many(
        c, [letter(b"a", 1), letter(b"a", 2), letter(b"b\x00", 3)], limits))
    assert got == [True, False, True]
    got = db.write_sync(lambda c: dead_letters.insert_many(
        c, [letter(b"b\x00", 4), letter(b"c", 5), letter(b"a", 6)], limits))
    assert got == [False, True, False]
    rows = db.read_sync(lambda c: c.execute(
        "SELECT payload, repeats, last_at, received_at FROM dead_letters ORDER BY id").fetchall())
    assert [(bytes(p), n, last, at) for p, n, last, at in rows] == [
        (b"a", 2, 6, 1), (b"b\x00", 1, 4, 3), (b"c", 0, 5, 5)]
    stats = db.read_sync(dead_letters.stats)
    assert (stats.rows, stats.bytes) == (3, 3 * len("t/x") + 3 * len("not JSON") + 4)


def test_statements_per_batch_do_not_grow_with_its_devices(
        db: store.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.location.url is None:
        pytest.skip("round trips are PostgreSQL's cost (SQLite runs in-process)")
    count = [0]
    execute, executemany = psycopg.Connection.execute, psycopg.Cursor.executemany

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        count[0] += 1
        return execute(self, *a, **k)

    def counted_many(self: Any, *a: Any, **k: Any) -> Any:
        count[0] += 1
        return executemany(self, *a, **k)

    def statements(devices: int, seq: int) -> int:
        count[0] = 0
        monkeypatch.setattr(psycopg.Connection, "execute", counted)
        monkeypatch.setattr(psycopg.Cursor, "executemany", counted_many)
        try:
            res = _commit(db, _items(devices, seq), T0 + seq * 1000)
        finally:
            monkeypatch.undo()
        assert len(res.readings) == devices * 2
        return count[0]

    _commit(db, _items(60, 0), T0)  # register every device (claims are per new device)
    many, few = statements(60, 1), statements(5, 2)
    assert many == few and many > 3, (many, few)  # 60 devices cost what 5 cost


def test_two_instances_committing_the_same_devices_never_deadlock(
        db: store.Database, database_url: str) -> None:
    """Two instances' batches of the same two devices, each with a status message of a
    different one first (a status updates its device before the batch's sorted refresh of
    all): measured in the failover e2e as deadlocks, retried, then a reading dead-lettered.
    A gateway status between them is slowed down (a trigger sleeps) so the two transactions
    really interleave. Every device row a commit writes is locked up front, in one order:
    the second waits for the first, both commit."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: its commits never interleave")
    import threading

    from vitalgate.contract import DeviceStatus, GatewayStatus

    _commit(db, _items(2, 0), T0)  # both devices registered to "gw"
    db.write_sync(lambda c: c.script(
        "CREATE FUNCTION slow_gateway() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM pg_sleep(0.5); RETURN NEW; END $$;"
        " CREATE TRIGGER slow_gateway BEFORE INSERT OR UPDATE ON gateways FOR EACH ROW"
        " EXECUTE FUNCTION slow_gateway();"))
    other = store.Database(Location.parse(database_url, default_path=Path("unused")),
                           window=(T0 - DAY, T0 + DAY))

    def batch(first: int, seq: int) -> list[store.Item]:
        dev = f"d061ae{first:06x}"
        return [store.DeviceStatusIn("gw", DeviceStatus(device_id=dev, connected=True), T0),
                store.GatewayStatusIn("gw", GatewayStatus(online=True), T0),
                *_items(2, seq)]

    errors: list[BaseException] = []

    def run(d: store.Database, items: list[store.Item]) -> None:
        try:
            _commit(d, items, T0 + 5000)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(db, batch(1, 1))),
                   threading.Thread(target=run, args=(other, batch(0, 2)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        other.close()
    assert errors == []
    seqs = db.read_sync(lambda c: c.execute(
        "SELECT DISTINCT seq FROM readings ORDER BY seq").fetchall())
    assert [int(s) for s, in seqs] == [0, 1, 2]

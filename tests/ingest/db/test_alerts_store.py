"""The alert tables on both engines (ingest.db.alerts via AlertService): transitions stored
with their audit, one open alert per patient, escalation on an injected clock, and an audit
trail that refuses to be rewritten."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest.alerts import AlertError, AlertPolicy, AlertService, AlertState
from ingest.db import Conn, Database, DatabaseError, Location
from ingest.db import alerts as alert_db
from ingest.db import outbox as outbox_db

T0 = 1_700_000_000_000


@dataclass(frozen=True)
class S:
    user_code: str
    point: int
    risk: str
    result: str
    produce_at: int = T0
    valid: bool = True


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def open_db(url: str, tmp_path: Path) -> Database:
    return Database(Location.parse(url, default_path=tmp_path / "x.sqlite3"),
                    setup=alert_db.setup, name="alerts")


async def test_transitions_are_stored_with_their_audit(database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url, tmp_path)
    clock = Clock()
    published: list[tuple[str, bytes]] = []
    svc = AlertService(db, policy=AlertPolicy(300, 1800), clock=clock, prefix="vg",
                       publish=lambda t, p: published.append((t, p)))
    try:
        [a] = await svc.apply([S("P1", 5, "medium", "sedang"), S("P2", 1, "low", "rendah")])
        assert a.id > 0 and a.state is AlertState.OPENED and a.due_at == T0 + 1_800_000
        # one open alert per patient: a second rise updates the same alert
        clock.now += 1000
        [b] = await svc.apply([S("P1", 8, "high", "tinggi", produce_at=T0 + 900)])
        assert (b.id, b.state, b.severity, b.due_at) == (a.id, AlertState.UPDATED, "high", T0 + 301_000)
        # escalation on the injected clock: not before the deadline, then once
        clock.now = T0 + 300_999
        assert await svc.check() == []
        clock.now = T0 + 301_000
        [e] = await svc.check()
        assert e.state is AlertState.ESCALATED and e.escalated
        assert await svc.check() == []
        clock.now += 5000
        acked = await svc.acknowledge(a.id, "Nurse Ani", "reviewed")
        assert acked.acked_by == "Nurse Ani" and not acked.escalated
        with pytest.raises(AlertError) as err:
            await svc.acknowledge(a.id, "Nurse Budi", None)
        assert err.value.status == 409
        with pytest.raises(AlertError) as err:
            await svc.acknowledge(a.id + 1000, "Nurse Budi", None)
        assert err.value.status == 404
        clock.now += 5000
        [r] = await svc.apply([S("P1", 0, "low", "normal")])
        assert r.state is AlertState.RESOLVED
        # a new rise after resolution is a new alert
        [n] = await svc.apply([S("P1", 3, "low-medium", "sedang")])
        assert n.id != a.id and n.state is AlertState.OPENED

        got = await svc.get(a.id)
        assert got is not None
        alert, audit = got
        assert alert.state is AlertState.RESOLVED
        assert [x["transition"] for x in audit] == ["opened", "updated", "escalated",
                                                    "acknowledged", "resolved"]
        assert audit[3]["who"] == "Nurse Ani" and audit[3]["note"] == "reviewed"
        assert [x["at"] for x in audit] == sorted(x["at"] for x in audit)
        assert audit[1]["produce_at"] == T0 + 900  # event time of the score that rose
        assert [p[0] for p in published] == ["vg/alerts/P1"] * 6
        assert [x.id for x in await svc.find(states=["opened"])] == [n.id]
        assert {x.id for x in await svc.find(user_code="P1")} == {a.id, n.id}
        assert await svc.find(user_code="P2") == []
    finally:
        db.close()


async def test_the_audit_trail_refuses_rewrites(database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url, tmp_path)
    svc = AlertService(db, policy=AlertPolicy(), clock=Clock(), prefix="vg")
    try:
        [a] = await svc.apply([S("P1", 7, "high", "tinggi")])
        for sql in ("UPDATE alert_audit SET who = 'someone else'",
                    "DELETE FROM alert_audit",
                    *(["TRUNCATE alert_audit"] if db.dialect.value == "postgres" else [])):
            with pytest.raises(DatabaseError) as err:
                db.write_sync(lambda c, sql=sql: c.execute(sql))
            assert "append-only" in str(err.value)
        audit = db.read_sync(lambda c: alert_db.audit_of(c, a.id))
        assert len(audit) == 1 and audit[0]["who"] is None
        # the store itself keeps one open alert per patient
        def second(c: Conn) -> int:
            return alert_db.insert_alert(c, {**a.row(), "state": "opened"})

        with pytest.raises(DatabaseError):
            db.write_sync(second)
    finally:
        db.close()


async def test_reopening_the_store_keeps_alerts_and_guards(database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url, tmp_path)
    clock = Clock()
    try:
        [a] = await AlertService(db, policy=AlertPolicy(), clock=clock, prefix="vg").apply(
            [S("P9", 5, "medium", "sedang")])
    finally:
        db.close()
    db = open_db(database_url, tmp_path)  # setup runs again: idempotent
    try:
        svc = AlertService(db, policy=AlertPolicy(), clock=clock, prefix="vg")
        clock.now += 1_800_000
        [e] = await svc.check()
        assert e.id == a.id
        with pytest.raises(DatabaseError):
            db.write_sync(lambda c: c.execute("DELETE FROM alert_audit"))
    finally:
        db.close()


async def test_an_escalation_and_its_webhook_row_commit_together(database_url: str,
                                                                 tmp_path: Path) -> None:
    def setup(c: Conn) -> None:
        outbox_db.setup(c)
        alert_db.setup(c)

    db = Database(Location.parse(database_url, default_path=tmp_path / "x.sqlite3"),
                  setup=setup, name="ews")
    clock = Clock()
    woken: list[str] = []
    svc = AlertService(db, policy=AlertPolicy(300, 1800), clock=clock, prefix="vg",
                       webhook=True, wake_outbox=woken.append)
    try:
        [a] = await svc.apply([S("P1", 9, "high", "tinggi")])
        clock.now += 300_000
        [e] = await svc.check()
        assert e.id == a.id
        rows = db.read_sync(lambda c: c.execute(
            "SELECT channel, user_code, dedup_key, body FROM ews_outbox").fetchall())
        assert [(r[0], r[1], r[2]) for r in rows] == [("alert-webhook", "P1", f"alert:{a.id}:1")]
        assert '"state":"escalated"' in rows[0][3] and woken == ["alert-webhook"]
        # escalated once: a later check neither escalates again nor enqueues another row
        clock.now += 1
        assert await svc.check() == []
    finally:
        db.close()

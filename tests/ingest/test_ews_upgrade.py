"""An ews.sqlite3 made by the previous release (its DDL copied verbatim from
``git show 345d82a:ingest/ews_engine.py`` and ``ingest/outbox.py``) opens with this release:
history, context and outbox rows kept, the pending row delivered, the emission state restored."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from ingest.db import migrate
from ingest.ews_engine import EwsEngine
from ingest.outbox import Outbox
from tests.ingest.ews_support import query, stop, until
from tests.ingest.upstream import FakeTime, Upstream

#: ingest/ews_engine.py SCHEMA at 345d82a
OLD_EWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS patient_context (
    user_code      TEXT PRIMARY KEY,
    consciousness  TEXT    NOT NULL,
    on_oxygen      INTEGER NOT NULL,
    spo2_scale     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ews_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_code   TEXT    NOT NULL,
    point       INTEGER NOT NULL,
    result      TEXT    NOT NULL,
    risk        TEXT    NOT NULL,
    cause       TEXT    NOT NULL,   -- JSON array
    partial     INTEGER NOT NULL,
    missing     TEXT    NOT NULL,   -- JSON array
    components  TEXT    NOT NULL,   -- JSON object
    produce_at  INTEGER NOT NULL,
    emitted_at  INTEGER NOT NULL,
    trigger     TEXT    NOT NULL,   -- why: first, risk-rise, change, heartbeat, context, external
    source      TEXT    NOT NULL    -- vitalgate (scored here) | external (POST /ews)
);
CREATE INDEX IF NOT EXISTS ews_history_patient ON ews_history (user_code, id);
"""

#: ingest/outbox.py SCHEMA at 345d82a
OLD_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS ews_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    history_id  INTEGER,
    user_code   TEXT    NOT NULL,
    body        TEXT    NOT NULL,          -- the Cexup JSON body, sent verbatim
    state       TEXT    NOT NULL,          -- pending | delivered | failed | local
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL DEFAULT 0, -- epoch ms: not before
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    status      INTEGER,                   -- last HTTP status (or body code)
    error       TEXT                       -- last error: response body or exception
);
CREATE INDEX IF NOT EXISTS ews_outbox_state ON ews_outbox (state, user_code, id);
"""

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}
COMPONENTS = {"respiratory_rate": 0, "spo2": 0, "systolic_bp": 0, "heart_rate": 0,
              "consciousness": 0, "temperature": 0, "oxygen": 0}


def old_store(path: Path, t0: int) -> None:
    """Two scored points and an external one, a context, one delivered and one pending row."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_EWS_SCHEMA)
    conn.executescript(OLD_OUTBOX_SCHEMA)
    conn.execute("INSERT INTO patient_context VALUES ('P1', 'A', 0, 1, ?)", (t0,))
    hist = ("INSERT INTO ews_history (user_code, point, result, risk, cause, partial, missing,"
            " components, produce_at, emitted_at, trigger, source) VALUES (?, ?, ?, ?, ?, 0, '[]',"
            " ?, ?, ?, ?, ?)")
    rows = [("P1", 2, "rendah", "low", '["Respiration 22"]',
             {**COMPONENTS, "respiratory_rate": 2}, t0 - 60_000, "first"),
            ("P1", 0, "normal", "low", "[]", COMPONENTS, t0, "change")]
    for user, point, result, risk, cause, comps, at, trigger in rows:
        cur = conn.execute(hist, (user, point, result, risk, cause, json.dumps(comps, sort_keys=True),
                                  at, at, trigger, "vitalgate"))
        body = json.dumps({"user_code": user, "point": point, "result": result,
                           "produce_at": str(at)}, separators=(",", ":"))
        state = "delivered" if trigger == "first" else "pending"
        conn.execute("INSERT INTO ews_outbox (history_id, user_code, body, state, attempts,"
                     " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (cur.lastrowid, user, body, state, 1 if state == "delivered" else 3, at, at))
    conn.execute(hist, ("X9", 5, "sedang", "medium", "[]", "{}", t0, t0, "external", "external"))
    conn.commit()
    conn.close()


async def test_previous_release_ews_store_opens_with_history_and_outbox_kept(tmp_path: Path) -> None:
    clock = FakeTime()
    path = tmp_path / "ews.sqlite3"
    old_store(path, clock.now)
    async with Upstream() as up:
        outbox = Outbox(path, upstream_url=up.url, api_key=up.api_key, clock=clock, sleep=clock.sleep)
        eng = EwsEngine(path, clock=clock, notify=outbox.notify)
        try:
            assert eng.history("P1", page=1, size=10)[1] == 2
            assert eng.get_context("P1")["assumed"] is False
            external = eng.current("X9")
            assert external is not None and external.point == 5
            assert outbox.stats()["depth"] == 1 and outbox.stats()["delivered"] == 1
            rows = query(eng.db, "SELECT channel, dedup_key, state, attempts FROM ews_outbox ORDER BY id")
            assert rows == [("cexup", "legacy:1", "delivered", 1), ("cexup", "legacy:2", "pending", 3)]
            assert eng.db.read_sync(lambda c: migrate.current(c, "outbox")) == 1
            assert eng.db.read_sync(lambda c: migrate.current(c, "ews")) == 2
            # the emission state survived: the unchanged score is not emitted again
            assert eng.warm_start([("P1", k, v, clock.now) for k, v in NORMAL.items()]) == []
            task = asyncio.create_task(outbox.run())
            await until(lambda: outbox.stats()["depth"] == 0, "the pending row's delivery",
                        steps=2000, every_s=0.005)
            await stop(task)
            assert up.accepted == [{"user_code": "P1", "point": 0, "result": "normal",
                                    "produce_at": str(clock.now)}]
            # a new point continues the patient's numbering above the old rows (seq = their id)
            clock.advance(60_000)
            [p] = eng.observe([("P1", k, v, clock.now)
                               for k, v in {**NORMAL, "respiratory_rate": 25.0}.items()])
            assert p.seq == 3 and p.trigger == "risk-rise"
        finally:
            outbox.close()
            eng.close()
    # and it opens again (the migration ran once)
    again = EwsEngine(path, clock=clock)
    assert again.history("P1", page=1, size=10)[1] == 3
    again.close()

"""Retention of the EWS database: history, clinical context and outbox (both engines: ``database_url``).

The rules (processing time): history rows older than the window go, except each patient's
newest point per source (the emission state restored on start); a context goes when its
patient has no history inside the window; delivered, local and failed outbox items go, a
pending one never does.
"""

from __future__ import annotations

from pathlib import Path

from ingest.db import ews as ews_store
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine
from ingest.outbox import Outbox

DAY = 86_400_000
T0 = 1_760_000_000_000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def vitals(user_code: str, ts: int, rr: float) -> list[tuple[str, str, float, int]]:
    return [(user_code, "respiratory_rate", rr, ts), (user_code, "spo2", 97.0, ts),
            (user_code, "systolic_bp", 120.0, ts), (user_code, "heart_rate", 80.0, ts),
            (user_code, "temperature", 37.0, ts)]


def test_history_context_and_outbox_are_bounded_but_state_and_pending_survive(
        database_url: str, tmp_path: Path) -> None:
    clock = Clock(T0)
    db = ews_store.open_store(database_url, tmp_path)
    engine = EwsEngine(db, clock=clock, policy=EmitPolicy(min_interval_ms=0))
    outbox = Outbox(db, upstream_url="http://127.0.0.1:9/never", api_key=None, clock=clock)
    try:
        # "old": three changing scores 40 days ago, then silence; "live": scored then and now
        for i, rr in enumerate((12.0, 22.0, 26.0)):
            clock.now = T0 + i * 60_000
            engine.observe(vitals("old", clock.now, rr))
            engine.observe(vitals("live", clock.now, rr))
        engine.set_context("old", consciousness="C", on_oxygen=False, spo2_scale=1)
        clock.now = T0 + 40 * DAY
        engine.observe(vitals("live", clock.now, 12.0))
        # old: three scores and the context's rescore; live: the same three and today's
        assert engine.history("old", page=1, size=100)[1] == 4
        assert engine.history("live", page=1, size=100)[1] == 4
        pending = outbox.stats()["depth"]
        assert pending == 8  # every emitted point waits for the (unreachable) upstream
        with engine.lock:  # the platform took the live patient's first two points long ago
            engine.db.write_sync(lambda c: c.execute(
                "UPDATE ews_outbox SET state='delivered', updated_at=?"
                " WHERE id IN (SELECT id FROM ews_outbox WHERE user_code='live'"
                " ORDER BY id LIMIT 2)", (T0,)))

        cutoff = clock.now - 30 * DAY
        deleted = engine.retention_step(cutoff, 100)
        assert deleted == {"ews_history": 3 + 3, "patient_context": 1}
        assert engine.retention_step(cutoff, 100) == {}  # nothing left to delete
        # each patient's newest point is kept, so the engine restores its emission state
        assert [p.point for p in engine.history("old", page=1, size=100)[0]] == [
            engine.current("old").point]  # type: ignore[union-attr]
        assert engine.history("live", page=1, size=100)[1] == 1
        assert outbox.retention_step(cutoff, 100) == {"ews_outbox": 2}
        assert outbox.stats()["depth"] == pending - 2 and outbox.stats()["delivered"] == 0
    finally:
        outbox.close()
        engine.close()
    restarted = EwsEngine(db, clock=clock)
    try:
        assert restarted.current("old") is not None
        assert restarted.get_context("old")["consciousness"] != "C"  # its context row went
    finally:
        restarted.close()
        db.close()

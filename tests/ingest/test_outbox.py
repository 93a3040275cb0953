"""The durable outbox against the local Cexup stand-in over real loopback HTTP: outages, refusals,
rate limiting, restarts, on both engines (``database_url``). Time is injected (FakeTime) so a
minute of outage takes milliseconds."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest

from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine, EwsPoint
from ingest.outbox import (
    Outbox,
    RetryPolicy,
    Verdict,
    effective_status,
    retry_after_s,
    verdict_of,
)
from tests.ingest.ews_support import Open, query, stop, until
from tests.ingest.upstream import FakeTime, Upstream
from vitalgate.backoff import Backoff

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}
#: each step changes the score of a patient (emitted at once with min_interval 0)
RR_STEPS = (16.0, 22.0, 25.0, 10.0, 18.0)


def make(store: Open, clock: FakeTime, up: Upstream | None, **kw: object) -> tuple[EwsEngine, Outbox]:
    db = store()
    outbox = Outbox(db, upstream_url=up.url if up else None, api_key=up.api_key if up else None,
                    clock=clock, sleep=clock.sleep, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    eng = EwsEngine(db, clock=clock, policy=EmitPolicy(min_interval_ms=0), notify=outbox.notify)
    return eng, outbox


def feed(eng: EwsEngine, clock: FakeTime, patients: tuple[str, ...]) -> dict[str, list[EwsPoint]]:
    """Every patient goes through RR_STEPS: one emitted point per step and patient."""
    out: dict[str, list[EwsPoint]] = {p: [] for p in patients}
    for rr in RR_STEPS:
        for patient in patients:
            vitals = {**NORMAL, "respiratory_rate": rr}
            points = eng.observe([(patient, k, v, clock.now) for k, v in vitals.items()])
            out[patient] += points
        clock.advance(1_000)
    assert all(len(v) == len(RR_STEPS) for v in out.values())
    return out


async def test_outage_of_a_minute_then_every_point_arrives_once_in_order(store: Open) -> None:
    clock = FakeTime()
    async with Upstream() as up:
        await up.go_down()
        eng, outbox = make(store, clock, up)
        task = asyncio.create_task(outbox.run())
        start = clock.now
        sent = feed(eng, clock, ("P1", "P2", "P3"))
        await until(lambda: clock.now - start >= 60_000, "a minute of outage")
        down_attempts = outbox.stats()["attempts"]
        assert down_attempts >= 3 and outbox.stats()["delivered"] == 0
        assert outbox.stats()["depth"] == 15
        # backoff: 1, 2, 4, ... s (less up to 20 % jitter), never above 60 s
        waits = [s for s in clock.sleeps if s > 0]
        assert waits[0] <= 1.0 and max(waits) <= 60.0 and waits[2] > waits[0]
        await up.come_up()
        await until(lambda: outbox.stats()["depth"] == 0, "delivery after the outage")
        await stop(task)
        for patient, points in sent.items():
            assert up.accepted_for(patient) == [p.to_cexup() for p in points]  # in order, once
        assert len(up.accepted) == 15
        assert outbox.stats()["delivered"] == 15 and outbox.stats()["retried"] >= 3
        outbox.close()
        eng.close()


async def test_a_refused_item_fails_without_retry_and_the_next_proceeds(store: Open) -> None:
    clock = FakeTime()
    async with Upstream() as up:
        up.fail(400, times=1, body={"code": 400, "message": "point out of range"})
        eng, outbox = make(store, clock, up, retry=RetryPolicy(concurrency=1))
        sent = feed(eng, clock, ("P1",))
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["depth"] == 0, "the queue to drain")
        await stop(task)
        assert up.accepted == [p.to_cexup() for p in sent["P1"][1:]]
        [failed] = outbox.failed()
        assert failed["status"] == 400 and "point out of range" in failed["error"]
        assert failed["body"] == sent["P1"][0].to_cexup() and failed["attempts"] == 1
        assert outbox.stats()["failed"] == 1 and outbox.stats()["retried"] == 0
        assert len(up.requests) == len(RR_STEPS)  # the refused one was not sent again
        # after fixing the cause, an operator can requeue the refused items
        assert outbox.requeue_failed() == 1
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["depth"] == 0, "the requeued item")
        await stop(task)
        assert up.accepted[-1] == sent["P1"][0].to_cexup()
        outbox.close()
        eng.close()


@pytest.mark.parametrize(("status", "retry_after"), [(429, "7"), (503, "7"), (408, None), (500, None)])
async def test_retryable_statuses_are_retried(store: Open, status: int, retry_after: str | None) -> None:
    clock = FakeTime()
    async with Upstream() as up:
        up.fail(status, times=2, retry_after=retry_after)
        eng, outbox = make(store, clock, up)
        sent = feed(eng, clock, ("P1",))
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["depth"] == 0, "delivery")
        await stop(task)
        assert up.accepted == [p.to_cexup() for p in sent["P1"]]
        assert [r.status for r in up.requests[:3]] == [status, status, 200]
        assert outbox.stats()["retried"] == 2 and outbox.stats()["failed"] == 0
        if retry_after:
            assert clock.sleeps.count(7.0) == 2  # Retry-After honoured, instead of 1 s, 2 s
        else:
            assert 7.0 not in clock.sleeps
        outbox.close()
        eng.close()


async def test_restart_resumes_pending_items(store: Open) -> None:
    clock = FakeTime()
    async with Upstream() as up:
        await up.go_down()
        eng, first = make(store, clock, up)
        sent = feed(eng, clock, ("P1", "P2"))
        task = asyncio.create_task(first.run())
        await until(lambda: first.stats()["attempts"] >= 2, "failed attempts")
        await stop(task)
        first.close()
        eng.close()
        await up.come_up()
        _, second = make(store, clock, up)  # a new process on the same database
        assert second.stats()["depth"] == 10
        task = asyncio.create_task(second.run())
        await until(lambda: second.stats()["depth"] == 0, "delivery after restart")
        await stop(task)
        for patient, points in sent.items():
            assert up.accepted_for(patient) == [p.to_cexup() for p in points]
        second.close()


async def test_success_code_as_string_and_refusal_inside_a_200(store: Open) -> None:
    clock = FakeTime()
    async with Upstream(code_as_string=True) as up:
        up.fail(200, times=1, body={"code": "422", "success": False, "message": "unknown user"})
        eng, outbox = make(store, clock, up)
        feed(eng, clock, ("P1",))
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["depth"] == 0, "delivery")
        await stop(task)
        assert outbox.stats()["delivered"] == 4 and outbox.failed()[0]["status"] == 422
        outbox.close()
        eng.close()


async def test_wrong_api_key_is_refused_and_visible(store: Open) -> None:
    clock = FakeTime()
    async with Upstream(api_key="right") as up:
        db = store()
        outbox = Outbox(db, upstream_url=up.url, api_key="wrong", clock=clock, sleep=clock.sleep)
        eng = EwsEngine(db, clock=clock, notify=outbox.notify)
        eng.observe([("P1", "heart_rate", 72.0, clock.now)])
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["failed"] == 1, "the refusal")
        await stop(task)
        assert outbox.failed()[0]["status"] == 401 and up.accepted == []
        outbox.close()
        eng.close()


def test_classification_and_headers() -> None:
    assert verdict_of(200) is Verdict.DELIVERED and verdict_of(204) is Verdict.DELIVERED
    assert verdict_of(429) is Verdict.RETRY_ALL and verdict_of(503) is Verdict.RETRY_ALL
    assert verdict_of(500) is Verdict.RETRY_ITEM and verdict_of(408) is Verdict.RETRY_ITEM
    assert verdict_of(400) is Verdict.FAILED and verdict_of(404) is Verdict.FAILED
    assert effective_status(200, '{"code": "200"}') == 200
    assert effective_status(200, '{"code": 200}') == 200
    assert effective_status(200, "") == 200 and effective_status(201, "not json") == 201
    assert effective_status(200, '{"code": "400"}') == 400
    assert effective_status(503, '{"code": 200}') == 503
    assert retry_after_s("12", 0) == 12.0 and retry_after_s(None, 0) is None
    assert retry_after_s("soon", 0) is None
    assert retry_after_s("Thu, 01 Jan 1970 00:01:00 GMT", 0) == 60.0
    policy = RetryPolicy()
    rng = random.Random(1)
    delays = [policy.delay_s(n, rng) for n in range(1, 10)]
    assert all(0.8 * min(60, 2 ** (n - 1)) <= d <= min(60, 2 ** (n - 1))
               for n, d in zip(range(1, 10), delays, strict=True))
    with pytest.raises(ValueError, match="invalid backoff"):
        RetryPolicy(backoff=Backoff(jitter=1.5))
    with pytest.raises(ValueError, match="initial_s > 0"):
        RetryPolicy(backoff=Backoff(initial_s=0.0))


def test_outbox_rows_are_never_lost_on_a_failed_transaction_sqlite(tmp_path: Path) -> None:
    """SQLite only: another process's connection holding the file's write lock."""
    clock = FakeTime()
    eng = EwsEngine(tmp_path / "ews.sqlite3", clock=clock)
    # another connection holds the write lock: the engine's transaction cannot commit
    other = sqlite3.connect(tmp_path / "ews.sqlite3", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    writer = eng.db._writer
    assert writer is not None
    writer.execute("PRAGMA busy_timeout=10")
    with pytest.raises(sqlite3.OperationalError):
        eng.observe([("P1", "heart_rate", 72.0, clock.now)])
    other.execute("ROLLBACK")
    assert eng.current("P1") is None  # nothing recorded in memory either
    clock.advance(1_000)
    [p] = eng.tick()  # the next tick emits what the failed transaction could not record
    assert p.trigger == "first" and p.produce_at == clock.now - 1_000
    db = sqlite3.connect(tmp_path / "ews.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM ews_history").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM ews_outbox").fetchone() == (1,)
    eng.close()


async def test_slow_upstream_times_out_and_is_retried(store: Open) -> None:
    clock = FakeTime()
    async with Upstream(delay_s=0.3) as up:  # answers after 0.3 s; the outbox gives up at 0.1 s
        db = store()
        outbox = Outbox(db, upstream_url=up.url, api_key=up.api_key, clock=clock, sleep=clock.sleep,
                        retry=RetryPolicy(timeout_s=0.1))
        eng = EwsEngine(db, clock=clock, notify=outbox.notify)
        [p] = eng.observe([("P1", "heart_rate", 72.0, clock.now)])
        task = asyncio.create_task(outbox.run())
        await until(lambda: outbox.stats()["attempts"] >= 2, "timed-out attempts")
        assert outbox.stats()["delivered"] == 0
        assert "Timeout" in str(query(db, "SELECT error FROM ews_outbox")[0][0])
        up.delay_s = 0.0
        await until(lambda: outbox.stats()["delivered"] == 1, "delivery once the upstream is quick")
        await stop(task)
        # at-least-once: the platform may have processed a timed-out request as well
        assert up.accepted[-1] == p.to_cexup() and set(map(str, up.accepted)) == {str(p.to_cexup())}
        outbox.close()
        eng.close()

"""The outbox's channels, on both engines: a channel added to the engine gets every EWS point in
the history row's transaction, is delivered by its own Transport beside Cexup's, keeps its
patients' order through a retry, refuses a dedup key twice, counts per channel, and a
transport that raises does not stop its channel or the others."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from ingest.db import outbox as table
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine, EwsPoint
from ingest.outbox import Outbox, Outcome, RetryPolicy, Row
from tests.ingest.ews_support import Open, query, until
from tests.ingest.upstream import FakeTime, Upstream

NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "temperature": 36.8,
          "respiratory_rate": 16.0}


class Recorder:
    """A Transport: answers from a script (default delivered), records what it was sent."""

    def __init__(self, script: list[Outcome | Exception] | None = None,
                 clock: Callable[[], int] = lambda: 0) -> None:
        self.script = list(script or [])
        self.clock = clock
        self.sent: list[Row] = []
        self.at: list[int] = []  #: the clock at each send
        self.entered = 0

    async def __aenter__(self) -> Recorder:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, row: Row) -> Outcome:
        self.sent.append(row)
        self.at.append(self.clock())
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return Outcome.delivered(200)


def render(p: EwsPoint) -> dict[str, Any] | None:
    """A stand-in for a FHIR/HL7 rendering: only scores above 0 are sent."""
    return {"patient": p.user_code, "score": p.point} if p.point > 0 else None


async def test_a_second_channel_is_delivered_beside_cexup_in_order(store: Open) -> None:
    clock = FakeTime()
    db = store()
    fhir = Recorder([Outcome.retry("busy", status=503, after_s=2.0), RuntimeError("a bug")], clock)
    async with Upstream() as up:
        outbox = Outbox(db, upstream_url=up.url, api_key=up.api_key, clock=clock,
                        sleep=clock.sleep, rng=random.Random(3))
        outbox.register("fhir", fhir, retry=RetryPolicy(concurrency=2))
        with pytest.raises(ValueError, match="registered already"):
            outbox.register("fhir", Recorder())
        eng = EwsEngine(db, clock=clock, policy=EmitPolicy(min_interval_ms=0), notify=outbox.notify)
        eng.add_channel("fhir", render)
        emitted: list[EwsPoint] = []
        for rr in (16.0, 22.0, 25.0, 10.0):  # 0, 2, 3, 3: each a change
            for patient in ("P1", "P2"):
                emitted += eng.observe([(patient, k, v, clock.now)
                                        for k, v in {**NORMAL, "respiratory_rate": rr}.items()])
            clock.advance(1_000)
        task = asyncio.create_task(outbox.run())
        try:
            await until(lambda: outbox.stats()["depth"] == 0 and outbox.stats("fhir")["depth"] == 0,
                        "both channels to drain")
            with pytest.raises(RuntimeError, match=r"before Outbox\.run"):
                outbox.register("hl7", Recorder())
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        metrics = outbox.all_metrics()
    assert len(up.accepted) == len(emitted)  # cexup: every point
    wanted = [p for p in emitted if p.point > 0]
    for patient in ("P1", "P2"):
        ids = [r.id for r in fhir.sent if r.user_code == patient]
        # retries of a row come before the patient's next row: never a later one first
        assert ids == sorted(ids)
        bodies = {r.id: json.loads(r.body) for r in fhir.sent}
        assert [bodies[i]["score"] for i in dict.fromkeys(ids)] == [
            p.point for p in wanted if p.user_code == patient]
    assert metrics["fhir"]["delivered"] == len(wanted) and metrics["fhir"]["retried"] == 2
    assert metrics["fhir"]["attempts"] == len(wanted) + 2 and metrics["cexup"]["retried"] == 0
    assert metrics["fhir"]["in_flight"] == 0 and fhir.entered == 1
    # the Retry-After of the 503 is honoured: that row is not sent again within 2 s
    first = fhir.sent[0].id
    [t0, t1, *_] = [t for r, t in zip(fhir.sent, fhir.at, strict=True) if r.id == first]
    assert t1 - t0 >= 2_000
    rows = query(db, "SELECT channel, dedup_key, history_id FROM ews_outbox WHERE channel = 'fhir'")
    history = {int(r[0]) for r in query(db, "SELECT id FROM ews_history WHERE point > 0")}
    assert {int(h) for _, _, h in rows} == history  # one fhir row per sent point, same txn
    assert all(k == f"ews:{h}" for _, k, h in rows)
    eng.close()


def test_the_same_dedup_key_twice_is_one_row(store: Open) -> None:
    db = store()

    def enqueue_twice(c: Any) -> tuple[int | None, int | None]:
        first = table.enqueue(c, channel="hl7", user_code="P1", dedup_key="ORU-1", body="MSH|x",
                              now=1)
        again = table.enqueue(c, channel="hl7", user_code="P1", dedup_key="ORU-1", body="MSH|y",
                              now=2)
        return first, again

    first, again = db.write_sync(enqueue_twice)
    assert first is not None and again is None
    # the same key on another channel is another message
    other = db.write_sync(lambda c: table.enqueue(c, channel="fhir", user_code="P1",
                                                  dedup_key="ORU-1", body="{}", now=3))
    assert other is not None and other != first
    assert query(db, "SELECT channel, body FROM ews_outbox ORDER BY id") == [
        ("hl7", "MSH|x"), ("fhir", "{}")]
    with pytest.raises(ValueError, match="NUL"):
        db.write_sync(lambda c: table.enqueue(c, channel="hl7", user_code="P1", dedup_key="k",
                                              body="a\x00b", now=4))


class FailsToStart(Recorder):
    """A transport whose first start fails (e.g. its server's certificate cannot be read)."""

    async def __aenter__(self) -> Recorder:
        self.entered += 1
        if self.entered == 1:
            raise OSError("cannot start")
        return self


async def test_a_channel_that_cannot_start_retries_and_the_others_deliver(store: Open) -> None:
    clock = FakeTime()
    db = store()
    broken, fine = FailsToStart(), Recorder()
    outbox = Outbox(db, clock=clock, sleep=clock.sleep)
    outbox.register("broken", broken, retry=RetryPolicy(idle_poll_s=0.01))
    outbox.register("fine", fine, retry=RetryPolicy(idle_poll_s=0.01))
    assert outbox.enabled is False and outbox.channels == ("broken", "fine")

    def enqueue(c: Any) -> None:
        for ch in ("broken", "fine"):
            table.enqueue(c, channel=ch, user_code="P1", dedup_key="m1", body="hello", now=clock.now)

    db.write_sync(enqueue)
    task = asyncio.create_task(outbox.run())
    try:
        await until(lambda: outbox.stats("fine")["delivered"] == 1, "the fine channel")
        await until(lambda: outbox.stats("broken")["delivered"] == 1, "the broken one, restarted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert broken.entered == 2 and [r.body for r in fine.sent] == ["hello"]

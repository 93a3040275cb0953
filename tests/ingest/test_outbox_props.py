"""Property (hypothesis): whatever the platform answers, in whatever order, every outbox row ends
delivered or failed, each patient's delivered points arrive in order and exactly once, and only
refusals (4xx) fail. On both engines (``database_url``): each example starts on an emptied store."""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.db import Conn
from ingest.db import ews as ews_store
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine
from ingest.outbox import Outbox, RetryPolicy
from tests.ingest.ews_support import query, stop, until
from tests.ingest.upstream import FakeTime, Upstream

ANSWERS = st.sampled_from([200, 200, 200, 400, 408, 422, 429, 500, 503])


def _empty(c: Conn) -> None:
    for name in ("ews_outbox", "ews_history", "patient_context"):
        c.execute(f"DELETE FROM {name}")


async def _scenario(database_url: str, answers: list[int], rrs: list[tuple[str, float]],
                    concurrency: int) -> None:
    clock = FakeTime()
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url if database_url.startswith("postgres") else None
        db = ews_store.open_store(url, Path(tmp))
        db.write_sync(_empty)
        async with Upstream() as up:
            for status in answers:
                up.fail(status, times=1, retry_after="3" if status == 429 else None)
            outbox = Outbox(db, upstream_url=up.url, api_key=up.api_key, clock=clock,
                            sleep=clock.sleep, rng=random.Random(0),
                            retry=RetryPolicy(concurrency=concurrency))
            eng = EwsEngine(db, clock=clock, policy=EmitPolicy(min_interval_ms=0),
                            notify=outbox.notify)
            task = asyncio.create_task(outbox.run())
            emitted = []
            for patient, rr in rrs:
                emitted += eng.observe([(patient, "respiratory_rate", rr, clock.now)])
                clock.advance(1_000)
                await asyncio.sleep(0)
            await until(lambda: outbox.stats()["depth"] == 0, "every row delivered or failed",
                        steps=5000)
            await stop(task)
            stats = outbox.stats()
            outbox.close()
            eng.close()
        rows = query(db, "SELECT user_code, body, state, status FROM ews_outbox ORDER BY id")
        db.close()
    assert stats["depth"] == 0 and len(rows) == len(emitted)
    assert stats["delivered"] + stats["failed"] == len(emitted)
    for _user, _body, state, status in rows:
        assert state in ("delivered", "failed")
        if state == "failed":
            assert 400 <= status < 500 and status not in (408, 429)
    for patient in {p.user_code for p in emitted}:
        delivered = [json.loads(b) for u, b, s, _ in rows if u == patient and s == "delivered"]
        assert up.accepted_for(patient) == delivered  # in order, exactly once


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    answers=st.lists(ANSWERS, max_size=15),
    rrs=st.lists(st.tuples(st.sampled_from(["P1", "P2", "P3"]),
                           st.sampled_from([10.0, 16.0, 22.0, 25.0])), min_size=1, max_size=12),
    concurrency=st.integers(1, 3),
)
def test_any_answers_end_delivered_in_order_or_refused(
    database_url: str, answers: list[int], rrs: list[tuple[str, float]], concurrency: int
) -> None:
    asyncio.run(_scenario(database_url, answers, rrs, concurrency))

"""Two instances delivering one outbox on one PostgreSQL (``FOR UPDATE SKIP LOCKED`` claims with
leases), to a local HTTP upstream on loopback: every item once, each patient's items in order
and never two of a patient in flight at once; an instance SIGKILLed mid-delivery leaves its
claim, and the other instance delivers the item after the lease expires."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ingest.db import Conn, Database, Location
from ingest.db import ews as ews_store
from ingest.db import outbox as table
from ingest.outbox import Outbox, RetryPolicy
from vitalgate.broker import free_port


@dataclass
class Sink:
    """POST /ews: records bodies in arrival order; counts a patient's requests in flight."""

    delay_s: float = 0.0
    hold: set[str] = field(default_factory=set)  #: user_codes whose requests wait for release
    released: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: list[web.Request] = field(default_factory=list)  #: held requests
    arrived: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    overlaps: int = 0  #: a patient's request arrived while another of it was in flight
    port: int = 0

    async def post(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text())
        user = str(body["user_code"])
        self.arrived.append(body)
        if self.in_flight[user]:
            self.overlaps += 1
        self.in_flight[user] += 1
        try:
            if user in self.hold:
                self.waiting.append(request)
                await self.released.wait()
                if request.transport is None or request.transport.is_closing():
                    raise web.HTTPServiceUnavailable()  # its client died meanwhile: not taken
            await asyncio.sleep(self.delay_s)
            self.accepted.append(body)
            return web.json_response({"code": 200, "success": True, "message": "Ok"})
        finally:
            self.in_flight[user] -= 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(sink: Sink) -> AsyncIterator[Sink]:
    app = web.Application()
    app.router.add_post("/ews", sink.post)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sink.port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", sink.port)
    await site.start()
    try:
        yield sink
    finally:
        await runner.cleanup()


def enqueue_all(db: Database, items: list[tuple[str, int]], now: int) -> None:
    def write(c: Conn) -> None:
        for user, n in items:
            table.enqueue(c, channel="cexup", user_code=user, dedup_key=f"{user}:{n}",
                          body={"user_code": user, "point": n, "result": "normal",
                                "produce_at": str(n)}, now=now)
    db.write_sync(write)


async def until(cond: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def epoch_ms() -> int:
    import time
    return time.time_ns() // 1_000_000


async def test_two_instances_deliver_each_item_once_in_patient_order(postgres_db: str, tmp_path: Any) -> None:
    first = ews_store.open_store(postgres_db, tmp_path)
    second = ews_store.open_store(postgres_db, tmp_path)  # another instance's view
    patients = [f"P{i:02d}" for i in range(12)]
    async with serving(Sink(delay_s=0.005)) as sink:
        outboxes = [Outbox(db, upstream_url=sink.url, api_key="k", instance_id=name,
                           retry=RetryPolicy(concurrency=3, idle_poll_s=0.05))
                    for db, name in ((first, "a"), (second, "b"))]
        tasks = [asyncio.create_task(o.run()) for o in outboxes]
        try:
            for n in range(6):  # enqueued while both deliver, alternately through each instance
                enqueue_all((first, second)[n % 2], [(p, n) for p in patients], epoch_ms())
                for o in outboxes:
                    o.notify()
                await asyncio.sleep(0.01)
            await until(lambda: outboxes[0].stats()["depth"] == 0, "the outbox to drain")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        attempts = [o.stats()["attempts"] for o in outboxes]
        stats = outboxes[0].metrics()
    first.close()
    second.close()
    total = len(patients) * 6
    # once each: no duplicate arrival, no duplicate attempt across the two instances
    assert len(sink.arrived) == total and sum(attempts) == total
    assert all(a > 0 for a in attempts), f"both instances delivered: {attempts}"
    by_patient: dict[str, list[int]] = defaultdict(list)
    for body in sink.accepted:
        by_patient[body["user_code"]].append(body["point"])
    assert by_patient == {p: list(range(6)) for p in patients}  # in order per patient
    assert sink.overlaps == 0  # never two of a patient in flight, across instances
    assert stats["delivered"] == total and stats["in_flight"] == 0


_INSTANCE = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from ingest.db import ews as ews_store
    from ingest.outbox import Outbox, RetryPolicy
    url, upstream, tmp = sys.argv[1:4]
    db = ews_store.open_store(url, Path(tmp))
    outbox = Outbox(db, upstream_url=upstream, api_key="k", instance_id="doomed",
                    lease_ms=1500, retry=RetryPolicy(timeout_s=600, idle_poll_s=0.05))
    asyncio.run(outbox.run())
""")


async def test_an_item_claimed_by_a_killed_instance_is_redelivered_after_its_lease(
        postgres_db: str, tmp_path: Any) -> None:
    db = ews_store.open_store(postgres_db, tmp_path)
    enqueue_all(db, [("HOLD", 1), ("HOLD", 2), ("FREE", 1)], epoch_ms())
    async with serving(Sink(hold={"HOLD"})) as sink:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        doomed = subprocess.Popen([sys.executable, "-c", _INSTANCE, postgres_db, sink.url,
                                   str(tmp_path)], env=env)
        try:
            await until(lambda: any(b["user_code"] == "HOLD" for b in sink.arrived),
                        "the doomed instance's request")
            await until(lambda: any(r["dedup_key"] == "FREE:1" and r["state"] == "delivered"
                                    for r in table_rows(db)),
                        "the doomed instance to record its other item (not held behind HOLD)")
            doomed.send_signal(signal.SIGKILL)  # mid-delivery: no chance to release its claim
            doomed.wait(timeout=30)
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait(timeout=30)
        [held] = [r for r in table_rows(db) if r["dedup_key"] == "HOLD:1"]
        assert held["lease_owner"] == "doomed" and held["state"] == "pending"
        await until(lambda: all(r.transport is None or r.transport.is_closing()
                                for r in sink.waiting), "the killed client's connection to close")
        sink.hold.clear()  # the upstream is fine; the request died with its instance
        sink.released.set()  # (its handler ends: its socket is closed, not left to the GC)
        survivor = Outbox(db, upstream_url=sink.url, api_key="k", instance_id="survivor",
                          retry=RetryPolicy(idle_poll_s=0.05))
        task = asyncio.create_task(survivor.run())
        try:
            await until(lambda: survivor.stats()["depth"] == 0, "redelivery after the lease")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    rows = {r["dedup_key"]: r for r in table_rows(db)}
    lost = survivor.metrics()["lost_leases"]
    db.close()
    assert [b["point"] for b in sink.accepted if b["user_code"] == "HOLD"] == [1, 2]  # in order
    assert [b["user_code"] for b in sink.accepted].count("FREE") == 1
    assert all(r["state"] == "delivered" and r["lease_owner"] is None for r in rows.values())
    assert rows["HOLD:1"]["attempts"] == 1  # the killed attempt was never recorded
    assert lost == 0


def table_rows(db: Database) -> list[dict[str, Any]]:
    return db.read_sync(lambda c: table.rows(c, "cexup"))


def test_a_lease_is_on_the_database_clock_so_a_clock_ahead_takes_nothing_held(
        postgres_db: str) -> None:
    """Instance B's clock runs an hour ahead of A's (and of the database's): B must not take the
    row A leased a second ago. The lease is live on the database's clock; ``now`` only says
    which rows are due."""
    db = Database(Location.parse(postgres_db, default_path=Path("unused")), name="outbox-clock",
                  setup=ews_store.setup)
    try:
        now_a = epoch_ms()
        enqueue_all(db, [("P1", 1)], now_a)
        taken_a = db.write_sync(lambda c: table.claim(c, "cexup", now=now_a, limit=5, owner="A",
                                                      lease_ms=30_000))
        assert [r.dedup_key for r in taken_a] == ["P1:1"]
        now_b = now_a + 3_600_000
        taken_b = db.write_sync(lambda c: table.claim(c, "cexup", now=now_b, limit=5, owner="B",
                                                      lease_ms=30_000))
        assert taken_b == []  # with the instance's clock (the previous rule) B took it
        # a lease that has run out on the database's clock is taken by anyone
        db.write_sync(lambda c: c.execute("UPDATE ews_outbox SET lease_until = lease_until - 31000"))
        again = db.write_sync(lambda c: table.claim(c, "cexup", now=now_a, limit=5, owner="B",
                                                    lease_ms=30_000))
        assert [r.dedup_key for r in again] == ["P1:1"]
    finally:
        db.close()

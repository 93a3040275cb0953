"""Channel ``hl7`` of the durable outbox on both store engines (SQLite, PostgreSQL), delivering
to a real MLLP receiver: down then up loses nothing and keeps each patient's order; AR is failed
at once and never retried; AE is retried up to its bound, then failed; both stay visible."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ingest.db import ews as ews_store
from ingest.hl7.channel import NAME, Hl7Channel
from ingest.hl7.delivery import Hl7Transport, enqueue_messages
from ingest.hl7.mllp import MllpClient
from ingest.hl7.oru import DeviceInfo, Hl7Message, OruConfig, ReadingGroup, build_reading
from ingest.hl7.transport import AckPolicy
from ingest.outbox import Outbox, RetryPolicy
from tests.support.hl7_receiver import Receiver, running
from tests.support.ingest_service import eventually
from vitalgate.backoff import Backoff
from vitalgate.broker import free_port

TS = 1_764_631_080_000
#: fast backoff for the tests (the service's policy: 1 s doubling to 60 s)
FAST = RetryPolicy(backoff=Backoff(initial_s=0.05, max_s=0.2, jitter=0.2, shorten_only=True),
                   timeout_s=5.0, concurrency=1, idle_poll_s=0.1)


def message(user: str, seq: int) -> Hl7Message:
    g = ReadingGroup(user_code=user, device_id="d061aed458" + user[-1].rjust(2, "0"),
                     gateway_id="gw-1", ts=TS + seq * 1000, seq=seq, source="realtime",
                     vitals=(("spo2", 90.0 + seq % 10),), device=DeviceInfo(model="E86"))
    return build_reading(g, OruConfig(), TS)


@asynccontextmanager
async def outbox_on(where: str | Path, tmp_path: Path, port: int,
                    policy: AckPolicy | None = None) -> AsyncIterator[tuple[Outbox, Hl7Channel]]:
    db = ews_store.open_store(where if isinstance(where, Path) else str(where), tmp_path)
    channel = Hl7Channel(OruConfig(), clock=lambda: TS, policy=policy)
    outbox = Outbox(db)
    outbox.register(NAME, Hl7Transport(MllpClient("127.0.0.1", port, ack_timeout_s=2),
                                       channel), retry=FAST)
    task = asyncio.create_task(outbox.run())
    try:
        yield outbox, channel
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        db.close()


async def enqueue(outbox: Outbox, messages: list[Hl7Message]) -> int:
    n = await outbox.db.write(lambda c: enqueue_messages(c, messages, TS))
    outbox.notify(NAME)
    return n


async def test_receiver_down_then_up_once_in_order_on_both_engines(
        database_url: str, tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver("AA", port)
    msgs = {u: [message(u, s) for s in range(5)] for u in ("pat-1", "pat-2", "pat-3")}
    async with outbox_on(database_url, tmp_path, port) as (outbox, channel):
        # interleaved across patients, as they arrive on a ward
        order = [msgs[u][s] for s in range(5) for u in msgs]
        assert await enqueue(outbox, order) == 15
        assert await enqueue(outbox, order[:4]) == 0  # the same items again: absorbed
        await eventually(lambda: outbox.metrics(NAME)["attempts"] >= 3)
        assert outbox.metrics(NAME)["depth"] == 15 and outbox.metrics(NAME)["failed"] == 0
        receiver.start()
        try:
            await eventually(lambda: outbox.metrics(NAME)["delivered"] == 15, timeout=30)
        finally:
            receiver.stop()
        assert receiver.by_patient() == {u: [m.control_id for m in ms] for u, ms in msgs.items()}
        assert len(receiver.accepted) == 15 and receiver.invalid == []
        assert channel.stats()["ack_unavailable"] >= 3


async def test_ar_is_failed_at_once_and_the_patients_next_message_proceeds(
        tmp_path: Path) -> None:
    with running("AR") as r:
        async with outbox_on(tmp_path / "ews.sqlite3", tmp_path, r.port) as (outbox, channel):
            await enqueue(outbox, [message("pat-1", s) for s in range(3)])
            await eventually(lambda: outbox.metrics(NAME)["failed"] == 3, timeout=20)
            failed = outbox.failed(channel=NAME)
            assert [f["error"].split(":")[0] for f in failed] == ["AR"] * 3
            assert all(f["attempts"] == 1 for f in failed)  # never retried
        assert len(r.answered) == 3 and channel.stats()["ack_rejected"] == 3


async def test_ae_is_retried_up_to_its_bound_then_failed_and_visible(tmp_path: Path) -> None:
    with running("AE-then-AA") as r:
        # bound 1: the first AE fails the message (the service's bound is 5)
        async with outbox_on(tmp_path / "ews.sqlite3", tmp_path, r.port,
                             AckPolicy(ae_max_attempts=1)) as (outbox, channel):
            await enqueue(outbox, [message("pat-1", 0)])
            await eventually(lambda: outbox.metrics(NAME)["failed"] == 1, timeout=20)
            assert outbox.failed(channel=NAME)[0]["error"].startswith("AE:")
            assert channel.stats()["failed_after_errors"] == 1
        # bound 2: retried after the AE (with backoff), then accepted
        async with outbox_on(tmp_path / "ews2.sqlite3", tmp_path, r.port,
                             AckPolicy(ae_max_attempts=2)) as (outbox, channel):
            await enqueue(outbox, [message("pat-2", 0)])
            await eventually(lambda: outbox.metrics(NAME)["delivered"] == 1, timeout=20)
            assert outbox.metrics(NAME)["retried"] == 1
        assert [a.answer for a in r.answered] == ["AE", "AE", "AA"]


async def test_a_failing_enqueue_is_counted_and_never_stops_ingestion(tmp_path: Path) -> None:
    from ingest.hl7.delivery import Hl7Output
    from ingest.store import StoredReading

    async with outbox_on(tmp_path / "ews.sqlite3", tmp_path, free_port()) as (outbox, channel):
        out = Hl7Output(channel, outbox)
        row = StoredReading("d061aed45894", "pat-1", "gw-1", "spo2", 95.0, TS, 1, "realtime",
                            False, TS)

        async def broken(ids: set[str]) -> dict[str, DeviceInfo]:
            raise OSError("disk I/O error")

        await out.readings([row], broken)  # does not raise
        assert out.stats()["enqueue_errors"] == 1 and out.stats()["enqueued"] == 0
        await out.readings([row])
        assert out.stats()["enqueued"] == 1

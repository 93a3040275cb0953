"""HL7 v2 out: what building a message and one MLLP exchange cost, against baselines measured in
the same run.

Run: ``python -m benchmarks.hl7_out``. Prints, for one reading message (six vitals, device
rows) and one NEWS2 message: the build with python-hl7 (what ingest does) against the same text
built with hl7apy at its strict level and validated (the alternative that was measured and not
taken), and the strict hl7apy validation of the built text alone; then messages/s over one MLLP
connection to a local asyncio receiver answering each with an ACK, against a bare TCP echo of
the same bytes on the same loop (the transport's floor).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from ews.score import Score
from ingest.hl7 import mllp, oru
from ingest.hl7.oru import DeviceInfo, OruConfig, ReadingGroup, ScoreItem

TS = 1_764_631_080_123
READING = ReadingGroup(
    user_code="pat-1", device_id="d061aed45894", gateway_id="gw-ward-a", ts=TS, seq=1,
    source="realtime", ward="ward-a", device=DeviceInfo(name="E86 bed 4", model="E86"),
    vitals=(("heart_rate", 72.0), ("spo2", 97.0), ("systolic_bp", 121.0), ("diastolic_bp", 79.0),
            ("temperature", 36.8), ("respiratory_rate", 16.0)))
SCORE = ScoreItem(Score(user_code="pat-1", point=7, risk="high", result="tinggi", partial=False,
                        components={"heart_rate": 3, "respiratory_rate": 2, "spo2": 2},
                        cause=("Heart Rate 131",), missing=(), produce_at=TS), history_id=9)


def per_call_ms(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1000


def hl7apy_build(er7: str) -> Any:
    """The same message set field by field with hl7apy (strict), then validated."""
    m = Message("ORU_R01", version="2.6", validation_level=VALIDATION_LEVEL.STRICT)
    segs = [s.split("|") for s in er7.split("\r") if s]
    msh = segs[0]
    for i in (3, 4, 7, 9, 10, 11, 12, 15, 16, 18, 21):
        if i < len(msh) + 1 and msh[i - 1]:
            setattr(m.msh, f"msh_{i}", msh[i - 1])
    result = m.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    order = None
    group = None
    for seg in segs[1:]:
        name = seg[0]
        if name == "PID":
            target = patient.pid
        elif name == "PV1":
            target = patient.add_group("ORU_R01_VISIT").pv1
        elif name == "OBR":
            order = result.add_group("ORU_R01_ORDER_OBSERVATION")
            target = order.obr
        elif name == "OBX":
            assert order is not None
            group = order.add_group("ORU_R01_OBSERVATION")
            target = group.obx
        else:  # NTE
            assert group is not None
            target = group.add_segment("NTE")
        for i, value in enumerate(seg[1:], start=1):
            if value:
                if "~" in value:
                    for rep in value.split("~"):
                        target.add_field(f"{name}_{i}").value = rep
                else:
                    setattr(target, f"{name.lower()}_{i}", value)
    m.validate()
    return m


async def _acker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A local receiver answering every MLLP block with an AA naming its MSH-10."""
    try:
        while True:
            block = await reader.readuntil(b"\x1c\r")
            control = mllp.unframe(block).split(b"\r", 1)[0].split(b"|")[9]
            writer.write(b"\x0bMSH|^~\\&|rx||||20261201||ACK^R01^ACK|A|P|2.6\rMSA|AA|"
                         + control + b"\r\x1c\r")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def mllp_rate(n: int) -> tuple[float, float]:
    """(messages/s over MllpClient with an ACK each, round trips/s of a bare echo)."""
    msgs = [oru.build_reading(replace(READING, seq=i), OruConfig(), TS) for i in range(n)]

    server = await asyncio.start_server(_acker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = mllp.MllpClient("127.0.0.1", port, ack_timeout_s=10)
    t0 = time.perf_counter()
    for m in msgs:
        assert (await client.send(m)).ack_code == "AA"
    rate = n / (time.perf_counter() - t0)
    await client.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = mllp.frame(msgs[0].to_bytes())
    t0 = time.perf_counter()
    for _ in range(n):
        writer.write(block)
        await writer.drain()
        await reader.readuntil(b"\x1c\r")
    echo = n / (time.perf_counter() - t0)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)  # the handler sees EOF and ends
    server.close()
    await server.wait_closed()
    return rate, echo


async def outbox_rate(n: int, patients: int, tmp: Path, connections: int) -> float:
    """Messages/s through the outbox's channel hl7 (SQLite EWS store, claim + send + settle
    per message, one patient in flight) to the same local ACK receiver."""
    from ingest.db import ews as ews_store
    from ingest.hl7.channel import NAME, Hl7Channel
    from ingest.hl7.delivery import Hl7Transport, enqueue_messages, retry_policy
    from ingest.outbox import Outbox

    msgs = [oru.build_reading(replace(READING, user_code=f"pat-{i % patients}", seq=i),
                              OruConfig(), TS) for i in range(n)]
    server = await asyncio.start_server(_acker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    db = ews_store.open_store(tmp / "ews.sqlite3")
    db.write_sync(lambda c: enqueue_messages(c, msgs, TS))
    outbox = Outbox(db)
    channel = Hl7Channel(OruConfig(), clock=lambda: TS)
    pool = mllp.MllpPool("127.0.0.1", port, size=connections)
    outbox.register(NAME, Hl7Transport(pool, channel),
                    retry=replace(retry_policy(10.0), concurrency=connections))
    t0 = time.perf_counter()
    task = asyncio.create_task(outbox.run())
    while outbox.metrics(NAME)["delivered"] < n:
        await asyncio.sleep(0.05)
    rate = n / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    db.close()
    server.close()
    await server.wait_closed()
    return rate


def main() -> None:
    reading = oru.build_reading(READING, OruConfig(), TS)
    score = oru.build_score(SCORE, OruConfig(), TS)
    assert str(hl7apy_build(reading.er7).to_er7()) == reading.er7.rstrip("\r")  # the same text
    for name, build, er7, n_fast, n_slow in (
            ("reading (6 vitals)", lambda: oru.build_reading(READING, OruConfig(), TS),
             reading.er7, 2000, 20),
            ("NEWS2 score", lambda: oru.build_score(SCORE, OruConfig(), TS), score.er7, 2000, 20)):
        fast = per_call_ms(build, n_fast)
        slow = per_call_ms(partial(hl7apy_build, er7), n_slow)
        check = per_call_ms(partial(oru.validate_v26, er7), n_slow)
        print(f"{name}: python-hl7 build {fast:.3f} ms; hl7apy build+validate {slow:.1f} ms "
              f"(ratio {slow / fast:.0f}x); hl7apy strict validate_v26 alone {check:.1f} ms "
              f"(ratio {check / fast:.0f}x)")
    rate, echo = asyncio.run(mllp_rate(2000))
    print(f"MLLP: {rate:.0f} messages/s with an ACK each over one connection; bare echo "
          f"{echo:.0f} round trips/s (ratio {rate / echo:.2f})")
    single = 0.0
    for connections in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            through = asyncio.run(outbox_rate(2000, 100, Path(tmp), connections))
        single = single or through
        print(f"outbox channel hl7 (SQLite, 100 patients, {connections} connection(s)): "
              f"{through:.0f} messages/s delivered; ratio to one connection "
              f"{through / single:.2f}, to bare MLLP {through / rate:.2f}")


if __name__ == "__main__":
    main()

"""The MLLP client against a real receiver (hl7apy's MLLPServer, validating every message):
AA accepted, AE then AA, AR rejected; a receiver that never answers, answers garbage or
another message's ACK; a receiver down then up loses nothing and keeps each patient's order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ingest.hl7.mllp import MllpClient, frame, unframe
from ingest.hl7.oru import DeviceInfo, Hl7Message, OruConfig, ReadingGroup, build_reading
from ingest.hl7.transport import AckPolicy, Delivery, Outcome
from ingest.outbox import Verdict
from tests.support.hl7_receiver import Receiver, running
from vitalgate.broker import free_port

TS = 1_764_631_080_000


def message(user: str = "pat-1", seq: int = 0, name: str = "E86") -> Hl7Message:
    device = "d061aed458" + user[-1].rjust(2, "0")  # one watch per patient
    g = ReadingGroup(user_code=user, device_id=device, gateway_id="gw-1", ts=TS + seq,
                     seq=seq, source="realtime", vitals=(("heart_rate", 60.0 + seq % 100),),
                     ward="ward-a", device=DeviceInfo(name=name, model="E86"))
    return build_reading(g, OruConfig(), TS)


async def test_aa_accepted_and_the_receiver_validated_it() -> None:
    with running("AA") as r:
        client = MllpClient(r.host, r.port, ack_timeout_s=5)
        try:
            m = message(name="evil|^~\\&\rMSH|")
            d = await client.send(m)
            assert d == Delivery(Outcome.ACCEPTED, "AA", "")
            assert [a.control_id for a in r.accepted] == [m.control_id]
            assert r.accepted[0].er7.rstrip("\r") == m.er7.rstrip("\r")
            assert r.invalid == []
            # hl7apy's server closes after each ACK: the next sends reconnect
            for seq in range(1, 4):
                assert (await client.send(message(seq=seq))).outcome is Outcome.ACCEPTED
            assert len(r.accepted) == 4 and client.connects >= 2
        finally:
            await client.close()


async def test_ae_then_aa_and_ar() -> None:
    policy = AckPolicy(ae_max_attempts=3)
    with running("AE-then-AA") as r:
        client = MllpClient(r.host, r.port, ack_timeout_s=5)
        m = message()
        first = await client.send(m)
        assert first.outcome is Outcome.APP_ERROR and first.ack_code == "AE"
        assert "AE" in first.detail
        assert policy.verdict(first, errors=1) is Verdict.RETRY_ITEM
        assert policy.verdict(first, errors=3) is Verdict.FAILED  # bounded
        second = await client.send(m)
        assert second.outcome is Outcome.ACCEPTED
        assert policy.verdict(second, errors=1) is Verdict.DELIVERED
        assert [a.answer for a in r.answered] == ["AE", "AA"]
        await client.close()
    with running("AR") as r:
        client = MllpClient(r.host, r.port, ack_timeout_s=5)
        d = await client.send(message())
        assert d.outcome is Outcome.REJECTED and d.ack_code == "AR"
        assert policy.verdict(d, errors=0) is Verdict.FAILED  # never retried
        assert r.accepted == []
        await client.close()


async def test_receiver_down_is_unavailable_and_retried_receiver_wide() -> None:
    client = MllpClient("127.0.0.1", free_port(), ack_timeout_s=1)
    d = await client.send(message())
    assert d.outcome is Outcome.UNAVAILABLE and d.ack_code is None
    assert "Refused" in d.detail or "refused" in d.detail
    assert AckPolicy().verdict(d, errors=100) is Verdict.RETRY_ALL  # never failed for it
    await client.close()


@asynccontextmanager
async def raw_server(answer: Callable[[bytes], Awaitable[bytes | None]]) -> AsyncIterator[int]:
    """A plain TCP server answering each MLLP block with ``answer(block)`` (None: silence)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                block = await reader.readuntil(b"\x1c\r")
                out = await answer(unframe(block))
                if out is not None:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def ack_for(control_id: str, code: str = "AA") -> bytes:
    text = f"MSH|^~\\&|rx||||20261201||ACK^R01^ACK|A1|P|2.6\rMSA|{code}|{control_id}\r"
    return frame(text.encode())


async def test_no_ack_within_the_timeout_is_unavailable_and_the_connection_dropped() -> None:
    async def silent(block: bytes) -> bytes | None:
        return None

    async with raw_server(silent) as port:
        client = MllpClient("127.0.0.1", port, ack_timeout_s=0.2)
        d = await client.send(message())
        assert d.outcome is Outcome.UNAVAILABLE and "no ACK within 0.2 s" in d.detail
        assert client._writer is None  # a late ACK can never be read as the next one's
        await client.close()


@pytest.mark.parametrize(("reply", "why"), [
    (lambda cid: frame(b"hello, this is not HL7"), "not an HL7 ACK"),
    (lambda cid: ack_for("VGSOMEOTHERMESSAGE00"), "ACK names message"),
    (lambda cid: ack_for(cid, "ZZ"), "not an HL7 ACK"),
    (lambda cid: b"\x0b" + b"x" * 200_000 + b"\x1c\r", "longer than"),
])
async def test_garbled_wrong_or_oversized_answers_are_unavailable(
        reply: Callable[[str], bytes], why: str) -> None:
    async def answer(block: bytes) -> bytes:
        cid = block.decode().split("\r")[0].split("|")[9]
        return reply(cid)

    async with raw_server(answer) as port:
        client = MllpClient("127.0.0.1", port, ack_timeout_s=2)
        d = await client.send(message())
        assert d.outcome is Outcome.UNAVAILABLE and why in d.detail
        await client.close()


async def test_a_persistent_connection_is_reused() -> None:
    async def answer(block: bytes) -> bytes:
        return ack_for(block.decode().split("\r")[0].split("|")[9], "CA")  # enhanced mode

    async with raw_server(answer) as port:
        client = MllpClient("127.0.0.1", port, ack_timeout_s=2)
        for seq in range(5):
            assert (await client.send(message(seq=seq))).outcome is Outcome.ACCEPTED
        assert client.connects == 1
        await client.close()


def test_frame_refuses_block_characters() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert unframe(b"junk\x0bMSH|x\x1c\r") == b"MSH|x"
    with pytest.raises(ValueError, match="block characters"):
        frame(b"MSH|\x1c\r")


async def test_receiver_down_then_up_nothing_lost_in_order_per_patient() -> None:
    """A sender that keeps each patient's head message until it is acknowledged (what the outbox
    does): while the receiver is down every attempt is unavailable; once it is up (same port)
    every message arrives once, in each patient's order."""
    port = free_port()
    queues = {u: [message(user=u, seq=s) for s in range(6)] for u in ("pat-1", "pat-2", "pat-3")}
    expected = {u: [m.control_id for m in ms] for u, ms in queues.items()}
    client = MllpClient("127.0.0.1", port, ack_timeout_s=2)
    receiver = Receiver("AE-then-AA", port)
    policy = AckPolicy()
    unavailable = 0
    errors: dict[str, int] = {}
    for round_ in range(200):
        if round_ == 5:
            receiver.start()  # the receiver comes up after 5 rounds of failures
        if not any(queues.values()):
            break
        for ms in queues.values():
            if not ms:
                continue
            head = ms[0]
            d = await client.send(head)
            if d.outcome is Outcome.APP_ERROR:
                errors[head.control_id] = errors.get(head.control_id, 0) + 1
            verdict = policy.verdict(d, errors.get(head.control_id, 0))
            if verdict is Verdict.RETRY_ALL:
                unavailable += 1
                break  # everyone waits for the receiver
            if verdict in (Verdict.DELIVERED, Verdict.FAILED):
                assert verdict is Verdict.DELIVERED
                ms.pop(0)
        await asyncio.sleep(0)
    try:
        assert unavailable >= 5
        assert receiver.by_patient() == expected
        assert len(receiver.accepted) == 18 and receiver.invalid == []
        for cid in (c for cs in expected.values() for c in cs):  # AE once, then accepted once
            assert [a.answer for a in receiver.answered if a.control_id == cid] == ["AE", "AA"]
    finally:
        receiver.stop()
        await client.close()



async def test_a_pool_sends_to_several_connections_at_once() -> None:
    from ingest.hl7.mllp import MllpPool

    gate = asyncio.Event()
    in_flight = 0
    most = 0

    async def slow(block: bytes) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if most >= 3:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)  # hold every answer until 3 are in flight
        in_flight -= 1
        return ack_for(block.decode().split("\r")[0].split("|")[9])

    async with raw_server(slow) as port:
        pool = MllpPool("127.0.0.1", port, size=3, ack_timeout_s=10)
        got = await asyncio.gather(*(pool.send(message(user=f"pat-{i}", seq=i))
                                     for i in range(6)))
        await pool.close()
    assert [d.outcome for d in got] == [Outcome.ACCEPTED] * 6
    assert most == 3 and pool.connects == 3  # never more connections than the pool's size


async def test_python_hl7s_asyncio_mllp_server_keeps_the_connection_and_acks() -> None:
    """A second real receiver: python-hl7's asyncio MLLP server, which parses each message and
    answers the ACK python-hl7 builds (``create_ack``), on one kept connection."""
    import hl7
    from hl7.mllp import start_hl7_server

    got: list[str] = []

    async def handle(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                got.append(str(msg.segment("MSH")[10]))
                assert str(msg.segment("PID")[3][0][0]).startswith("pat-")
                writer.writemessage(msg.create_ack("AA"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await start_hl7_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    client = MllpClient("127.0.0.1", port, ack_timeout_s=5)
    try:
        sent = [message(user="pat-1", seq=s, name="a|b^c") for s in range(4)]
        for m in sent:
            assert (await client.send(m)).outcome is Outcome.ACCEPTED
        assert got == [m.control_id for m in sent] and client.connects == 1
        assert hl7.parse(sent[0].er7).unescape(
            str(hl7.parse(sent[0].er7).segments("OBX")[-1][5])) == "a|b^c"
    finally:
        await client.close()
        server.close()
        await server.wait_closed()

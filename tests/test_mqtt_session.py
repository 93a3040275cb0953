"""vitalgate.mqtt_session.MqttSession against a real Mosquitto: connect, PUBACK futures,
bounded inbound queue with backpressure, manual ack and redelivery, how a session ends."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from vitalgate.backoff import Backoff
from vitalgate.broker import Mosquitto
from vitalgate.config import BrokerAddress
from vitalgate.mqtt_session import MqttError, MqttOptions, MqttSession
from vitalgate.mqtt_thread import SessionThread

TOPIC = "t/session"
FAST = Backoff(initial_s=1.0, factor=1.0, max_s=1.0, jitter=0.0)


def opts(broker: Mosquitto, client_id: str, **kw: object) -> MqttOptions:
    return MqttOptions(BrokerAddress(broker.host, broker.port, tls=False), client_id, **kw)  # type: ignore[arg-type]


def persistent(broker: Mosquitto, client_id: str, protocol: str = "3.1.1") -> MqttOptions:
    return opts(broker, client_id, clean=False, manual_ack=True, reconnect=FAST, protocol=protocol,
                session_expiry_s=300, receive_maximum=50)


async def publish_n(broker: Mosquitto, n: int, start: int = 0) -> None:
    async with MqttSession(opts(broker, "pub", max_inflight=100)) as pub:
        await asyncio.gather(*(pub.publish(TOPIC, str(i).encode()) for i in range(start, start + n)))


async def register(broker: Mosquitto, client_id: str, protocol: str = "3.1.1") -> None:
    """Make the broker keep a persistent session with the subscription."""
    async with MqttSession(persistent(broker, client_id, protocol), subscriptions=[TOPIC]):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_broker_that_is_not_there_is_named_by_host_and_port() -> None:
    port = free_port()
    o = MqttOptions(BrokerAddress("127.0.0.1", port, tls=False), "nobody")
    with pytest.raises(MqttError, match=f"127.0.0.1:{port}"):
        async with MqttSession(o):
            pass


async def test_publish_returns_on_the_puback_and_the_subscriber_gets_it(mosquitto: Mosquitto) -> None:
    async with MqttSession(opts(mosquitto, "sub"), subscriptions=[TOPIC]) as sub, \
            MqttSession(opts(mosquitto, "pub")) as pub:
        fut = pub.publish(TOPIC, b"hello", retain=False)
        assert pub.unacknowledged == 1
        await asyncio.wait_for(fut, 5)
        assert pub.unacknowledged == 0
        message = await asyncio.wait_for(sub.receive(), 5)
        assert (message.topic, message.payload, message.qos) == (TOPIC, b"hello", 1)
        assert message.generation == sub.generation > 0


async def test_puback_futures_fail_when_the_session_ends_first(mosquitto: Mosquitto) -> None:
    session = MqttSession(opts(mosquitto, "pub", max_inflight=1))
    async with session:
        futures = [session.publish(TOPIC, b"x" * 1000) for _ in range(500)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    failed = [r for r in results if isinstance(r, MqttError)]
    assert failed, "every PUBACK came before the close: nothing tested"
    assert all(r is None or isinstance(r, MqttError) for r in results)
    assert "ended before the PUBACK" in str(failed[0])
    with pytest.raises(MqttError, match="has ended"):
        await session.publish(TOPIC, b"late")
    assert session.ended is not None and session.ended.by_us


async def test_a_full_inbound_queue_holds_paho_back_and_loses_nothing(mosquitto: Mosquitto) -> None:
    n = 300
    async with MqttSession(opts(mosquitto, "slow"), subscriptions=[TOPIC], inbound_max=5) as sub:
        await publish_n(mosquitto, n)
        await asyncio.sleep(0.3)  # nobody reads: paho's thread waits for room
        assert sub.backpressure_waits > 0
        assert sub.queued <= 5
        got = []
        async for message in sub.messages():
            got.append(int(message.payload))
            if len(got) == n:
                break
    assert got == list(range(n))
    assert sub.dropped_at_close == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_an_unacknowledged_message_is_redelivered_to_the_next_session(
        mosquitto: Mosquitto, protocol: str) -> None:
    await register(mosquitto, "acker", protocol)
    await publish_n(mosquitto, 10)
    async with MqttSession(persistent(mosquitto, "acker", protocol), subscriptions=[TOPIC]) as s:
        first = [await asyncio.wait_for(s.receive(), 5) for _ in range(10)]
        for message in first[:6]:
            assert s.ack(message)
        await asyncio.sleep(0.2)  # the PUBACKs reach the broker before the disconnect
    async with MqttSession(persistent(mosquitto, "acker", protocol), subscriptions=[TOPIC]) as s:
        again = [await asyncio.wait_for(s.receive(), 5) for _ in range(4)]
        for message in again:
            s.ack(message)
        await asyncio.sleep(0.5)
        assert s.receive_nowait() is None  # the acknowledged six are not sent again
    assert sorted(int(m.payload) for m in again) == [6, 7, 8, 9]


async def test_closing_while_paho_waits_for_room_does_not_hang(mosquitto: Mosquitto) -> None:
    await register(mosquitto, "stuck")
    await publish_n(mosquitto, 50)
    session = MqttSession(persistent(mosquitto, "stuck"), subscriptions=[TOPIC], inbound_max=2)
    async with session:
        for _ in range(100):
            if session.backpressure_waits:
                break
            await asyncio.sleep(0.05)
        assert session.backpressure_waits > 0
        async with asyncio.timeout(5):
            await session.close()  # paho's thread is inside on_message, waiting
    assert session.dropped_at_close >= 1
    # nothing was acknowledged: the broker gives all 50 to the next session
    async with MqttSession(persistent(mosquitto, "stuck"), subscriptions=[TOPIC]) as s:
        got: set[int] = set()
        while len(got) < 50:
            message = await asyncio.wait_for(s.receive(), 5)
            s.ack(message)
            got.add(int(message.payload))


async def test_without_paho_reconnect_a_lost_connection_ends_the_session(mosquitto: Mosquitto) -> None:
    async with MqttSession(opts(mosquitto, "once"), subscriptions=[TOPIC]) as s:
        mosquitto.stop()
        end = await asyncio.wait_for(s.wait_ended(), 10)
        assert not end.by_us and end.code is not None
        assert [m async for m in s.messages()] == []  # the iteration ends
        assert not s.connected
        with pytest.raises(MqttError):
            await s.publish(TOPIC, b"x")
    mosquitto.start()


async def test_with_paho_reconnect_the_session_survives_a_broker_restart(mosquitto: Mosquitto) -> None:
    links: list[str] = []
    async with MqttSession(persistent(mosquitto, "lasting"), subscriptions=[TOPIC],
                           on_link=lambda link: links.append(link.event)) as s:
        await publish_n(mosquitto, 1)
        old = await asyncio.wait_for(s.receive(), 5)
        mosquitto.stop()
        mosquitto.start()
        for _ in range(200):
            if s.connects == 2:
                break
            await asyncio.sleep(0.05)
        assert s.connects == 2 and s.connected and s.ended is None
        assert "down" in links and links[-1] == "up"
        assert not s.ack(old)  # it came on the previous connection: never acknowledged across
        await publish_n(mosquitto, 1, start=1)
        new = await asyncio.wait_for(s.receive(), 10)
        while new.payload == b"0":  # the unacknowledged first one is redelivered first
            s.ack(new)
            new = await asyncio.wait_for(s.receive(), 10)
        assert new.generation == s.generation != old.generation and s.ack(new)


def test_a_session_thread_serves_synchronous_code(mosquitto: Mosquitto) -> None:
    got: list[bytes] = []
    sub = SessionThread(opts(mosquitto, "sync-sub"), subscriptions=[TOPIC],
                        on_message=lambda m: got.append(m.payload))
    sub.start()
    pub = SessionThread(opts(mosquitto, "sync-pub"))
    pub.start()
    try:
        pub.publish(TOPIC, b"one").result(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pub.stop()
        sub.stop()
    assert got == [b"one"]
    with pytest.raises(MqttError, match=r"ended|not connected"):
        pub.publish(TOPIC, b"late").result(5)


async def test_cancelling_a_connect_leaves_nothing_open(mosquitto: Mosquitto) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    session = MqttSession(opts(mosquitto, "cancelled"))
    entering = asyncio.ensure_future(session.__aenter__())
    await asyncio.sleep(0)
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    for _ in range(50):  # the connect's thread finishes and its socket is closed
        if open_fds() <= before:
            break
        await asyncio.sleep(0.05)
    assert open_fds() <= before


async def test_paho_subscribes_while_the_event_loop_is_blocked(mosquitto: Mosquitto) -> None:
    """The caller blocks the loop right after starting the connect (ingest's tests publish
    with a blocking client there): paho's own thread still connects and subscribes, so a
    message published meanwhile is received."""
    pub = SessionThread(opts(mosquitto, "blocked-pub"))
    pub.start()
    session = MqttSession(opts(mosquitto, "blocked-sub"), subscriptions=[TOPIC])
    entering = asyncio.ensure_future(session.__aenter__())
    for _ in range(3):  # the session's task, then the connect's, which starts its thread
        await asyncio.sleep(0)
    try:
        time.sleep(0.5)  # the loop is blocked; paho's thread is not
        pub.publish(TOPIC, b"meanwhile").result(5)
        await asyncio.wait_for(entering, 5)
        message = await asyncio.wait_for(session.receive(), 5)
        assert message.payload == b"meanwhile"
    finally:
        pub.stop()
        await session.close()

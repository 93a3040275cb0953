"""The publisher against a real Mosquitto, with a paho subscriber validating the contract."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.buffer import Buffer, Measurement
from gateway.publisher import Publisher
from gateway.settings import GatewaySettings
from tests.gateway.small_disk import small_disk
from tests.support.probe import Probe, unique_seqs
from vitalgate.backoff import Backoff
from vitalgate.broker import Mosquitto
from vitalgate.contract import (
    Command,
    DeviceStatus,
    EcgChunk,
    GatewayStatus,
    Kind,
    Reading,
    Source,
    Vitals,
)

DEV = "d061aed45894"
FAST = Backoff(initial_s=0.1, factor=2.0, max_s=0.5, jitter=0.5)


def settings(broker: Mosquitto, tmp_path: Path, **kw: object) -> GatewaySettings:
    return GatewaySettings(gateway_id="ward3-bed12", mqtt_url=broker.url, data_dir=tmp_path / "gw",
                           inflight_window=8, **kw)  # type: ignore[arg-type]


def add(buffer: Buffer, n: int, start: int = 0) -> None:
    buffer.add_readings([Measurement(DEV, 1_700_000_000_000 + 1000 * (start + i),
                                     Vitals(heart_rate=60 + (start + i) % 50), Source.REALTIME, "U1")
                         for i in range(n)])


@contextlib.asynccontextmanager
async def running(pub: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(pub.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def probe(mosquitto: Mosquitto) -> object:
    p = Probe(mosquitto.host, mosquitto.port).start()
    yield p
    p.stop()


async def test_buffer_drains_in_order_and_leaves_only_on_puback(
    mosquitto: Mosquitto, tmp_path: Path, probe: Probe
) -> None:
    st = settings(mosquitto, tmp_path)
    buffer = Buffer(st.buffer_path)
    add(buffer, 30)  # buffered before any connection: these are late
    pub = Publisher(st, buffer, version="test", backoff=FAST)
    pub.set_device_status(DeviceStatus(device_id=DEV, name="E86 5894", mac="D0:61:AE:D4:58:94",
                                       connected=True, battery=80, user_code="U1"))
    async with running(pub):
        await probe.until(lambda: len(probe.readings(DEV)) >= 30, what="30 readings")
        await probe.until(lambda: len(buffer) == 0, what="buffer empty")
        add(buffer, 5, start=30)
        buffer.add_ecg(EcgChunk(device_id=DEV, recording=f"{DEV}-1", seq=0, ts=1_700_000_000_000,
                                fs=250, samples=[1, -2, 3], last=True))
        pub.notify()
        await probe.until(lambda: len(probe.readings(DEV)) >= 35 and bool(probe.ecg(DEV)), what="live rows")
        await probe.until(lambda: len(buffer) == 0, what="buffer empty again")
    got = probe.readings(DEV)
    assert [r.seq for r in got] == list(range(35))  # order kept, none missing
    assert all(r.replayed for r in got[:30]) and not any(r.replayed for r in got[30:])
    assert [r.vitals.heart_rate for r in got[:3]] == [60, 61, 62]
    assert probe.ecg(DEV)[0].samples == [1, -2, 3]
    assert probe.errors == []
    dev = probe.latest(Kind.DEVICE_STATUS, device_id=DEV)
    assert dev is not None and dev.battery == 80
    # a clean stop leaves the retained status "offline"
    await probe.until(lambda: probe.latest(Kind.GATEWAY_STATUS) is not None
                      and not probe.latest(Kind.GATEWAY_STATUS).online, what="offline status")
    assert pub.counters.acked == 36 and buffer.stats().acked == 36


async def test_broker_outage_loses_nothing_and_marks_late_readings_replayed(
    mosquitto: Mosquitto, tmp_path: Path, probe: Probe
) -> None:
    st = settings(mosquitto, tmp_path)
    buffer = Buffer(st.buffer_path)
    pub = Publisher(st, buffer, backoff=FAST)
    async with running(pub):
        await probe.until(lambda: pub.connected, what="connected")
        for i in range(10):
            add(buffer, 1, start=i)
            pub.notify()
        await probe.until(lambda: len(unique_seqs(probe.readings(DEV))) == 10, what="first 10")
        mosquitto.stop()
        await probe.until(lambda: not pub.connected, what="disconnect noticed")
        for i in range(10, 40):  # produced while the broker is down
            add(buffer, 1, start=i)
            pub.notify()
            await asyncio.sleep(0.02)
        assert len(buffer) >= 30 and pub.lag_s() > 0
        mosquitto.start()
        await probe.until(lambda: len(unique_seqs(probe.readings(DEV))) == 40, timeout=40, what="all 40")
        await probe.until(lambda: len(buffer) == 0, what="drained")
        add(buffer, 1, start=40)
        pub.notify()
        await probe.until(lambda: 40 in unique_seqs(probe.readings(DEV)), what="a live one after")
    got = probe.readings(DEV)
    assert unique_seqs(got) == list(range(41))
    first: dict[int, Reading] = {}
    for r in got:
        first.setdefault(r.seq, r)
    assert [r.seq for r in first.values()] == list(range(41))  # per-device arrival order kept
    assert all(first[s].replayed for s in range(10, 40))
    assert not first[0].replayed and not first[40].replayed
    assert pub.counters.connects >= 2 and pub.counters.connect_failures >= 1
    assert buffer.stats().evicted == 0


async def test_commands_are_validated_and_bad_ones_counted(
    mosquitto: Mosquitto, tmp_path: Path, probe: Probe
) -> None:
    st = settings(mosquitto, tmp_path)
    pub = Publisher(st, Buffer(st.buffer_path), backoff=FAST)
    async with running(pub):
        await probe.until(lambda: pub.connected, what="connected")
        await asyncio.sleep(0.2)  # SUBACK
        topic = pub.topics.cmd("ward3-bed12")
        probe.publish(topic, b'{"v":1,"cmd":"reboot","device_id":"d061aed45894"}', qos=1)
        probe.publish(topic, b"not json", qos=1)
        probe.publish(topic, b'{"v":1,"cmd":"ecg","device_id":"d061aed45894","seconds":5}', qos=1)
        cmd = await asyncio.wait_for(anext(pub.commands()), 10)
    assert (cmd.cmd, cmd.device_id, cmd.seconds) == ("ecg", DEV, 5)
    assert pub.counters.commands_rejected == 2


async def test_refused_connection_is_retried_with_backoff(tmp_path: Path) -> None:
    # nothing listens on this port: OSError, retried, counted; the task stays alive
    from vitalgate.broker import free_port

    st = GatewaySettings(gateway_id="gw", mqtt_url=f"mqtt://127.0.0.1:{free_port()}", data_dir=tmp_path)
    pub = Publisher(st, Buffer(st.buffer_path), backoff=FAST)
    async with running(pub) as task:
        deadline = asyncio.get_running_loop().time() + 20
        while pub.counters.connect_failures < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert not task.done()
    assert pub.counters.connect_failures >= 3 and not pub.connected
    assert GatewayStatus(online=False).to_bytes() == b'{"v":1,"online":false}'


@hsettings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300) | st.from_regex(rb'\{"v":1,"cmd":"(ecg|sync)","device_id":"[0-9a-f]{12}"(,"seconds":-?[0-9]{1,4})?\}', fullmatch=True))
def test_any_command_payload_is_accepted_or_counted(payload: bytes) -> None:
    st_ = GatewaySettings(gateway_id="gw", data_dir=Path(tempfile.gettempdir()))
    pub = Publisher(st_, Buffer(":memory:"))
    pub._on_command(pub.topics.cmd("gw"), payload)
    c = pub.counters
    assert c.commands + c.commands_rejected == 1
    assert pub._commands.qsize() == c.commands


# ----------------------------------------------------------------------------- issue 12

async def test_acks_on_a_full_disk_never_end_the_publisher_and_nothing_is_lost(
    mosquitto: Mosquitto, tmp_path: Path, probe: Probe
) -> None:
    st = settings(mosquitto, tmp_path)
    with small_disk(tmp_path) as disk:
        buffer = Buffer(disk.dir / "buffer.sqlite3")
        try:
            add(buffer, 50)
            pub = Publisher(st, buffer, backoff=FAST)
            disk.fill(buffer)
            async with running(pub) as task:
                await probe.until(lambda: len(unique_seqs(probe.readings(DEV))) == 50, what="50 readings")
                await probe.until(lambda: pub.counters.acked == 50, what="50 PUBACKs")
                await asyncio.sleep(1.5)  # a few ack retries on the full disk
                assert not task.done()
                if disk.mounted:  # on a tmpfs the acks cannot be written: they wait, nothing is resent
                    assert buffer.state == "disk_full" and len(buffer) == 50
                    assert pub.counters.acks_unrecorded == 50
                assert pub.counters.published == 50
                disk.free(buffer)
                await probe.until(lambda: len(buffer) == 0, what="acks recorded once space returned")
                add(buffer, 5, start=50)
                pub.notify()
                await probe.until(lambda: len(unique_seqs(probe.readings(DEV))) == 55, what="5 more")
                assert not task.done()
            assert unique_seqs(probe.readings(DEV)) == list(range(55))
            assert buffer.stats().evicted == 0 and pub.counters.acks_unrecorded == 0
            assert buffer.stats().acked == 55
        finally:
            buffer.close()


async def test_republish_sends_a_range_again_from_the_buffer_and_counts_what_is_gone(
    mosquitto: Mosquitto, tmp_path: Path, probe: Probe
) -> None:
    st = settings(mosquitto, tmp_path)
    buffer = Buffer(st.buffer_path, keep_acked_rows=20)
    add(buffer, 30)
    pub = Publisher(st, buffer, backoff=FAST)
    async with running(pub):
        await probe.until(lambda: len(probe.readings(DEV)) >= 30 and len(buffer) == 0, what="30 acknowledged")
        assert buffer.stats().kept == 20  # seq 10..29 are still here
        before = len(probe.readings(DEV))
        pub.republish(Command(cmd="republish", device_id=DEV, stream=buffer.stream, from_seq=5, to_seq=14))
        await probe.until(lambda: pub.counters.republished == 5, what="5 republished")
        pub.republish(Command(cmd="republish", device_id=DEV, stream="0123456789abcdef", from_seq=0, to_seq=3))
        await asyncio.sleep(0.3)
    again = probe.readings(DEV)[before:]
    assert sorted(r.seq for r in again) == [10, 11, 12, 13, 14]
    assert all(r.replayed and r.stream == buffer.stream for r in again)
    c = pub.counters
    assert (c.republish_requested, c.republished, c.republish_missing) == (14, 5, 9)
    assert c.acked == 30 and buffer.stats().acked == 30  # a republish is not a second drain


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_two_publishers_with_one_client_id_back_off_instead_of_fighting(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """The same gateway_id on two machines: before, 385 takeovers a second and 23,000 WARNING
    lines a minute each. Now both back off with jitter, one WARNING per episode."""
    a = Publisher(settings(mosquitto, tmp_path / "a", mqtt_protocol=protocol), Buffer(tmp_path / "a.sqlite3"))
    b = Publisher(settings(mosquitto, tmp_path / "b", mqtt_protocol=protocol), Buffer(tmp_path / "b.sqlite3"))
    with caplog.at_level(logging.INFO, logger="gateway.publisher"):
        async with running(a):
            await asyncio.wait_for(_until(lambda: a.connected), 10)
            async with running(b):
                # short sessions in a row, seconds apart by the backoff: detected, however slow
                await asyncio.wait_for(
                    _until(lambda: a.counters.takeovers + b.counters.takeovers >= 1), 90)
                before = a.counters.disconnects + b.counters.disconnects
                await asyncio.sleep(8.0)  # the bounded window we count over
    disconnects = a.counters.disconnects + b.counters.disconnects - before
    assert disconnects <= 12  # over 8 s: was ~3,000 (385/s)
    warned = [r for r in caplog.records if "is taken over by another client" in r.getMessage()]
    assert 1 <= len(warned) <= 2  # once per publisher and episode
    assert all(r.levelno == logging.WARNING for r in warned)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


def test_a_broker_that_says_session_taken_over_starts_an_episode_at_once(tmp_path: Path) -> None:
    # MQTT 5 brokers may send DISCONNECT 0x8E (Mosquitto 2.0.11 only closes the socket, which
    # the short-session rule covers): the first such disconnect is a takeover, said once
    import time as _time

    from gateway.publisher import _Event, _Session

    st_ = GatewaySettings(gateway_id="gw", data_dir=tmp_path)
    pub = Publisher(st_, Buffer(":memory:"))
    ended = [_Session(mqtt=None, events=asyncio.Queue(), up_since=_time.monotonic(),  # type: ignore[arg-type]
                      ended=_Event("disconnected", code=code)) for code in (0x8E, 0x8E, 0x80)]
    assert [pub._session_ended(s)[0] for s in ended] == ["takeover", "takeover", "takeover"]
    assert pub.counters.takeovers == 3 and pub.counters.disconnects == 3
    long_ago = _Session(mqtt=None, events=asyncio.Queue(), up_since=_time.monotonic() - 120,  # type: ignore[arg-type]
                        ended=_Event("disconnected", code=0x80))
    assert pub._session_ended(long_ago)[0] == "lost"  # a stable minute ended the episode

"""Replay of recordings onto a real Mosquitto, and recording what is on the broker."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from simulators.importers import load_tracks
from simulators.mqtt_out import GatewayPublisher, Received, Subscriber
from simulators.physiology import SimClock, SteppedTime
from simulators.recording import JsonlWriter, read_csv, read_jsonl
from simulators.replay import (
    MqttReplaySink,
    Recorder,
    ReplayItem,
    identity_for,
    record,
    replay_tracks,
)
from tests.support.subscribed import collect, n_readings, readings_of
from vitalgate.broker import Mosquitto
from vitalgate.cli import main
from vitalgate.contract import Reading, Topics

T0 = 1_600_000_000_000  # when the recording was made
R0 = 1_800_000_000_000  # when the replay starts
CSV = (
    "ts,user_code,device_id,heart_rate,spo2,systolic_bp,temperature\n"
    f"{T0},U1,aaaaaaaaaaa1,70,97,120,36.6\n"
    f"{T0 + 300_000},U2,bbbbbbbbbbb2,88,91,,\n"
    f"{T0 + 600_000},U1,aaaaaaaaaaa1,74,96,118,\n"
    f"{T0 + 1_800_000},U2,bbbbbbbbbbb2,90,90,,37.9\n"
    f"{T0 + 3_600_000},U1,aaaaaaaaaaa1,79,,,37.1\n"
)


def readings_from(sub: Subscriber, n: int) -> list[Reading]:
    """The first ``n`` readings ``sub`` receives (fewer if none come for 20 s)."""
    return readings_of(collect(sub, n, n_readings))


def stepped_clock(speed: float) -> SimClock:
    fake = SteppedTime()
    return SimClock(R0, speed=speed, time_fn=fake.time, sleep_fn=fake.sleep)


def test_replay_csv_onto_broker_keeps_values_and_scaled_timing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "ward.csv"
    path.write_text(CSV)
    tracks = read_csv(path).tracks
    sub = Subscriber(mosquitto.url, [Topics().reading("replay-gw", "+")]).connect()
    publisher = GatewayPublisher(mosquitto.url, "replay-gw").connect()
    try:
        stats = replay_tracks(tracks, MqttReplaySink(publisher), clock=stepped_clock(60))
        publisher.close()
        got = readings_from(sub, 5)
    finally:
        sub.close()
    assert stats.rows == 5 and stats.span_ms == 3_600_000 and stats.rejected == 0
    assert [(r.device_id, r.seq, r.user_code) for r in got] == [
        ("aaaaaaaaaaa1", 0, "U1"), ("bbbbbbbbbbb2", 0, "U2"), ("aaaaaaaaaaa1", 1, "U1"),
        ("bbbbbbbbbbb2", 1, "U2"), ("aaaaaaaaaaa1", 2, "U1"),
    ]
    # ts = replay start + recorded offset / speed
    assert [r.ts - R0 for r in got] == [0, 5_000, 10_000, 30_000, 60_000]
    assert got[0].vitals.present() == {"heart_rate": 70, "spo2": 97, "systolic_bp": 120, "temperature": 36.6}
    assert got[3].vitals.present() == {"heart_rate": 90, "spo2": 90, "temperature": 37.9}


def test_replay_of_a_real_patient_keeps_its_hourly_timing(shared_data: Path) -> None:
    delivered: list[ReplayItem] = []
    clock = stepped_clock(3600)  # one recorded hour per real second
    tracks = load_tracks(shared_data / "physionet2019" / "p100001.psv")
    stats = replay_tracks(tracks, delivered.append, clock=clock, timestamps="wall")
    assert stats.rows == 22 == len(delivered)
    assert [b.ts - a.ts for a, b in itertools.pairwise(delivered)][:3] == [1000, 1000, 1000]
    assert clock.now_ms() - R0 == delivered[-1].offset_ms  # simulated time ran the recording's span
    device_id, user_code = identity_for("p100001")
    assert {(d.device_id, d.user_code) for d in delivered} == {(device_id, user_code)}
    assert len(user_code) == 13 and int(device_id[:2], 16) & 0b11 == 0b10
    sim = replay_tracks(tracks, [].append, clock=stepped_clock(3600), timestamps="sim")
    assert sim.rows == 22


def test_rows_a_sink_rejects_are_counted_and_the_rest_delivered(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(CSV)
    seen: list[int] = []

    def picky(item: ReplayItem) -> None:
        if item.vitals.get("heart_rate") == 74:
            raise ValueError("no thanks")
        seen.append(int(item.vitals["heart_rate"]))

    stats = replay_tracks(read_csv(path).tracks, picky, clock=stepped_clock(1000))
    assert stats.rejected == 1 and stats.rows == 4 and seen == [70, 88, 90, 79]


def test_record_writes_what_was_published(mosquitto: Mosquitto, tmp_path: Path) -> None:
    src = tmp_path / "ward.csv"
    src.write_text(CSV)
    out = tmp_path / "rec.jsonl"
    ready = threading.Event()
    writer = JsonlWriter(out)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(
        record(mosquitto.url, writer, "vitals/v1", duration_s=30, stop=lambda: writer.lines >= 5, ready=ready.set)
    ))
    thread.start()
    assert ready.wait(10)
    publisher = GatewayPublisher(mosquitto.url, "rec-gw").connect()
    replay_tracks(read_csv(src).tracks, MqttReplaySink(publisher), clock=stepped_clock(600))
    publisher.close()
    thread.join(30)
    writer.close()
    content = read_jsonl(out)
    assert content.bad == 0 and len(content.readings) == 5
    assert [(r.device_id, r.seq, r.gateway_id, r.source) for r in content.readings][:2] == [
        ("aaaaaaaaaaa1", 0, "rec-gw", "realtime"), ("bbbbbbbbbbb2", 0, "rec-gw", "realtime")]
    assert content.readings[0].vitals == {"heart_rate": 70, "spo2": 97, "systolic_bp": 120, "temperature": 36.6}
    assert [r.t - R0 for r in content.readings] == [0, 500, 1000, 3000, 6000]
    # and the recording replays: same rows, same relative timing
    again = load_tracks(out)
    assert sorted(len(t) for t in again) == [2, 3]


def test_recorder_keeps_other_messages_and_counts_bad_payloads(tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    topics = Topics()
    with JsonlWriter(out) as writer:
        recorder = Recorder(writer, topics.prefix, include_other=True)
        recorder.handle(Received(topics.gateway_status("gw"), b'{"v":1,"online":true}', True, 5))
        recorder.handle(Received(topics.reading("gw", "aaaaaaaaaaa1"), b"not json", False, 6))
        recorder.handle(Received(
            topics.reading("gw", "aaaaaaaaaaa1"),
            b'[{"v":1,"device_id":"aaaaaaaaaaa1","seq":0,"ts":7,"vitals":{"spo2":96}},'
            b'{"v":1,"device_id":"aaaaaaaaaaa1","seq":1,"ts":8,"vitals":{"spo2":12}}]', False, 9))
        recorder.handle(Received("elsewhere/x", b"{}", False, 10))
    assert recorder.stats.readings == 1 and recorder.stats.rejected == 3
    content = read_jsonl(out)
    assert [r.vitals for r in content.readings] == [{"spo2": 96.0}]
    kept = {m.topic: m for m in content.messages}
    assert kept[topics.gateway_status("gw")].payload == {"v": 1, "online": True}
    assert kept[topics.gateway_status("gw")].retained
    assert kept[topics.reading("gw", "aaaaaaaaaaa1")].payload in ("not json", [
        {"v": 1, "device_id": "aaaaaaaaaaa1", "seq": 0, "ts": 7, "vitals": {"spo2": 96}},
        {"v": 1, "device_id": "aaaaaaaaaaa1", "seq": 1, "ts": 8, "vitals": {"spo2": 12}}])
    assert "elsewhere/x" in kept
    assert recorder.subscriptions()[0] == f"{topics.prefix}/+/status"


def test_replay_cli_on_a_real_patient(mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str],
                                      shared_data: Path) -> None:
    sub = Subscriber(mosquitto.url, [Topics().reading("cli-gw", "+")]).connect()
    try:
        code = main(["replay", str(shared_data / "physionet2019" / "p100001.psv"), "--speed", "1e7",
                     "--broker", mosquitto.url, "--gateway-id", "cli-gw"])
        got = readings_from(sub, 22)
    finally:
        sub.close()
    assert code == 0
    assert "replayed 22 rows of 1 tracks spanning 22.00 h" in capsys.readouterr().out
    assert [r.seq for r in got] == list(range(22))
    assert got[0].vitals.present() == {"heart_rate": 93, "spo2": 92.5, "systolic_bp": 110,
                                       "diastolic_bp": 56, "respiratory_rate": 22}
    assert main(["replay", str(shared_data / "README.md"), "--broker", mosquitto.url]) == 2

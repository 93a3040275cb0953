"""Ingest benchmark: publish → committed throughput vs a bare paho subscriber, and publish → EWS
latency for 500 patients at one reading per second.

    python -m benchmarks.ingest                 # 20 000 readings, then 30 s at 500 patients/s
    python -m benchmarks.ingest --quick         # 5 000 readings, then 10 s

Throughput: one publisher process sends N QoS 1 readings (one message each, three vitals) as
fast as it can; in the same run a bare paho subscriber process (auto-ack, does nothing) and the
ingest service (validate, group commit, manual ack, EWS engine scoring every patient, EWS
publish) receive the same messages. Rates are N / (time of the last message received or
committed - time of the first publish).

Latency: the publisher sends each of 500 patients one reading per second, with ``ts`` the
publish time; the heart rate alternates across a NEWS2 band edge so every reading changes the
score and (with min interval 0) is emitted. A subscriber on ``{prefix}/ews/+`` records
``receive time - produce_at`` (produce_at = the reading's ts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.load_options import load_parser
from tests.support.ingest_service import running, settings_for
from vitalgate.broker import Mosquitto
from vitalgate.contract import Reading, Topics, Vitals, encode_readings


def _now_ms() -> float:
    return time.time() * 1000.0


def _client(host: str, port: int, cid: str = "") -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    return c


# ------------------------------------------------------------------------- child processes


def role_publish_burst(host: str, port: int, n: int, patients: int, per_msg: int) -> None:
    topics = Topics()
    c = _client(host, port)
    c.loop_start()
    payloads = []
    t0 = int(_now_ms())
    for k in range(n // per_msg):
        p = k % patients
        dev = f"{p:012x}"
        rs = []
        for j in range(per_msg):
            seq = (k // patients) * per_msg + j
            rs.append(Reading(device_id=dev, seq=seq, ts=t0 + seq, user_code=f"B{p}",
                              vitals=Vitals(heart_rate=70 + seq % 20, spo2=97, respiratory_rate=16)))
        payloads.append((topics.reading("bench", dev), encode_readings(rs)))
    start = _now_ms()
    infos = [c.publish(t, b, qos=1) for t, b in payloads]
    for info in infos:
        info.wait_for_publish(120)
    print(json.dumps({"start": start, "end": _now_ms()}), flush=True)
    c.disconnect()
    c.loop_stop()


def role_subscribe_count(host: str, port: int, n: int, topic: str) -> None:
    c = _client(host, port)
    state: dict[str, Any] = {"count": 0, "first": None, "last": None}

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = _now_ms()
        state["first"] = state["first"] or now
        state["count"] += 1
        state["last"] = now
        if state["count"] >= n:
            client.disconnect()

    c.on_message = on_message
    c.subscribe(topic, qos=1)
    print("ready", flush=True)
    c.loop_forever()
    print(json.dumps(state), flush=True)


def role_publish_steady(host: str, port: int, patients: int, seconds: int) -> None:
    topics = Topics()
    c = _client(host, port)
    c.loop_start()
    start = time.monotonic()
    sent = 0
    for second in range(seconds):
        for p in range(patients):
            due = start + second + p / patients
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dev = f"{p + 1:012x}"
            hr = 85 if second % 2 == 0 else 95  # NEWS2 heart rate 91-110 scores 1: a change
            r = Reading(device_id=dev, seq=second, ts=int(_now_ms()), user_code=f"L{p}",
                        vitals=Vitals(heart_rate=hr, spo2=97, respiratory_rate=16,
                                      systolic_bp=120, temperature=36.8))
            c.publish(topics.reading("bench", dev), r.to_bytes(), qos=1)
            sent += 1
    time.sleep(2)
    print(json.dumps({"sent": sent}), flush=True)
    c.disconnect()
    c.loop_stop()


def role_subscribe_ews(host: str, port: int, seconds: int) -> None:
    c = _client(host, port)
    lat: list[float] = []
    t_end = time.monotonic() + seconds + 8

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return
        ews = json.loads(msg.payload)
        lat.append(_now_ms() - ews["produce_at"])

    c.on_message = on_message
    c.subscribe(Topics().ews("+"), qos=1)
    print("ready", flush=True)
    while time.monotonic() < t_end:
        c.loop(0.1)
    print(json.dumps(lat), flush=True)


# -------------------------------------------------------------------------------- driver


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.ingest", *args],
                            stdout=subprocess.PIPE, text=True)


async def throughput(broker: Mosquitto, data: Path, n: int, per_msg: int) -> dict[str, float]:
    settings = settings_for(data, broker.url, mqtt_client_id=f"bench-ingest-{per_msg}")
    async with running(settings) as svc:
        while not svc.service.consumer.connected:
            await asyncio.sleep(0.05)
        bare = _spawn("--role", "count", "--port", str(broker.port), "--n", str(n // per_msg),
                      "--topic", "vitals/v1/+/+/reading")
        assert bare.stdout is not None
        bare.stdout.readline()  # subscribed
        await asyncio.sleep(0.3)
        pub = _spawn("--role", "burst", "--port", str(broker.port), "--n", str(n), "--patients", "500",
                     "--per-msg", str(per_msg))
        readings = svc.service.metrics.readings
        while readings.total() < n:
            await asyncio.sleep(0.002)
        committed_at = _now_ms()
        pub_out = json.loads((await asyncio.to_thread(pub.communicate))[0])
        bare_out = json.loads((await asyncio.to_thread(bare.communicate))[0].splitlines()[-1])
        ingest_s = (committed_at - pub_out["start"]) / 1000
        bare_s = (bare_out["last"] - pub_out["start"]) / 1000
        publish_s = (pub_out["end"] - pub_out["start"]) / 1000
        batches = svc.service.metrics.batch_size
        return {"n": n, "publish_rate": n / publish_s, "bare_rate": n / bare_s,
                "ingest_rate": n / ingest_s, "ratio": bare_s / ingest_s,
                "mean_batch": n / per_msg / max(1, batches.count),
                "ews_points": svc.service.metrics.ews.total()}


async def latency(broker: Mosquitto, data: Path, patients: int, seconds: int) -> dict[str, float]:
    settings = settings_for(data, broker.url, mqtt_client_id="bench-latency", median_k=1,
                            ews_min_interval_s=0.0)
    async with running(settings) as svc:
        while not svc.service.consumer.connected:
            await asyncio.sleep(0.05)
        sub = _spawn("--role", "ews", "--port", str(broker.port), "--seconds", str(seconds))
        assert sub.stdout is not None
        sub.stdout.readline()
        pub = _spawn("--role", "steady", "--port", str(broker.port), "--patients", str(patients),
                     "--seconds", str(seconds))
        sent = json.loads((await asyncio.to_thread(pub.communicate))[0])["sent"]
        lat = np.array(json.loads((await asyncio.to_thread(sub.communicate))[0].splitlines()[-1]))
        return {"sent": sent, "ews_received": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(workdir=Path(tmp) / "mq")
        broker.workdir.mkdir()  # type: ignore[union-attr]
        with broker:
            for per_msg in (1, 10):
                t = await throughput(broker, Path(tmp) / f"t{per_msg}", args.n, per_msg)
                print(f"throughput, {t['n']} readings, {per_msg} per message (QoS 1, 500 patients,"
                      " EWS scoring on):")
                print(f"  publisher            {t['publish_rate']:8.0f} readings/s")
                print(f"  bare paho subscriber {t['bare_rate']:8.0f} readings/s")
                print(f"  ingest (committed)   {t['ingest_rate']:8.0f} readings/s"
                      f"  = {t['ratio'] * 100:.0f}% of bare; mean batch {t['mean_batch']:.0f} msgs,"
                      f" EWS points {t['ews_points']:.0f}")
            lat = await latency(broker, Path(tmp) / "l", args.patients, args.seconds)
            print(f"latency publish → EWS on MQTT, {args.patients} patients × 1 reading/s × "
                  f"{args.seconds} s: sent {lat['sent']}, EWS received {lat['ews_received']}")
            print(f"  p50 {lat['p50_ms']:.1f} ms   p99 {lat['p99_ms']:.1f} ms   max {lat['max_ms']:.1f} ms")


def main() -> None:
    parser = load_parser(__doc__, n=20_000, patients=500, seconds=30)
    parser.add_argument("--role", choices=["burst", "count", "steady", "ews"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--topic")
    parser.add_argument("--per-msg", type=int, default=1)
    args = parser.parse_args()
    if args.role:
        host = "127.0.0.1"
        {"burst": lambda: role_publish_burst(host, args.port, args.n, args.patients, args.per_msg),
         "count": lambda: role_subscribe_count(host, args.port, args.n, args.topic),
         "steady": lambda: role_publish_steady(host, args.port, args.patients, args.seconds),
         "ews": lambda: role_subscribe_ews(host, args.port, args.seconds)}[args.role]()
        return
    if args.quick:
        args.n, args.seconds = 5_000, 10
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

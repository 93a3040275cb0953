"""Fleet mode throughput onto a real Mosquitto, against raw paho publishing in the same run.

    python -m benchmarks.fleet [--patients 1000,5000] [--per-patient 8] [--repeat 2]

For each fleet size it measures, all at QoS 1 until the broker acknowledged everything:

* ``raw``: a plain paho client publishing pre-encoded, identical-size single-reading payloads
  to the same topics (no generation, no validation): the ceiling for one client;
* ``fleet 1/msg``: the fleet generating, validating and publishing one reading per message;
* ``fleet batched``: the fleet when readings pile up (high speed), up to 60 per message.

The fleet's clock runs so fast that every reading is due at once: this measures how many
readings per second the machine can put on the broker, not a realistic ward's load.
"""

from __future__ import annotations

import argparse
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.fleet import Fleet
from simulators.mqtt_out import MAX_INFLIGHT, GatewayPublisher, parse_url
from simulators.physiology import Cohort, SimClock
from vitalgate.broker import Mosquitto
from vitalgate.contract import QOS, Reading, Topics, Vitals, encode_readings

START = 1_700_000_000_000
RATE_S = 60.0


def raw_paho(url: str, topics: list[str], payload: bytes, total: int) -> float:
    """Messages/s of a plain paho client publishing ``payload`` ``total`` times."""
    acked = 0
    done = threading.Event()

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        acked += 1
        if acked >= total:
            done.set()

    client = mqtt.Client(  # type: ignore[call-arg, unused-ignore]
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-raw"
    )
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.on_publish = on_publish  # type: ignore[assignment, unused-ignore]
    host, port = parse_url(url)
    client.connect(host, port)
    client.loop_start()
    started = time.perf_counter()
    for i in range(total):
        client.publish(topics[i % len(topics)], payload, qos=QOS)
    done.wait(300)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return total / elapsed


def fleet_run(url: str, n: int, per_patient: int, max_batch: int) -> tuple[float, float, int]:
    """(readings/s, messages/s, readings) for ``per_patient`` readings of ``n`` patients."""
    cohort = Cohort(["stable", "sepsis", "copd", "respiratory"] * (n // 4), seed=1, start_ms=START)
    publisher = GatewayPublisher(url, f"bench-{n}-{max_batch}").connect()
    clock = SimClock(START, speed=1e9)  # everything is due at once
    fleet = Fleet(cohort, publisher, clock, rate_s=RATE_S, max_batch=max_batch)
    fleet.announce()
    publisher.flush(120)
    base_messages = publisher.published
    started = time.perf_counter()
    stats = fleet.run(RATE_S * per_patient - 1, announce=False)
    publisher.flush(300)
    elapsed = time.perf_counter() - started
    publisher.close()
    return stats.readings / elapsed, (publisher.published - 1 - base_messages) / elapsed, stats.readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="1000,5000")
    parser.add_argument("--per-patient", type=int, default=8, help="readings per patient (1/msg runs)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best of each is kept")
    args = parser.parse_args()
    sample = Reading(device_id="c6e581c2b103", seq=12345, ts=START, user_code="AMSe5Sn8Gkxj7",
                     vitals=Vitals(heart_rate=80, spo2=97, systolic_bp=120, diastolic_bp=80,
                                   temperature=36.6, respiratory_rate=16))
    payload = encode_readings([sample])
    with Mosquitto() as broker:
        print(f"Mosquitto on {broker.url}; single-reading payload {len(payload)} bytes, QoS 1")
        print(f"{'patients':>8} {'raw msg/s':>10} {'fleet 1/msg rd/s':>17} {'ratio':>6} "
              f"{'batched rd/s':>13} {'msg/s':>7} {'ratio':>6}")
        for n in (int(x) for x in args.patients.split(",")):
            topics = [Topics().reading("bench-raw", f"{i:012x}") for i in range(n)]
            total = n * args.per_patient
            raw = single = batched = batched_msgs = 0.0
            for _ in range(args.repeat):  # interleaved, best of each: the machine is shared
                raw = max(raw, raw_paho(broker.url, topics, payload, total))
                single = max(single, fleet_run(broker.url, n, args.per_patient, max_batch=1)[0])
                rd, msgs, _ = fleet_run(broker.url, n, args.per_patient * 5, max_batch=60)
                if rd > batched:
                    batched, batched_msgs = rd, msgs
            print(f"{n:>8} {raw:>10.0f} {single:>17.0f} {single / raw:>6.2f} "
                  f"{batched:>13.0f} {batched_msgs:>7.0f} {batched / raw:>6.2f}")


if __name__ == "__main__":
    main()

"""InfluxWriter for real: a VictoriaMetrics process (which accepts InfluxDB 2's /api/v2/write line
protocol) stands in for InfluxDB 2; values, tags and millisecond timestamps are read back through
VictoriaMetrics' export API. A dead endpoint shows writes never block and drops are counted."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.ews_engine import EwsPoint
from ingest.influx import DEFAULT_OPTIONS, INFLUX_RETRY, InfluxOptions, InfluxWriter, reading_points
from vitalgate.backoff import Backoff
from vitalgate.broker import free_port, wait_port


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics is not installed (apt-get install victoria-metrics)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={tmp_path / 'vm'}",
         "-loggerLevel=ERROR", "-search.disableCache"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def export(base: str, match: str) -> list[dict[str, Any]]:
    urllib.request.urlopen(base + "/internal/force_flush", timeout=10).read()
    url = base + "/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]


def by_name(series: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["metric"]["__name__"], s["metric"].get("source", "")): s for s in series}


def test_readings_and_ews_round_trip_through_victoriametrics(victoria: str) -> None:
    # recent device times (VictoriaMetrics rejects samples outside its retention), ms resolution
    t0 = (time.time_ns() // 1_000_000) - 120_000 + 7
    writer = InfluxWriter(victoria, token="unused", org="hospital", bucket="vitals",
                          options=InfluxOptions(flush_interval_ms=50))
    writer.write_readings([
        ("d061aed45894", "AMSe5Sn8Gkxj7", "ward3-bed12", "heart_rate", 72.5, t0, "realtime"),
        ("d061aed45894", "AMSe5Sn8Gkxj7", "ward3-bed12", "spo2", 97.0, t0, "realtime"),
        ("d061aed45894", "AMSe5Sn8Gkxj7", "ward3-bed12", "heart_rate", 75.0, t0 + 1_001, "realtime"),
        ("d061aed45894", None, None, "temperature", 36.6, t0 + 2, "history"),
    ])
    ews = EwsPoint(user_code="AMSe5Sn8Gkxj7", point=7, result="tinggi", risk="high",
                   cause=("Respiration 26",), partial=True, missing=("consciousness",),
                   components={"respiratory_rate": 3}, produce_at=t0 + 1_001)
    writer.write_ews([ews])
    assert writer.flush(10)
    writer.close()
    assert writer.stats()["written"] == 4 and writer.stats()["dropped"] == 0

    vitals = by_name(export(victoria, '{__name__=~"vitals_.*"}'))
    hr = vitals[("vitals_heart_rate", "realtime")]
    assert hr["metric"] == {"__name__": "vitals_heart_rate", "device_id": "d061aed45894",
                            "user_code": "AMSe5Sn8Gkxj7", "gateway_id": "ward3-bed12",
                            "source": "realtime"}
    assert hr["values"] == [72.5, 75.0] and hr["timestamps"] == [t0, t0 + 1_001]
    assert vitals[("vitals_spo2", "realtime")]["values"] == [97.0]
    temp = vitals[("vitals_temperature", "history")]
    assert temp["metric"] == {"__name__": "vitals_temperature", "device_id": "d061aed45894",
                              "source": "history"}  # absent patient/gateway: no empty tags
    assert temp["timestamps"] == [t0 + 2] and temp["values"] == [36.6]

    scores = by_name(export(victoria, '{__name__=~"ews_.*"}'))
    assert scores[("ews_point", "")]["metric"] == {"__name__": "ews_point", "user_code": "AMSe5Sn8Gkxj7"}
    assert scores[("ews_point", "")]["values"] == [7]
    assert scores[("ews_point", "")]["timestamps"] == [t0 + 1_001]
    assert scores[("ews_risk_level", "")]["values"] == [3]
    assert scores[("ews_partial", "")]["values"] == [1]


def test_dead_endpoint_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    opts = InfluxOptions(max_buffer=10, batch_size=1_000, flush_interval_ms=60_000, max_retries=2,
                         retry=Backoff(initial_s=0.01, max_s=8.0, jitter=0.0), timeout_ms=1_000, close_timeout_s=2.0)
    writer = InfluxWriter(dead, token=None, org=None, bucket="b", options=opts)
    rows = [("d061aed45894", "P1", "gw", "heart_rate", 70.0 + i, 1_700_000_000_000 + i, "realtime")
            for i in range(25)]
    writer.write_readings(rows)  # 25 points, room for 10: returns at once, 15 dropped
    assert writer.stats()["dropped"] == 15 and writer.stats()["buffered"] == 10
    assert writer.flush(10)  # the thread tries 1 + 2 retries, then gives the batch up
    stats = writer.stats()
    assert stats["written"] == 0 and stats["dropped"] == 25
    assert stats["retries"] == 2 and stats["errors"] == 3 and "Connection" in stats["last_error"]
    writer.close()
    writer.write_readings(rows[:1])  # after close: dropped, counted, no exception
    assert writer.stats()["dropped"] == 26


def test_a_failing_batch_is_retried_after_half_a_second_doubling_and_given_up_after_3_5_s() -> None:
    delays = [INFLUX_RETRY.delay(n) for n in range(DEFAULT_OPTIONS.max_retries)]
    assert DEFAULT_OPTIONS.retry == INFLUX_RETRY
    assert delays == [0.5, 1.0, 2.0] and sum(delays) == 3.5
    assert [INFLUX_RETRY.delay(n) for n in range(3, 7)] == [4.0, 8.0, 8.0, 8.0]


def test_points_of_one_instant_share_a_line() -> None:
    rows = [("d061aed45894", "P1", "gw", "heart_rate", 70.0, 5, "realtime"),
            ("d061aed45894", "P1", "gw", "spo2", 98.0, 5, "realtime"),
            ("d061aed45894", "P1", "gw", "spo2", 97.0, 6, "realtime")]
    lines = sorted(p.to_line_protocol() for p in reading_points(rows))  # type: ignore[no-untyped-call]
    assert lines == [
        "vitals,device_id=d061aed45894,gateway_id=gw,source=realtime,user_code=P1 heart_rate=70,spo2=98 5",
        "vitals,device_id=d061aed45894,gateway_id=gw,source=realtime,user_code=P1 spo2=97 6",
    ]

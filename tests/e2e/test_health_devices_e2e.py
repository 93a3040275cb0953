"""Standard BLE health devices end to end, over real processes: ``vitalgate gateway run
--simulate 0 --simulate-devices hr,thermometer --simulate-link …`` (the radio shared over TCP),
two ``vitalgate simulate-device`` processes (a blood-pressure cuff and a pulse oximeter, each
with three stored measurements) attached to it, a real Mosquitto and a real ``vitalgate
ingest``. Every kind reaches ingest's store; the standalone devices' readings arrive with the
values and device time stamps they sent (their ``--sent-log``); restarting them (a reconnect
that delivers the same stored records again) adds no row: ingest's history identity
(device_id, ts, vital) absorbs the re-read."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Proc, healthy, ingest_proc, ro, wait_for
from vitalgate.broker import Mosquitto, free_port
from vitalgate.contract import device_id_from_mac

pytestmark = pytest.mark.e2e

BP_MAC, PLX_MAC = "C6:00:00:00:0B:01", "C6:00:00:00:0C:01"
STORED_FROM = (int(time.time()) // 3600 - 10) * 3600  # ten hours ago, on the hour


def _rows(db: Path) -> list[tuple[str, str, float, int, str]]:
    if not db.exists():
        return []
    with ro(db) as c:
        return [(str(d), str(v), float(x), int(t), str(s)) for d, v, x, t, s in c.execute(
            "SELECT device_id, vital, value, ts, source FROM readings")]


def _device(logs: Path, kind: str, mac: str, link: str) -> Proc:
    return Proc(f"{kind}-device", ["simulate-device", kind, "--link", link, "--mac", mac, "--stored", "3",
                                   "--stored-from", str(STORED_FROM), "--interval", "1",
                                   "--sent-log", str(logs / f"{kind}.sent")], {}, logs)


def _sent(path: Path) -> set[tuple[str, float, int]]:
    out: set[tuple[str, float, int]] = set()
    for line in path.read_text().splitlines():
        s = json.loads(line)
        if s["utc_ms"] is not None:
            out |= {(vital, float(value), int(s["utc_ms"])) for vital, value in s["vitals"].items()}
    return out


def test_every_device_kind_reaches_ingest_across_processes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    ingest, port = ingest_proc(logs, "ingest", mqtt_url=mosquitto.url, data_dir=tmp_path / "ingest",
                               client_id="ingest-health")
    link = f"127.0.0.1:{free_port()}"
    gateway = Proc("gateway", [
        "gateway", "run", "--simulate", "0", "--simulate-devices", "hr,thermometer", "--interval", "1",
        "--simulate-link", link, "--simulate-remote", f"{BP_MAC}=CUFF01", "--simulate-remote", f"{PLX_MAC}=OXI01",
        "--status-port", "0", "--gateway-id", "ward-h", "--mqtt-url", mosquitto.url,
        "--data-dir", str(tmp_path / "gw")],
        # four devices, a slot each: rotation (tests/gateway/test_gateway_radio.py) is not the point here
        {"VITALGATE_SLOTS_PER_ADAPTER": "4"}, logs)
    devices = [_device(logs, "bp", BP_MAC, link), _device(logs, "plx", PLX_MAC, link)]
    procs = [ingest, gateway, *devices]
    db = tmp_path / "ingest" / "ingest.sqlite3"
    bp_id, plx_id = device_id_from_mac(BP_MAC), device_id_from_mac(PLX_MAC)
    try:
        ingest.start()
        gateway.start()
        wait_for(lambda: healthy(port), 60, "ingest healthy")
        wait_for(lambda: "shared on" in gateway.stderr_tail(20_000), 30, "the gateway's link server")
        for d in devices:
            d.start()

        def kinds() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {}
            for dev, vital, _v, _t, source in _rows(db):
                seen.setdefault(dev, set()).add(f"{vital}/{source}")
            return seen

        def complete() -> bool:
            k = kinds()
            return (len(k) == 4 and {"systolic_bp/history", "systolic_bp/realtime"} <= k.get(bp_id, set())
                    and {"spo2/history", "spo2/realtime"} <= k.get(plx_id, set())
                    and any("temperature/realtime" in v for v in k.values())
                    and any("heart_rate/realtime" in v and len(v) == 1 for v in k.values()))

        wait_for(complete, 60, f"every kind in ingest: {kinds()}")
        for d in devices:
            assert d.terminate() == 0, d.stderr_tail()
        time.sleep(2.0)  # the last readings on their way
        before = _rows(db)
        # what the standalone devices sent, with their time stamps, is what ingest stored
        for d, dev in ((devices[0], bp_id), (devices[1], plx_id)):
            sent = _sent(logs / f"{d.argv[1]}.sent")
            # a measurement queued in the second before SIGTERM may not have left the device
            last = max(t for _v, _x, t in sent)
            sent = {s for s in sent if s[2] < last - 2000}
            stored = {(v, x, t) for dd, v, x, t, _s in before if dd == dev}
            assert sent and sent <= stored, (sent - stored, d.name)
            history = {(v, x, t) for dd, v, x, t, s in before if dd == dev and s == "history"}
            assert {t for _v, _x, t in history} == {(STORED_FROM + 3600 * i) * 1000 for i in range(3)}
        # a reconnect delivers the same stored records again: no new history row
        for d in devices:
            d.start()
        def live(rows: list[tuple[str, str, float, int, str]], dev: str) -> int:
            return sum(1 for r in rows if r[0] == dev and r[4] == "realtime")

        wait_for(lambda: all(live(_rows(db), dev) >= live(before, dev) + 4 for dev in (bp_id, plx_id)),
                 60, "the restarted devices collected again")
        for d in devices:
            assert d.terminate() == 0, d.stderr_tail()
        after = _rows(db)
        hist = lambda rows: sorted(r for r in rows if r[0] in (bp_id, plx_id) and r[4] == "history")  # noqa: E731
        assert hist(after) == hist(before) and len(hist(after)) == 3 * 3 + 3 * 2
        # a device whose gateway goes away says so and exits (no orphan process)
        devices[0].start()
        wait_for(lambda: "attached" in devices[0].stderr_tail(20_000).rsplit("--- ", 1)[-1], 30,
                 "the device attached again")
        assert gateway.terminate() == 0, gateway.stderr_tail()
        assert devices[0].wait(15) == 1
        assert "went away" in devices[0].stderr_tail()
    finally:
        for p in reversed(procs):
            p.terminate()

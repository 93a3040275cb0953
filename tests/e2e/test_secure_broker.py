"""The compose stack's security on real parts: Mosquitto with TLS (certificates made here by
config/make-certs.sh), passwords and the per-gateway ACL of config/mosquitto/acl; the ingest
service and a gateway with virtual watches connect over mqtts:// with their own credentials,
and a second gateway cannot publish under the first one's id."""

from __future__ import annotations

import getpass
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.support.ingest_service import Api, eventually, reading, running, settings_for
from vitalgate.broker import free_port, wait_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gw-secure"
ROGUE = "gw-rogue"
ROGUE_DEVICE = "c2deadbeef01"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(ROOT / "config/make-certs.sh"), str(certs), "localhost"], check=True)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "ingest", "pw-ingest"], check=True)
    for user in (GATEWAY, ROGUE):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, f"pw-{user}"], check=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous false\n"
        f"password_file {passwd}\nacl_file {ROOT / 'config/mosquitto/acl'}\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
        f"persistence true\npersistence_location {tmp_path}/\nlog_dest none\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        yield port, certs / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_ingest_and_gateway_over_tls_with_passwords_and_acl(
    secure_broker: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = secure_broker
    url = f"mqtts://localhost:{port}"
    settings = settings_for(tmp_path / "ingest", url, mqtt_username="ingest",
                            mqtt_password="pw-ingest", mqtt_ca=ca)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_")}
    env |= {"VITALGATE_MQTT_USERNAME": GATEWAY, "VITALGATE_MQTT_PASSWORD": f"pw-{GATEWAY}",
            "VITALGATE_MQTT_CA": str(ca)}
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vitalgate", "gateway", "run", "--simulate", "2", "--interval", "0.3",
         "--gateway-id", GATEWAY, "--mqtt-url", url, "--data-dir", str(tmp_path / "gw"),
         "--status-port", "0"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue")
    rogue.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    rogue.username_pw_set(ROGUE, f"pw-{ROGUE}")
    try:
        async with running(settings) as svc, Api(svc.url) as api:

            async def devices() -> list[dict[str, object]]:
                status, body = await api.get("/api/devices", size=50)
                assert status == 200, body
                items: list[dict[str, object]] = body["data"]["data"]
                return items

            async def two_watches_with_readings() -> bool:
                listed = [d for d in await devices() if d.get("gateway_id") == GATEWAY]
                return len(listed) == 2

            await eventually(two_watches_with_readings, timeout=90)
            # the rogue gateway (a valid user) tries to write under the first gateway's id:
            # the broker's ACL drops it, so ingest never sees that device
            rogue.connect("localhost", port)
            rogue.loop_start()
            now_ms = time.time_ns() // 1_000_000  # inside the accepted event-time window
            fake = reading(ROGUE_DEVICE, 0, now_ms - 60_000, "ROGUEPATIENT1", heart_rate=40.0)
            rogue.publish(f"vitals/v1/{GATEWAY}/{ROGUE_DEVICE}/reading", fake.to_bytes(), qos=1).wait_for_publish(10)
            own = reading(ROGUE_DEVICE, 1, now_ms - 60_000, "ROGUEPATIENT1", heart_rate=41.0)
            rogue.publish(f"vitals/v1/{ROGUE}/{ROGUE_DEVICE}/reading", own.to_bytes(), qos=1).wait_for_publish(10)

            async def rogue_device_seen() -> list[dict[str, object]]:
                return [d for d in await devices() if d.get("gateway_id") == ROGUE]

            seen = await eventually(rogue_device_seen, timeout=30)  # its own topic is allowed
            assert len(seen) == 1
            status, body = await api.get("/api/medical-records/ROGUEPATIENT1", type="HEART_RATE")
            assert status == 200, body
            values = [r["value"] for r in body["data"]["data"]]
            assert values == [41.0]  # the reading under the other gateway's id never arrived
    finally:
        rogue.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(20)
        finally:
            if gateway.poll() is None:
                gateway.kill()
            log.close()

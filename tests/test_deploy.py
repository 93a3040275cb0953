"""The deploy files are real: compose validates, and the broker's auth/ACL/TLS config works
on a real Mosquitto with certificates made by config/make-certs.sh."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.support.secure_broker import secure_mosquitto

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid() -> None:
    env = dict(os.environ)
    for line in (ROOT / "config/compose.env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if plugin:
        cmd = [docker, "compose", "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "config", "-q"]
    else:
        cmd = []
    if cmd:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"mosquitto", "influxdb", "ingest", "gateway", "grafana"} <= set(spec["services"])
    for service in spec["services"].values():
        for vol in service.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"compose mounts missing {src}"


def _client(name: str, port: int, ca: Path, user: str | None, password: str | None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    if user:
        c.username_pw_set(user, password)
    return c


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl needed to make certificates")
def test_broker_tls_auth_and_per_gateway_acl(tmp_path: Path) -> None:
    users = {"ingest": "pw-ingest", "ward3-bed12": "pw-gw"}
    with secure_mosquitto(tmp_path, users) as broker:
        port, ca = broker.port, broker.ca
        got: list[str] = []
        subscribed = threading.Event()
        ingest = _client("ingest-test", port, ca, "ingest", "pw-ingest")
        ingest.on_message = lambda c, u, m: got.append(m.topic)
        ingest.on_subscribe = lambda *a: subscribed.set()
        ingest.connect("localhost", port)
        ingest.subscribe("vitals/v1/#", qos=1)
        ingest.loop_start()
        assert subscribed.wait(10)

        gw = _client("gw-test", port, ca, "ward3-bed12", "pw-gw")
        gw.connect("localhost", port)
        gw.loop_start()
        gw.publish("vitals/v1/other-gw/d061aed45894/reading", b"{}", qos=1).wait_for_publish(10)
        gw.publish("vitals/v1/ward3-bed12/d061aed45894/reading", b"{}", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while "vitals/v1/ward3-bed12/d061aed45894/reading" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["vitals/v1/ward3-bed12/d061aed45894/reading"], "ACL let a gateway write under another id"

        refused: list[object] = []
        anon = _client("anon", port, ca, None, None)
        anon.on_connect = lambda c, u, f, rc, p=None: refused.append(rc)
        anon.connect("localhost", port)
        anon.loop_start()
        deadline = time.monotonic() + 10
        while not refused and time.monotonic() < deadline:
            time.sleep(0.05)
        anon.loop_stop()
        assert refused and getattr(refused[0], "is_failure", True), "anonymous client was accepted"
        for c in (gw, ingest):
            c.disconnect()
            c.loop_stop()


def test_compose_postgres_service() -> None:
    """PostgreSQL 15 (issue 13): data on a named volume, a pg_isready health check, the
    password required from .env (never a default in the compose file), no host port."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pg = spec["services"]["postgres"]
    assert str(pg["image"]).split(":")[1].startswith("15")
    mounts = [v.split(":") for v in pg["volumes"]]
    assert ["postgres-data", "/var/lib/postgresql/data"] in mounts
    assert "postgres-data" in spec["volumes"], "the data volume is not declared"
    check = pg["healthcheck"]
    assert "pg_isready" in " ".join(check["test"]) and int(check["retries"]) > 0
    password = pg["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", password), password
    assert "POSTGRES_HOST_AUTH_METHOD" not in pg["environment"]  # "trust" would skip the password
    assert "ports" not in pg, "PostgreSQL must not be published on the host"
    example = (ROOT / "config/compose.env.example").read_text()
    for key in ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"):
        assert re.search(rf"^{key}=\S", example, re.M), f"{key} missing from compose.env.example"


def test_compose_ingest_replicas_share_postgres() -> None:
    """Issue 13's production shape: two ingest replicas on the PostgreSQL service and one MQTT
    shared subscription, each with its own instance id (its MQTT session derives from it)."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    replicas = {name: s for name, s in spec["services"].items() if s.get("command") == ["ingest"]}
    assert len(replicas) >= 2, replicas.keys()
    ids, groups = set(), set()
    for name, svc in replicas.items():
        env = svc["environment"]
        url = env["VITALGATE_DATABASE_URL"]
        assert re.fullmatch(r"postgresql://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD\}"
                            r"@postgres:5432/\$\{POSTGRES_DB[^}]*\}", url), url
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        ids.add(env["VITALGATE_INSTANCE_ID"])
        groups.add(env["VITALGATE_SHARED_GROUP"])
        assert "VITALGATE_PARTITION" not in env
    assert len(ids) == len(replicas), "every replica needs its own VITALGATE_INSTANCE_ID"
    assert len(groups) == 1, "the replicas share one subscription group"
    ports = [p for s in replicas.values() for p in s.get("ports", [])]
    assert len({p.split(":")[0] for p in ports}) == len(ports), "host ports must differ"

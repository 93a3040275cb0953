"""Session adoption (ingest.adopt) on real parts: Mosquitto, PostgreSQL, the ingest service.

A member of the shared subscription dies with a persistent session: the broker keeps
dispatching its share to that session. The first live instance adopts it once the member's
membership has expired and stores what was queued there; when the member returns, its
connection takes the client id over and the adopter lets go without reconnecting (no
ping-pong). The session is adopted under the client id the member recorded in its membership,
a hand-set one (``VITALGATE_MQTT_CLIENT_ID``) included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest import store
from ingest.adopt import RETRY_ROUNDS, client_id_of
from ingest.db import leases
from ingest.ownership import LeasedOwner
from ingest.service import IngestService
from tests.support.ingest_service import (
    TEST_KEY,
    Api,
    connected,
    eventually,
    publish_all,
    reading,
    settings_for,
)
from tests.support.processes import stop
from vitalgate.broker import Mosquitto, free_port
from vitalgate.contract import QOS, Topics, encode_readings

TOPICS = Topics()
GROUP = "ingest"


def _member(mosquitto: Mosquitto, instance: str) -> mqtt.Client:
    """A member of the shared subscription with a persistent session, connected."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id_of(instance),
                    clean_session=False)
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    subs = [(f"$share/{GROUP}/{t}", QOS) for t in TOPICS.gateway_subscriptions()]
    info = c.subscribe(subs)
    deadline = time.monotonic() + 10
    while not c.is_connected() or info[0] != mqtt.MQTT_ERR_SUCCESS:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # the SUBACK
    return c


async def test_a_dead_members_session_is_adopted_drained_and_given_back(
        tmp_path: Path, mosquitto: Mosquitto, postgres_db: str) -> None:
    settings = settings_for(tmp_path / "a", mosquitto.url, database_url=postgres_db,
                            shared_group=GROUP, instance_id="a", lease_s=1.5)
    async with connected(settings) as svc:
        service = svc.service
        adopter, owner = service.adopter, service.owner
        assert adopter is not None and isinstance(owner, LeasedOwner)
        # "dead" joins the group and the membership, then dies (no clean stop)
        dead = _member(mosquitto, "dead")
        dead.disconnect()
        dead.loop_stop()
        await service.db.write(lambda c: leases.heartbeat(
            c, "dead", lease_ms=300, held={}, partitions=service.owner.partitions,
            started_at=0))
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="adopt-pub")
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            now = int(time.time() * 1000)
            publish_all(pub, [(TOPICS.reading("ward3-bed12", "d061aed45894"), encode_readings(
                [reading("d061aed45894", i, now - 60_000 + i * 100, heart_rate=70.0 + i)]))
                for i in range(40)])
        finally:
            pub.disconnect()
            pub.loop_stop()
        # every message is stored: half of them only through the adopted session
        await eventually(lambda: adopter.adopted == ["dead"], timeout=20)
        await eventually(lambda: _all_stored(service), timeout=20)
        assert adopter.adoptions == 1
        # the member returns: its connection takes the session over, the adopter lets go
        back = _member(mosquitto, "dead")
        try:
            await eventually(lambda: adopter.adopted == [] and adopter.let_go == 1, timeout=20)
            rounds = owner.stats.rounds
            # still not live in the leases (it has not heartbeated): not adopted again, its
            # connection stays up
            await eventually(lambda: owner.stats.rounds >= rounds + RETRY_ROUNDS - 2,
                             timeout=20)
            assert adopter.adoptions == 1 and back.is_connected()
        finally:
            back.disconnect()
            back.loop_stop()


async def _all_stored(service: IngestService) -> bool:
    return bool(await service.db.read(store.count_readings) == 40)


#: the client id the operator of replica "b" set by hand: nothing derives it from "b"
HAND_SET = "operator-chosen-b"


def _replica(data_dir: Path, mosquitto: Mosquitto, database_url: str, port: int,
             log: Path) -> subprocess.Popen[bytes]:
    """``vitalgate ingest`` as instance "b" of the group, its client id set by hand."""
    env = dict(os.environ, VITALGATE_DATA_DIR=str(data_dir), VITALGATE_MQTT_URL=mosquitto.url,
               VITALGATE_HTTP_HOST="127.0.0.1", VITALGATE_HTTP_PORT=str(port),
               VITALGATE_API_KEY=TEST_KEY, VITALGATE_DATABASE_URL=database_url,
               VITALGATE_INSTANCE_ID="b", VITALGATE_MQTT_CLIENT_ID=HAND_SET,
               VITALGATE_SHARED_GROUP=GROUP, VITALGATE_LEASE_S="1.5",
               VITALGATE_MAX_READING_AGE_DAYS="7")
    env.pop("VITALGATE_CONFIG", None)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def _messages_received(api: Api) -> float:
    """``vitalgate_ingest_messages_total`` of the process behind ``api`` (0 while it is not up)."""
    try:
        status, text = await api.get("/metrics")
    except OSError:
        return 0.0
    if status != 200:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vitalgate_ingest_messages_total"))


async def _stored(service: IngestService, device: str, n: int) -> bool:
    """Whether ``n`` readings of ``device`` are stored."""
    return int(await service.db.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM readings WHERE device_id = ?", (device,)).fetchone()[0])) == n


async def test_a_dead_replica_with_a_hand_set_client_id_is_adopted_under_it(
        tmp_path: Path, mosquitto: Mosquitto, postgres_db: str) -> None:
    settings = settings_for(tmp_path / "a", mosquitto.url, database_url=postgres_db,
                            shared_group=GROUP, instance_id="a", lease_s=1.5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="adopt-hand-set-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    port = free_port()
    b: subprocess.Popen[bytes] | None = None
    try:
        async with connected(settings) as svc, Api(f"http://127.0.0.1:{port}") as b_api:
            service = svc.service
            adopter = service.adopter
            assert adopter is not None
            b = _replica(tmp_path / "b", mosquitto, postgres_db, port, tmp_path / "b.log")
            # b records its hand-set client id in its membership
            rows: list[Any] = []

            async def recorded() -> bool:
                rows[:] = await service.db.read(lambda c: c.execute(
                    "SELECT client_id FROM ingest_instances WHERE instance_id = 'b'").fetchall())
                return bool(rows)

            await eventually(recorded, timeout=60)
            assert rows == [(HAND_SET,)]
            # b is a member of the shared subscription once a message reached it
            warm = "d061aed40000"
            now = int(time.time() * 1000)
            for i in range(200):
                publish_all(pub, [(TOPICS.reading("ward3-bed1", warm), encode_readings(
                    [reading(warm, i, now - 120_000 + i * 100)]))])
                with contextlib.suppress(TimeoutError):
                    if await eventually(lambda: _messages_received(b_api), timeout=0.5):
                        break
            assert await _messages_received(b_api) > 0
            # b dies (SIGKILL: no clean stop, its membership expires); its share of what is
            # published now waits in its session, under the client id only its row knows
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            device = "d061aed45894"
            publish_all(pub, [(TOPICS.reading("ward3-bed12", device), encode_readings(
                [reading(device, i, now - 60_000 + i * 100, heart_rate=70.0 + i)]))
                for i in range(40)])
            await eventually(lambda: adopter.adopted == ["b"], timeout=30)
            adopted = adopter.sessions["b"]
            assert adopted.client_id == HAND_SET != client_id_of("b")
            # every message is stored, b's share through the adopted session
            await eventually(lambda: _stored(service, device, 40), timeout=30)
            assert adopted.metrics.messages.total() > 0
            assert adopter.adoptions == 1
    finally:
        pub.disconnect()
        pub.loop_stop()
        if b is not None:
            stop(b)

"""Session adoption (ingest.adopt) on real parts: Mosquitto, PostgreSQL, the ingest service.

A member of the shared subscription dies with a persistent session: the broker keeps
dispatching its share to that session. The first live instance adopts it once the member's
membership has expired and stores what was queued there; when the member returns, its
connection takes the client id over and the adopter lets go without reconnecting (no
ping-pong)."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest import store
from ingest.adopt import RETRY_ROUNDS, client_id_of
from ingest.db import leases
from ingest.ownership import LeasedOwner
from ingest.service import IngestService
from tests.support.ingest_service import connected, eventually, publish_all, reading, settings_for
from vitalgate.broker import Mosquitto
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

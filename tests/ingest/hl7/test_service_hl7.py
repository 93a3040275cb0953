"""HL7 out through the whole service (real Mosquitto, real ingest, real MLLP receiver on
loopback, the durable outbox's channel ``hl7``): the receiver is down while readings flow and
scores are emitted; once it is up, every message arrives exactly once, in each patient's order,
and every one validates against HL7 v2.6 in the receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ingest.db.outbox import rows
from ingest.hl7.delivery import control_id_of
from tests.support.hl7_receiver import Receiver
from tests.support.ingest_service import eventually, publish_all, publisher, running, settings_for
from vitalgate.broker import Mosquitto, free_port
from vitalgate.contract import Reading, Topics, Vitals

TOPICS = Topics()
PATIENTS = {"PAT-A": "d061aed45801", "PAT-B": "d061aed45802", "PAT-C": "d061aed45803"}
#: each step moves the respiratory rate, so the score changes and a point is emitted
RR = (16.0, 22.0, 25.0, 12.0)


def vitals(rr: float) -> Vitals:
    return Vitals(heart_rate=88.0, spo2=96.0, systolic_bp=118.0, diastolic_bp=76.0,
                  temperature=37.1, respiratory_rate=rr)


def hl7_rows(svc: Any) -> list[dict[str, Any]]:
    return svc.service.outbox.db.read_sync(lambda c: rows(c, "hl7"))


async def test_receiver_down_readings_flow_receiver_up_every_message_once_in_order(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    receiver = Receiver("AE-then-AA", port)  # not started: the receiver is down
    settings = settings_for(tmp_path / "data", mosquitto.url, hl7_host="127.0.0.1",
                            hl7_port=port, hl7_facility="HOSP1", hl7_patient_authority="HOSPMRN",
                            hl7_ack_timeout_s=2.0, ews_min_interval_s=0,
                            roaming_groups={"ward-a": ["gw-ward-a"]})
    async with running(settings) as svc:
        await eventually(lambda: svc.service.consumer.connected)
        now = svc.service.clock()
        pub = publisher(mosquitto.host, mosquitto.port)
        try:
            for step, rr in enumerate(RR):
                publish_all(pub, [
                    (TOPICS.reading("gw-ward-a", dev),
                     Reading(device_id=dev, seq=step, ts=now - 60_000 + step * 5_000,
                             user_code=user, vitals=vitals(rr)).to_bytes())
                    for user, dev in PATIENTS.items()])
        finally:
            pub.disconnect()
            pub.loop_stop()
        # every reading and every emitted point waits in the outbox while the receiver is down
        await eventually(lambda: len(hl7_rows(svc)) >= 12 + 3, timeout=20)
        await eventually(lambda: svc.service.outbox.metrics("hl7")["attempts"] >= 2, timeout=20)
        assert receiver.accepted == []
        assert all(r["state"] == "pending" for r in hl7_rows(svc))

        receiver.start()
        try:
            def done() -> bool:
                m = svc.service.outbox.metrics("hl7")
                return m["depth"] == 0 and m["delivered"] == len(hl7_rows(svc))

            await eventually(done, timeout=60)
            outbox = hl7_rows(svc)
        finally:
            receiver.stop()
        stats = svc.service.hl7.stats()  # type: ignore[union-attr]

    assert receiver.invalid == []  # every message validated in the receiver (hl7apy, v2.6)
    kinds = {"vitals": 0, "ews": 0}
    for r in outbox:
        kinds["ews" if "1104051000000101^NEWS2" in r["body"] else "vitals"] += 1
    assert kinds["vitals"] == 12 and kinds["ews"] >= 3  # 4 readings x 3 patients; >= 1 point each
    expected: dict[str, list[str]] = {}
    for r in outbox:  # the outbox's order (row id) per patient is the enqueue order
        expected.setdefault(r["user_code"], []).append(control_id_of(r["body"]))
    # exactly once: each message accepted once (after one AE), in its patient's order
    assert receiver.by_patient() == expected
    assert len({a.control_id for a in receiver.accepted}) == len(receiver.accepted) == len(outbox)
    for cid in (c for cs in expected.values() for c in cs):
        assert [a.answer for a in receiver.answered if a.control_id == cid] == ["AE", "AA"]
    # the message of the reading a score was made from (OBR-7: the score's produce_at, its
    # newest vital's time) precedes the score's message
    for user in expected:
        bodies = [r["body"] for r in outbox if r["user_code"] == user]
        seen: set[str] = set()
        for body in bodies:
            obr7 = next(s for s in body.split("\r") if s.startswith("OBR|")).split("|")[7]
            if "1104051000000101^NEWS2" in body:
                assert obr7 in seen, f"{user}: a score before its reading"
            else:
                seen.add(obr7)
                assert "\rPV1|1|I|ward-a^^^HOSP1" in body
            assert f"\rPID|1||{user}^^^HOSPMRN^PI" in body
    assert stats["ack_app_error"] == len(outbox) and stats["ack_accepted"] == len(outbox)
    assert stats["ack_unavailable"] >= 1 and stats["enqueued"] == 12

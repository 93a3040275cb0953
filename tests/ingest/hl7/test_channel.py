"""The HL7 channel: which committed readings and emitted points become messages (with the
ward and the registered device), and how acknowledgments become outbox verdicts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ingest import registry, store
from ingest.ews_engine import EwsPoint
from ingest.hl7.channel import Hl7Channel, device_labels
from ingest.hl7.oru import OruConfig
from ingest.hl7.transport import AckPolicy, Delivery, Outcome
from ingest.outbox import Verdict
from tests.support.hl7_receiver import parse
from vitalgate.contract import DeviceStatus

TS = 1_764_631_080_000
DEV = "d061aed45894"


def row(vital: str, value: float, seq: int, user: str | None = "pat-1",
        gateway: str = "gw-a") -> store.StoredReading:
    return store.StoredReading(DEV, user, gateway, vital, value, TS + seq * 1000, seq,
                               "realtime", False, TS + seq * 1000 + 50)


def point(**kw: object) -> EwsPoint:
    base = EwsPoint(user_code="pat-1", point=5, result="sedang", risk="medium",
                    cause=("Heart Rate 118",), partial=False, missing=(),
                    components={"heart_rate": 2, "respiratory_rate": 3}, produce_at=TS, id=3)
    return replace(base, **kw)  # type: ignore[arg-type]


def channel() -> Hl7Channel:
    return Hl7Channel(OruConfig(), ward_of={"gw-a": "ward-a"}, clock=lambda: TS + 5000,
                      policy=AckPolicy(ae_max_attempts=2))


def test_readings_one_message_per_reading_patientless_counted() -> None:
    ch = channel()
    msgs = ch.readings([row("heart_rate", 70, 1), row("spo2", 97, 1), row("heart_rate", 72, 2),
                        row("spo2", 91, 3, user=None)])
    assert [m.kind for m in msgs] == ["vitals", "vitals"]
    first = parse(msgs[0].er7)
    obs = first.oru_r01_patient_result.oru_r01_order_observation.children
    assert [o.obx.obx_3.to_er7().split("^")[0] for o in obs[1:]] == ["149530", "150456"]
    assert first.oru_r01_patient_result.oru_r01_patient.oru_r01_visit.pv1.pv1_3.to_er7() \
        .startswith("ward-a^")
    assert ch.stats()["built"] == 2 and ch.stats()["skipped_no_patient"] == 1


def test_points_carry_the_patients_ward_external_and_invalid_are_not_sent() -> None:
    ch = channel()
    before = ch.points([point()])
    assert "PV1" not in before[0].er7  # no reading seen yet: the ward is not known
    ch.readings([row("heart_rate", 70, 1)])
    msgs = ch.points([point(), point(source="external"), point(valid=False, reason="stale")])
    assert len(msgs) == 1 and "\rPV1|1|I|ward-a^" in msgs[0].er7
    assert msgs[0].control_id == before[0].control_id  # the same point: the same id
    assert ch.stats()["skipped_external_point"] == 1
    assert ch.stats()["skipped_invalid_point"] == 1


def test_an_item_that_cannot_be_built_is_counted_and_the_rest_go() -> None:
    ch = channel()
    msgs = ch.points([point(risk="bogus"), point(id=4)])
    assert len(msgs) == 1 and ch.stats()["skipped_risk"] == 1


def test_judge_ae_bounded_per_message_ar_failed_outage_never() -> None:
    ch = channel()
    ae = Delivery(Outcome.APP_ERROR, "AE", "busy")
    down = Delivery(Outcome.UNAVAILABLE, None, "refused")
    assert ch.judge("M1", ae) is Verdict.RETRY_ITEM
    for _ in range(10):
        assert ch.judge("M1", down) is Verdict.RETRY_ALL  # an outage uses up no AE chance
    assert ch.judge("M1", ae) is Verdict.FAILED  # the second AE: the bound (2)
    assert ch.judge("M2", ae) is Verdict.RETRY_ITEM
    assert ch.judge("M2", Delivery(Outcome.ACCEPTED, "AA")) is Verdict.DELIVERED
    assert ch.judge("M2", ae) is Verdict.RETRY_ITEM  # counting starts again after an AA
    assert ch.judge("M3", Delivery(Outcome.REJECTED, "AR")) is Verdict.FAILED
    s = ch.stats()
    assert (s["ack_accepted"], s["ack_rejected"], s["ack_app_error"], s["ack_unavailable"],
            s["failed_after_errors"]) == (1, 1, 4, 10, 1)


def test_device_labels_from_the_registry_on_both_engines(database_url: str,
                                                          tmp_path: Path) -> None:
    from ingest.db.engine import Location
    from ingest.db.schema import open_store

    db = open_store(Location.parse(database_url, default_path=tmp_path / "x.sqlite3"))
    try:
        status = DeviceStatus(device_id=DEV, name="E86|^~&\\", model="E86", connected=True)
        db.write_sync(lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-a", now=TS,  # type: ignore[arg-type]
                                                      holder="x", status=status))
        labels = db.read_sync(lambda c: device_labels(c, [DEV, "aabbccddeeff"]))
    finally:
        db.close()
    assert set(labels) == {DEV}
    assert (labels[DEV].name, labels[DEV].model) == ("E86|^~&\\", "E86")
    msg = channel().readings([row("heart_rate", 70, 1)], devices=labels)[0]
    assert "E86\\F\\\\S\\\\R\\\\T\\\\E\\" in msg.er7


def test_render_point_never_raises_into_the_engines_transaction() -> None:
    ch = channel()
    assert ch.render_point(point()) is not None
    assert ch.render_point(object()) is None  # not a point at all: counted, not raised
    assert ch.render_point(point(source="external")) is None
    assert ch.stats().get("skipped_error", 0) + ch.stats().get("skipped_invalid", 0) == 1

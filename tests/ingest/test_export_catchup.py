"""A crash between a readings commit and the FHIR/HL7 enqueue loses nothing (issue 17's
"nothing lost across restarts"), on both engines, against the real parts: Mosquitto, the
ingest service, Medplum's FHIR router (tests/support/fhir.py) and hl7apy's MLLP receiver.

The crash: after the first readings flowed normally, each later commit's channel hand-off is
cut (the process "dies" between the commit and the enqueue: nothing enqueued, no mark
advanced), then the service stops and a new one starts on the same store. Its catch-up at
start re-reads the readings since the channels' marks: every reading's Observation and ORU
then arrives exactly once (the first readings' copies are absorbed)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ingest.db import readings as readings_db
from ingest.db.readings import StoredReading
from ingest.export_catchup import ExportMarks
from ingest.fhir.resources import vitals_units
from ingest.hl7.delivery import control_id_of
from ingest.settings import IngestSettings
from tests.support.fhir import FhirServer
from tests.support.hl7_receiver import Receiver
from tests.support.ingest_service import (
    eventually,
    publish_all,
    publisher,
    reading,
    running,
    settings_for,
)
from tests.support.vitals import DETERIORATING
from vitalgate.broker import Mosquitto
from vitalgate.contract import Topics, encode_readings

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("ingest_engine")]
TOPICS = Topics()
SYSTEM = "urn:oid:2.16.840.1.113883.2.4.6.3"
GATEWAY = "ward-3-pi"
PATIENTS = {"XC-A": "0b0000000001", "XC-B": "0b0000000002"}
NEWS2 = "1104051000000101"


def hl7_settings(tmp_path: Path, mosquitto: Mosquitto, receiver: Receiver,
                 **overrides: Any) -> IngestSettings:
    """The service's settings: ORUs to ``receiver`` (facility HOSP1, authority HOSPMRN), every
    change of score emitted at once; ``overrides`` add the rest."""
    return settings_for(tmp_path / "data", mosquitto.url, hl7_host=receiver.host,
                        hl7_port=receiver.port, hl7_facility="HOSP1",
                        hl7_patient_authority="HOSPMRN", ews_min_interval_s=0, **overrides)


def ten_minutes_ago() -> int:
    """Event times a few minutes back (ms): fresh for the scorer, nothing asserts the wall clock."""
    return time.time_ns() // 1_000_000 - 10 * 60_000


def publish(mosquitto: Mosquitto, sent: list[Any], step: int, base_ts: int) -> None:
    client = publisher(mosquitto.host, mosquitto.port, f"gw-xc-{step}")
    try:
        items = []
        for user, device in PATIENTS.items():
            ts = base_ts + step * 60_000
            items.append((TOPICS.reading(GATEWAY, device),
                          encode_readings([reading(device, step, ts, user_code=user,
                                                   **DETERIORATING[step])])))
            sent.append((user, device, step, ts, DETERIORATING[step]))
        publish_all(client, items)
    finally:
        client.disconnect()
        client.loop_stop()


def expected_identifiers(sent: list[Any]) -> set[str]:
    rs = [StoredReading(device, user, GATEWAY, vital, value, ts, seq, "realtime", False, ts)
          for user, device, seq, ts, vitals in sent for vital, value in vitals.items()]
    return {e.value for u in vitals_units(rs, SYSTEM).units for e in u.observations}


def server_vitals(server: FhirServer) -> list[str]:
    return [i["value"] for obs in server.search("Observation", _count="10000",
                                                category="vital-signs")
            for i in obs["identifier"]]


def vitals_messages(receiver: Receiver) -> list[str]:
    return [r.control_id for r in receiver.accepted if NEWS2 not in r.er7]


def stored(svc: Any) -> int:
    return int(svc.service.db.read_sync(readings_db.count))


async def test_crash_between_commit_and_enqueue_loses_nothing_after_restart(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    fhir = FhirServer(tmp_path / "fhir")
    fhir.start()
    receiver = Receiver("AA")
    receiver.start()
    try:
        settings = hl7_settings(tmp_path, mosquitto, receiver, fhir_url=fhir.url,
                                fhir_patient_system=SYSTEM)
        base_ts = ten_minutes_ago()
        sent: list[Any] = []
        async with running(settings) as svc:
            await eventually(lambda: svc.service.consumer.connected)
            publish(mosquitto, sent, 0, base_ts)  # delivered normally: its copies are absorbed
            await eventually(lambda: len(set(server_vitals(fhir))) == 2 * 5, timeout=60)
            await eventually(lambda: len(vitals_messages(receiver)) == 2, timeout=60)
            cut: list[int] = []

            async def crash(rows: Any, _enqueue: Any) -> int:  # dies after the commit
                cut.append(len(rows))
                return 0

            outs: list[Any] = [svc.service.fhir, svc.service.hl7]
            for out in outs:
                out.marks.offer = crash
            for step in (1, 2):
                publish(mosquitto, sent, step, base_ts)
            await eventually(lambda: stored(svc) == 3 * 2 * 6, timeout=30)
            await eventually(lambda: sum(cut) == 2 * (2 * 2 * 6), timeout=30)  # both channels
        assert len(set(server_vitals(fhir))) == 2 * 5  # the cut readings never left
        assert len(vitals_messages(receiver)) == 2

        async with running(settings) as svc:  # the restart: catch-up beside consuming
            service: Any = svc.service
            await eventually(lambda: not service.fhir.marks.behind
                             and not service.hl7.marks.behind, timeout=60)
            fhir_stats, hl7_stats = service.fhir.stats(), service.hl7.stats()
            want = expected_identifiers(sent)
            await eventually(lambda: set(server_vitals(fhir)) == want, timeout=120)
            await eventually(lambda: len(vitals_messages(receiver)) >= 6, timeout=120)
            await eventually(lambda: svc.service.outbox.metrics("fhir")["depth"] == 0
                             and svc.service.outbox.metrics("hl7")["depth"] == 0, timeout=120)
            assert svc.service.outbox.metrics("fhir")["failed"] == 0
        got = server_vitals(fhir)
        assert len(want) == 3 * 2 * 5
        assert Counter(got) == Counter(want)  # every Observation exactly once
        controls = vitals_messages(receiver)
        assert len(controls) == 3 * 2 and len(set(controls)) == 6  # every ORU exactly once
        assert receiver.invalid == []
        # the catch-up re-read every reading since the mark (step 0's too, absorbed) and
        # enqueued what was missing: the cut readings (HL7: one message per reading)
        assert fhir_stats["caught_up_readings"] >= 2 * 2 * 6
        assert fhir_stats["caught_up_rows"] >= 1
        assert hl7_stats["caught_up_readings"] >= 2 * 2 * 6
        assert hl7_stats["caught_up_rows"] == 2 * 2
    finally:
        receiver.stop()
        fhir.stop()


async def test_a_failed_enqueue_is_caught_up_at_the_next_commit(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The EWS store refuses one HL7 enqueue (raises once): the channel is behind, and the
    next commit's hand-off catches up both batches; each ORU arrives once."""
    receiver = Receiver("AA")
    receiver.start()
    try:
        settings = hl7_settings(tmp_path, mosquitto, receiver)
        base_ts = ten_minutes_ago()
        sent: list[Any] = []
        async with running(settings) as svc:
            await eventually(lambda: svc.service.consumer.connected)
            hl7: Any = svc.service.hl7
            assert hl7 is not None and isinstance(hl7.marks, ExportMarks)
            real = hl7.channel.readings
            failures: list[int] = []

            def refuse_once(rows: Any, labels: Any) -> Any:
                if not failures:
                    failures.append(len(rows))
                    raise OSError("the EWS store refused the write")
                return real(rows, labels)

            hl7.channel.readings = refuse_once
            publish(mosquitto, sent, 0, base_ts)
            await eventually(lambda: hl7.enqueue_errors == 1 and hl7.marks.behind, timeout=30)
            assert vitals_messages(receiver) == []
            publish(mosquitto, sent, 1, base_ts)
            await eventually(lambda: len(vitals_messages(receiver)) >= 4, timeout=60)
            await eventually(lambda: svc.service.outbox.metrics("hl7")["depth"] == 0, timeout=60)
            stats = hl7.stats()
        controls = vitals_messages(receiver)
        assert len(controls) == 4 and len(set(controls)) == 4
        assert stats["catch_ups"] >= 2 and stats["caught_up_rows"] >= 2
        assert stats["behind"] == 0
        assert all(control_id_of(r.er7) == r.control_id for r in receiver.accepted)
    finally:
        receiver.stop()

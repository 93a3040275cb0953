"""End to end (real Mosquitto, real ingest with its durable outbox, real Medplum FHIR server):
readings flow while the FHIR server is down, the service restarts meanwhile, the server comes
up: every Observation (each vital, each NEWS2 point) arrives exactly once, counted in Medplum
against the identifiers the readings and the EWS history call for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ingest.db.readings import StoredReading
from ingest.fhir import codes
from ingest.fhir.resources import news2_id, vitals_units
from ingest.service import RunningService
from tests.support.fhir import FhirServer
from tests.support.ingest_service import (
    connected,
    eventually,
    publish_once,
    reading,
    settings_for,
)
from tests.support.vitals import DETERIORATING
from vitalgate.broker import Mosquitto
from vitalgate.contract import DeviceStatus, Topics, encode_readings

pytestmark = pytest.mark.e2e
TOPICS = Topics()
SYSTEM = "urn:oid:2.16.840.1.113883.2.4.6.3"
PATIENTS = {"FHIR-A": "0a0000000001", "FHIR-B": "0a0000000002", "FHIR-C": "0a0000000003"}
GATEWAY = "ward-7-pi"


def vital_identifiers(sent: list[tuple[str, str, int, int, dict[str, float]]]) -> set[str]:
    readings = [StoredReading(device, user, GATEWAY, vital, value, ts, seq, "realtime", False, ts)
                for user, device, seq, ts, vitals in sent for vital, value in vitals.items()]
    built = vitals_units(readings, SYSTEM)
    assert not built.skipped
    return {e.value for u in built.units for e in u.observations}


def server_identifiers(server: FhirServer, **params: str) -> list[str]:
    out = []
    for obs in server.search("Observation", _count="10000", **params):
        out += [i["value"] for i in obs["identifier"]]
    return out


def fhir_stats(svc: RunningService) -> dict[str, int]:
    return svc.service.outbox.metrics("fhir")


def publish(mosquitto: Mosquitto, sent: list[Any], step: int, base_ts: int) -> None:
    items = []
    for user, device in PATIENTS.items():
        seq, ts, vitals = step, base_ts + step * 60_000, DETERIORATING[step]
        r = reading(device, seq, ts, user_code=user, **vitals)
        items.append((TOPICS.reading(GATEWAY, device), encode_readings([r])))
        sent.append((user, device, seq, ts, vitals))
    publish_once(mosquitto.host, mosquitto.port, items, f"gw-{step}")


async def test_server_down_readings_flow_restart_then_up_every_observation_once(
        tmp_path: Path, mosquitto: Mosquitto, fhir_server: FhirServer) -> None:
    fhir_server.kill()  # down before the first reading
    settings = settings_for(tmp_path / "data", mosquitto.url, fhir_url=fhir_server.url,
                            fhir_patient_system=SYSTEM, ews_min_interval_s=0)
    # event times a few minutes back (the scorer's freshness is event time; nothing here
    # asserts on the wall clock)
    base_ts = (time.time_ns() // 1_000_000) - 10 * 60_000
    sent: list[Any] = []
    async with connected(settings) as svc:
        # the gateway reports its watches (with their model) before their readings
        publish_once(mosquitto.host, mosquitto.port, [(TOPICS.device_status(GATEWAY, device), DeviceStatus(
            device_id=device, connected=True, model="E86", user_code=user).to_bytes())
            for user, device in PATIENTS.items()], "gw-status")
        for step in (0, 1):
            publish(mosquitto, sent, step, base_ts)
        # readings are stored and their FHIR rows wait: the server is down, attempts fail
        await eventually(lambda: fhir_stats(svc)["retried"] >= 1, timeout=30)
        fhir = svc.service.fhir
        await eventually(lambda: fhir.stats()["readings"] == 3 * 2 * 6, timeout=30)
        # every row the channel made is in the outbox, none delivered
        await eventually(lambda: fhir_stats(svc)["depth"]
                         == fhir.stats()["rows"] - fhir.stats()["absorbed_rows"], timeout=30)
        assert fhir_stats(svc)["delivered"] == 0
        pending_before_restart = fhir_stats(svc)["depth"]
        assert pending_before_restart >= 6  # 3 patients x 2 readings, plus NEWS2 points
    # the service restarts while the server is still down: the rows are in its store
    async with connected(settings) as svc:
        # nothing lost (the warm start may emit points of its own: more rows, never fewer)
        assert fhir_stats(svc)["depth"] >= pending_before_restart
        pending_before_restart = fhir_stats(svc)["depth"]
        publish(mosquitto, sent, 2, base_ts)
        await eventually(lambda: fhir_stats(svc)["depth"] > pending_before_restart, timeout=30)
        fhir_server.start()  # up again, same URL; the outbox's next retry delivers
        await eventually(lambda: fhir_stats(svc)["depth"] == 0, timeout=120)
        stats = fhir_stats(svc)
        assert stats["failed"] == 0
        engine = svc.service.engine
        points = []
        for user in PATIENTS:
            page, _ = engine.history(user, page=1, size=100)
            points += [p for p in page if p.source == "vitalgate"]
        fhir_counts = svc.service.fhir.stats()
    expected_vitals = vital_identifiers(sent)
    assert len(expected_vitals) == 3 * 3 * 5  # patients x readings x (4 vitals + 1 BP panel)
    got_vitals = server_identifiers(fhir_server, category="vital-signs")
    assert len(got_vitals) == len(expected_vitals)  # none twice
    assert set(got_vitals) == expected_vitals  # none missing
    assert len(points) >= 3  # the engine emitted (at least a first point per patient)
    expected_news = {news2_id(p, SYSTEM) for p in points}
    got_news = server_identifiers(fhir_server, code=f"{codes.SNOMED}|{codes.NEWS2_TOTAL}")
    # every point once (a point re-emitted unchanged by the warm start has the same identifier:
    # absorbed by conditional create)
    assert sorted(got_news) == sorted(expected_news)
    assert fhir_server.count("Patient") == 3 and fhir_server.count("Device") == 4
    watches = fhir_server.search("Device", identifier=f"{codes.BLUETOOTH_SYSTEM}|")
    assert sorted(w["identifier"][0]["value"].replace(":", "").lower() for w in watches) == sorted(
        PATIENTS.values())
    assert {w.get("modelNumber") for w in watches} == {"E86"}  # from the registry
    assert fhir_counts["skipped_no_patient"] == 0 and fhir_counts["render_failures"] == 0

"""The FHIR channel: rows for the outbox (per patient, bounded Bundles, dedup keys), derivedFrom
from what was enqueued, and rows delivered to the real FHIR server."""

from __future__ import annotations

import json
from pathlib import Path

from ingest.fhir import codes
from ingest.fhir.channel import FhirChannel, decode, send_row
from ingest.fhir.transport import FhirTransport
from ingest.outbox import Verdict
from tests.ingest.fhir.test_resources import SYSTEM, TS, Point, full_message, reading
from tests.support.fhir import FhirServer


def test_rows_per_patient_in_order_with_stable_dedup_keys() -> None:
    ch = FhirChannel(SYSTEM, batch=8)
    readings = (full_message() + full_message(user_code="P-002", device_id="aabbccddeeff")
                + full_message(seq=8, ts=TS + 5_000))
    rows = ch.readings_rows(readings)
    assert [r.user_code for r in rows] == ["P-001", "P-001", "P-002"]
    assert [len(decode(r.body)) for r in rows] == [1, 1, 1]  # a full message is 8 entries
    assert len({r.dedup_key for r in rows}) == 3
    again = FhirChannel(SYSTEM, batch=8).readings_rows(readings)
    assert [r.dedup_key for r in again] == [r.dedup_key for r in rows]  # absorbed by the outbox
    small = FhirChannel(SYSTEM, batch=8).readings_rows(
        [reading("heart_rate", seq=i, ts=TS + i) for i in range(6)])
    assert [len(decode(r.body)) for r in small] == [5, 1]  # Patient + 2 Devices + 5 HR, then 1
    assert ch.counts["readings"] == 18 and ch.counts["observations"] == 15 and ch.counts["rows"] == 3


def test_unassigned_readings_are_counted_not_sent() -> None:
    ch = FhirChannel(SYSTEM)
    rows = ch.readings_rows([reading("spo2", user_code=None), reading("heart_rate", value=float("inf"))])
    assert rows == []
    assert ch.counts["skipped_no_patient"] == 1 and ch.counts["skipped_unbuildable"] == 1


def test_news2_derives_from_the_newest_vitals_measured_before_it() -> None:
    ch = FhirChannel(SYSTEM)
    first = ch.readings_rows(full_message())
    later = ch.readings_rows([reading("heart_rate", value=90.0, seq=9, ts=TS + 60_000)])
    [row] = ch.points_rows([Point(produce_at=TS + 60_000)])
    [unit] = decode(row.body)
    news = unit.observations[0].resource
    refs = {d["identifier"]["value"] for d in news["derivedFrom"]}
    hr_new = decode(later[0].body)[0].observations[0].value
    hr_old = [e.value for e in decode(first[0].body)[0].observations
              if (codes.LOINC, "8867-4") in {(c["system"], c["code"]) for c in e.resource["code"]["coding"]}]
    assert hr_new in refs and hr_old[0] not in refs and len(refs) == 5
    # a point older than the newest heart rate cannot derive from it: counted, not invented
    [old] = ch.points_rows([Point(produce_at=TS)])
    assert len(decode(old.body)[0].observations[0].resource["derivedFrom"]) == 4
    assert ch.counts["derived_unknown"] == 1
    # a missing vital is not derived from
    [part] = ch.points_rows([Point(partial=True, missing=("spo2",), produce_at=TS + 60_000)])
    assert len(decode(part.body)[0].observations[0].resource["derivedFrom"]) == 4


def test_memory_is_bounded() -> None:
    ch = FhirChannel(SYSTEM, max_patients=2)
    for i in range(4):
        ch.readings_rows([reading("spo2", user_code=f"P-{i}", seq=i)])
    assert ch.counts["memory_evicted"] == 2
    [row] = ch.points_rows([Point(user_code="P-0")])
    assert "derivedFrom" not in decode(row.body)[0].observations[0].resource


async def test_rows_arrive_once_and_a_resent_row_is_absorbed(fhir_server: FhirServer) -> None:
    ch = FhirChannel(SYSTEM)
    rows = ch.readings_rows(full_message() + full_message(seq=8, ts=TS + 5_000))
    rows += ch.points_rows([Point(produce_at=TS + 5_000)])
    t = FhirTransport(fhir_server.url)
    try:
        firsts = [await send_row(t, r.body) for r in rows]
        assert [a.verdict for a in firsts] == [Verdict.DELIVERED] * 3
        assert [a.created for a in firsts] == [8, 5, 1]
        agains = [await send_row(t, r.body) for r in rows]
        assert [a.created for a in agains] == [0, 0, 0]
        bad = await send_row(t, "{not json")
        assert bad.verdict is Verdict.FAILED
    finally:
        await t.close()
    assert fhir_server.count("Observation") == 11
    [news] = fhir_server.search("Observation", code=f"{codes.SNOMED}|{codes.NEWS2_TOTAL}")
    # the vitals were in earlier Bundles: derivedFrom by identifier, each resolvable
    for ref in news["derivedFrom"]:
        i = ref["identifier"]
        assert fhir_server.count("Observation", identifier=f"{i['system']}|{i['value']}") == 1


async def test_a_row_with_a_refused_unit_fails_naming_it_and_delivers_the_rest(
        fhir_server: FhirServer) -> None:
    ch = FhirChannel(SYSTEM)
    [row] = ch.readings_rows([reading("heart_rate", seq=1, ts=TS), reading("spo2", seq=2, ts=TS + 1)])
    body = json.loads(row.body)
    body["units"][1]["entries"][-1]["resource"]["status"] = None
    t = FhirTransport(fhir_server.url)
    try:
        a = await send_row(t, json.dumps(body))
    finally:
        await t.close()
    assert a.verdict is Verdict.FAILED and "1 of 2 units refused" in a.detail
    assert a.created == 4  # Patient, 2 Devices, the heart rate
    assert fhir_server.count("Observation") == 1



async def test_a_store_that_refuses_the_enqueue_costs_nothing_but_is_counted(tmp_path: Path) -> None:
    from ingest.db import ews as ews_store
    from ingest.fhir.delivery import FhirDelivery
    from ingest.outbox import Outbox

    db = ews_store.open_store(f"sqlite:///{tmp_path / 'ingest.sqlite3'}", tmp_path)
    outbox = Outbox(db, upstream_url=None, api_key=None)
    fhir = FhirDelivery(FhirChannel(SYSTEM), db, outbox, clock=lambda: TS)
    assert await fhir.enqueue_readings(full_message()) == 1
    assert await fhir.enqueue_readings(full_message()) == 0  # the same rows: absorbed
    assert fhir.stats()["absorbed_rows"] == 1
    db.close()  # a store that cannot write any more
    assert await fhir.enqueue_readings(full_message(seq=9, ts=TS + 9)) == 0  # does not raise
    assert fhir.stats()["enqueue_failed_rows"] == 1

"""What the built resources and the transport do against a real FHIR server: Medplum's FHIR
router with the R4 definitions (tests/support/fhir.py), which validates every resource against
the R4 StructureDefinitions and the vital-signs profiles it claims, and honours conditional
create and transaction Bundles."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from ingest.db.readings import StoredReading
from ingest.fhir import codes
from ingest.fhir.bundle import transaction
from ingest.fhir.resources import Entry, Unit, news2_unit, vitals_units
from ingest.fhir.transport import FhirTransport
from ingest.outbox import Verdict
from tests.ingest.fhir.test_resources import SYSTEM, TS, Point, full_message, reading
from tests.support.fhir import FhirServer


def units_of(readings: list[StoredReading]) -> list[Unit]:
    built = vitals_units(readings, SYSTEM, models={"d061aed45894": "E86"})
    assert not built.skipped
    return built.units


async def test_every_vital_and_a_news2_point_are_accepted_and_valid(fhir_server: FhirServer) -> None:
    vit = vitals_units(full_message(), SYSTEM)
    news = news2_unit(Point(), SYSTEM, list(vit.by_vital[0].values()))
    t = FhirTransport(fhir_server.url)
    try:
        [a] = await t.send(vit.units)
        assert a.verdict is Verdict.DELIVERED, a
        assert (a.created, a.existing) == (8, 0)  # Patient, 2 Devices, 5 Observations
        [b] = await t.send([news])
        assert b.verdict is Verdict.DELIVERED and (b.created, b.existing) == (1, 1), b
    finally:
        await t.close()
    assert fhir_server.count("Observation") == 6
    assert fhir_server.count("Patient") == 1 and fhir_server.count("Device") == 2
    # stored as sent, references resolved to the server's resources
    [pat] = fhir_server.search("Patient", identifier=f"{SYSTEM}|P-001")
    [hr] = fhir_server.search("Observation", code="http://loinc.org|8867-4")
    assert hr["subject"]["reference"] == f"Patient/{pat['id']}"
    [watch] = fhir_server.search("Device", identifier=f"{codes.BLUETOOTH_SYSTEM}|D0:61:AE:D4:58:94")
    assert hr["device"]["reference"] == f"Device/{watch['id']}"
    assert hr["valueQuantity"]["code"] == "/min"
    [news_obs] = fhir_server.search("Observation", code=f"{codes.SNOMED}|{codes.NEWS2_TOTAL}")
    assert news_obs["valueInteger"] == 6
    # derivedFrom was delivered in another Bundle: logical references by identifier, each of
    # which finds exactly one Observation on the server
    for ref in news_obs["derivedFrom"]:
        ident = ref["identifier"]
        assert len(fhir_server.search("Observation",
                                      identifier=f"{ident['system']}|{ident['value']}")) == 1


async def test_the_server_validates_against_the_vital_signs_profiles(fhir_server: FhirServer) -> None:
    """The check is real: a heart rate without its LOINC code breaks the heartrate profile and
    is refused (400: failed, not retried); the same resource without the profile claim passes
    base R4 validation, and a resource breaking base R4 is refused too."""
    [unit] = units_of([reading("heart_rate")])
    obs = unit.entries[-1]
    bad = copy.deepcopy(obs.resource)
    bad["code"]["coding"] = [c for c in bad["code"]["coding"] if c["system"] != codes.LOINC]
    t = FhirTransport(fhir_server.url)
    try:
        [a] = await t.send([Unit("P-001", "vitals", (*unit.entries[:-1], replace(obs, resource=bad)))])
        assert a.verdict is Verdict.FAILED and a.status == 400
        assert "HeartRateCode" in a.detail or "8867-4" in a.detail, a.detail
        broken = copy.deepcopy(obs.resource)
        broken["valueQuantity"]["value"] = "seventy-two"
        [b] = await t.send([Unit("P-001", "vitals", (*unit.entries[:-1], replace(obs, resource=broken)))])
        assert b.verdict is Verdict.FAILED and b.status == 400
        assert fhir_server.count("Observation") == 0  # a failed transaction left nothing
        assert fhir_server.count("Patient") == 0
        no_profile = copy.deepcopy(bad)
        del no_profile["meta"]
        [c] = await t.send([Unit("P-001", "vitals", (*unit.entries[:-1], replace(obs, resource=no_profile)))])
        assert c.verdict is Verdict.DELIVERED, c
    finally:
        await t.close()


async def test_a_resend_is_absorbed_by_conditional_create(fhir_server: FhirServer) -> None:
    units = units_of(full_message() + full_message(seq=8, ts=TS + 5_000))
    t = FhirTransport(fhir_server.url)
    try:
        first = await t.send(units)
        assert [a.verdict for a in first] == [Verdict.DELIVERED] * 2
        assert fhir_server.count("Observation") == 10
        again = await t.send(units)  # the whole lot again, e.g. after a crash before the ack
        assert [a.verdict for a in again] == [Verdict.DELIVERED] * 2
        assert all(a.created == 0 for a in again)
        # a resend under another seq (a gateway buffer replay) is the same measurement
        replay = units_of([r._replace(seq=1234, received_at=TS + 99_000) for r in full_message()])
        [r] = await t.send(replay)
        assert r.verdict is Verdict.DELIVERED and r.created == 0
    finally:
        await t.close()
    assert fhir_server.count("Observation") == 10
    assert fhir_server.count("Patient") == 1 and fhir_server.count("Device") == 2


async def test_batches_respect_medplums_transaction_cap(fhir_server: FhirServer) -> None:
    """Medplum refuses a transaction with a conditional create and more than 8 entries; packing
    keeps every Bundle within ``max_entries`` (the check is real: a bigger one is refused)."""
    units = units_of([reading("heart_rate", seq=i, ts=TS + i * 1000) for i in range(12)])
    big = transaction(units)
    assert len(big["entry"]) == 15
    t = FhirTransport(fhir_server.url, max_entries=8)
    try:
        refused = await t.post(big)
        assert refused.verdict is Verdict.FAILED and refused.status == 400
        assert "too many entries" in refused.detail
        attempts = await t.send(units)
        assert all(a.verdict is Verdict.DELIVERED for a in attempts)
        assert t.counts == {"failed": 1, "delivered": 3}  # 12 units in 3 Bundles of <= 8
    finally:
        await t.close()
    assert fhir_server.count("Observation") == 12


async def test_one_bad_unit_never_fails_its_batch(fhir_server: FhirServer) -> None:
    good = units_of([reading("heart_rate", seq=1, ts=TS), reading("spo2", seq=2, ts=TS + 1000)])
    bad_obs = good[1].entries[-1]
    res = copy.deepcopy(bad_obs.resource)
    res["status"] = None  # not even JSON a FHIR server accepts
    bad = Unit("P-001", "vitals", (*good[1].entries[:-1], Entry("Observation", bad_obs.system,
                                                                  bad_obs.value, res)))
    t = FhirTransport(fhir_server.url)
    try:
        attempts = await t.send([good[0], bad])
    finally:
        await t.close()
    assert [a.verdict for a in attempts] == [Verdict.DELIVERED, Verdict.FAILED]
    assert fhir_server.count("Observation") == 1


async def test_failures_are_classified(fhir_server: FhirServer) -> None:
    units = units_of([reading("heart_rate")])
    t = FhirTransport(fhir_server.url)
    try:
        for status, verdict in [(503, Verdict.RETRY_ALL), (429, Verdict.RETRY_ALL),
                                (500, Verdict.RETRY_ITEM), (408, Verdict.RETRY_ITEM),
                                (422, Verdict.FAILED), (404, Verdict.FAILED)]:
            fhir_server.fail_next(status)
            [a] = await t.send(units)
            assert (a.verdict, a.status) == (verdict, status)
        assert fhir_server.count("Observation") == 0
        [ok] = await t.send(units)
        assert ok.verdict is Verdict.DELIVERED
    finally:
        await t.close()


async def test_a_failing_server_holds_back_the_later_batches(fhir_server: FhirServer) -> None:
    units = units_of(full_message() + full_message(seq=8, ts=TS + 5_000))
    fhir_server.fail_next(503)
    t = FhirTransport(fhir_server.url)
    try:
        attempts = await t.send(units)
    finally:
        await t.close()
    assert [a.verdict for a in attempts] == [Verdict.RETRY_ALL] * 2
    assert fhir_server.stats()["requests"] == 1  # the second Bundle was not sent


async def test_server_down_then_up(fhir_server: FhirServer) -> None:
    units = units_of(full_message())
    later = units_of(full_message(seq=8, ts=TS + 5_000))
    t = FhirTransport(fhir_server.url, timeout_s=5)
    try:
        [a] = await t.send(units)
        assert a.verdict is Verdict.DELIVERED
        fhir_server.kill()
        [down] = await t.send(later)
        assert down.verdict is Verdict.RETRY_ITEM and down.status is None
        # the pooled connection is gone (disconnected), then nothing listens (refused)
        [again] = await t.send(later)
        assert again.verdict is Verdict.RETRY_ITEM and "ClientConnectorError" in again.detail
        fhir_server.start()  # same port; what it stored before is still there (its journal)
        assert fhir_server.count("Observation") == 5
        ups = await t.send(units + later)  # the retry, and the earlier one again
        assert [u.verdict for u in ups] == [Verdict.DELIVERED] * 2
        assert [u.created for u in ups] == [0, 5]
    finally:
        await t.close()
    assert fhir_server.count("Observation") == 10  # every Observation once


async def test_bearer_token(tmp_path: Path) -> None:
    with FhirServer(tmp_path / "fhir", token="s3cret-token") as server:
        units = units_of([reading("heart_rate")])
        t = FhirTransport(server.url)
        try:
            [a] = await t.send(units)
            assert (a.verdict, a.status) == (Verdict.FAILED, 401)
        finally:
            await t.close()
        t = FhirTransport(server.url, token=SecretStr("s3cret-token"))
        try:
            [b] = await t.send(units)
            assert b.verdict is Verdict.DELIVERED
        finally:
            await t.close()
        assert server.count("Observation") == 1


def test_the_token_is_never_in_a_log_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    t = FhirTransport("https://user:pw@fhir.example.org/base", token=SecretStr("s3cret-token"))
    assert "s3cret" not in caplog.text and "pw@" not in caplog.text
    assert "https://fhir.example.org/base" in caplog.text
    assert "s3cret" not in repr(t.__dict__)
    with pytest.raises(ValueError, match="http"):
        FhirTransport("ftp://x/y")


async def test_a_large_answer_is_read_whole(fhir_server: FhirServer) -> None:
    """The server echoes each resource: an answer of several chunks is read to its end (not
    taken for a garbled 2xx and retried)."""
    [unit] = units_of([reading("heart_rate")])
    obs = unit.entries[-1]
    res = copy.deepcopy(obs.resource)
    res["note"] = [{"text": "x" * 300_000}]
    t = FhirTransport(fhir_server.url)
    try:
        [a] = await t.send([Unit("P-001", "vitals", (*unit.entries[:-1], replace(obs, resource=res)))])
    finally:
        await t.close()
    assert a.verdict is Verdict.DELIVERED and a.created == 4, a

"""The pure FHIR builders: exact codes, units and references, checked field by field and
validated as R4 resources by ``fhir.resources`` (its R4B models: R4B changed nothing of
Observation, Patient, Device or Bundle that these resources use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from ingest.db.readings import StoredReading
from ingest.fhir import codes
from ingest.fhir.bundle import keys_in, pack, transaction
from ingest.fhir.resources import (
    FhirBuildError,
    iso_utc,
    news2_observation,
    news2_unit,
    vitals_units,
)

SYSTEM = "urn:oid:1.2.3.4.5"
TS = 1_764_583_200_123  # 2025-12-01T10:00:00.123Z
VALUES = {"heart_rate": 72.0, "spo2": 97.0, "systolic_bp": 121.0, "diastolic_bp": 79.0,
          "temperature": 36.6, "respiratory_rate": 16.0}


def reading(vital: str, value: float | None = None, *, ts: int = TS, seq: int | None = 7,
            source: str = "realtime", user_code: str | None = "P-001",
            device_id: str = "d061aed45894", gateway_id: str | None = "ward-3-pi") -> StoredReading:
    return StoredReading(device_id, user_code, gateway_id, vital,
                         VALUES[vital] if value is None else value, ts, seq, source, False, TS + 900)


def full_message(**kw: Any) -> list[StoredReading]:
    return [reading(v, **kw) for v in VALUES]


def codings(obs: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in obs["code"]["coding"]}


def by_loinc(unit_obs: list[dict[str, Any]], code: str) -> dict[str, Any]:
    [obs] = [o for o in unit_obs if (codes.LOINC, code) in codings(o)]
    return obs


def observations(readings: list[StoredReading], system: str = SYSTEM) -> list[dict[str, Any]]:
    built = vitals_units(readings, system)
    assert not built.skipped
    return [e.resource for u in built.units for e in u.observations]


@pytest.mark.parametrize(("vital", "loinc", "mdc", "ucum", "profile"), [
    ("heart_rate", {"8867-4"}, "149530", "/min", "heartrate"),
    ("spo2", {"59408-5", "2708-6"}, "150456", "%", "oxygensat"),
    ("respiratory_rate", {"9279-1"}, "151562", "/min", "resprate"),
    ("temperature", {"8310-5"}, "150364", "Cel", "bodytemp"),
])
def test_each_vital_has_its_loinc_mdc_and_ucum(vital: str, loinc: set[str], mdc: str, ucum: str,
                                                profile: str) -> None:
    [obs] = observations([reading(vital)])
    Observation.model_validate(obs)
    assert codings(obs) == {(codes.LOINC, c) for c in loinc} | {(codes.MDC, mdc)}
    q = obs["valueQuantity"]
    assert (q["value"], q["system"], q["code"]) == (VALUES[vital], codes.UCUM, ucum)
    assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
    assert obs["meta"]["profile"] == [codes.PROFILE_BASE + "vitalsigns", codes.PROFILE_BASE + profile]
    assert obs["status"] == "final"
    assert obs["effectiveDateTime"] == "2025-12-01T10:00:00.123Z"  # event time, UTC
    assert obs["issued"] == "2025-12-01T10:00:01.023Z"  # processing time (received_at)


def test_heart_rate_mdc_code_follows_its_source() -> None:
    [ppg] = observations([reading("heart_rate", source="history")])
    [ecg] = observations([reading("heart_rate", source="ecg", seq=None)])
    assert (codes.MDC, "149530") in codings(ppg) and (codes.MDC, "147842") not in codings(ppg)
    assert (codes.MDC, "147842") in codings(ecg) and (codes.MDC, "149530") not in codings(ecg)


def test_blood_pressure_is_one_panel_with_two_components() -> None:
    obs = observations([reading("systolic_bp"), reading("diastolic_bp")])
    assert len(obs) == 1
    panel = obs[0]
    Observation.model_validate(panel)
    assert codings(panel) == {(codes.LOINC, "85354-9"), (codes.MDC, "150020")}
    assert "valueQuantity" not in panel
    sys_c, dia_c = panel["component"]
    assert {(c["system"], c["code"]) for c in sys_c["code"]["coding"]} == {
        (codes.LOINC, "8480-6"), (codes.MDC, "150021")}
    assert {(c["system"], c["code"]) for c in dia_c["code"]["coding"]} == {
        (codes.LOINC, "8462-4"), (codes.MDC, "150022")}
    assert sys_c["valueQuantity"] == {"value": 121.0, "unit": "mmHg", "system": codes.UCUM,
                                      "code": "mm[Hg]"}
    assert dia_c["valueQuantity"]["value"] == 79.0


def test_half_a_blood_pressure_says_which_side_is_absent() -> None:
    [panel] = observations([reading("systolic_bp")])
    sys_c, dia_c = panel["component"]
    assert sys_c["valueQuantity"]["value"] == 121.0
    assert "valueQuantity" not in dia_c
    assert dia_c["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    Observation.model_validate(panel)


def test_subject_device_and_gateway() -> None:
    built = vitals_units([reading("heart_rate")], SYSTEM, models={"d061aed45894": "E86"})
    [unit] = built.units
    kinds = [(e.resource_type, e.system, e.value) for e in unit.entries]
    assert kinds[:3] == [("Patient", SYSTEM, "P-001"),
                         ("Device", codes.BLUETOOTH_SYSTEM, "D0:61:AE:D4:58:94"),
                         ("Device", codes.GATEWAY_SYSTEM, "ward-3-pi")]
    pat, watch, gw, obs = (e.resource for e in unit.entries)
    Patient.model_validate(pat)
    Device.model_validate(watch)
    Device.model_validate(gw)
    assert pat["identifier"] == [{"system": SYSTEM, "value": "P-001"}]  # system configurable
    assert watch["modelNumber"] == "E86"
    assert watch["deviceName"] == [{"name": "E86", "type": "model-name"}]
    assert gw["type"]["coding"][0] == {"system": codes.MDC, "code": "531981",
                                       "display": "MDC_MOC_VMS_MDS_AHD"}
    o = obs
    assert o["subject"]["identifier"] == {"system": SYSTEM, "value": "P-001"}
    assert o["device"]["identifier"] == {"system": codes.BLUETOOTH_SYSTEM, "value": "D0:61:AE:D4:58:94"}
    [ext] = o["extension"]
    assert ext["url"] == "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
    assert ext["valueReference"]["identifier"] == {"system": codes.GATEWAY_SYSTEM, "value": "ward-3-pi"}


def test_a_reading_without_gateway_has_no_gateway_extension() -> None:
    [obs] = observations([reading("spo2", gateway_id=None)])
    assert "extension" not in obs


def test_identifier_is_the_same_for_a_resend_and_differs_for_anything_else() -> None:
    def ident(r: StoredReading) -> str:
        [obs] = observations([r])
        [i] = obs["identifier"]
        assert i["system"] == codes.OBSERVATION_ID_SYSTEM
        return str(i["value"])

    base = reading("heart_rate")
    first = ident(base)
    assert len(first) == 64 and "P-001" not in first  # hashed: no patient code in clear
    # a resend (another seq, received later) is the same measurement: same identifier
    assert ident(base._replace(seq=99, received_at=TS + 60_000)) == first
    others = [base._replace(value=73.0), base._replace(ts=TS + 1), base._replace(user_code="P-002"),
              base._replace(device_id="d061aed45895"), base._replace(source="ecg")]
    assert len({ident(r) for r in others} | {first}) == len(others) + 1
    # the patient system is part of the identifier (PHD: patient value and system)
    [o2] = observations([base], system="urn:oid:9.9")
    assert o2["identifier"][0]["value"] != first


def test_one_unit_per_reading_message_and_unassigned_readings_are_skipped() -> None:
    readings = full_message() + full_message(seq=8, ts=TS + 5_000) + [
        reading("spo2", user_code=None, seq=9)]
    built = vitals_units(readings, SYSTEM)
    assert len(built.units) == 2
    assert [len(u.observations) for u in built.units] == [5, 5]  # BP is one panel
    assert [r.vital for r, _ in built.skipped] == ["spo2"]
    assert "no patient" in built.skipped[0][1]
    # by_vital maps both BP vitals to the one panel
    assert built.by_vital[0]["systolic_bp"] is built.by_vital[0]["diastolic_bp"]


def test_stored_readings_build_as_they_are() -> None:
    row = StoredReading("d061aed45894", "P-001", "gw-1", "temperature", 37.2, TS, 3, "history",
                        False, TS + 10)
    r = row  # the store's row is what the builders take: no conversion
    assert len(vitals_units([r], SYSTEM).units) == 1
    assert (r.vital, r.value, r.ts, r.seq, r.source, r.received_at) == (
        "temperature", 37.2, TS, 3, "history", TS + 10)


def test_bad_inputs_are_refused_with_a_reason() -> None:
    built = vitals_units([reading("heart_rate", user_code="bad code!")], SYSTEM)
    assert not built.units and "user_code" in built.skipped[0][1]
    built = vitals_units([reading("heart_rate")._replace(vital="glucose")], SYSTEM)
    assert not built.units and "glucose" in built.skipped[0][1]
    built = vitals_units([reading("heart_rate", value=float("nan"))], SYSTEM)
    assert not built.units and "finite" in built.skipped[0][1]


# ------------------------------------------------------------------------------ NEWS2


@dataclass(frozen=True)
class Point:
    user_code: str = "P-001"
    point: int = 6
    risk: str = "medium"
    partial: bool = False
    missing: tuple[str, ...] = ()
    components: dict[str, int] = field(default_factory=lambda: {
        "respiratory_rate": 2, "spo2": 1, "oxygen": 0, "systolic_bp": 0, "heart_rate": 1,
        "consciousness": 0, "temperature": 2})
    produce_at: int = TS
    emitted_at: int | None = TS + 2_000


def test_news2_observation() -> None:
    vit = vitals_units(full_message(), SYSTEM)
    derived = list(vit.by_vital[0].values())
    e = news2_observation(Point(), SYSTEM, derived)
    obs = e.resource
    Observation.model_validate(obs)
    assert obs["code"]["coding"] == [{"system": codes.SNOMED, "code": "1104051000000101"}]
    assert obs["valueInteger"] == 6 and isinstance(obs["valueInteger"], int)
    assert obs["effectiveDateTime"] == iso_utc(TS)
    assert obs["subject"]["identifier"] == {"system": SYSTEM, "value": "P-001"}
    interp = {(c["system"], c["code"]) for c in obs["interpretation"][0]["coding"]}
    assert interp == {(codes.NEWS2_RISK_SYSTEM, "medium"), (codes.INTERPRETATION, "H")}
    comps = {c["code"]["coding"][0]["code"]: c["valueInteger"] for c in obs["component"]}
    assert comps == Point().components
    # derivedFrom: the five distinct vital Observations (BP panel once)
    assert len(obs["derivedFrom"]) == 5
    assert {d["identifier"]["value"] for d in obs["derivedFrom"]} == {x.value for x in derived}
    assert "extension" not in obs and "note" not in obs


@pytest.mark.parametrize(("risk", "point", "v3"), [
    ("low", 0, "N"), ("low", 3, None), ("low-medium", 3, "H"), ("medium", 5, "H"), ("high", 9, "HH")])
def test_news2_interpretation_per_risk_band(risk: str, point: int, v3: str | None) -> None:
    obs = news2_observation(Point(point=point, risk=risk, components={}), SYSTEM).resource
    coding = obs["interpretation"][0]["coding"]
    assert coding[0] == {"system": codes.NEWS2_RISK_SYSTEM, "code": risk,
                         "display": codes.NEWS2_RISK[risk][0]}
    assert [c["code"] for c in coding[1:]] == ([v3] if v3 else [])
    Observation.model_validate(obs)


def test_partial_news2_is_flagged_and_missing_subscores_are_absent() -> None:
    p = Point(point=2, risk="low", partial=True, missing=("respiratory_rate", "consciousness"),
              components={"spo2": 1, "heart_rate": 1, "oxygen": 0, "systolic_bp": 0,
                          "temperature": 0, "consciousness": 0})
    obs = news2_observation(p, SYSTEM).resource
    Observation.model_validate(obs)
    assert obs["extension"] == [{"url": codes.PARTIAL_EXTENSION, "valueBoolean": True}]
    assert "respiratory_rate" in obs["note"][0]["text"]
    [rr] = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == "respiratory_rate"]
    assert "valueInteger" not in rr and rr["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    # assumed consciousness is scored (0) and listed as missing/assumed in the note
    [cons] = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == "consciousness"]
    assert cons["valueInteger"] == 0


def test_news2_identifier_absorbs_a_repeat_not_a_change() -> None:
    a = news2_observation(Point(), SYSTEM).value
    assert news2_observation(Point(emitted_at=TS + 99_000), SYSTEM).value == a  # a heartbeat repeat
    assert news2_observation(Point(point=7, risk="high"), SYSTEM).value != a
    assert news2_observation(Point(produce_at=TS + 1), SYSTEM).value != a
    assert news2_observation(Point(partial=True), SYSTEM).value != a


def test_news2_refuses_what_is_not_a_score() -> None:
    with pytest.raises(FhirBuildError, match="risk"):
        news2_observation(Point(risk="sedang"), SYSTEM)
    with pytest.raises(FhirBuildError, match="point"):
        news2_observation(Point(point=31), SYSTEM)
    with pytest.raises(FhirBuildError, match="user_code"):
        news2_observation(Point(user_code="a b"), SYSTEM)


# ------------------------------------------------------------------------------ Bundles


def test_transaction_bundle_of_conditional_creates_with_linked_references() -> None:
    vit = vitals_units(full_message() + full_message(seq=8, ts=TS + 5_000), SYSTEM)
    units = [*vit.units, news2_unit(Point(), SYSTEM, list(vit.by_vital[1].values()))]
    b = transaction(units)
    Bundle.model_validate(b)
    assert b["type"] == "transaction"
    keys = keys_in(b)
    assert len(keys) == len(set(keys))  # shared Patient and Devices once
    assert [k[0] for k in keys].count("Patient") == 1
    assert [k[0] for k in keys].count("Device") == 2
    assert [k[0] for k in keys].count("Observation") == 11
    urls = {(e["resource"]["resourceType"], e["resource"]["identifier"][0]["value"]): e["fullUrl"]
            for e in b["entry"]}
    for e in b["entry"]:
        req = e["request"]
        ident = e["resource"]["identifier"][0]
        assert req["method"] == "POST" and req["url"] == e["resource"]["resourceType"]
        assert req["ifNoneExist"].startswith("identifier=")
        from urllib.parse import parse_qs
        assert parse_qs(req["ifNoneExist"])["identifier"] == [f"{ident['system']}|{ident['value']}"]
        assert e["fullUrl"].startswith("urn:uuid:")
        res = e["resource"]
        if res["resourceType"] == "Observation":
            assert res["subject"]["reference"] == urls[("Patient", "P-001")]
            for d in res.get("derivedFrom", []):
                assert d["reference"] == urls[("Observation", d["identifier"]["value"])]
    # the input units are not changed by linking
    assert "reference" not in units[0].entries[3].resource["subject"]


def test_a_reference_outside_the_bundle_stays_logical() -> None:
    vit = vitals_units(full_message(), SYSTEM)
    b = transaction([news2_unit(Point(), SYSTEM, list(vit.by_vital[0].values()))])
    news = b["entry"][-1]["resource"]
    assert all("reference" not in d and d["identifier"] for d in news["derivedFrom"])
    assert news["subject"]["reference"].startswith("urn:uuid:")
    Bundle.model_validate(b)


def test_pack_keeps_order_and_bounds_entries() -> None:
    msgs = [vitals_units([reading("heart_rate", seq=i, ts=TS + i)], SYSTEM).units[0]
            for i in range(10)]
    batches = pack(msgs, 8)
    assert [u for b in batches for u in b] == msgs
    for b in batches:
        assert len(transaction(b)["entry"]) <= 8
    assert [len(b) for b in batches] == [5, 5]  # Patient + 2 Devices shared, then 5 Observations
    big = vitals_units(full_message(), SYSTEM).units[0]  # 8 entries: alone
    other = vitals_units(full_message(seq=8, ts=TS + 5_000), SYSTEM).units[0]
    assert [len(b) for b in pack([big, other], 8)] == [1, 1]
    assert [len(b) for b in pack([big, big], 8)] == [2]  # the same unit twice: the same 8 entries
    assert [len(b) for b in pack([big], 3)] == [1]  # a unit is never split
    with pytest.raises(ValueError):
        pack(msgs, 0)


def test_units_round_trip_through_json() -> None:
    import json

    from ingest.fhir.resources import Unit
    unit = vitals_units(full_message(), SYSTEM).units[0]
    again = Unit.from_json(json.loads(json.dumps(unit.to_json())))
    assert again == unit and [e.resource for e in again.entries] == [e.resource for e in unit.entries]

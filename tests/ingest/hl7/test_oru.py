"""The ORU^R01 builder: every message parses in two independent libraries (hl7apy strict and
validated against HL7 v2.6, python-hl7), carries the right codes, units and times, and hostile
free text can neither break a segment nor exceed its bound."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ews.score import Score
from ingest.hl7 import oru, text, vocab
from ingest.hl7.oru import (
    BuildError,
    DeviceInfo,
    OruConfig,
    ReadingGroup,
    ScoreItem,
    build_reading,
    build_score,
    group_readings,
)
from ingest.store import StoredReading
from tests.support.hl7_receiver import parse

TS = 1_764_631_080_123  # 2025-12-01T23:18:00.123Z (event time)
NOW = 1_764_631_085_000  # processing time
ALL_VITALS = (("heart_rate", 72.0), ("spo2", 97.0), ("systolic_bp", 121.0),
              ("diastolic_bp", 79.0), ("temperature", 36.8), ("respiratory_rate", 16.0))
HOSTILE = "E86|OBX|1|NM|x^y~z\\w&v\rPID|||evil\x1c\x0b\n\x00é€😀"


def reading(**kw: Any) -> ReadingGroup:
    base = ReadingGroup(user_code="pat-1", device_id="d061aed45894", gateway_id="gw-ward-a",
                        ts=TS, seq=42, source="realtime", vitals=ALL_VITALS, ward="ward-a",
                        device=DeviceInfo(name="E86 bed 4", model="E86"))
    return replace(base, **kw)


def score(**kw: Any) -> ScoreItem:
    """A score with its history row (``history_id``) and ward; ``kw`` replaces any of them."""
    where = {"history_id": 9, "ward": "ward-a",
             **{k: kw.pop(k) for k in ("history_id", "ward", "bed") if k in kw}}
    base = Score(user_code="pat-1", point=7, risk="high", result="tinggi", partial=False,
                 components={"heart_rate": 3, "respiratory_rate": 2, "spo2": 2},
                 cause=("Heart Rate 131", "Respiration 23", "Blood Oxygen 92"), missing=(),
                 produce_at=TS)
    return ScoreItem(replace(base, **kw), **where)


def obx_rows(er7: str) -> list[list[str]]:
    return [seg.split("|") for seg in er7.split("\r") if seg.startswith("OBX|")]


def segments(er7: str) -> list[str]:
    return [seg[:3] for seg in er7.split("\r") if seg]


MESSAGES = {
    "all vitals": lambda: build_reading(reading(), OruConfig(), NOW),
    "one vital, no ward, no device info": lambda: build_reading(
        reading(vitals=(("spo2", 95.0),), ward=None, gateway_id=None, device=DeviceInfo()),
        OruConfig(), NOW),
    "ecg heart rate": lambda: build_reading(reading(source="ecg", seq=None,
                                                    vitals=(("heart_rate", 64.5),)),
                                            OruConfig(), NOW),
    "systolic only, manual": lambda: build_reading(
        reading(source="manual", vitals=(("systolic_bp", 150.0),)), OruConfig(), NOW),
    "OID facility and authority": lambda: build_reading(
        reading(), OruConfig(facility="1.2.840.114350.1.13", patient_authority="2.16.840.1.1"),
        NOW),
    "hostile device text": lambda: build_reading(
        reading(device=DeviceInfo(name=HOSTILE * 20, model=HOSTILE)),
        OruConfig(facility="A|B^C", patient_authority="x~y&z\\"), NOW),
    "score": lambda: build_score(score(), OruConfig(), NOW),
    "partial score, hostile causes": lambda: build_score(
        score(partial=True, risk="low-medium", point=3, missing=("systolic_bp", "consciousness"),
              cause=(HOSTILE,) * 30), OruConfig(), NOW),
    "score of another chart": lambda: build_score(score(risk="low", point=0, components={}),
                                                  OruConfig(table="news2012"), NOW),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_parses_and_validates_in_both_libraries(name: str) -> None:
    m = MESSAGES[name]()
    parsed = parse(m.er7)
    assert parsed.validate() is True  # hl7apy: the v2.6 ORU_R01 structure, strict
    assert parsed.msh.msh_10.to_er7() == m.control_id
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_12.to_er7() == "2.6"
    msg = hl7.parse(m.er7)  # python-hl7, an independent reader
    assert [str(s[0]) for s in msg] == segments(m.er7)
    assert str(msg.segment("MSH")[10]) == m.control_id
    assert str(msg.segment("PID")[3][0][0]) == "pat-1"
    assert "\n" not in m.er7 and "\x1c" not in m.er7 and "\x0b" not in m.er7


def test_header_profile_patient_and_visit() -> None:
    m = build_reading(reading(), OruConfig(facility="HOSP1", patient_authority="HOSPMRN"), NOW)
    msh = hl7.parse(m.er7).segment("MSH")
    assert str(msh[3]) == "vitalgate" and str(msh[4]) == "HOSP1"
    assert str(msh[7]) == "20251201231805.000+0000"  # MSH-7: processing time
    assert str(msh[15]) == "AL" and str(msh[16]) == "NE"
    assert str(msh[21]) == "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
    parsed = parse(m.er7)
    patient = parsed.oru_r01_patient_result.oru_r01_patient
    assert patient.pid.pid_3.to_er7() == "pat-1^^^HOSPMRN^PI"
    assert patient.oru_r01_visit.pv1.pv1_3.to_er7() == "ward-a^^^HOSP1"
    obr = parsed.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_7.to_er7() == "20251201231800.123+0000"  # OBR-7: event time
    # an OID goes into the HD's universal id, as a subcomponent where the HD is a component
    m2 = build_reading(reading(), OruConfig(facility="1.2.3", patient_authority="2.16.1"), NOW)
    p2 = parse(m2.er7).oru_r01_patient_result.oru_r01_patient
    assert p2.pid.pid_3.to_er7() == "pat-1^^^&2.16.1&ISO^PI"
    assert p2.oru_r01_visit.pv1.pv1_3.to_er7() == "ward-a^^^&1.2.3&ISO"
    assert "PV1" not in segments(build_reading(reading(ward=None), OruConfig(), NOW).er7)


def test_one_obx_per_vital_with_mdc_code_ucum_unit_event_time_and_equipment() -> None:
    rows = obx_rows(build_reading(reading(), OruConfig(), NOW).er7)
    got = {r[3].split("^")[0]: (r[2], r[4], r[5], r[6].split("^")[0], r[11]) for r in rows}
    assert got["149530"] == ("NM", "1.1.1.1", "72", "/min", "R")
    assert got["150456"] == ("NM", "1.1.1.2", "97", "%", "R")
    assert got["151562"] == ("NM", "1.1.1.3", "16", "/min", "R")
    assert got["150364"] == ("NM", "1.1.1.4", "36.8", "Cel", "R")
    assert got["150020"] == ("", "1.1.1.5", "", "", "X")  # the compound row
    assert got["150021"] == ("NM", "1.1.1.5.1", "121", "mm[Hg]", "R")
    assert got["150022"] == ("NM", "1.1.1.5.2", "79", "mm[Hg]", "R")
    assert [r[1] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]  # OBX-1
    for r in rows[:7]:
        assert r[14] == "20251201231800.123+0000"  # OBX-14 from the reading's event time
        assert r[17] == "AMEAS^auto-measurement^MDC"
        assert r[18].split("~") == ["D061AEFFFED45894^^D061AEFFFED45894^EUI-64",
                                    "D0:61:AE:D4:58:94^MAC", "gw-ward-a^VITALGATE-GATEWAY"]
    assert {r[3].split("^")[0]: r[5] for r in rows[7:]} == {"531969": "E86",
                                                           "DEVICE_NAME": "E86 bed 4"}


def test_heart_rate_code_by_source() -> None:
    for source, code in (("ecg", "147842^MDC_ECG_HEART_RATE^MDC"),
                         ("realtime", "149530^MDC_PULS_OXIM_PULS_RATE^MDC"),
                         ("history", "149530^MDC_PULS_OXIM_PULS_RATE^MDC")):
        rows = obx_rows(build_reading(reading(source=source, vitals=(("heart_rate", 61.0),)),
                                      OruConfig(), NOW).er7)
        assert rows[0][3] == code
    manual = obx_rows(build_reading(reading(source="manual"), OruConfig(), NOW).er7)
    assert manual[0][17] == "MMEAS^manual measurement^MDC"


@pytest.mark.parametrize(("risk", "flag"), [("low", "N"), ("low-medium", "A"), ("medium", "H"),
                                            ("high", "HH")])
def test_news2_score_obx_with_risk_band(risk: str, flag: str) -> None:
    m = build_score(score(risk=risk), OruConfig(), NOW)
    rows = obx_rows(m.er7)
    total, band, *subs = rows
    assert total[2:6] == ["NM", "1104051000000101^NEWS2 total score^SCT", "1", "7"]
    assert total[8] == flag and total[11] == "F" and total[14] == "20251201231800.123+0000"
    assert band[2] == "CWE" and band[5].split("^")[:3] == [risk, vocab.RISK[risk][0],
                                                           "99VITALGATE"]
    assert band[5].split("^")[3] == "tinggi"  # Cexup's result word as the alternate code
    assert [(r[3].split("^")[0], r[5]) for r in subs] == [
        ("NEWS2_HEART_RATE", "3"), ("NEWS2_RESPIRATORY_RATE", "2"), ("NEWS2_SPO2", "2")]
    notes = [s for s in m.er7.split("\r") if s.startswith("NTE")]
    assert notes == ["NTE|1||cause: Heart Rate 131; Respiration 23; Blood Oxygen 92"]


def test_partial_score_is_preliminary_and_names_what_is_missing() -> None:
    m = build_score(score(partial=True, missing=("systolic_bp",)), OruConfig(), NOW)
    assert {r[11] for r in obx_rows(m.er7)} == {"P"}
    assert "NTE|2||partial, missing: systolic_bp" in m.er7.split("\r")
    other = obx_rows(build_score(score(), OruConfig(table="news2012"), NOW).er7)
    assert other[0][3] == "NEWS2012_TOTAL^news2012 total score^99VITALGATE"


def test_hostile_text_is_escaped_bounded_and_read_back_by_another_parser() -> None:
    m = build_reading(reading(device=DeviceInfo(name=HOSTILE, model=HOSTILE * 50)),
                      OruConfig(), NOW)
    assert segments(m.er7) == ["MSH", "PID", "PV1", "OBR"] + ["OBX"] * 9
    msg = hl7.parse(m.er7)
    obx = list(msg.segments("OBX"))
    assert all(len(s) == len(obx[0]) or len(s) <= 19 for s in obx)  # no field was split off
    name = msg.unescape(str(obx[-1][5]))
    assert name == text.clean(HOSTILE)  # every delimiter back, every control a space
    model = str(obx[-2][5])
    assert len(model) <= oru.MAX_TEXT and text.clean(HOSTILE * 50).startswith(msg.unescape(model))
    s = build_score(score(cause=(HOSTILE,) * 100), OruConfig(), NOW)
    nte = next(seg for seg in s.er7.split("\r") if seg.startswith("NTE"))
    assert len(nte.split("|")[3]) <= oru.MAX_COMMENT


def test_control_id_is_stable_per_item_and_differs_between_items() -> None:
    a = build_reading(reading(), OruConfig(), NOW)
    again = build_reading(reading(), OruConfig(facility="OTHER"), NOW + 60_000)
    assert a.control_id == again.control_id and len(a.control_id) == 20
    assert build_reading(reading(seq=43), OruConfig(), NOW).control_id != a.control_id
    assert build_reading(reading(ts=TS + 1), OruConfig(), NOW).control_id != a.control_id
    assert build_score(score(), OruConfig(), NOW).control_id == \
        build_score(score(), OruConfig(), NOW + 1).control_id
    assert build_score(score(history_id=10), OruConfig(), NOW).control_id != \
        build_score(score(), OruConfig(), NOW).control_id


def test_bad_items_are_refused_with_a_reason() -> None:
    with pytest.raises(BuildError, match="user_code"):
        build_reading(reading(user_code="a|b"), OruConfig(), NOW)
    with pytest.raises(BuildError, match="device_id"):
        build_reading(reading(device_id="nope"), OruConfig(), NOW)
    with pytest.raises(BuildError, match="vitals"):
        build_reading(reading(vitals=(("glucose", 5.0),)), OruConfig(), NOW)
    with pytest.raises(BuildError, match="risk"):
        build_score(score(risk="extreme"), OruConfig(), NOW)


def test_group_readings_one_group_per_reading_rows_without_patient_left_out() -> None:
    def row(vital: str, value: float, seq: int, user: str | None = "pat-1") -> StoredReading:
        return StoredReading("d061aed45894", user, "gw-ward-a", vital, value, TS + seq, seq,
                             "realtime", False, NOW)

    rows = [row("heart_rate", 70, 1), row("spo2", 96, 1), row("heart_rate", 71, 2),
            row("spo2", 90, 3, user=None)]
    groups = group_readings(rows, ward_of={"gw-ward-a": "ward-a"},
                            devices={"d061aed45894": DeviceInfo(name="n", model="E86")})
    assert [(g.seq, g.vitals, g.ward, g.device.model) for g in groups] == [
        (1, (("heart_rate", 70.0), ("spo2", 96.0)), "ward-a", "E86"),
        (2, (("heart_rate", 71.0),), "ward-a", "E86")]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=300))
def test_field_text_never_leaves_a_delimiter_and_reads_back(value: str, bound: int) -> None:
    out = text.field_text(value, bound)
    assert len(out) <= bound
    assert not set(out) & set("|^~&\r\n\x1c\x0b")
    assert text.clean(value).startswith(text.unescape(out))
    cut = text.unescape(out)
    if len(cut) < len(value):  # cut only because the next character did not fit
        assert text.escaped_length(text.clean(value)[: len(cut) + 1]) > bound


def test_validate_on_build_and_the_validator_is_not_a_no_op() -> None:
    m = build_reading(reading(), OruConfig(), NOW, validate=True)
    assert m.er7 == build_reading(reading(), OruConfig(), NOW).er7
    build_score(score(partial=True, missing=("spo2",)), OruConfig(), NOW, validate=True)
    too_long = m.er7.replace("|vitalgate|", "|" + "v" * 21 + "|", 1)  # MSH-3.1 is an IS(20)
    with pytest.raises(Exception, match="exceed the max length: 20"):
        oru.validate_v26(too_long)
    with pytest.raises(ValueError, match="not an HL7 valid date"):
        oru.validate_v26(m.er7.replace("|20251201231805.000+0000|", "|yesterday|", 1))
    no_pid = "\r".join(s for s in m.er7.split("\r") if not s.startswith("PID"))
    with pytest.raises(Exception, match="PID"):
        oru.validate_v26(no_pid)

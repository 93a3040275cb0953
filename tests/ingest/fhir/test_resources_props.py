"""Properties of the builders over generated readings and points: every built resource is valid
R4 (``fhir.resources``), identifiers are a function of the measurement alone, and a Bundle of any
units holds each resource once with every in-Bundle reference linked."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.db.readings import StoredReading
from ingest.fhir.bundle import pack, transaction
from ingest.fhir.resources import news2_observation, vitals_units
from tests.ingest.fhir.test_resources import SYSTEM, Point
from vitalgate.contract import PLAUSIBLE

devices = st.sampled_from(["d061aed45894", "aabbccddeeff", "000000000001"])
users = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
gateways = st.one_of(st.none(), st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True))
times = st.integers(min_value=0, max_value=10**14 - 1)


@st.composite
def messages(draw: Any) -> list[StoredReading]:
    vitals = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), min_size=1, max_size=6, unique=True))
    device, user, gw = draw(devices), draw(users), draw(gateways)
    ts, seq = draw(times), draw(st.integers(min_value=0, max_value=2**53))
    source = draw(st.sampled_from(["realtime", "history", "manual", "ecg"]))
    return [StoredReading(device, user, gw, v,
                          draw(st.floats(min_value=PLAUSIBLE[v][0], max_value=PLAUSIBLE[v][1])),
                          ts, seq, source, False, draw(times))
            for v in vitals]


@settings(max_examples=60, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=4))
def test_built_resources_are_valid_and_bundles_consistent(msgs: list[list[StoredReading]]) -> None:
    readings = [r for m in msgs for r in m]
    built = vitals_units(readings, SYSTEM)
    assert not built.skipped
    again = vitals_units(readings, SYSTEM)
    assert [e.key for u in again.units for e in u.entries] == [e.key for u in built.units for e in u.entries]
    for unit in built.units:
        for e in unit.observations:
            Observation.model_validate(e.resource)
    for batch in pack(built.units, 8):
        b = transaction(batch)
        Bundle.model_validate(b)
        urls = {e["fullUrl"] for e in b["entry"]}
        assert len(urls) == len(b["entry"])
        for entry in b["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "Observation":
                assert res["subject"]["reference"] in urls
                assert res["device"]["reference"] in urls


@settings(max_examples=60, deadline=None)
@given(point=st.integers(min_value=0, max_value=20),
       risk=st.sampled_from(["low", "low-medium", "medium", "high"]),
       partial=st.booleans(), produce_at=times,
       comps=st.dictionaries(st.sampled_from(["respiratory_rate", "spo2", "oxygen", "systolic_bp",
                                              "heart_rate", "consciousness", "temperature"]),
                             st.integers(min_value=0, max_value=3)))
def test_news2_observations_are_valid(point: int, risk: str, partial: bool, produce_at: int,
                                      comps: dict[str, int]) -> None:
    missing = tuple(k for k in ("respiratory_rate", "spo2") if k not in comps)
    p = Point(point=point, risk=risk, partial=partial, produce_at=produce_at, components=comps,
              missing=missing)
    obs = news2_observation(p, SYSTEM).resource
    Observation.model_validate(obs)
    assert obs["valueInteger"] == point
    assert len(obs.get("component", [])) == len(comps) + len(missing)

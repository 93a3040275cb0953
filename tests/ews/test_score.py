"""The one EWS score type and its words (ews.score): order, the chart's rules, and that every
serialiser at its edge keeps today's wire shapes byte for byte."""

from __future__ import annotations

import json

import pytest

from ews.news2 import RESULT_WORDS, RISK_WORDS
from ews.score import RESULTS, RISK_ORDER, Result, Risk, Score, results_for, risk_of
from ingest.ews_engine import EwsPoint
from vitalgate.contract import Ews, Kind, decode


def test_words_are_ordered_and_are_the_references() -> None:
    assert RESULTS == ("normal", "rendah", "sedang", "tinggi")  # ref/cexup-api.md
    assert RISK_ORDER == {"low": 0, "low-medium": 1, "medium": 2, "high": 3}  # ref/news2.md
    assert [r.rank for r in Result] == [0, 1, 2, 3] and [r.rank for r in Risk] == [0, 1, 2, 3]
    assert set(RESULT_WORDS) == set(RESULTS) and set(RISK_WORDS) == set(RISK_ORDER)
    assert Result.SEDANG == "sedang" and json.dumps(Risk.LOW_MEDIUM) == '"low-medium"'


@pytest.mark.parametrize(("point", "components", "allowed"), [
    (0, None, ("normal",)), (2, None, ("rendah",)), (3, None, ("rendah", "sedang")),
    (3, {"spo2": 3}, ("sedang",)), (4, {"spo2": 2, "heart_rate": 2}, ("rendah",)),
    (6, None, ("sedang",)), (7, None, ("tinggi",)), (20, None, ("tinggi",)),
])
def test_results_for_follows_the_chart(point: int, components: dict[str, int] | None,
                                       allowed: tuple[str, ...]) -> None:
    assert results_for(point, components) == allowed


def test_risk_of_a_score_made_elsewhere() -> None:
    assert [risk_of(p, r) for p, r in [(0, "normal"), (3, "rendah"), (3, "sedang"), (5, "sedang"),
                                       (9, "tinggi")]] == ["low", "low", "low-medium", "medium",
                                                           "high"]


def test_the_serialisers_keep_the_wire_shapes() -> None:
    score = Score(user_code="AMSe5Sn8Gkxj7", point=3, result="sedang", risk="low-medium",
                  cause=("SpO2 91",), partial=True, missing=("temperature",),
                  components={"spo2": 3}, produce_at=1632889813001)
    mqtt = Ews.of(score).to_bytes()
    assert mqtt == (b'{"v":1,"user_code":"AMSe5Sn8Gkxj7","point":3,"result":"sedang","cause":'
                    b'["SpO2 91"],"produce_at":1632889813001,"risk":"low-medium","partial":true,'
                    b'"missing":["temperature"],"components":{"spo2":3}}')
    assert decode(Kind.EWS, mqtt) == Ews.of(score)
    point = EwsPoint(**{f: getattr(score, f) for f in score.__dataclass_fields__})
    assert point.to_contract().to_bytes() == mqtt
    assert json.dumps(point.to_cexup()) == ('{"user_code": "AMSe5Sn8Gkxj7", "point": 3, '
                                            '"result": "sedang", "produce_at": "1632889813001"}')
    assert point.to_api()["result"] == "sedang" and point.to_api()["risk"] == "low-medium"


def test_a_word_outside_the_enums_is_refused_by_the_contract() -> None:
    bad = Score(user_code="P1", point=1, result="high", risk="low", cause=(), partial=False,
                missing=(), components={}, produce_at=1)
    with pytest.raises(ValueError, match="high"):
        Ews.of(bad)

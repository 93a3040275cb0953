"""The vectorised NEWS2 scorer against the chart in /work/shared/ref/news2.md."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

import ews
from ews import NEWS2, NEWS2012, TABLES, Bands, Parameter, Plausible, ScoringTable, score_news2

NAN = math.nan
VITALS = ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")

# Every edge of the chart on both sides, as printed in news2.md (value, points).
EDGES: dict[str, list[tuple[float, int]]] = {
    "respiratory_rate": [
        (0, 3),
        (8, 3),
        (9, 1),
        (11, 1),
        (12, 0),
        (20, 0),
        (21, 2),
        (24, 2),
        (25, 3),
        (60, 3),
    ],
    "spo2": [(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
    "systolic_bp": [
        (60, 3),
        (90, 3),
        (91, 2),
        (100, 2),
        (101, 1),
        (110, 1),
        (111, 0),
        (219, 0),
        (220, 3),
    ],
    "heart_rate": [
        (30, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
    ],
    "temperature": [
        (33.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (41.0, 2),
    ],
}
# Non-integer readings: the upper-inclusive cascade (news2.md, "Non-integer inputs").
NON_INTEGER: list[tuple[str, float, int]] = [
    ("respiratory_rate", 8.5, 1),
    ("respiratory_rate", 11.5, 0),
    ("respiratory_rate", 20.5, 2),
    ("respiratory_rate", 24.5, 3),
    ("spo2", 91.5, 2),
    ("spo2", 95.5, 0),
    ("systolic_bp", 90.5, 2),
    ("systolic_bp", 219.5, 3),
    ("heart_rate", 40.5, 1),
    ("heart_rate", 130.5, 3),
    ("temperature", 35.05, 1),
    ("temperature", 36.05, 0),
    ("temperature", 38.05, 1),
    ("temperature", 39.05, 2),
]
EDGE_CASES = [(name, v, p) for name, cases in EDGES.items() for v, p in cases] + NON_INTEGER


def one(name: str, value: float, dtype: type = np.float64, **context: object) -> ews.ScoreResult:
    return score_news2({name: np.array([value], dtype=dtype), **context})  # type: ignore[dict-item]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("name", "value", "points"), EDGE_CASES)
def test_every_chart_edge(name: str, value: float, points: int, dtype: type) -> None:
    res = one(name, value, dtype)
    assert res.subscores[name].tolist() == [points]
    assert res.points.tolist() == [points]
    assert res.valid.tolist() == [True]


def test_all_edges_in_one_batch_equal_scored_alone() -> None:
    for name, cases in EDGES.items():
        values = np.array([v for v, _ in cases])
        res = score_news2({name: values})
        assert res.subscores[name].tolist() == [p for _, p in cases]


def test_float32_storage_of_temperatures() -> None:
    # 36.1 stored as float32 is 36.0999985: still the 36.1–38.0 band
    assert float(np.float32(36.1)) < 36.1
    temps = np.array([36.1, 36.05, 35.05, 38.05, 39.05, 38.1, 35.1], np.float32)
    res = score_news2({"temperature": temps})
    assert res.subscores["temperature"].tolist() == [0, 0, 1, 1, 2, 1, 1]


def test_integer_and_list_inputs() -> None:
    res = score_news2(
        {"heart_rate": [40, 41, 131], "respiratory_rate": np.array([8, 9, 25], np.int16)}
    )
    assert res.subscores["heart_rate"].tolist() == [3, 1, 3]
    assert res.subscores["respiratory_rate"].tolist() == [3, 1, 3]
    assert res.points.tolist() == [6, 2, 6]


SCALE2_AIR = [
    (80, 3),
    (83, 3),
    (84, 2),
    (85, 2),
    (86, 1),
    (87, 1),
    (88, 0),
    (92, 0),
    (93, 0),
    (97, 0),
    (100, 0),
]
SCALE2_OXYGEN = [
    (83, 3),
    (84, 2),
    (86, 1),
    (87, 1),
    (88, 0),
    (92, 0),
    (93, 1),
    (94, 1),
    (95, 2),
    (96, 2),
    (97, 3),
    (100, 3),
]


@pytest.mark.parametrize(("spo2", "points"), SCALE2_AIR)
def test_scale2_on_air(spo2: float, points: int) -> None:
    res = score_news2({"spo2": [spo2], "spo2_scale": [2], "on_oxygen": [False]})
    assert res.subscores["spo2"].tolist() == [points]
    assert res.subscores["oxygen"].tolist() == [0]
    assert res.points.tolist() == [points]


@pytest.mark.parametrize(("spo2", "points"), SCALE2_OXYGEN)
def test_scale2_on_oxygen_adds_two(spo2: float, points: int) -> None:
    res = score_news2({"spo2": [spo2], "spo2_scale": [2], "on_oxygen": [True]})
    assert res.subscores["spo2"].tolist() == [points]
    assert res.subscores["oxygen"].tolist() == [2]
    assert res.points.tolist() == [points + 2]


def test_scale1_on_oxygen_adds_two_and_high_spo2_scores_zero() -> None:
    res = score_news2(
        {"spo2": [97, 97, 91], "on_oxygen": [True, False, True], "spo2_scale": [1, 1, 1]}
    )
    assert res.subscores["spo2"].tolist() == [0, 0, 3]
    assert res.points.tolist() == [2, 0, 5]
    assert res.cause[0] == ("Oxygen",)


def test_scale2_mixed_with_scale1_in_one_batch() -> None:
    spo2 = [89, 89, 97, 97, 89]
    res = score_news2({"spo2": spo2, "spo2_scale": [1, 2, 1, 2, 2], "on_oxygen": [0, 0, 1, 1, NAN]})
    # scale 1: 89 → 3; scale 2 air: 89 → 0; scale 1 on O2: 97 → 0 (+2); scale 2 O2: 97 → 3 (+2);
    # scale 2 with unknown oxygen: assumed on air → 0, and 'on_oxygen' is listed as assumed
    assert res.subscores["spo2"].tolist() == [3, 0, 0, 3, 0]
    assert res.points.tolist() == [3, 0, 2, 5, 0]
    assert res.missing[4] == (
        "respiratory_rate",
        "systolic_bp",
        "heart_rate",
        "temperature",
        "consciousness",
        "on_oxygen",
    )


@pytest.mark.parametrize(
    ("level", "points"),
    [
        ("A", 0),
        ("a", 0),
        (" A ", 0),
        ("C", 3),
        ("c", 3),
        ("V", 3),
        ("v", 3),
        ("P", 3),
        ("U", 3),
        ("u", 3),
    ],
)
def test_consciousness(level: str, points: int) -> None:
    res = score_news2({"heart_rate": [70], "consciousness": [level]})
    assert res.subscores["consciousness"].tolist() == [points]
    assert res.points.tolist() == [points]
    assert "consciousness" not in res.missing[0]
    if points:
        assert res.cause[0] == (f"Consciousness {level.strip().upper()}",)
        assert res.single_red.tolist() == [True]


def test_unknown_consciousness_is_assumed_alert_and_said_so() -> None:
    res = score_news2({"heart_rate": [70, 70, 70], "consciousness": np.array(["", None, "A"], dtype=object)})
    assert res.points.tolist() == [0, 0, 0]
    assert ["consciousness" in m for m in res.missing] == [True, True, False]
    assert res.partial.tolist() == [True, True, True]  # oxygen and scale were not given either


def test_invalid_consciousness_only_costs_its_row() -> None:
    res = score_news2({"heart_rate": [135, 135], "consciousness": ["X", "A"]})
    assert res.valid.tolist() == [False, True]
    assert res.reason[0] == "consciousness='X' is not one of A, C, V, P, U"
    assert res.points.tolist() == [-1, 3]


def test_worked_examples_totals_by_hand() -> None:
    cols: dict[str, list[Any]] = {
        # row 0: all normal, alert, on air, scale 1                      → 0
        # row 1: RR 22 (2) + SpO2 95 (1) + SBP 105 (1) + HR 95 (1) + T 38.4 (1) → 6
        # row 2: RR 7 (3) SpO2 91 (3) SBP 88 (3) HR 135 (3) T 35.0 (3) V (3) O2 (2) → 20 (max)
        # row 3: HR 45 (1) + T 35.5 (1) + SBP 100 (2)                       → 4, no single 3
        # row 4: SBP 230 (3), rest normal                                  → 3, single red
        # row 5: scale 2 on oxygen SpO2 95 (2) + O2 (2) + RR 21 (2)        → 6
        "respiratory_rate": [16, 22, 7, 14, 15, 21],
        "spo2": [97, 95, 91, 97, 98, 95],
        "systolic_bp": [125, 105, 88, 100, 230, 120],
        "heart_rate": [70, 95, 135, 45, 80, 80],
        "temperature": [36.8, 38.4, 35.0, 35.5, 37.0, 37.0],
        "consciousness": ["A", "A", "V", "A", "A", "A"],
        "on_oxygen": [False, False, True, False, False, True],
        "spo2_scale": [1, 1, 1, 1, 1, 2],
    }
    res = score_news2(cols)
    assert res.points.tolist() == [0, 1 + 1 + 1 + 1 + 2, 3 * 6 + 2, 1 + 1 + 2, 3, 2 + 2 + 2]
    assert res.result.tolist() == ["normal", "sedang", "tinggi", "rendah", "sedang", "sedang"]
    assert res.risk.tolist() == ["low", "medium", "high", "low", "low-medium", "medium"]
    assert res.single_red.tolist() == [False, False, True, False, True, False]
    assert res.partial.tolist() == [False] * 6
    assert res.missing == [()] * 6
    assert res.cause[2] == (
        "Respiration 7",
        "Blood Oxygen 91",
        "Systole 88",
        "Pulse 135",
        "Temperature 35.0",
        "Consciousness V",
        "Oxygen",
    )
    assert res.cause[0] == ()
    assert res.cause[5] == ("Respiration 21", "Blood Oxygen 95", "Oxygen")


@pytest.mark.parametrize(
    ("vitals", "points", "result", "risk"),
    [
        ({}, 0, "normal", "low"),
        ({"respiratory_rate": 21}, 2, "rendah", "low"),
        ({"respiratory_rate": 21, "spo2": 94, "heart_rate": 95}, 4, "rendah", "low"),
        ({"heart_rate": 131}, 3, "sedang", "low-medium"),
        ({"heart_rate": 131, "spo2": 95}, 4, "sedang", "low-medium"),
        ({"heart_rate": 131, "spo2": 94, "temperature": 38.5}, 5, "sedang", "medium"),
        ({"respiratory_rate": 21, "spo2": 93, "heart_rate": 95}, 5, "sedang", "medium"),
        ({"respiratory_rate": 21, "spo2": 93, "systolic_bp": 95}, 6, "sedang", "medium"),
        (
            {"respiratory_rate": 21, "spo2": 93, "systolic_bp": 95, "heart_rate": 95},
            7,
            "tinggi",
            "high",
        ),
        ({"respiratory_rate": 25, "spo2": 91}, 6, "sedang", "medium"),
        ({"respiratory_rate": 25, "spo2": 91, "heart_rate": 41}, 7, "tinggi", "high"),
    ],
)
def test_result_and_risk_words(
    vitals: dict[str, float], points: int, result: str, risk: str
) -> None:
    normal = {
        "respiratory_rate": 16,
        "spo2": 97,
        "systolic_bp": 125,
        "heart_rate": 70,
        "temperature": 36.8,
    }
    res = score_news2(
        {**normal, **vitals, "consciousness": "A", "on_oxygen": False, "spo2_scale": 1}
    )
    assert (res.points[0], res.result[0], res.risk[0]) == (points, result, risk)
    assert res.row(0)["result"] == result


def test_missing_vitals_contribute_nothing_but_are_named() -> None:
    res = score_news2(
        {
            "respiratory_rate": [25, NAN, NAN],
            "spo2": [NAN, 91, NAN],
            "heart_rate": [70, 70, NAN],
            "consciousness": "A",
            "on_oxygen": False,
            "spo2_scale": 1,
        }
    )
    assert res.points.tolist() == [3, 3, -1]
    assert res.valid.tolist() == [True, True, False]
    assert res.partial.tolist() == [True, True, True]
    assert res.missing[0] == ("spo2", "systolic_bp", "temperature")
    assert res.missing[1] == ("respiratory_rate", "systolic_bp", "temperature")
    assert res.subscores["spo2"].tolist() == [-1, 3, -1]
    assert res.subscores["systolic_bp"].tolist() == [-1, -1, -1]
    assert res.reason == ["", "", "no vital signs"]
    assert res.result.tolist() == ["sedang", "sedang", ""]
    assert res.risk.tolist() == ["low-medium", "low-medium", ""]


def test_defaults_make_every_row_partial() -> None:
    res = score_news2({v: [x] for v, x in zip(VITALS, (16, 97, 125, 70, 36.8), strict=True)})
    assert res.points.tolist() == [0]
    assert res.partial.tolist() == [True]
    assert res.missing == [("consciousness", "on_oxygen", "spo2_scale")]


IMPOSSIBLE = [
    ("spo2", 101.0, "spo2=101 is impossible (must be > 0 and <= 100)"),
    ("spo2", 0.0, "spo2=0 is impossible (must be > 0 and <= 100)"),
    ("spo2", -5.0, "spo2=-5 is impossible (must be > 0 and <= 100)"),
    ("heart_rate", 0.0, "heart_rate=0 is impossible (must be > 0 and <= 300)"),
    ("heart_rate", 301.0, "heart_rate=301 is impossible (must be > 0 and <= 300)"),
    ("respiratory_rate", -1.0, "respiratory_rate=-1 is impossible (must be >= 0 and <= 100)"),
    ("respiratory_rate", 101.0, "respiratory_rate=101 is impossible (must be >= 0 and <= 100)"),
    ("temperature", 24.9, "temperature=24.9 is impossible (must be >= 25 and <= 45)"),
    ("temperature", 45.1, "temperature=45.1 is impossible (must be >= 25 and <= 45)"),
    ("systolic_bp", 0.0, "systolic_bp=0 is impossible (must be > 0 and <= 350)"),
    ("systolic_bp", 351.0, "systolic_bp=351 is impossible (must be > 0 and <= 350)"),
    ("heart_rate", math.inf, "heart_rate=inf is not finite"),
    ("temperature", -math.inf, "temperature=-inf is not finite"),
]


@pytest.mark.parametrize(("name", "value", "reason"), IMPOSSIBLE)
def test_impossible_value_invalidates_only_its_row(name: str, value: float, reason: str) -> None:
    normal = {
        "respiratory_rate": 22,
        "spo2": 94,
        "systolic_bp": 125,
        "heart_rate": 95,
        "temperature": 38.5,
    }
    cols = {v: np.array([normal[v]] * 3, np.float64) for v in VITALS}
    cols[name][1] = value
    res = score_news2(cols)
    alone = score_news2({v: cols[v][[0]] for v in VITALS})
    assert res.valid.tolist() == [True, False, True]
    assert res.reason[1] == reason
    assert res.reason[0] == res.reason[2] == ""
    assert res.points.tolist() == [alone.points[0], -1, alone.points[0]] == [5, -1, 5]
    assert res.result.tolist() == ["sedang", "", "sedang"]
    assert all(int(s[1]) == -1 for s in res.subscores.values())
    assert res.cause[1] == ()


def test_two_bad_values_both_named() -> None:
    res = score_news2({"spo2": [120], "heart_rate": [-3]})
    assert res.reason == [
        "spo2=120 is impossible (must be > 0 and <= 100); heart_rate=-3 is impossible (must be > 0 and <= 300)"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("spo2", 100),
        ("spo2", 0.5),
        ("heart_rate", 300),
        ("respiratory_rate", 0),
        ("respiratory_rate", 100),
        ("temperature", 25),
        ("temperature", 45),
        ("systolic_bp", 350),
        ("systolic_bp", 1),
    ],
)
def test_plausible_limits_are_inclusive_where_stated(name: str, value: float) -> None:
    assert one(name, value).valid.tolist() == [True]


def test_scalars_broadcast_and_a_lone_scalar_row() -> None:
    res = score_news2(
        {"heart_rate": [70, 135], "temperature": 39.5, "consciousness": "V", "on_oxygen": True}
    )
    assert res.subscores["temperature"].tolist() == [2, 2]
    assert res.points.tolist() == [2 + 3 + 2, 3 + 2 + 3 + 2]
    assert len(score_news2({"heart_rate": 70})) == 1
    assert ews.score is score_news2


def test_on_oxygen_forms() -> None:
    res = score_news2(
        {"heart_rate": 70, "on_oxygen": ["yes", "NO", "o2", "air", "", "true", "0", "maybe"]}
    )
    assert res.subscores["oxygen"].tolist() == [2, 0, 2, 0, 0, 2, 0, -1]
    assert ["on_oxygen" in m for m in res.missing] == [False] * 4 + [True] + [False] * 3
    assert res.reason[7] == "on_oxygen='maybe' is not a yes/no value"
    num = score_news2({"heart_rate": 70, "on_oxygen": np.array([1.0, 0.0, NAN, 0.5])})
    assert num.subscores["oxygen"].tolist() == [2, 0, 0, -1]
    assert num.valid.tolist() == [True, True, True, False]
    mixed = score_news2({"heart_rate": 70, "on_oxygen": np.array([True, None, "no"], dtype=object)})
    assert mixed.subscores["oxygen"].tolist() == [2, 0, 0]


def test_spo2_scale_forms_and_errors() -> None:
    res = score_news2({"spo2": 89, "spo2_scale": ["2", "1", "", "3", "two"]})
    assert res.subscores["spo2"].tolist() == [0, 3, 3, -1, -1]
    assert res.reason[3] == "spo2_scale='3' is not 1 or 2"
    assert res.reason[4] == "spo2_scale='two' is not 1 or 2"
    assert "spo2_scale" in res.missing[2]
    num = score_news2({"spo2": 89, "spo2_scale": np.array([2.0, NAN, 0, 7])})
    assert num.subscores["spo2"].tolist() == [0, 3, 3, -1]


def test_guard_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['pulse'\]"):
        score_news2({"pulse": [70]})
    with pytest.raises(ValueError, match="differ in length"):
        score_news2({"heart_rate": [70, 80], "spo2": [97]})
    with pytest.raises(ValueError, match="'heart_rate' is not numeric"):
        score_news2({"heart_rate": ["seventy"]})
    with pytest.raises(ValueError, match="scalar or 1-D"):
        score_news2({"heart_rate": [[70]]})


def test_row_and_len() -> None:
    res = score_news2({"respiratory_rate": [8.5], "temperature": [35.0], "consciousness": ["A"]})
    assert len(res) == 1
    assert res.row(0) == {
        "point": 4,
        "result": "sedang",
        "risk": "low-medium",
        "partial": True,
        "missing": ["spo2", "systolic_bp", "heart_rate", "on_oxygen", "spo2_scale"],
        "cause": ["Respiration 8.5", "Temperature 35.0"],
        "valid": True,
        "reason": "",
        "components": {"respiratory_rate": 1, "temperature": 3, "consciousness": 0, "oxygen": 0},
    }
    assert res.single_red.tolist() == [True]  # temperature 35.0 scores 3: sedang though total 4


def test_empty_batch() -> None:
    res = score_news2({"heart_rate": np.empty(0)})
    assert len(res) == 0
    assert res.cause == [] and res.reason == [] and res.missing == []


# -- NEWS (2012) and tables as data -----------------------------------------------------------------
def test_tables_registry() -> None:
    assert TABLES == {"news2": NEWS2, "news2012": NEWS2012}
    assert NEWS2.max_total == 20
    assert NEWS2012.max_total == 20


def test_news2012_has_no_scale2_and_no_new_confusion() -> None:
    res = score_news2(
        {"spo2": [89, 89, 96], "spo2_scale": [1, 2, 1], "consciousness": ["V", "A", "C"]}, NEWS2012
    )
    assert res.valid.tolist() == [True, False, False]
    assert res.points[0] == 3 + 3
    assert res.reason[1] == "spo2_scale=2 is not 1 (news2012 has no scale 2)"
    assert res.reason[2] == "consciousness='C' is not one of A, V, P, U"
    # no scale 2 means the scale is never 'assumed'
    assert "spo2_scale" not in score_news2({"spo2": [96]}, NEWS2012).missing[0]


@pytest.mark.parametrize(("name", "value", "points"), EDGE_CASES)
def test_news2012_agrees_with_news2_scale1(name: str, value: float, points: int) -> None:
    res = score_news2({name: [value], "on_oxygen": [True]}, NEWS2012)
    assert res.subscores[name].tolist() == [points]
    assert res.points.tolist() == [points + 2]


def test_a_hospital_variant_is_a_new_table_not_new_code() -> None:
    # e.g. a ward that treats a pulse of 91–100 as normal
    hr = Parameter(
        "heart_rate",
        "Pulse",
        Bands((40, 50, 100, 110, 130), (3, 1, 0, 1, 2, 3)),
        Plausible(0, 300, True),
    )
    variant = dataclasses.replace(
        NEWS2,
        name="ward7",
        parameters=tuple(hr if p.name == "heart_rate" else p for p in NEWS2.parameters),
    )
    hrs = [95, 100, 101]
    assert score_news2({"heart_rate": hrs}, variant).points.tolist() == [0, 0, 1]
    assert score_news2({"heart_rate": hrs}, NEWS2).points.tolist() == [1, 1, 1]


def test_table_validation() -> None:
    with pytest.raises(ValueError, match="one more points than edges"):
        Bands((1, 2), (0, 1))
    with pytest.raises(ValueError, match="must increase"):
        Bands((2, 1), (0, 1, 2))
    with pytest.raises(ValueError, match="must enclose"):
        dataclasses.replace(
            NEWS2, parameters=(Parameter("x", "X", Bands((10,), (1, 0)), Plausible(20, 30)),)
        )
    with pytest.raises(ValueError, match="1 to 6 numeric parameters"):
        dataclasses.replace(
            NEWS2,
            parameters=tuple(
                dataclasses.replace(p, name=f"v{i}") for i, p in enumerate(NEWS2.parameters * 2)
            ),
        )
    with pytest.raises(ValueError, match="duplicate parameter"):
        dataclasses.replace(NEWS2, parameters=NEWS2.parameters[:2] * 2)
    with pytest.raises(ValueError, match="exceeds 63"):
        dataclasses.replace(NEWS2, oxygen_points=50)
    with pytest.raises(ValueError, match="both the air and the oxygen"):
        dataclasses.replace(NEWS2, spo2_scale2_oxygen=None)
    assert isinstance(NEWS2, ScoringTable)

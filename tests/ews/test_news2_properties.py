"""Property tests: the vectorised scorer equals a plain per-row reference written from the chart.

Values are drawn on a 0.1 grid as integer tenths, so the reference compares integers exactly
(no floating point at all) and the scorer gets ``tenths / 10`` as float64 or float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ews import NEWS2, NEWS2012, score_news2

VITALS = ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")
# (low, high) in tenths for drawing: around and beyond every plausible limit
DRAW = {
    "respiratory_rate": (-20, 1020),
    "spo2": (-10, 1010),
    "systolic_bp": (-10, 3520),
    "heart_rate": (-10, 3020),
    "temperature": (240, 460),
}


def cascade(tenths: int, edges: tuple[int, ...], points: tuple[int, ...]) -> int:
    """≤ edge[0] → points[0], else ≤ edge[1] → points[1] … (edges in tenths)."""
    for edge, pts in zip(edges, points, strict=False):
        if tenths <= edge:
            return pts
    return points[-1]


def plausible(name: str, t: int) -> bool:
    return {
        "respiratory_rate": 0 <= t <= 1000,
        "spo2": 0 < t <= 1000,
        "systolic_bp": 0 < t <= 3500,
        "heart_rate": 0 < t <= 3000,
        "temperature": 250 <= t <= 450,
    }[name]


def reference(row: dict[str, Any], news2012: bool = False) -> dict[str, Any]:
    """Score one row the slow, obvious way (news2.md), from integer tenths."""
    scale = row["scale"] or 1
    oxygen = row["oxygen"] is True
    level = row["level"] or "A"
    levels = ("A", "V", "P", "U") if news2012 else ("A", "C", "V", "P", "U")
    if level not in levels or (news2012 and scale == 2):
        return {"valid": False}
    subs: dict[str, int] = {}
    for name in VITALS:
        t = row[name]
        if t is None:
            continue
        if not plausible(name, t):
            return {"valid": False}
        if name == "respiratory_rate":
            subs[name] = cascade(t, (80, 110, 200, 240), (3, 1, 0, 2, 3))
        elif name == "spo2" and scale == 2 and oxygen:
            subs[name] = cascade(t, (830, 850, 870, 920, 940, 960), (3, 2, 1, 0, 1, 2, 3))
        elif name == "spo2" and scale == 2:
            subs[name] = cascade(t, (830, 850, 870), (3, 2, 1, 0))
        elif name == "spo2":
            subs[name] = cascade(t, (910, 930, 950), (3, 2, 1, 0))
        elif name == "systolic_bp":
            subs[name] = cascade(t, (900, 1000, 1100, 2190), (3, 2, 1, 0, 3))
        elif name == "heart_rate":
            subs[name] = cascade(t, (400, 500, 900, 1100, 1300), (3, 1, 0, 1, 2, 3))
        else:
            subs[name] = cascade(t, (350, 360, 380, 390), (3, 1, 0, 1, 2))
    if not subs:
        return {"valid": False}
    subs["consciousness"] = 0 if level == "A" else 3
    subs["oxygen"] = 2 if oxygen else 0
    total = sum(subs.values())
    red = any(v == 3 for v in subs.values())
    if total >= 7:
        result, risk = "tinggi", "high"
    elif total >= 5:
        result, risk = "sedang", "medium"
    elif red:
        result, risk = "sedang", "low-medium"
    elif total > 0:
        result, risk = "rendah", "low"
    else:
        result, risk = "normal", "low"
    missing = [v for v in VITALS if row[v] is None]
    assumed = [
        name
        for name, unknown in (
            ("consciousness", row["level"] is None),
            ("on_oxygen", row["oxygen"] is None),
            ("spo2_scale", row["scale"] is None and not news2012),
        )
        if unknown
    ]
    return {
        "valid": True,
        "points": total,
        "subs": subs,
        "result": result,
        "risk": risk,
        "missing": tuple(missing + assumed),
        "red": red,
    }


def tenths(name: str) -> st.SearchStrategy[int | None]:
    lo, hi = DRAW[name]
    # mostly realistic whole numbers, sometimes anywhere on the 0.1 grid, sometimes missing
    return st.one_of(
        st.none(),
        st.integers(lo // 10, hi // 10).map(lambda v: v * 10),
        st.integers(lo, hi),
    )


rows = st.fixed_dictionaries(
    {
        **{name: tenths(name) for name in VITALS},
        "level": st.sampled_from([None, "A", "C", "V", "P", "U"]),
        "oxygen": st.sampled_from([None, True, False]),
        "scale": st.sampled_from([None, 1, 2]),
    }
)


def columns(batch: list[dict[str, Any]], dtype: type = np.float64) -> dict[str, Any]:
    cols: dict[str, Any] = {
        name: np.array([math.nan if r[name] is None else r[name] / 10 for r in batch], dtype)
        for name in VITALS
    }
    cols["consciousness"] = np.array([r["level"] or "" for r in batch])
    cols["on_oxygen"] = np.array(
        [math.nan if r["oxygen"] is None else float(r["oxygen"]) for r in batch]
    )
    cols["spo2_scale"] = np.array([0 if r["scale"] is None else r["scale"] for r in batch])
    return cols


def check(batch: list[dict[str, Any]], dtype: type, news2012: bool = False) -> None:
    res = score_news2(columns(batch, dtype), NEWS2012 if news2012 else NEWS2)
    for i, row in enumerate(batch):
        ref = reference(row, news2012)
        assert bool(res.valid[i]) == ref["valid"], (row, res.reason[i])
        if not ref["valid"]:
            assert res.points[i] == -1 and res.result[i] == "" and res.reason[i]
            continue
        assert res.points[i] == ref["points"], row
        assert {k: int(v[i]) for k, v in res.subscores.items() if v[i] >= 0} == ref["subs"]
        assert (res.result[i], res.risk[i]) == (ref["result"], ref["risk"])
        assert res.missing[i] == ref["missing"]
        assert bool(res.partial[i]) == bool(ref["missing"])
        assert bool(res.single_red[i]) == ref["red"]
        assert len(res.cause[i]) == sum(1 for v in ref["subs"].values() if v > 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(rows, min_size=1, max_size=40))
def test_vectorised_equals_per_row_reference(batch: list[dict[str, Any]]) -> None:
    check(batch, np.float64)


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, min_size=1, max_size=40))
def test_float32_inputs_score_like_float64(batch: list[dict[str, Any]]) -> None:
    check(batch, np.float32)


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, min_size=1, max_size=40))
def test_news2012_equals_reference(batch: list[dict[str, Any]]) -> None:
    check(batch, np.float64, news2012=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, min_size=2, max_size=30), st.data())
def test_a_row_alone_scores_as_within_its_batch(
    batch: list[dict[str, Any]], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(batch) - 1))
    together = score_news2(columns(batch))
    alone = score_news2(columns([batch[i]]))
    assert alone.row(0) == together.row(i)


@settings(max_examples=100, deadline=None)
@given(st.lists(rows, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(batch: list[dict[str, Any]], rnd: Any) -> None:
    order = list(range(len(batch)))
    rnd.shuffle(order)
    a = score_news2(columns(batch))
    b = score_news2(columns([batch[j] for j in order]))
    assert [a.row(j) for j in order] == [b.row(k) for k in range(len(batch))]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["consciousness", "on_oxygen", "spo2_scale"]),
        st.one_of(st.text(max_size=6), st.integers(-3, 5), st.floats(), st.booleans(), st.none()),
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_arbitrary_context_never_raises(context: dict[str, Any], hr: float) -> None:
    res = score_news2({"heart_rate": [hr, 70.0], **{k: [v, v] for k, v in context.items()}})
    assert len(res) == 2
    for i in range(2):
        assert (res.points[i] >= 0) == bool(res.valid[i])
        assert bool(res.valid[i]) != bool(res.reason[i])

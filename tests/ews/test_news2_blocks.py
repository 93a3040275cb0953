"""The batch body scores big batches block by block (ews.news2.BLOCK rows at a time, to stay in
cache): it must give exactly what the whole-array body gives, at every block edge."""

from __future__ import annotations

import numpy as np
import pytest

import ews.news2 as news2
from ews import NEWS2, NEWS2012, ScoringTable, score_news2


def columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "respiratory_rate": rng.uniform(-2, 70, n).round(1),  # impossible ones included
        "spo2": rng.uniform(60, 102, n).round(),
        "systolic_bp": rng.uniform(40, 320, n).round(),
        "heart_rate": rng.uniform(10, 260, n).round(),
        "temperature": rng.uniform(30, 45, n).round(2),
    }
    for v in cols.values():
        v[rng.random(n) < 0.05] = np.nan
    return cols


@pytest.mark.parametrize("table", [NEWS2, NEWS2012])
def test_blocked_body_equals_the_whole_array_body(table: ScoringTable, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 3 * 1000 + 17  # not a multiple of the block
    cols: dict[str, object] = dict(columns(n, seed=7))
    rng = np.random.default_rng(8)
    cols["consciousness"] = rng.choice([*table.levels, "", "X"], n)
    cols["on_oxygen"] = rng.choice([True, False], n)
    monkeypatch.setattr(news2, "BLOCK", 1000)
    blocked = score_news2(cols, table)  # type: ignore[arg-type]
    monkeypatch.setattr(news2, "BLOCK", 10 * n)
    whole = score_news2(cols, table)  # type: ignore[arg-type]
    for name in ("points", "band", "accumulator"):
        assert np.array_equal(getattr(blocked, name), getattr(whole, name)), name
    for name in whole.codes:
        assert np.array_equal(blocked.codes[name], whole.codes[name]), name
    assert blocked.cause == whole.cause and blocked.reason == whole.reason
    assert np.count_nonzero(whole.valid) > n // 3 and np.count_nonzero(~whole.valid) > 10


def test_a_missing_vital_column_and_default_block_size() -> None:
    n = news2.BLOCK + 5
    cols = columns(n, seed=9)
    del cols["temperature"]
    res = score_news2(cols)
    ref = score_news2({k: v[-5:] for k, v in cols.items()})
    assert np.array_equal(res.points[-5:], ref.points)
    assert all("temperature" in m for m in res.missing[:3])

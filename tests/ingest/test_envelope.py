"""The REST body guards on their own: nesting depth without parsing (contract.json_depth, the
one guard of MQTT payloads and REST bodies), ASCII integers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.api.envelope import int_text
from vitalgate.contract import json_depth

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n,:'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(alphabet='[]{}"\\ab', max_size=5), inner, max_size=4),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(JSON, st.booleans())
@settings(max_examples=300, deadline=None)
def test_depth_of_any_json_equals_its_nesting(value: Any, ascii_only: bool) -> None:
    """Brackets and quotes inside strings (escaped or not) never count."""
    assert json_depth(json.dumps(value, ensure_ascii=ascii_only), None) == depth(value)


@given(JSON, st.integers(0, 6))
@settings(max_examples=200, deadline=None)
def test_depth_is_exact_up_to_the_limit(value: Any, limit: int) -> None:
    assert json_depth(json.dumps(value).encode(), limit) == min(depth(value), limit + 1)


def test_depth_of_hostile_text_is_linear_and_bounded() -> None:
    assert json_depth("[" * 200_000, None) == 200_000
    assert json_depth('"' + '\\"' * 200_000, None) == 0  # one unterminated string: not O(n²)
    assert json_depth('["a\\\\"]', None) == 1
    assert json_depth('{"a": "[[[[", "b": [[1]]}', None) == 3


def test_int_text_takes_ascii_digits_only() -> None:
    assert int_text("42") == 42 and int_text("-7") == -7
    for bad in ("²", "٣", " 1", "1_000", "1e3", "", "0x10", "9" * 20):
        assert int_text(bad) is None, bad

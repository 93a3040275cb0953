"""The REST body guards on their own: nesting depth without parsing, ASCII integers."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.api.envelope import int_text, nesting_depth

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
    assert nesting_depth(json.dumps(value, ensure_ascii=ascii_only)) == depth(value)


def test_depth_of_hostile_text_is_linear_and_bounded() -> None:
    assert nesting_depth("[" * 200_000) == 200_000
    assert nesting_depth('"' + '\\"' * 200_000) == 0  # one unterminated string: not O(n²)
    assert nesting_depth('["a\\\\"]') == 1
    assert nesting_depth('{"a": "[[[[", "b": [[1]]}') == 3


def test_int_text_takes_ascii_digits_only() -> None:
    assert int_text("42") == 42 and int_text("-7") == -7
    for bad in ("²", "٣", " 1", "1_000", "1e3", "", "0x10", "9" * 20):
        assert int_text(bad) is None, bad

"""The JSONL and CSV recording formats: round trips, bad lines counted, good lines kept."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.recording import (
    RecordedMessage,
    RecordedReading,
    RecordingError,
    parse_jsonl_line,
    read_csv,
    read_jsonl,
    tracks_from_readings,
    tracks_to_readings,
    write_csv,
    write_jsonl,
)

T0 = 1_700_000_000_000


def test_jsonl_round_trip(tmp_path: Path) -> None:
    items = [
        RecordedReading(T0, {"heart_rate": 72.0, "spo2": 97.0}, "d061aed45894", "AMSe5Sn8Gkxj7",
                        "ward3-bed12", "realtime", 0),
        RecordedMessage(T0 + 5, "vitals/v1/ward3-bed12/status", {"v": 1, "online": True}, True),
        RecordedReading(T0 + 60_000, {"temperature": 36.6}),
    ]
    path = tmp_path / "rec.jsonl"
    assert write_jsonl(path, items) == 3
    content = read_jsonl(path)
    assert content.readings == [items[0], items[2]]
    assert content.messages == [items[1]]
    assert content.bad == 0
    first = path.read_text().splitlines()[0]
    assert first.startswith('{"t":1700000000000,"device_id":"d061aed45894"')


def test_bad_jsonl_lines_are_counted_and_neighbours_kept() -> None:
    text = "\n".join([
        '{"t": 1, "vitals": {"heart_rate": 70}}',
        "not json",
        '{"t": "x", "vitals": {"heart_rate": 70}}',
        '{"t": 2, "vitals": {}}',
        '{"t": 3, "vitals": {"heart_rate": "fast"}}',
        '[1, 2]',
        '{"t": 4, "vitals": {"spo2": 95, "steps": 12}}',
        "",
    ])
    content = read_jsonl(io.StringIO(text))
    assert [r.t for r in content.readings] == [1, 4]
    assert content.readings[1].vitals == {"spo2": 95.0}  # unknown vitals ignored
    assert content.bad == 5
    assert content.errors[0].startswith("line 2: not JSON")
    assert "line 3: t must be" in content.errors[1]
    assert "line 5: vitals.heart_rate must be a number" in content.errors[3]


def test_tracks_group_by_device_on_a_common_origin() -> None:
    readings = [
        RecordedReading(T0 + 120_000, {"heart_rate": 80.0}, "aaaaaaaaaaaa", "A1"),
        RecordedReading(T0, {"heart_rate": 70.0}, "aaaaaaaaaaaa", "A1"),
        RecordedReading(T0 + 60_000, {"spo2": 96.0, "heart_rate": 400.0}, "bbbbbbbbbbbb"),
    ]
    a, b = tracks_from_readings(readings)
    assert (a.device_id, a.user_code, a.origin_ms) == ("aaaaaaaaaaaa", "A1", T0)
    assert list(a.t_ms) == [0, 120_000] and list(a.vitals["heart_rate"]) == [70, 80]
    assert list(b.t_ms) == [60_000] and b.row(0) == {"spo2": 96.0}
    assert b.dropped == {"heart_rate": 1}  # 400 /min is not plausible
    assert sorted(r.t for r in tracks_to_readings([a, b])) == [T0, T0 + 60_000, T0 + 120_000]


def test_csv_with_ts_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "ts,user_code,device_id,heart_rate,spo2,temperature\n"
        f"{T0},U1,aaaaaaaaaaaa,70,97,36.5\n"
        f"{T0 + 60_000},U1,aaaaaaaaaaaa,72,,\n"
        f"{T0 + 30_000},U2,bbbbbbbbbbbb,,88,\n"
        f"{T0 + 90_000},U2,bbbbbbbbbbbb,x,88,\n"
        f"oops,U2,bbbbbbbbbbbb,60,88,\n"
    )
    content = read_csv(path)
    assert content.bad == 2 and "heart_rate='x'" in content.errors[0]
    a, b = content.tracks
    assert a.user_code == "U1" and list(a.t_ms) == [0, 60_000] and a.row(1) == {"heart_rate": 72.0}
    assert b.device_id == "bbbbbbbbbbbb" and list(b.t_ms) == [30_000]
    out = tmp_path / "out.csv"
    assert write_csv(out, content.tracks) == 3
    again = read_csv(out)
    assert again.bad == 0
    for x, y in zip(content.tracks, again.tracks, strict=True):
        np.testing.assert_array_equal(x.t_ms, y.t_ms)
        for v in x.vitals:
            np.testing.assert_array_equal(x.vitals[v], y.vitals[v])


def test_csv_with_time_column_seconds_or_iso() -> None:
    content = read_csv(io.StringIO(
        "time,heart_rate\n0,70\n1.5,71\n2024-01-01T00:00:10+00:00,72\n"
    ))
    (track,) = content.tracks
    assert list(track.t_ms) == [0, 1500, 1_704_067_210_000]
    with pytest.raises(RecordingError, match="no ts or time column"):
        read_csv(io.StringIO("when,heart_rate\n1,70\n"))
    with pytest.raises(RecordingError, match="no vital column"):
        read_csv(io.StringIO("ts,pulse\n1,70\n"))


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.text(max_size=120),
    st.dictionaries(st.sampled_from(["t", "vitals", "topic", "seq", "device_id"]),
                    st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none(),
                              st.dictionaries(st.sampled_from(["heart_rate", "spo2", "x"]),
                                              st.one_of(st.floats(), st.integers(), st.booleans()))),
                    ).map(json.dumps),
))
def test_fuzzed_jsonl_lines_parse_or_raise_value_error(line: str) -> None:
    try:
        item = parse_jsonl_line(line)
    except ValueError:
        return
    assert isinstance(item, RecordedReading | RecordedMessage)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="ts,heart_rate,spo2\n0123456789.-xNa ", max_size=200))
def test_fuzzed_csv_reads_or_raises_recording_error(text: str) -> None:
    try:
        content = read_csv(io.StringIO(text))
    except RecordingError:
        return
    for track in content.tracks:
        assert np.all(np.diff(track.t_ms) >= 0)

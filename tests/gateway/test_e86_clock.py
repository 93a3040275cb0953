"""E86 watch time ↔ UTC and advertising names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e86.advertising import (
    advertised_name,
    default_name,
    is_e86_name,
    is_yucheng,
    name_matches_mac,
    parse_advertised_name,
)
from e86.clock import (
    utc_ms_to_watch,
    utc_ms_to_watch_local,
    utc_offset_ms,
    watch_local_to_utc_ms,
    watch_to_utc_ms,
)
from e86.constants import COMMAND_CHAR_UUID, DATA_CHAR_UUID, SERVICE_UUID, WATCH_EPOCH_UNIX

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=200)
JAKARTA = ZoneInfo("Asia/Jakarta")
BERLIN = ZoneInfo("Europe/Berlin")


def test_constants() -> None:
    assert SERVICE_UUID == "be940000-7333-be46-b7ae-689e71722bd5"
    assert COMMAND_CHAR_UUID == "be940001-7333-be46-b7ae-689e71722bd5"
    assert DATA_CHAR_UUID == "be940003-7333-be46-b7ae-689e71722bd5"
    assert datetime(2000, 1, 1, tzinfo=UTC).timestamp() == WATCH_EPOCH_UNIX


def test_watch_time_formula() -> None:
    # 0 on a UTC+7 watch is 2000-01-01 00:00 local = 1999-12-31 17:00 UTC
    assert watch_to_utc_ms(0, 7 * 3_600_000) == (946684800 - 7 * 3600) * 1000
    t = 686_230_213
    assert watch_to_utc_ms(t, 25_200_000) == (t + 946684800) * 1000 - 25_200_000
    assert utc_ms_to_watch(watch_to_utc_ms(t, 25_200_000), 25_200_000) == t
    assert watch_local_to_utc_ms(t, JAKARTA) == watch_to_utc_ms(t, 25_200_000)
    assert utc_offset_ms(JAKARTA, datetime(2021, 1, 1, tzinfo=UTC)) == 25_200_000


def test_daylight_saving_offset_in_force_at_the_record() -> None:
    winter = utc_ms_to_watch_local(int(datetime(2024, 1, 15, 12, tzinfo=UTC).timestamp() * 1000), BERLIN)
    summer = utc_ms_to_watch_local(int(datetime(2024, 7, 15, 12, tzinfo=UTC).timestamp() * 1000), BERLIN)
    assert watch_local_to_utc_ms(winter, BERLIN) == watch_to_utc_ms(winter, 3_600_000)
    assert watch_local_to_utc_ms(summer, BERLIN) == watch_to_utc_ms(summer, 7_200_000)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(-12 * 3600, 14 * 3600).map(lambda s: s * 1000))
def test_round_trip_fixed_offset(t: int, offset_ms: int) -> None:
    assert utc_ms_to_watch(watch_to_utc_ms(t, offset_ms), offset_ms) == t


@FUZZ
@given(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)))
def test_round_trip_timezone(wall: datetime) -> None:
    t = int((wall.replace(microsecond=0) - datetime(2000, 1, 1)) / timedelta(seconds=1))
    utc_ms = watch_local_to_utc_ms(t, JAKARTA)
    assert utc_ms_to_watch_local(utc_ms, JAKARTA) == t


def test_advertised_names() -> None:
    assert advertised_name("E86", "D0:61:AE:D4:58:94") == "E86 5894"
    assert default_name("d061aed4ab5c") == "E86 AB5C"
    assert advertised_name("E80DL", "00-11-22-33-6b-56") == "E80DL 6B56"
    assert is_e86_name("E86 5894")
    assert not is_e86_name("E80DL 6B56")
    assert not is_e86_name(None)
    assert not is_e86_name("")
    assert parse_advertised_name("E86 AB5C") == ("E86", "AB5C")
    assert parse_advertised_name("Mi Band") is None
    assert name_matches_mac("E86 5894", "D0:61:AE:D4:58:94")
    assert not name_matches_mac("E86 5895", "D0:61:AE:D4:58:94")
    assert is_yucheng({0x7810: b"\x01"})
    assert not is_yucheng({0x004C: b""})
    with pytest.raises(ValueError, match="not a MAC"):
        advertised_name("E86", "D0:61")

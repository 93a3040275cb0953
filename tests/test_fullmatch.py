"""Identifier checks match the whole value (``fullmatch``): with ``re.match`` and a ``$``
anchor, a value with a trailing newline passed. One refusal per module that checks one."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from e86.advertising import advertised_name, parse_advertised_name
from e86.commands import MacAddress
from e86.errors import PayloadError
from gateway.settings import GatewaySettings
from ingest import keys
from ingest.db import Conn, Dialect, render_ddl
from ingest.db import keys as db_keys
from ingest.ews_engine import EwsEngine, EwsInputError
from simulators.cli import _gateway_id
from simulators.physiology import SimClock, SteppedTime
from simulators.recording import Track
from simulators.replay import ReplayItem, identity_for, replay_tracks
from tests.ingest.upstream import FakeTime
from vitalgate.config import load_settings


def test_gateway_settings_refuse_a_trailing_newline() -> None:
    assert load_settings(GatewaySettings, None, gateway_id="ward-3").gateway_id == "ward-3"
    with pytest.raises(ValueError, match="gateway_id"):
        load_settings(GatewaySettings, None, gateway_id="ward-3\n")
    with pytest.raises(ValueError, match="user_code"):
        load_settings(GatewaySettings, None, devices={"D0:61:AE:D4:58:94": "P1\n"})


def test_simulator_cli_refuses_a_gateway_id_with_a_trailing_newline() -> None:
    assert _gateway_id("sim-gw") == "sim-gw"
    with pytest.raises(argparse.ArgumentTypeError):
        _gateway_id("sim-gw\n")


def test_replay_does_not_take_a_recorded_user_code_with_a_trailing_newline() -> None:
    def track(code: str) -> Track:
        return Track(name="bed7", t_ms=np.array([0], dtype=np.int64),
                     vitals={"heart_rate": np.array([70.0])}, user_code=code)

    for code, expect in (("U7", "U7"), ("U7\n", identity_for("bed7")[1])):
        got: list[ReplayItem] = []
        fake = SteppedTime()
        replay_tracks([track(code)], got.append,
                      clock=SimClock(1_800_000_000_000, speed=1, time_fn=fake.time,
                                     sleep_fn=fake.sleep))
        assert [g.user_code for g in got] == [expect]


def test_ews_engine_set_context_refuses_a_trailing_newline(tmp_path: Path) -> None:
    engine = EwsEngine(tmp_path / "ews.sqlite3", clock=FakeTime())
    try:
        with pytest.raises(EwsInputError, match="user_code"):
            engine.set_context("PA\n", consciousness="A", on_oxygen=False, spo2_scale=1)
    finally:
        engine.close()


def test_key_names_refuse_a_trailing_newline() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(render_ddl(db_keys.SCHEMA, Dialect.SQLITE))
        c = Conn(conn, Dialect.SQLITE)
        assert keys.create(c, "ward-3", 1).startswith("vg_")
        with pytest.raises(keys.ApiKeyError, match="key name"):
            keys.create(c, "ward-4\n", 1)
    finally:
        conn.close()


def test_e86_refuses_a_mac_or_name_with_a_trailing_newline() -> None:
    assert advertised_name("E86", "D0:61:AE:D4:58:94") == "E86 5894"
    with pytest.raises(ValueError, match="MAC"):
        advertised_name("E86", "D0:61:AE:D4:58:94\n")
    assert parse_advertised_name("E86 5894") == ("E86", "5894")
    assert parse_advertised_name("E86 5894\n") is None
    assert MacAddress("d0:61:ae:d4:58:94").mac == "D0:61:AE:D4:58:94"
    with pytest.raises(PayloadError):
        MacAddress("D0:61:AE:D4:58:94\n")

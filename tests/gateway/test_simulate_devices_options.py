"""``gateway run --simulate-devices / --simulate-link / --simulate-remote`` and ``simulate-device``:
bad input gets an error naming what is wrong."""

from __future__ import annotations

import argparse

import pytest

from simulators.devices.relay import parse_endpoint
from simulators.simulate import device_kinds, endpoint, remote_device
from vitalgate.cli import build_parser


def test_device_kinds_are_checked() -> None:
    assert device_kinds("hr,plx, bp,thermometer") == ["hr", "plx", "bp", "thermometer"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown device kind.*'ecg'"):
        device_kinds("hr,ecg")
    with pytest.raises(argparse.ArgumentTypeError):
        device_kinds(",")


def test_link_endpoint_and_remote_devices_are_checked() -> None:
    assert parse_endpoint("127.0.0.1:7010") == ("127.0.0.1", 7010)
    assert endpoint("localhost:0") == "localhost:0"
    for bad in ("7010", "127.0.0.1:99999", "a b:1", "host:port"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            endpoint(bad)
    assert remote_device("c6:00:00:00:0b:01=CUFF01") == ("C6:00:00:00:0B:01", "CUFF01")
    for bad in ("C6:00:00:00:0B:01", "C6:00=CUFF", "C6:00:00:00:0B:01=bad code"):
        with pytest.raises(argparse.ArgumentTypeError):
            remote_device(bad)


def test_the_commands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["gateway", "run", "--simulate", "0", "--simulate-devices", "bp,plx"])
    assert args.simulate_devices == ["bp", "plx"]
    args = parser.parse_args(["simulate-device", "plx", "--link", "127.0.0.1:7010", "--stored", "5"])
    assert (args.kind, args.stored) == ("plx", 5)
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate-device", "plx", "--link", "127.0.0.1:7010", "--stored", "100000"])

"""``vitalgate simulate-device KIND --link HOST:PORT``: one virtual health device in this
process, on the simulated radio of another (``vitalgate gateway run --simulate-link``).

It runs until SIGTERM / SIGINT, then powers its stack off and closes its socket. ``--stored N``
gives it N stored measurements (one an hour before now) that it delivers as a real device of
its kind does (cuff / thermometer: on connect; oximeter: through RACP). At INFO it says where it
is attached and its MAC; at exit how many measurements it sent (no values).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulators.devices.base import VirtualHealthDevice
from simulators.devices.kinds import KINDS
from simulators.devices.relay import RemoteRadio
from vitalgate.clock import epoch_ms
from vitalgate.contract import device_id_from_mac, normalise_mac

log = logging.getLogger(__name__)

#: stored measurements a device may be given (bounded input).
MAX_STORED = 1000
#: one stored measurement of each kind (the device stamps it).
STORED_VALUES: dict[str, dict[str, float]] = {
    "hr": {"heart_rate": 70.0},
    "plx": {"spo2": 95.0, "heart_rate": 78.0},
    "bp": {"systolic_bp": 134.0, "diastolic_bp": 86.0, "heart_rate": 68.0},
    "thermometer": {"temperature": 37.9},
}


def _mac(text: str) -> str:
    try:
        device_id_from_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return normalise_mac(text)


def _stored(text: str) -> int:
    n = int(text)
    if not 0 <= n <= MAX_STORED:
        raise argparse.ArgumentTypeError(f"--stored must be 0..{MAX_STORED}, got {n}")
    return n


def _interval(text: str) -> float:
    v = float(text)
    if not 0.05 <= v <= 86_400:
        raise argparse.ArgumentTypeError(f"--interval must be 0.05..86400 s, got {v}")
    return v


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate-device", help="run one virtual BLE health device on a "
                              "gateway's shared simulated radio (gateway run --simulate-link)")
    p.add_argument("kind", choices=sorted(KINDS), help="hr, plx, bp or thermometer")
    p.add_argument("--link", required=True, metavar="HOST:PORT",
                   help="the gateway's --simulate-link endpoint")
    p.add_argument("--mac", type=_mac, default="C6:00:00:00:00:01", help="the device's address")
    p.add_argument("--interval", type=_interval, default=5.0, help="seconds between measurements")
    p.add_argument("--stored", type=_stored, default=0, help="stored measurements at start (hourly)")
    p.add_argument("--stored-from", type=int, default=None, metavar="EPOCH_S",
                   help="time of the first stored measurement (UTC seconds; default: N hours ago)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sent-log", type=Path, default=None, metavar="PATH",
                   help="at exit, write what the device sent as JSON lines (kind, utc_ms, vitals, stored)")
    p.set_defaults(func=run)


def build(args: argparse.Namespace, radio: RemoteRadio) -> VirtualHealthDevice:
    first = args.stored_from if args.stored_from is not None else epoch_ms() // 1000 - 3600 * args.stored
    stored = [(float(first + 3600 * i), dict(STORED_VALUES[args.kind])) for i in range(args.stored)]
    kwargs: dict[str, Any] = {"interval_s": args.interval, "seed": args.seed}
    if args.kind != "hr":
        kwargs["stored"] = stored
    return KINDS[args.kind](radio, args.mac, **kwargs)


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    radio = RemoteRadio(args.link)
    code = 0
    try:
        device = build(args, radio)
        async with device:
            log.info("%s (%s) attached to the simulated radio at %s", device.name, device.mac, args.link)
            stopping = asyncio.ensure_future(stop.wait())
            lost = asyncio.ensure_future(radio.wait_lost())
            await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
            for t in (stopping, lost):
                t.cancel()
            if radio.lost():
                log.error("the simulated radio at %s went away (its gateway stopped)", args.link)
                code = 1
            log.info("%s: stopping; %d measurements sent, %d connections",
                     device.name, len(device.sent), device.stats.connections)
        if args.sent_log is not None:
            args.sent_log.write_text("".join(json.dumps(asdict(s)) + "\n" for s in device.sent))
    except OSError as exc:
        log.error("cannot attach to the simulated radio at %s: %s", args.link, exc)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return code


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))

"""What ``vitalgate gateway run --simulate N`` collects from: a bumble link, virtual E86 watches
worn by simulated patients, and the :class:`gateway.ble.backend.BleBackend` on that link.

The gateway only knows ``BleBackend``; this module builds one and the watches behind it, and
the composition root (``vitalgate.cli``) hands :data:`SIMULATE` to ``gateway.cli.register``,
which adds its options to ``gateway run`` and opens it when ``--simulate`` asks for it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from gateway.ble.backend import BleBackend, BleInUse
from gateway.clock_sync import SyncedClock
from simulators.bleak_bumble import BumbleLink
from simulators.devices import KINDS, VirtualHealthDevice
from simulators.devices.relay import LinkServer, parse_endpoint
from simulators.physiology import fleet_patients, mac_for, user_code_for
from simulators.watch import VirtualE86
from vitalgate.contract import USER_CODE_RE, device_id_from_mac, normalise_mac


class BumbleControl:
    """The simulated adapters' equivalents of BlueZ's RemoveDevice and power cycle (counted
    on each :class:`simulators.bleak_bumble.central.SharedCentral`)."""

    def __init__(self, link: BumbleLink) -> None:
        self.link = link

    async def forget_device(self, address: str, adapter: str) -> bool:
        return self.link.centrals[adapter].forget(address)

    async def power_cycle(self, adapter: str) -> None:
        await self.link.centrals[adapter].power_cycle()


def bumble_backend(link: BumbleLink) -> BleBackend:
    """The bumble local link (virtual watches in this process) as the gateway's backend."""
    return BleBackend("bumble", link.scanner_backend, link.client_backend,
                      adapters=tuple(link.centrals), control=BumbleControl(link))


@contextlib.asynccontextmanager
async def simulated_watches(
    link: BumbleLink, n: int, scenarios: Sequence[str], clock: SyncedClock, *, seed: int = 0,
    realtime_interval_s: float = 5.0, physiology_speed: float = 1.0,
) -> AsyncIterator[tuple[list[VirtualE86], dict[str, str]]]:
    """``n`` virtual E86 watches worn by simulated patients; yields them and MAC → user_code.

    ``physiology_speed`` runs the patients' trajectories faster than ``clock`` (a sepsis of
    hours in minutes) while the watches still measure and stamp on ``clock``."""
    start = clock.ms()
    patients = fleet_patients(n, list(scenarios), seed=seed, start_ms=start) if n > 0 else []

    def accelerated(vitals: Callable[[int], Mapping[str, float]]) -> Callable[[int], Mapping[str, float]]:
        if physiology_speed == 1.0:
            return vitals
        return lambda ts: vitals(start + int((ts - start) * physiology_speed))

    watches = [
        VirtualE86(link, p.mac, clock=clock, speed=1.0, vitals=accelerated(p.vitals), ecg=p.ecg,
                   realtime_interval_s=realtime_interval_s, seed=seed + i)
        for i, p in enumerate(patients)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for w in watches:
            await stack.enter_async_context(w)
        yield watches, {p.mac: p.user_code for p in patients}


def device_kinds(text: str) -> list[str]:
    """``hr,plx,bp,thermometer`` → the kinds, checked (argparse type)."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown device kind(s) {unknown or text!r}: choose from {', '.join(KINDS)}")
    return kinds


#: seed offset of the health devices' MACs and user codes (apart from the watches' patients).
DEVICE_SEED_OFFSET = 1_000_000


@contextlib.asynccontextmanager
async def simulated_devices(
    link: BumbleLink, kinds: Sequence[str], clock: SyncedClock, *, seed: int = 0, interval_s: float = 5.0,
) -> AsyncIterator[tuple[list[VirtualHealthDevice], dict[str, str]]]:
    """One virtual health device per entry of ``kinds``; yields them and MAC → user_code."""
    devices = [
        KINDS[kind](link, mac_for(seed + DEVICE_SEED_OFFSET, i), clock=clock, interval_s=interval_s,
                    seed=seed + i)
        for i, kind in enumerate(kinds)
    ]
    codes = {d.mac: user_code_for(seed + DEVICE_SEED_OFFSET, i) for i, d in enumerate(devices)}
    async with contextlib.AsyncExitStack() as stack:
        for d in devices:
            await stack.enter_async_context(d)
        yield devices, codes


def endpoint(text: str) -> str:
    """argparse type of ``--simulate-link``: ``HOST:PORT``."""
    try:
        parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def remote_device(text: str) -> tuple[str, str]:
    """argparse type of ``--simulate-remote``: ``MAC=USER_CODE``."""
    mac, sep, code = text.partition("=")
    if not sep or not USER_CODE_RE.fullmatch(code):
        raise argparse.ArgumentTypeError(f"not MAC=USER_CODE: {text!r}")
    try:
        device_id_from_mac(mac)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return normalise_mac(mac), code


class Simulate:
    """``--simulate N`` and its options on ``gateway run`` (a ``gateway.cli.BackendOption``)."""

    def add_arguments(self, run: argparse.ArgumentParser) -> None:
        run.add_argument("--simulate", type=int, metavar="N", default=0,
                         help="run N virtual E86 watches on a simulated BLE link in this process")
        run.add_argument("--scenario", action="append", metavar="NAME",
                         help="patient scenario of the simulated watches (repeatable; default stable)")
        run.add_argument("--speed", type=float, default=1.0,
                         help="with --simulate: the patients' physiology runs S x faster (readings keep "
                              "wall-clock timestamps, so the hospital's freshness window still holds)")
        run.add_argument("--interval", type=float, default=5.0,
                         help="seconds between the virtual watches' readings")
        run.add_argument("--seed", type=int, default=0, help="seed of the simulated patients")
        run.add_argument("--simulate-devices", type=device_kinds, default=[], metavar="KINDS",
                         help="also run standard BLE health devices on the simulated link, e.g. "
                              f"hr,plx,bp,thermometer (kinds: {', '.join(KINDS)})")
        run.add_argument("--simulate-link", type=endpoint, metavar="HOST:PORT",
                         help="share the simulated radio over TCP (HCI), so that virtual devices of "
                              "other processes join it: vitalgate simulate-device KIND --link HOST:PORT")
        run.add_argument("--simulate-remote", type=remote_device, action="append", default=[],
                         metavar="MAC=USER_CODE",
                         help="collect this device of another process (repeatable; else only with adopt_any)")

    def selected(self, args: argparse.Namespace) -> bool:
        return int(args.simulate) > 0 or bool(args.simulate_devices) or bool(args.simulate_link)

    @contextlib.asynccontextmanager
    async def open(self, args: argparse.Namespace, clock: SyncedClock) -> AsyncIterator[BleInUse]:
        """The link and its watches, stamping on ``clock``; both stop when the block ends."""
        async with BumbleLink() as link, simulated_watches(
            link, args.simulate, args.scenario or ["stable"], clock, seed=args.seed,
            realtime_interval_s=args.interval, physiology_speed=args.speed,
        ) as (_watches, devices), simulated_devices(
            link, args.simulate_devices, clock, seed=args.seed, interval_s=args.interval,
        ) as (_health, health_devices), contextlib.AsyncExitStack() as stack:
            kinds = f" + devices {','.join(args.simulate_devices)}" if args.simulate_devices else ""
            if args.simulate_link:
                host, port = parse_endpoint(args.simulate_link)
                server = await stack.enter_async_context(LinkServer(link, host, port))
                kinds += f", shared on {server.host}:{server.port}"
            yield BleInUse(bumble_backend(link), {**devices, **health_devices, **dict(args.simulate_remote)},
                           f"{args.simulate} simulated watches{kinds} (bumble)")


#: what the composition root passes to ``gateway.cli.register``.
SIMULATE = Simulate()

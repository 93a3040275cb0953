"""``vitalgate simulate | replay | record``: fleet mode, replay of recordings, broker recording.

Defaults come from :class:`SimulatorSettings` (``[simulators]`` in the TOML file named by
``--config`` or $VITALGATE_CONFIG, env ``VITALGATE_MQTT_URL`` etc., the same names as the
gateway's and ingest's); command-line options win.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from simulators import scenarios as scenario_files
from vitalgate.clock import epoch_ms
from vitalgate.config import BrokerAddress, ServiceSettings, load_settings
from vitalgate.contract import DEFAULT_PREFIX, GATEWAY_ID_RE, matches

if TYPE_CHECKING:
    from simulators.mqtt_out import GatewayPublisher


class SimulatorSettings(ServiceSettings):
    toml_table: ClassVar[str] = "simulators"

    #: the broker, as the gateway and ingest name it (``VITALGATE_MQTT_URL``).
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: deprecated name of ``mqtt_url`` (read with a WARNING; see ServiceSettings.deprecated_names).
    broker: str | None = None
    deprecated_names: ClassVar[dict[str, str]] = {"broker": "mqtt_url"}
    prefix: str = DEFAULT_PREFIX
    gateway_id: str = "sim-ward"
    seed: int = 0
    speed: float = 1.0
    #: simulated seconds between two readings of one watch.
    rate_s: float = 60.0
    #: "wall": ts = real time of delivery; "sim": ts on the simulated timeline.
    timestamps: str = "wall"


log = logging.getLogger(__name__)


def _log_broker(settings: SimulatorSettings, what: str) -> None:
    """Say at INFO which broker this command uses (host:port only: never credentials)."""
    try:
        broker = BrokerAddress.parse(settings.mqtt_url)
    except ValueError:
        return  # the client refuses it with a clear error of its own
    log.info("%s: MQTT broker %s:%d%s (mqtt_url, VITALGATE_MQTT_URL), topic prefix %s", what,
             broker.host, broker.port, " (TLS)" if broker.tls else "", settings.prefix)


def _connect_publisher(settings: SimulatorSettings, what: str) -> GatewayPublisher | None:
    """A publisher connected as gateway ``settings.gateway_id``; None (said on stderr) if not."""
    from simulators.mqtt_out import GatewayPublisher
    from vitalgate.mqtt_session import MqttError

    _log_broker(settings, f"{what} as gateway {settings.gateway_id}")
    publisher = GatewayPublisher(settings.mqtt_url, settings.gateway_id, settings.prefix)
    try:
        return publisher.connect()
    except (MqttError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a service manager, ``kill``, a CI runner) stops these commands as Ctrl-C does:
    the publisher says offline and closes, a recording drains and closes its file, and the
    process exits within seconds (130, or 0 for ``record``, whose end is always Ctrl-C)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``8h``, ``2d`` → seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 30m, 8h)")
    return float(match[1]) * _UNITS[match[2]]


def _gateway_id(text: str) -> str:
    if not matches(GATEWAY_ID_RE, text):
        raise argparse.ArgumentTypeError(f"gateway id {text!r} must match {GATEWAY_ID_RE.pattern}")
    return text


def _settings(args: argparse.Namespace) -> SimulatorSettings:
    overrides: dict[str, Any] = {}
    for name in ("mqtt_url", "prefix", "gateway_id", "seed", "speed", "rate_s", "timestamps"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return load_settings(SimulatorSettings, args.config, **overrides)


def _common(p: argparse.ArgumentParser, gateway: bool = True) -> None:
    p.add_argument("--mqtt-url", "--broker", dest="mqtt_url",
                   help="mqtt://host:port (default: mqtt_url from the settings, VITALGATE_MQTT_URL)")
    p.add_argument("--prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--config", type=Path, help="TOML settings file ([simulators] table)")
    if gateway:
        p.add_argument("--gateway-id", dest="gateway_id", type=_gateway_id)
        p.add_argument("--speed", type=float, help="simulated time runs SPEED × real time")
        p.add_argument("--timestamps", choices=("wall", "sim"), help="ts = delivery time (wall) or simulated time")


def _with_sigterm(cmd: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        with _sigterm_as_ctrl_c():
            return int(cmd(args))

    run.__name__ = cmd.__name__
    return run


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help="publish simulated patients onto MQTT as a gateway would")
    p.add_argument("--patients", type=int, default=10, help="number of patients")
    p.add_argument("--scenario", default="stable", help="scenario name(s) or TOML path(s), comma separated, assigned round-robin")
    p.add_argument("--duration", type=duration, default=3600.0, help="simulated duration: 90, 30m, 8h")
    p.add_argument("--rate", dest="rate_s", type=float, help="simulated seconds between readings per watch")
    p.add_argument("--seed", type=int)
    p.add_argument("--list-scenarios", action="store_true", help="list the built-in scenarios and exit")
    _common(p)
    p.set_defaults(func=_with_sigterm(cmd_simulate))

    p = subparsers.add_parser("replay", help="replay recorded vitals onto MQTT in their own timing")
    p.add_argument("file", type=Path, help="JSONL, CSV, .psv, Challenge 2012 .txt, WFDB .hea, or a folder")
    p.add_argument("--format", default="auto", choices=("auto", "jsonl", "csv", "psv", "physionet2012", "wfdb"))
    p.add_argument("--seq-base", type=int, default=0, help="first seq per device (0)")
    p.add_argument("--virtual-watches", action="store_true",
                   help="serve each track from a virtual E86 watch and collect them with the real "
                        "gateway over the bumble BLE stack, instead of publishing directly")
    p.add_argument("--interval", type=float, default=5.0,
                   help="with --virtual-watches: seconds between a watch's measurements")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with --virtual-watches: the gateway's buffer directory (default: temp)")
    _common(p)
    p.set_defaults(func=_with_sigterm(cmd_replay))

    p = subparsers.add_parser("record", help="record the readings on a broker to JSONL")
    p.add_argument("--out", type=Path, required=True, help="JSONL file (appended)")
    p.add_argument("--duration", type=duration, help="stop after this long (real time); default: until Ctrl-C")
    p.add_argument("--all", action="store_true", help="also record status, ECG, EWS and command messages")
    _common(p, gateway=False)
    p.set_defaults(func=_with_sigterm(cmd_record))


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.fleet import Fleet, Timestamps, sim_start_ms
    from simulators.physiology import Cohort, SimClock

    if args.list_scenarios:
        for name in scenario_files.available():
            sys.stdout.write(f"{name:14} {scenario_files.load(name).description}\n")
        return 0
    settings = _settings(args)
    names = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if args.patients < 1 or not names:
        sys.stderr.write("need --patients >= 1 and at least one --scenario\n")
        return 2
    try:
        loaded = scenario_files.load_all(names)
    except scenario_files.ScenarioError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    publisher = _connect_publisher(settings, f"simulate {args.patients} patients")
    if publisher is None:
        return 1
    # the clock starts once connected, right before the fleet: simulated time runs speed ×
    # faster, so every real millisecond in between is speed simulated ones
    stamps: Timestamps = "sim" if settings.timestamps == "sim" else "wall"
    start_ms = sim_start_ms(epoch_ms(), args.duration, stamps)
    cohort = Cohort([loaded[i % len(loaded)] for i in range(args.patients)], settings.seed, start_ms)
    clock = SimClock(start_ms, settings.speed)
    fleet = Fleet(cohort, publisher, clock, settings.rate_s, stamps)
    started = time.perf_counter()
    try:
        stats = fleet.run(args.duration)
    finally:
        publisher.close()
    real = time.perf_counter() - started
    sys.stdout.write(
        f"simulated {stats.patients} patients for {stats.sim_ms / 1000:.0f} s at speed {settings.speed:g}: "
        f"{stats.readings} readings in {stats.messages} messages ({stats.empty_slots} empty slots), "
        f"{publisher.acked}/{publisher.published} acknowledged, {real:.1f} s real, "
        f"{stats.readings / max(real, 1e-9):.0f} readings/s\n"
    )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from simulators.importers import ImportFormatError, load
    from simulators.physiology import SimClock
    from simulators.replay import MqttReplaySink, replay_tracks

    settings = _settings(args)
    try:
        loaded = load(args.file, args.format)
    except (ImportFormatError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    for err in (loaded.errors or [])[:10]:
        sys.stderr.write(f"skipped {err}\n")
    if args.virtual_watches:
        return _replay_through_watches(args, settings, loaded.tracks)
    publisher = _connect_publisher(settings, f"replay {len(loaded.tracks)} tracks")
    if publisher is None:
        return 1
    publisher.gateway_status(True, devices=len(loaded.tracks))
    started = time.perf_counter()
    try:
        stats = replay_tracks(
            loaded.tracks, MqttReplaySink(publisher, args.seq_base), clock=SimClock(speed=settings.speed),
            timestamps="sim" if settings.timestamps == "sim" else "wall",
        )
    finally:
        publisher.close()
    dropped = sum(sum(t.dropped.values()) for t in loaded.tracks)
    sys.stdout.write(
        f"replayed {stats.rows} rows of {stats.tracks} tracks spanning {stats.span_ms / 3.6e6:.2f} h "
        f"in {time.perf_counter() - started:.1f} s; {loaded.bad} unreadable rows, "
        f"{dropped} implausible values dropped, {stats.rejected} rejected\n"
    )
    return 0


def _replay_through_watches(args: argparse.Namespace, settings: Any, tracks: list[Any]) -> int:
    import asyncio
    import tempfile

    from simulators.replay_watches import replay_through_watches

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="vitalgate-replay-"))
    _log_broker(settings, f"replay {len(tracks)} tracks through virtual watches, buffer in {data_dir}")
    snapshot = asyncio.run(replay_through_watches(
        tracks, mqtt_url=settings.mqtt_url, gateway_id=settings.gateway_id, data_dir=data_dir,
        speed=settings.speed, interval_s=args.interval, prefix=settings.prefix,
    ))
    buffered = snapshot.get("buffer", {})
    sys.stdout.write(f"replayed {len(tracks)} tracks through virtual watches; gateway buffer: "
                     f"{buffered}\n")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from simulators.recording import JsonlWriter
    from simulators.replay import record
    from vitalgate.mqtt_session import MqttError

    settings = _settings(args)
    _log_broker(settings, f"record to {args.out}")
    with JsonlWriter(args.out) as writer:
        try:
            stats = record(settings.mqtt_url, writer, settings.prefix, args.duration, args.all)
        except (MqttError, ValueError) as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
    sys.stdout.write(
        f"recorded {stats.readings} readings and {stats.messages} other messages to {args.out}; "
        f"{stats.rejected} rejected\n"
    )
    return 0

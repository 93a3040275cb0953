"""``vitalgate gateway run``, ``vitalgate gateway status`` and ``vitalgate gateway salvage``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vitalgate.config import load_settings

if TYPE_CHECKING:
    from gateway.ble.backend import BleInUse
    from gateway.clock_sync import SyncedClock

log = logging.getLogger(__name__)


class BackendOption(Protocol):
    """A BLE backend ``gateway run`` can use instead of BlueZ (``--simulate``, wired by the
    composition root): it adds its options and, when they select it, opens the backend."""

    def add_arguments(self, run: argparse.ArgumentParser) -> None: ...

    def selected(self, args: argparse.Namespace) -> bool: ...

    def open(self, args: argparse.Namespace, clock: SyncedClock) -> AbstractAsyncContextManager[BleInUse]: ...


def register(subparsers: Any, simulate: BackendOption | None = None) -> None:
    """``simulate``: the backend of ``--simulate`` (``vitalgate.cli`` passes the simulators')."""
    gw = subparsers.add_parser("gateway", help="the BLE → MQTT gateway (Raspberry Pi)")
    sub = gw.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="collect from E86 watches and publish to MQTT")
    run.add_argument("--config", type=Path, help="TOML file ([gateway] table)")
    if simulate is not None:
        simulate.add_arguments(run)
    run.add_argument("--mqtt-url", help="override mqtt_url")
    run.add_argument("--gateway-id", help="override gateway_id")
    run.add_argument("--data-dir", type=Path, help="override data_dir (buffer, state file)")
    run.add_argument("--status-port", type=int, help="override status_port (0 = any free port)")
    run.set_defaults(func=lambda args: _run(args, simulate))

    status = sub.add_parser("status", help="what a running gateway is doing (or did last)")
    status.add_argument("--config", type=Path, help="TOML file ([gateway] table)")
    status.add_argument("--port", type=int, help="status port (default: from the settings)")
    status.add_argument("--data-dir", type=Path, help="where the state file is")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=_status)

    salvage = sub.add_parser("salvage", help="recover the readable rows of a damaged or old buffer file "
                                              "into this gateway's buffer (they are published on the next run)")
    salvage.add_argument("file", type=Path, help="the file, e.g. buffer.sqlite3.corrupt-20260101T120000Z")
    salvage.add_argument("--config", type=Path, help="TOML file ([gateway] table)")
    salvage.add_argument("--data-dir", type=Path, help="the data_dir of the buffer to import into")
    salvage.set_defaults(func=_salvage)
    gw.set_defaults(func=lambda args: gw.print_help() or 2)


def _settings(args: argparse.Namespace) -> Any:
    from gateway.settings import GatewaySettings

    overrides: dict[str, Any] = {}
    for arg, key in (("mqtt_url", "mqtt_url"), ("gateway_id", "gateway_id"), ("data_dir", "data_dir"),
                     ("status_port", "status_port"), ("port", "status_port")):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[key] = value
    return load_settings(GatewaySettings, args.config, **overrides)


def _run(args: argparse.Namespace, simulate: BackendOption | None = None) -> int:
    from pydantic import ValidationError

    try:
        settings = _settings(args)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"vitalgate gateway: bad configuration: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_main(settings, args, simulate))


async def _main(settings: Any, args: argparse.Namespace, simulate: BackendOption | None = None) -> int:
    from gateway.ble.backend import bluez
    from gateway.clock_sync import SyncedClock, SystemSync
    from gateway.service import Gateway

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    from gateway.buffer import BufferError
    from gateway.lock import DataDirLocked

    stopper = Stopper(task)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: its terminal closed
        loop.add_signal_handler(sig, stopper)
    try:
        if simulate is not None and simulate.selected(args):
            # wall time: what the watches report is stamped as it happens; the virtual watches
            # stamp on this same clock, so it is its own truth (no NTP wait)
            clock = SyncedClock(source=SystemSync(assume_synchronised=True))
            async with simulate.open(args, clock) as ble:
                settings = settings.model_copy(update={"devices": {**settings.devices, **ble.devices}})
                _log_start(settings, ble.description)
                await Gateway(settings, ble.backend, clock=clock).run()
        else:
            _log_start(settings, "BlueZ")
            await Gateway(settings, bluez(settings.adapters)).run()
    except asyncio.CancelledError:
        pass
    except (DataDirLocked, BufferError) as exc:  # a second gateway, an unusable buffer: no retry loop here
        print(f"vitalgate gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        stopper.close()
    return 0


def _salvage(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.buffer import Buffer, BufferError
    from gateway.lock import DataDirLock, DataDirLocked

    try:
        settings = _settings(args)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"vitalgate gateway salvage: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"vitalgate gateway salvage: no such file {args.file}", file=sys.stderr)
        return 2
    if args.file.resolve() == settings.buffer_path.resolve():
        print("vitalgate gateway salvage: that is the live buffer; salvage a file set aside", file=sys.stderr)
        return 2
    try:
        with DataDirLock(settings.data_dir), Buffer.open_or_reset(
            settings.buffer_path, max_rows=settings.buffer_max_rows, max_bytes=settings.buffer_max_bytes,
            keep_acked_rows=settings.buffer_keep_acked_rows, keep_acked_s=settings.buffer_keep_acked_s,
        ) as buffer:
            got = buffer.salvage(args.file)
    except (DataDirLocked, BufferError, OSError) as exc:
        print(f"vitalgate gateway salvage: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {got.read} rows read, {got.imported} imported into {settings.buffer_path}, "
          f"{got.already_here} already there, {got.invalid} invalid, {got.unreadable} unreadable")
    return 0 if got.complete else 3


def _log_start(settings: Any, ble: str) -> None:
    """What the gateway is about to use, at INFO (host:port only: no credentials)."""
    broker = settings.broker
    log.info(
        "gateway %s: MQTT broker %s:%d%s, BLE %s, %d configured watches, buffer %s",
        settings.gateway_id, broker.host, broker.port, " (TLS)" if broker.tls else "", ble,
        len(settings.devices), settings.buffer_path)


#: after SIGTERM the gateway stops in about a second; if a task is still running after this
#: long (a library swallowed its cancellation), every task is cancelled again, and after as
#: long again the process exits: a service manager's SIGTERM always stops it within seconds.
STOP_GRACE_S = 4.0


class Stopper:
    """The SIGTERM/SIGINT handler: cancel the main task; if it has not stopped ``grace_s``
    later, log an ERROR naming the tasks still running and cancel every one again (a library
    swallowed a cancellation); if it is still running ``grace_s`` after that, exit (1)."""

    def __init__(self, main: asyncio.Task[Any], grace_s: float = STOP_GRACE_S,
                 exit_now: Callable[[], None] | None = None) -> None:
        self.main = main
        self.grace_s = grace_s
        self.exit_now = exit_now or _exit_now
        self._timers: list[asyncio.TimerHandle] = []

    def __call__(self) -> None:
        if not self._timers:
            self._timers.append(self.main.get_loop().call_later(self.grace_s, self._stuck))
        self.main.cancel()

    def _stuck(self) -> None:
        loop = self.main.get_loop()
        pending = [t for t in asyncio.all_tasks(loop) if t is not self.main and not t.done()]
        log.error("still stopping %.0f s after SIGTERM: %s; cancelling them again", self.grace_s,
                  ", ".join(sorted(t.get_name() for t in pending))[:500])
        for t in pending:
            t.cancel()
        self.main.cancel()
        self._timers.append(loop.call_later(self.grace_s, self.exit_now))

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


def _exit_now() -> None:
    log.critical("did not stop %.0f s after SIGTERM: exiting now (the buffer is crash-safe)",
                 2 * STOP_GRACE_S)
    logging.shutdown()
    os._exit(1)


def _status(args: argparse.Namespace) -> int:
    from gateway.status import fetch, render

    settings = _settings(args)
    try:
        state, source = fetch(settings.status_port, settings.state_path)
    except OSError as exc:
        print(f"vitalgate gateway status: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write((json.dumps(state, indent=1) if args.json else render(state, source)) + "\n")
    return 0 if source == "live" else 3

"""What the gateway is doing, for people: ``GET /healthz`` on 127.0.0.1 and a JSON state file.

``vitalgate gateway status`` reads the HTTP endpoint, or the state file when the gateway is
not running (it then shows the last known state and says so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]

#: the state file is rewritten this often (real seconds).
STATE_FILE_PERIOD_S: Final = 5.0
#: a taken status port is tried again this often (real seconds): rare enough to cost nothing,
#: often enough that the endpoint is back soon after the other program let the port go.
STATUS_BIND_RETRY_S: Final = 30.0


async def serve_status(snapshot: Snapshot, port: int, host: str = "127.0.0.1",
                       bound: Callable[[int], None] | None = None,
                       retry_s: float = STATUS_BIND_RETRY_S) -> None:
    """Serve ``/healthz`` until cancelled; ``bound(port)`` is told the real port (port 0).

    A taken port (a second gateway, any other program) is not fatal: a bedside gateway keeps
    collecting and buffering, which matters more than its status page. It says so at WARNING
    (``vitalgate gateway status`` then reads the state file) and tries the port again every
    ``retry_s`` seconds, so the endpoint comes back once the port is free. This task never
    raises: a failure here must not cancel the gateway's other tasks (it once did, while the
    BLE scanner was starting, and bumble swallowed that cancellation: the gateway hung)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response(snapshot(), dumps=lambda o: json.dumps(o, default=str))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        failures = 0
        while True:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
                break
            except OSError as exc:
                failures += 1
                if failures == 1:
                    log.warning("status endpoint http://%s:%d/healthz not available (%s); the gateway "
                                "collects and publishes without it and tries again every %.0f s; "
                                "`vitalgate gateway status` reads the state file meanwhile",
                                host, port, exc.strerror or exc, retry_s)
                else:
                    log.debug("status port %s:%d still not available: %s", host, port, exc)
            await asyncio.sleep(retry_s)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        real_port = sockets[0].getsockname()[1] if sockets else port
        if failures:
            log.info("status endpoint available again after %d failed attempts", failures)
        log.info("status on http://%s:%d/healthz", host, real_port)
        if bound is not None:
            bound(int(real_port))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the state file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, default=str, indent=1))
    os.replace(tmp, path)


async def state_file_loop(snapshot: Snapshot, path: Path, period_s: float = STATE_FILE_PERIOD_S) -> None:
    """Rewrite the state file every ``period_s``; a failure (a full disk) is logged once until a
    write succeeds again, not every period."""
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    while True:
        try:
            write_state(path, snapshot())
        except OSError as exc:
            (log.debug if failed else log.warning)("cannot write state file %s: %s", path, exc)
            failed += 1
        else:
            if failed:
                log.info("state file %s written again (after %d failed writes)", path, failed)
            failed = 0
        await asyncio.sleep(period_s)


def fetch(port: int, state_path: Path | None = None, timeout: float = 2.0) -> tuple[dict[str, Any], str]:
    """The live status (``"live"``), else the state file (``"file"``); OSError if neither."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as resp:
            return json.loads(resp.read()), "live"
    except (urllib.error.URLError, OSError, ValueError):
        if state_path is None or not state_path.is_file():
            raise OSError(f"no gateway answers on 127.0.0.1:{port} and no state file") from None
        return json.loads(state_path.read_text()), "file"


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(state: dict[str, Any], source: str) -> str:
    """A human summary of a status snapshot."""
    mqtt = state.get("mqtt", {})
    buf = state.get("buffer", {})
    lines = [
        f"gateway {state.get('gateway_id')} ({'live' if source == 'live' else 'last state file'}"
        f"{'' if state.get('running', True) else ', stopped'}) at {_when(state.get('ts'))} UTC",
        f"  mqtt: {'connected' if mqtt.get('connected') else 'DISCONNECTED'} to {mqtt.get('broker')}"
        f"  published {mqtt.get('published', 0)} acked {mqtt.get('acked', 0)}"
        f" replayed {mqtt.get('replayed', 0)} in flight {mqtt.get('inflight', 0)}",
        f"  buffer: {buf.get('rows', 0)} rows ({buf.get('bytes', 0)} bytes), evicted {buf.get('evicted', 0)}"
        f" (ECG {buf.get('evicted_ecg', 0)}, readings {buf.get('evicted_readings', 0)}),"
        f" publish lag {buf.get('lag_s', 0):.1f} s",
    ]
    storage = str(buf.get("state", "ok"))
    lines.append(
        f"  storage: {storage.upper() if storage != 'ok' else 'ok'}"
        + (f" since {_when(buf.get('state_since_ms'))} UTC ({buf.get('last_error')})" if storage != "ok" else "")
        + f", {buf.get('write_failures', 0)} failed writes; stream {buf.get('stream')},"
        f" {buf.get('kept', 0)} acknowledged readings kept for republish"
    )
    if buf.get("corrupt_set_aside"):
        lines.append(f"  damaged buffers set aside: {buf.get('corrupt_set_aside')}"
                     f" ({', '.join(buf.get('set_aside_files', []))}), rows salvaged {buf.get('salvaged', 0)}")
    if mqtt.get("takeovers") or mqtt.get("acks_unrecorded") or mqtt.get("republish_requested"):
        lines.append(f"  mqtt: disconnects {mqtt.get('disconnects', 0)}, client-id takeovers {mqtt.get('takeovers', 0)},"
                     f" PUBACKs not yet recorded {mqtt.get('acks_unrecorded', 0)}; republish: requested"
                     f" {mqtt.get('republish_requested', 0)}, sent {mqtt.get('republished', 0)},"
                     f" no longer buffered {mqtt.get('republish_missing', 0)}")
    ble = state.get("ble", {})
    lines.append(f"  ble ({ble.get('backend')}): {ble.get('advertisements', 0)} advertisements,"
                 f" scanner restarts {ble.get('scanner_restarts', 0)}")
    lines.extend(_slot_lines(ble))
    for w in ble.get("watches", []):
        frames = w.get("frames", {})
        lines.append(
            f"  {w['name']:<10} {w['device_id']} {w['state']:<10} rssi {w.get('rssi')}"
            f" battery {w.get('battery')} last reading {_when(w.get('last_reading_ms'))}"
            f" crc errors {frames.get('crc_errors', 0)}"
            + (f" last error: {w['last_error']}" if w.get("last_error") else "")
        )
    return "\n".join(lines)



def _slot_lines(ble: dict[str, Any]) -> list[str]:
    """Connection slots, rotation, recovery steps and the clock (issue 16)."""
    slots = ble.get("slots")
    if not slots:
        return []
    per = ", ".join(f"{a['adapter']} {a['used']}/{a['capacity']}"
                    + (f" (budget {a['budget']}, refused {a['refused']})" if a["capacity"] != a["budget"]
                       or a["refused"] else "")
                    for a in slots.get("adapters", []))
    clock = ble.get("clock", {})
    return [
        f"  slots: {slots.get('used', 0)}/{slots.get('total', 0)} in use ({per}), {slots.get('waiting', 0)}"
        f" waiting, rotations {ble.get('rotations', 0)}; forgotten devices {ble.get('forgets', 0)},"
        f" adapter power cycles {ble.get('adapter_power_cycles', 0)}",
        f"  clock: {'synchronised' if clock.get('synchronised') else 'NOT SYNCHRONISED (readings held)'},"
        f" steps {clock.get('steps', 0)}, held {clock.get('held', 0)}, dropped {clock.get('dropped', 0)}",
    ]

"""``vitalgate demo``: the whole path on one laptop, in one command.

A broker (Mosquitto when installed, else an embedded amqtt broker), the ingest service on
SQLite in a temporary directory, and a gateway collecting from virtual E86 watches over the
bumble BLE stack (the real gateway code path), each in its own process as in production.
The demo shows a live table of the ward from the ingest service's own REST API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from vitalgate.broker import Mosquitto, free_port, wait_port

log = logging.getLogger(__name__)

#: the scenario of each demo patient in turn (names of simulators/scenarios/*.toml)
SCENARIO_MIX = ("sepsis", "stable", "respiratory", "copd", "offwrist", "stable", "fever", "bradycardia")
#: the simulated patients' seed: the gateway's watches and this table agree on who is who
SEED = 0
#: scenarios whose patients a clinician would put on SpO2 scale 2
SCALE2_SCENARIOS = frozenset({"copd"})
#: how often the live table is refreshed from the API (s)
REFRESH_S = 1.0
#: how long each process may take to start before the demo gives up (s)
START_TIMEOUT_S = 60.0
RESULT_STYLE = {"normal": "green", "rendah": "yellow", "sedang": "dark_orange", "tinggi": "bold red"}


@dataclass
class DemoOptions:
    patients: int = 8
    speed: float = 60.0
    port: int = 8080
    duration: float | None = None
    gateway_id: str = "demo-ward"
    data_dir: Path | None = None
    broker: str = "auto"  # auto | mosquitto | embedded


@dataclass
class Demo:
    options: DemoOptions
    console: Console = field(default_factory=Console)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    # ------------------------------------------------------------------ parts

    @contextlib.asynccontextmanager
    async def broker(self) -> AsyncIterator[str]:
        want = self.options.broker
        has_mosquitto = shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
        if want == "mosquitto" or (want == "auto" and has_mosquitto):
            broker = Mosquitto(workdir=self.workdir / "mosquitto")
            broker.workdir.mkdir(exist_ok=True)  # type: ignore[union-attr]
            broker.start()
            try:
                yield broker.url
            finally:
                broker.stop()
            return
        async with embedded_broker() as url:
            yield url

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        logfile = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitalgate", *args],
            env={**os.environ, **env},
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.base_url + path, headers={"x-api-key": self.api_key})
        with urllib.request.urlopen(req, timeout=5) as res:
            return json.load(res)["data"]

    def put(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method="PUT",
            headers={"x-api-key": self.api_key, "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as res:
            return json.load(res)["data"]

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        opts = self.options
        self.workdir = Path(opts.data_dir or tempfile.mkdtemp(prefix="vitalgate-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        scenarios = [SCENARIO_MIX[i % len(SCENARIO_MIX)] for i in range(opts.patients)]
        async with self.broker() as mqtt_url:
            try:
                self.spawn("ingest", ["ingest"], {
                    "VITALGATE_MQTT_URL": mqtt_url,
                    "VITALGATE_HTTP_HOST": "127.0.0.1",
                    "VITALGATE_HTTP_PORT": str(opts.port),
                    "VITALGATE_DATA_DIR": str(self.workdir / "ingest"),
                    "VITALGATE_API_KEY": self.api_key,
                    # the 30 s hold-back of non-rise changes is hours of simulated time at demo
                    # speed: scale it with the speed so the ward follows the patients
                    "VITALGATE_EWS_MIN_INTERVAL_S": f"{max(1.0, 30.0 / opts.speed):g}",
                    "VITALGATE_EWS_TICK_S": "1",
                })
                await asyncio.to_thread(wait_port, "127.0.0.1", opts.port, START_TIMEOUT_S)
                self.spawn("gateway", [
                    "gateway", "run", "--simulate", str(opts.patients),
                    *[arg for name in scenarios for arg in ("--scenario", name)],
                    "--speed", str(opts.speed), "--seed", str(SEED),
                ], {
                    "VITALGATE_MQTT_URL": mqtt_url,
                    "VITALGATE_GATEWAY_ID": opts.gateway_id,
                    "VITALGATE_DATA_DIR": str(self.workdir / "gateway"),
                })
                self.console.print(
                    f"[bold]vitalgate demo[/] · ward dashboard [link]{self.base_url}/[/link] · "
                    f"API key [bold]{self.api_key}[/]\n"
                    f"broker {mqtt_url} · {opts.patients} virtual E86 watches at {opts.speed:g}× "
                    f"· logs in {self.workdir} · Ctrl-C stops"
                )
                return await self.watch(scenarios)
            finally:
                self.stop_all()

    async def watch(self, scenarios: list[str]) -> int:
        opts = self.options
        started = time.monotonic()
        scale2_done: set[str] = set()
        table = Table(title="waiting for the first readings…")
        with Live(table, console=self.console, refresh_per_second=2, transient=False) as live:
            while opts.duration is None or time.monotonic() - started < opts.duration:
                for proc in self.procs:
                    if proc.poll() is not None:
                        cmd = " ".join(str(a) for a in proc.args)  # type: ignore[union-attr]
                        self.console.print(f"[red]a demo process exited ({cmd}); see its log in {self.workdir}[/]")
                        return 1
                try:
                    ward = await asyncio.to_thread(self.get, "/api/ward")
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    log.debug("ward not readable yet: %s", exc)
                else:
                    await self.apply_context(ward, scenarios, scale2_done)
                    table = ward_table(ward, scenarios_by_code(ward, scenarios))
                    live.update(table)
                await asyncio.sleep(REFRESH_S)
        return 0

    async def apply_context(self, ward: dict[str, Any], scenarios: list[str], done: set[str]) -> None:
        """COPD patients are put on SpO2 scale 2, as their clinician would."""
        for code, scenario in scenarios_by_code(ward, scenarios).items():
            if scenario in SCALE2_SCENARIOS and code not in done:
                with contextlib.suppress(urllib.error.URLError, OSError):
                    await asyncio.to_thread(
                        self.put, f"/api/patient/{code}/context",
                        {"consciousness": "A", "on_oxygen": False, "spo2_scale": 2},
                    )
                    done.add(code)


def scenarios_by_code(ward: dict[str, Any], scenarios: list[str]) -> dict[str, str]:
    """user_code → scenario of the demo's patients (patient i of seed SEED wears watch i)."""
    from simulators.physiology import user_code_for  # the demo runs the simulators anyway

    return {user_code_for(SEED, i): name for i, name in enumerate(scenarios)}


def ward_table(ward: dict[str, Any], scenarios: dict[str, str]) -> Table:
    table = Table(title=f"ward · {len(ward.get('patients', []))} patients", expand=False)
    for col in ("patient", "scenario", "NEWS2", "result", "HR", "SpO2", "RR", "SBP", "Temp", "flags"):
        table.add_column(col, justify="right" if col in ("NEWS2", "HR", "SpO2", "RR", "SBP", "Temp") else "left")
    order = {"tinggi": 0, "sedang": 1, "rendah": 2, "normal": 3}
    patients = sorted(
        ward.get("patients", []),
        key=lambda p: (order.get((p.get("ews") or {}).get("result", ""), 4), p["user_code"]),
    )
    for p in patients:
        ews = p.get("ews") or {}
        vit = p.get("vitals") or {}

        def v(name: str, fmt: Callable[[float], str] = "{:.0f}".format, vit: dict[str, Any] = vit) -> str:
            item = vit.get(name)
            return fmt(item["value"]) if item else "–"

        result = ews.get("result", "")
        flags = []
        if ews.get("partial"):
            flags.append("partial")
        device = p.get("device") or {}
        if device and not device.get("connected", True):
            flags.append("disconnected")
        table.add_row(
            p["user_code"], scenarios.get(p["user_code"], ""),
            str(ews.get("point", "–")), f"[{RESULT_STYLE.get(result, '')}]{result or '–'}[/]",
            v("heart_rate"), v("spo2"), v("respiratory_rate"), v("systolic_bp"),
            v("temperature", "{:.1f}".format), " ".join(flags),
        )
    return table


@contextlib.asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """An amqtt broker in this process, for machines without Mosquitto."""
    from amqtt.broker import Broker

    port = port or free_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    try:
        yield f"mqtt://{host}:{port}"
    finally:
        await broker.shutdown()


def _run(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        patients=args.patients, speed=args.speed, port=args.port or free_port(),
        duration=args.duration, data_dir=args.data_dir, broker=args.broker,
    )
    demo = Demo(opts)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        demo.stop_all()
        return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run broker, ingest and a gateway with virtual watches; show the ward")
    p.add_argument("--patients", type=int, default=8, help="virtual E86 watches / patients (default 8)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated time per real second (default 60)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the ward dashboard (0 = any free)")
    p.add_argument("--duration", type=float, default=None, help="stop after SECONDS (default: Ctrl-C)")
    p.add_argument("--data-dir", type=Path, default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto")
    p.set_defaults(func=_run)

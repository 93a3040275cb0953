"""``vitalgate demo``: the whole path on one laptop, in one command.

A broker (Mosquitto when installed, else an embedded amqtt broker), the ingest service on
SQLite in a temporary directory, and a gateway collecting from virtual E86 watches over the
bumble BLE stack (the real gateway code path), each in its own process as in production.
The demo shows a live table of the ward from the ingest service's own REST API.

However the demo ends (Ctrl-C, SIGTERM from a service manager or CI runner, SIGHUP when its
terminal closes, an error, ``--duration``), it stops its children: each runs in its own
session (a terminal's Ctrl-C reaches only the demo, which stops them in order) and, on Linux,
with ``PR_SET_PDEATHSIG``, so even a SIGKILLed demo leaves no broker, ingest or gateway
holding the ports.
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
import socket
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
from rich.text import Text

from ews.score import RESULTS
from vitalgate.broker import Mosquitto, free_port, parent_death_signal, wait_port

log = logging.getLogger(__name__)

#: the scenario of each demo patient in turn (names of simulators/scenarios/*.toml); the first
#: patient is a sepsis already under way, so the demo shows a rise to sedang/tinggi in its
#: first minute at 60x
SCENARIO_MIX = ("sepsis_demo", "stable", "respiratory", "copd", "offwrist", "stable", "fever", "bradycardia")
#: the simulated patients' seed: the gateway's watches and this table agree on who is who
SEED = 0
#: the gateway's bound on ``slots_per_adapter`` (gateway/settings.py)
SLOTS_MAX = 10
#: scenarios whose patients a clinician would put on SpO2 scale 2
SCALE2_SCENARIOS = frozenset({"copd"})
#: how often the live table is refreshed from the API (s)
REFRESH_S = 1.0
#: how long each process may take to start before the demo gives up (s)
START_TIMEOUT_S = 60.0
#: how long each child may take to stop after SIGTERM before it is killed (s): the gateway and
#: ingest each stop in about a second; the bound keeps the whole stop under 10 s
STOP_TIMEOUT_S = 4.0
#: signals that stop the demo cleanly (SIGHUP: its terminal went away)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
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
    #: ingest's store: None = SQLite in the data dir (the default); a postgresql:// URL
    postgres: str | None = None


@dataclass
class Demo:
    options: DemoOptions
    console: Console = field(default_factory=Console)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopped_by: signal.Signals | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    # ------------------------------------------------------------------ parts

    @contextlib.asynccontextmanager
    async def broker(self) -> AsyncIterator[str]:
        want = self.options.broker
        has_mosquitto = shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
        if want == "mosquitto" or (want == "auto" and has_mosquitto):
            broker = Mosquitto(workdir=self.workdir / "mosquitto", die_with_parent=True)
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
            start_new_session=True,  # its own process group: stop_all ends it and its children
            preexec_fn=parent_death_signal(),  # ends with the demo even if the demo is SIGKILLed
        )
        logfile.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop the children one by one, newest first: the gateway (it publishes "offline"
        while ingest still listens), then ingest. Each gets SIGTERM to its process group and
        STOP_TIMEOUT_S to end, then SIGKILL; the broker stops after them."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM: killing it",
                            " ".join(str(a) for a in proc.args[2:4]), STOP_TIMEOUT_S)  # type: ignore[index]
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()

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

    async def main(self) -> int:
        """:meth:`run`, stopped cleanly (exit 0) by SIGTERM, SIGINT or SIGHUP."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: signal.Signals) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
                log.info("%s: stopping the demo", sig.name)
                task.cancel()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop, sig)
        try:
            return await self.run()
        except asyncio.CancelledError:
            if self.stopped_by is None:
                raise
            return 0
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    async def run(self) -> int:
        opts = self.options
        if not port_is_free(opts.port):
            self.console.print(f"[red]port {opts.port} is taken (another demo or ingest?): stop it, "
                               f"or pick another with --port (0 = any free port)[/]")
            return 2
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
                    **({"VITALGATE_DATABASE_URL": opts.postgres} if opts.postgres else {}),
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
                    # the simulated radio has no controller budget: one slot per watch (up to the
                    # setting's bound; beyond it the watches share slots in rotation)
                    "VITALGATE_SLOTS_PER_ADAPTER": str(min(max(opts.patients, 1), SLOTS_MAX)),
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
        labelled: set[str] = set()
        labels = patient_labels(scenarios)
        # Rendered here, on the event loop (auto_refresh=False): rich's refresh thread used to
        # render, and a cell it could not render (markup "[]–[/]" of a patient not yet scored)
        # killed that thread silently, so a terminal showed "0 patients" for the whole run.
        with Live(Table(title="waiting for the first readings…"), console=self.console,
                  auto_refresh=False, transient=False) as live:
            live.refresh()
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
                    await self.label_devices(ward, labels, labelled)
                    live.update(ward_table(ward, labels), refresh=True)
                await asyncio.sleep(REFRESH_S)
        return 0

    async def label_devices(self, ward: dict[str, Any], labels: dict[str, str], done: set[str]) -> None:
        """Name each demo watch after its patient's bed and scenario in the device registry
        (``PUT /api/device/{id}``), so the dashboard shows the label with no change of its own."""
        seen = {p["user_code"] for p in ward.get("patients", []) if p.get("device")}
        todo = {code for code in seen if code in labels and code not in done}
        if not todo:
            return
        try:
            page = await asyncio.to_thread(self.get, "/api/devices?size=500")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("device registry not readable: %s", exc)
            return
        for dev in page.get("data", []):
            code = dev.get("user_code")
            if code in todo:
                name = f"{labels[code]} · {dev.get('device_name', '')}"[:128]
                with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                    await asyncio.to_thread(self.put, f"/api/device/{dev['id']}", {"device_name": name})
                    done.add(code)

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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ingest can listen on ``host:port`` (else the demo would show another program)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def scenarios_by_code(ward: dict[str, Any], scenarios: list[str]) -> dict[str, str]:
    """user_code → scenario of the demo's patients (patient i of seed SEED wears watch i)."""
    from simulators.physiology import user_code_for  # the demo runs the simulators anyway

    return {user_code_for(SEED, i): name for i, name in enumerate(scenarios)}


def patient_labels(scenarios: list[str]) -> dict[str, str]:
    """user_code → a label a person can read: the bed and the scenario (``bed 1 · sepsis``)."""
    from simulators.physiology import user_code_for

    return {user_code_for(SEED, i): f"bed {i + 1} · {name.removesuffix('_demo')}"
            for i, name in enumerate(scenarios)}


#: the table lists the worst result first (tinggi 0 .. normal 3)
RESULT_ORDER = {w: len(RESULTS) - 1 - i for i, w in enumerate(RESULTS)}
NUMERIC = ("NEWS2", "HR", "SpO2", "RR", "SBP", "Temp")


def _int(value: Any) -> int:
    return value if isinstance(value, int) else -1


def ward_table(ward: dict[str, Any], labels: dict[str, str]) -> Table:
    """The ward, worst first. Cells are Text, never markup: data from the API is not parsed."""
    table = Table(title=f"ward · {len(ward.get('patients', []))} patients", expand=False)
    for col in ("patient", "user_code", "NEWS2", "result", "HR", "SpO2", "RR", "SBP", "Temp", "flags"):
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    patients = sorted(
        ward.get("patients", []),
        key=lambda p: (RESULT_ORDER.get((p.get("ews") or {}).get("result", ""), 4),
                       -_int((p.get("ews") or {}).get("point")), str(p.get("user_code"))),
    )
    for p in patients:
        ews = p.get("ews") or {}
        vit = p.get("vitals") or {}

        def v(name: str, fmt: Callable[[float], str] = "{:.0f}".format, vit: dict[str, Any] = vit) -> Text:
            item = vit.get(name)
            return Text(fmt(item["value"]) if item and item.get("value") is not None else "–")

        result = str(ews.get("result") or "")
        flags = []
        if ews.get("partial"):
            flags.append("partial")
        device = p.get("device") or {}
        if device and not device.get("connected", True):
            flags.append("disconnected")
        code = str(p.get("user_code", ""))
        point = ews.get("point")
        table.add_row(
            Text(labels.get(code, "")), Text(code),
            Text("–" if point is None else str(point)), Text(result or "–", style=RESULT_STYLE.get(result, "")),
            v("heart_rate"), v("spo2"), v("respiratory_rate"), v("systolic_bp"),
            v("temperature", "{:.1f}".format), Text(" ".join(flags)),
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
        postgres=args.postgres,
    )
    demo = Demo(opts)
    try:
        return asyncio.run(demo.main())
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 0
    finally:
        demo.stop_all()  # whatever happened above: no child outlives the demo


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run broker, ingest and a gateway with virtual watches; show the ward")
    p.add_argument("--patients", type=int, default=8, help="virtual E86 watches / patients (default 8)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated time per real second (default 60)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port of the ward dashboard (0 = any free)")
    p.add_argument("--duration", type=float, default=None, help="stop after SECONDS (default: Ctrl-C)")
    p.add_argument("--data-dir", type=Path, default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto")
    p.add_argument("--postgres", metavar="URL", default=None,
                   help="store in this PostgreSQL (postgresql://user:pass@host:port/db)"
                        " instead of SQLite in the data dir")
    p.set_defaults(func=_run)

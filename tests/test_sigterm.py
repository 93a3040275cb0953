"""Every long-running command stops on SIGTERM within 10 s, in every state, and leaves no
process behind (DEVELOPERS.md). Real subprocesses (``python -m vitalgate ...``), a real
Mosquitto where a broker is needed, a real socket holding a port where a port is taken.

The 10 s is a bound (the wait's timeout): a command that ignores SIGTERM fails here instead of
hanging a service manager; nothing measures how fast a command stops. Each state waits only
for the log line that says the command reached it, so the file stays short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vitalgate.broker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[1]
#: the bound on stopping after a signal (s)
STOP_BOUND_S = 10.0
#: the bound on reaching a state (s): process start-up on a loaded 2-core runner
REACH_S = 60.0

Tree = set[tuple[int, int]]  # (pid, start time): a pid reused later is not mistaken for ours


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid`` from /proc, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> Tree:
    """Every process below ``root`` now (children in their own session included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out: Tree = set()
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            st = _stat(pid)
            if st is not None:
                out.add((pid, st[2]))
                todo.append(pid)
    return out


def alive(tree: Tree) -> list[str]:
    """The processes of ``tree`` still running (zombies awaiting their reaper count as gone)."""
    left = []
    for pid, start in tree:
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            left.append(f"{pid}: {cmd.strip()}")
    return left


class Command:
    """``python -m vitalgate ARGS`` with its output in a log file the test can wait on."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / f"{args[0]}-{time.monotonic_ns()}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("VITALGATE_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vitalgate", *args], cwd=ROOT,
                                         env={**clean, "COLUMNS": "160", **(env or {})},
                                         stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reach(self, pattern: str, timeout: float = REACH_S) -> re.Match[str]:
        """Wait until the output matches ``pattern`` (the command is in the state it names)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (found := regex.search(self.text())) is None:
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {pattern!r}:\n{self.text()}"
            assert time.monotonic() < deadline, f"never printed {pattern!r}:\n{self.text()}"
            time.sleep(0.1)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``; assert the command and everything it started end within the bound."""
        tree = descendants(self.proc.pid)
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{signal.Signals(sig).name} did not stop {self.proc.args!r} within "
                        f"{STOP_BOUND_S:g} s; it printed:\n{self.text()}")
        deadline = time.monotonic() + STOP_BOUND_S  # a SIGKILLed parent's children end after it
        while (left := alive(tree)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running after {signal.Signals(sig).name}: {left}\n{self.text()}"
        # stopped by its own shutdown, not by the gateway's last-resort re-cancel / exit
        assert "after SIGTERM" not in self.text(), self.text()
        return rc

    def exits_by_itself(self) -> int:
        try:
            return self.proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            return self.stop()

    def kill(self) -> None:
        for pid, _ in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for cmd in started:  # a failed test leaves nothing running either
        cmd.kill()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program holds (listening, as a second gateway or any server would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def down_broker() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there


def run(commands: list[Command], tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Command:
    cmd = Command(list(args), tmp_path, env)
    commands.append(cmd)
    return cmd


# ---------------------------------------------------------------------------- gateway

def gateway(commands: list[Command], tmp_path: Path, url: str, status_port: int = 0) -> Command:
    return run(commands, tmp_path, "gateway", "run", "--simulate", "2", "--interval", "0.5",
               "--mqtt-url", url, "--data-dir", str(tmp_path / "gw"), "--status-port", str(status_port))


def test_gateway_with_its_broker_down(commands: list[Command], tmp_path: Path) -> None:
    gw = gateway(commands, tmp_path, down_broker())
    gw.reach(r"WARNING gateway\.publisher: MQTT broker 127\.0\.0\.1:\d+: .*retrying")
    gw.reach(r"E86 \w+: connected")  # collecting into its buffer meanwhile
    assert gw.stop() == 0


def test_gateway_whose_status_port_is_taken_collects_says_so_and_stops(
    commands: list[Command], tmp_path: Path, mosquitto: Mosquitto, taken_port: int,
) -> None:
    gw = gateway(commands, tmp_path, mosquitto.url, taken_port)
    gw.reach(rf"WARNING gateway\.status: status endpoint http://127\.0\.0\.1:{taken_port}/healthz "
             r"not available")
    gw.reach(r"INFO gateway\.publisher: connected to MQTT broker")
    gw.reach(r"E86 \w+: connected")
    assert gw.stop() == 0


def test_gateway_while_its_watches_are_connecting(commands: list[Command], tmp_path: Path,
                                                  mosquitto: Mosquitto) -> None:
    gw = gateway(commands, tmp_path, mosquitto.url)
    gw.reach(r"INFO gateway\.cli: gateway \S+: MQTT broker")  # logged just before the BLE side starts
    assert gw.stop() == 0


def test_gateway_collecting(commands: list[Command], tmp_path: Path, mosquitto: Mosquitto) -> None:
    gw = gateway(commands, tmp_path, mosquitto.url)
    gw.reach(r"INFO gateway\.publisher: connected to MQTT broker 127\.0\.0\.1")
    gw.reach(r"E86 \w+: connected")
    assert gw.stop() == 0


async def test_gateway_stopper_cancels_again_what_swallowed_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last resort behind the fixes above: a task that swallows one cancellation (as bumble
    made the BLE tasks do) no longer keeps the gateway's TaskGroup, and so the process, alive."""
    from gateway.cli import Stopper

    swallowed = asyncio.Event()
    exits: list[bool] = []

    async def deaf() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # returns normally from the cancelled await, then runs on
        await asyncio.sleep(3600)

    async def gateway_run() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(deaf(), name="deaf ble task")

    main = asyncio.create_task(gateway_run())
    await asyncio.sleep(0)
    stopper = Stopper(main, grace_s=0.2, exit_now=lambda: exits.append(True))
    stopper()  # SIGTERM
    await swallowed.wait()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(main, STOP_BOUND_S)
    stopper.close()
    assert exits == []  # stopped by the second cancel, not by the exit
    assert any("still stopping" in r.getMessage() and "deaf ble task" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")


# ---------------------------------------------------------------------------- ingest

def ingest(commands: list[Command], tmp_path: Path, url: str, port: int) -> Command:
    return run(commands, tmp_path, "ingest", env={
        "VITALGATE_MQTT_URL": url, "VITALGATE_HTTP_HOST": "127.0.0.1", "VITALGATE_HTTP_PORT": str(port),
        "VITALGATE_DATA_DIR": str(tmp_path / "ingest"),
    })


def test_ingest_with_its_broker_down(commands: list[Command], tmp_path: Path) -> None:
    svc = ingest(commands, tmp_path, down_broker(), free_port())
    svc.reach(r"WARNING ingest\.consumer: MQTT broker 127\.0\.0\.1:\d+ not reachable")
    assert svc.stop() == 0


def test_ingest_whose_http_port_is_taken_says_so_and_exits_1(commands: list[Command], tmp_path: Path,
                                                             mosquitto: Mosquitto, taken_port: int) -> None:
    svc = ingest(commands, tmp_path, mosquitto.url, taken_port)
    assert svc.exits_by_itself() == 1
    assert f"cannot serve HTTP on 127.0.0.1:{taken_port}" in svc.text()
    assert "Traceback" not in svc.text()


def test_ingest_consuming(commands: list[Command], tmp_path: Path, mosquitto: Mosquitto) -> None:
    svc = ingest(commands, tmp_path, mosquitto.url, free_port())
    svc.reach(r"INFO ingest\.consumer: MQTT connected to 127\.0\.0\.1:\d+")
    assert svc.stop() == 0


# ---------------------------------------------------------------------------- simulators

def test_simulate_publishing(commands: list[Command], tmp_path: Path, mosquitto: Mosquitto) -> None:
    sim = run(commands, tmp_path, "simulate", "--patients", "3", "--duration", "8h", "--rate", "5",
              "--mqtt-url", mosquitto.url)
    sim.reach(r"INFO simulators\.cli: simulate 3 patients .*MQTT broker 127\.0\.0\.1")
    time.sleep(1.0)  # publishing in real time
    assert sim.stop() == 130  # stopped before its end, as by Ctrl-C


def test_simulate_whose_broker_went_away(commands: list[Command], tmp_path: Path,
                                        mosquitto: Mosquitto) -> None:
    # found by hand: closing waited up to 30 s for acknowledgements no broker could send
    sim = run(commands, tmp_path, "simulate", "--patients", "3", "--duration", "8h", "--rate", "5",
              "--mqtt-url", mosquitto.url)
    sim.reach(r"INFO simulators\.cli: simulate 3 patients .*MQTT broker 127\.0\.0\.1")
    time.sleep(1.0)
    mosquitto.stop()
    time.sleep(1.0)  # publishing into paho's queue, the connection lost
    assert sim.stop() == 130


def test_simulate_with_its_broker_down(commands: list[Command], tmp_path: Path) -> None:
    sim = run(commands, tmp_path, "simulate", "--patients", "1", "--mqtt-url", down_broker())
    assert sim.exits_by_itself() == 1


def test_replay_replaying(commands: list[Command], tmp_path: Path, mosquitto: Mosquitto) -> None:
    # the sample spans hours and replays in its own timing (speed 1): it is mid-replay when stopped
    rep = run(commands, tmp_path, "replay", str(ROOT / "config" / "sample-vitals.csv"),
              "--speed", "1", "--mqtt-url", mosquitto.url)
    rep.reach(r"INFO simulators\.cli: replay \d+ tracks .*MQTT broker 127\.0\.0\.1")
    time.sleep(1.0)
    assert rep.stop() == 130


def test_replay_through_virtual_watches(commands: list[Command], tmp_path: Path,
                                        mosquitto: Mosquitto) -> None:
    rep = run(commands, tmp_path, "replay", str(ROOT / "config" / "sample-vitals.csv"), "--virtual-watches",
              "--speed", "1", "--mqtt-url", mosquitto.url, "--data-dir", str(tmp_path / "gw"))
    rep.reach(r"E86 \w+: connected")  # the in-process gateway collects from the watches
    assert rep.stop() == 130


def test_record_recording(commands: list[Command], tmp_path: Path, mosquitto: Mosquitto) -> None:
    out = tmp_path / "rec.jsonl"
    rec = run(commands, tmp_path, "record", "--out", str(out), "--mqtt-url", mosquitto.url)
    rec.reach(r"INFO simulators\.cli: record to .*MQTT broker 127\.0\.0\.1")
    time.sleep(1.0)
    assert rec.stop() == 0  # a recording always ends this way: it closes its file and says so
    assert "recorded 0 readings" in rec.text()


# ---------------------------------------------------------------------------- demo

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_demo_ends_its_children_however_it_ends(commands: list[Command], tmp_path: Path, sig: int) -> None:
    """Mosquitto, ingest and the gateway end with the demo, and its ports are free again; a
    SIGKILLed demo cannot stop them itself: PR_SET_PDEATHSIG does."""
    port = free_port()
    demo = run(commands, tmp_path, "demo", "--patients", "2", "--port", str(port),
               "--data-dir", str(tmp_path / "demo"))
    demo.reach(r"ward dashboard")  # printed once broker and ingest are up and the gateway started
    deadline = time.monotonic() + REACH_S
    while len(descendants(demo.proc.pid)) < 3:  # mosquitto, ingest, gateway
        assert time.monotonic() < deadline, f"the demo's children never all ran:\n{demo.text()}"
        time.sleep(0.1)
    rc = demo.stop(sig)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 0), demo.text()
    with socket.socket() as sock:  # the next demo can have the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_demo_ends_its_children_when_its_duration_is_over(commands: list[Command], tmp_path: Path) -> None:
    demo = run(commands, tmp_path, "demo", "--patients", "1", "--port", "0", "--duration", "3",
               "--data-dir", str(tmp_path / "demo"))
    demo.reach(r"ward dashboard")
    tree = descendants(demo.proc.pid)
    assert len(tree) >= 3, demo.text()
    assert demo.proc.wait(REACH_S) == 0, demo.text()
    assert not alive(tree)


def test_demo_on_a_taken_port_says_so_and_starts_nothing(commands: list[Command], tmp_path: Path,
                                                         taken_port: int) -> None:
    demo = run(commands, tmp_path, "demo", "--port", str(taken_port), "--data-dir", str(tmp_path / "demo"))
    assert demo.exits_by_itself() == 2
    assert f"port {taken_port} is taken" in demo.text()
    assert not (tmp_path / "demo" / "ingest.log").exists()

"""Real processes for the end-to-end suites: ingest, gateways and fleet publishers as
subprocesses (so they can be SIGKILLed), a recording MQTT subscriber, and the accounting that
reads the stores afterwards.

Nothing here is mocked: every part is the shipped CLI (``python -m vitalgate ...``) talking to a
real Mosquitto over loopback, and the accounting reads the real SQLite files.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from vitalgate.broker import free_port
from vitalgate.contract import Topics, decode_readings

ROOT = Path(__file__).resolve().parents[2]


class E2EError(AssertionError):
    pass


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``pred`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise E2EError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One ``python -m vitalgate ...`` subprocess with its output in ``logdir``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logdir: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Proc:
        self.starts += 1
        out = (self.logdir / f"{self.name}.{self.starts}.out").open("wb")
        err = (self.logdir / f"{self.name}.{self.starts}.err").open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "vitalgate", *self.argv], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        out.close()
        err.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def sigkill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stdout(self) -> str:
        return (self.logdir / f"{self.name}.{self.starts}.out").read_text(errors="replace")

    def stderr_tail(self, n: int = 2000) -> str:
        text = ""
        for i in range(1, self.starts + 1):
            path = self.logdir / f"{self.name}.{i}.err"
            if path.exists():
                text += f"--- {path.name}\n" + path.read_text(errors="replace")
        return text[-n:]


def ingest_proc(logdir: Path, name: str, *, mqtt_url: str, data_dir: Path, client_id: str,
                upstream_url: str | None = None, upstream_key: str | None = None,
                shared_group: str | None = None, http_port: int = 0,
                extra_env: dict[str, str] | None = None) -> tuple[Proc, int]:
    """``vitalgate ingest`` with its own data dir and fixed client id; returns (proc, http port)."""
    port = http_port or free_port()
    env = {
        "VITALGATE_MQTT_URL": mqtt_url,
        "VITALGATE_MQTT_CLIENT_ID": client_id,
        "VITALGATE_HTTP_HOST": "127.0.0.1",
        "VITALGATE_HTTP_PORT": str(port),
        "VITALGATE_DATA_DIR": str(data_dir),
        "VITALGATE_API_KEY": "e2e-key",
        # the default FULL fsyncs every group commit; NORMAL still survives SIGKILL (the
        # faults here are process crashes, not power cuts) and spares the shared disk.
        "VITALGATE_SQLITE_SYNCHRONOUS": "NORMAL",
        **({"VITALGATE_UPSTREAM_URL": upstream_url} if upstream_url else {}),
        **({"VITALGATE_UPSTREAM_API_KEY": upstream_key} if upstream_key else {}),
        **({"VITALGATE_SHARED_GROUP": shared_group} if shared_group else {}),
        **(extra_env or {}),
    }
    return Proc(name, ["ingest"], env, logdir), port


def gateway_proc(logdir: Path, gateway_id: str, *, mqtt_url: str, data_dir: Path, watches: int,
                 speed: float, interval_s: float, seed: int, scenarios: Iterable[str]) -> Proc:
    argv = ["gateway", "run", "--simulate", str(watches), "--speed", f"{speed:g}",
            "--interval", f"{interval_s:g}", "--seed", str(seed), "--status-port", "0",
            "--gateway-id", gateway_id, "--mqtt-url", mqtt_url, "--data-dir", str(data_dir)]
    for s in scenarios:
        argv += ["--scenario", s]
    return Proc(gateway_id, argv, {}, logdir)


def fleet_proc(logdir: Path, gateway_id: str, *, mqtt_url: str, patients: int, scenarios: str,
               speed: float, duration: str, seed: int, rate_s: float = 60.0) -> Proc:
    argv = ["simulate", "--patients", str(patients), "--scenario", scenarios, "--speed", f"{speed:g}",
            "--duration", duration, "--seed", str(seed), "--rate", f"{rate_s:g}",
            "--broker", mqtt_url, "--gateway-id", gateway_id]
    return Proc(gateway_id, argv, {}, logdir)


def http_json(url: str, api_key: str | None = "e2e-key", timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"x-api-key": api_key} if api_key else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def healthy(port: int) -> bool:
    try:
        body = http_json(f"http://127.0.0.1:{port}/healthz", api_key=None, timeout=2.0)
    except (OSError, ValueError):
        return False
    data = body.get("data", body) if isinstance(body, dict) else {}
    return bool(data.get("mqtt", {}).get("connected"))


# ------------------------------------------------------------------------------- recorder


class Recorder:
    """A paho subscriber with a PERSISTENT session (fixed client id, clean_session=False, QoS 1)
    on every reading topic: the broker keeps what it could not deliver while the broker itself
    restarts, so the recorder is an independent witness of what the publishers got onto the
    broker. Its callback only appends raw bytes; decoding happens after the run."""

    def __init__(self, url: str, client_id: str, prefix: str = "vitals/v1") -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.host, self.port = host, int(port)
        self.topic = f"{prefix}/+/+/reading"
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(  # type: ignore[call-arg, unused-ignore]
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv311, clean_session=False,
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def start(self) -> Recorder:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise E2EError("recorder: no SUBACK")
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def readings(self) -> dict[tuple[str, int], dict[str, float]]:
        """(device_id, seq) → vitals; a redelivered duplicate must carry the same vitals."""
        topics = Topics()
        out: dict[tuple[str, int], dict[str, float]] = {}
        with self._lock:
            messages = list(self.messages)
        for topic, payload in messages:
            t = topics.parse(topic)
            batch = decode_readings(payload)
            if batch.errors:
                raise E2EError(f"{topic}: a publisher sent invalid readings: {batch.errors[:3]}")
            for r in batch.readings:
                key = (r.device_id, r.seq)
                vitals = r.vitals.present()
                if key in out and out[key] != vitals:
                    raise E2EError(f"{key}: seq reused with different vitals {out[key]} vs {vitals}")
                out[key] = vitals
                assert t.device_id == r.device_id
        return out


# ------------------------------------------------------------------------------- accounting


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def stored_rows(db: Path) -> list[tuple[str, int, str]]:
    """(device_id, seq, vital) of every stored reading with a seq (ECG-derived ones have none)."""
    with ro(db) as c:
        return [(str(d), int(s), str(v)) for d, s, v in
                c.execute("SELECT device_id, seq, vital FROM readings WHERE seq IS NOT NULL")]


def sequenced_count(db: Path) -> int:
    """Stored readings with a seq (each (device, seq, vital) at most once: the identity)."""
    with ro(db) as c:
        return int(c.execute("SELECT COUNT(*) FROM readings WHERE seq IS NOT NULL").fetchone()[0])


def stored_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with ro(db) as c:
            return int(c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    except sqlite3.Error:
        return -1


def outbox_pending(ews_db: Path) -> int:
    if not ews_db.exists():
        return 0
    try:
        with ro(ews_db) as c:
            return int(c.execute("SELECT COUNT(*) FROM ews_outbox WHERE state='pending'").fetchone()[0])
    except sqlite3.Error:
        return -1


def gateway_counters(buffer_db: Path) -> tuple[dict[str, int], int, int]:
    """(device_id → next_seq, rows still buffered, evicted readings) of a gateway's buffer."""
    with ro(buffer_db) as c:
        seqs = {str(d): int(n) for d, n in c.execute("SELECT device_id, next_seq FROM device_seq")}
        # acknowledged readings the gateway keeps for `republish` are not "still buffered"
        rows = int(c.execute("SELECT COUNT(*) FROM outbox WHERE kind=0 AND acked_ms IS NULL").fetchone()[0])
        counters = dict(c.execute("SELECT name, value FROM counters").fetchall())
    evicted = int(counters.get("evicted_reading", 0))
    return seqs, rows, evicted


@dataclass
class Accounting:
    """Generated vs stored, per device and per vital, from the sequence numbers."""

    generated: set[tuple[str, int, str]]
    stored: list[tuple[str, int, str]]
    #: per device: the number of seqs its producer says it handed out (0..n-1)
    produced_seq: dict[str, int]
    origin: dict[str, str] = field(default_factory=dict)  # device → fleet/gateway id

    @property
    def stored_set(self) -> set[tuple[str, int, str]]:
        return set(self.stored)

    @property
    def duplicates(self) -> int:
        return len(self.stored) - len(self.stored_set)

    @property
    def missing(self) -> set[tuple[str, int, str]]:
        return self.generated - self.stored_set

    @property
    def extra(self) -> set[tuple[str, int, str]]:
        return self.stored_set - self.generated

    def seq_gaps(self) -> dict[str, list[int]]:
        """Per device: seqs in 0..produced-1 that reached no store (at most 10 listed)."""
        have: dict[str, set[int]] = defaultdict(set)
        for d, s, _ in self.stored_set:
            have[d].add(s)
        gaps: dict[str, list[int]] = {}
        for d, n in self.produced_seq.items():
            missing = [s for s in range(n) if s not in have[d]]
            extra_high = [s for s in have[d] if s >= n]
            if missing or extra_high:
                gaps[d] = (missing + extra_high)[:10]
        return gaps

    def by_vital(self) -> dict[str, tuple[int, int]]:
        gen = Counter(v for _, _, v in self.generated)
        st = Counter(v for _, _, v in self.stored_set)
        return {v: (gen[v], st[v]) for v in sorted(set(gen) | set(st))}

    def by_origin(self) -> dict[str, tuple[int, int, int, int]]:
        """origin → (devices, seqs produced, readings generated, readings stored)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for d, n in self.produced_seq.items():
            row = out[self.origin.get(d, "?")]
            row[0] += 1
            row[1] += n
        for d, _, _ in self.generated:
            out[self.origin.get(d, "?")][2] += 1
        for d, _, _ in self.stored_set:
            out[self.origin.get(d, "?")][3] += 1
        return {k: (v[0], v[1], v[2], v[3]) for k, v in sorted(out.items())}


def expand(readings: dict[tuple[str, int], dict[str, float]]) -> set[tuple[str, int, str]]:
    return {(d, s, v) for (d, s), vitals in readings.items() for v in vitals}


def table(headers: list[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table (what the test prints and docs/reliability.md quotes)."""
    cells = [[str(x) for x in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells)])


# ------------------------------------------------------------------------------- upstream


class UpstreamThread:
    """tests.ingest.upstream.Upstream (the local Cexup stand-in) on its own event loop in a
    thread, so a synchronous test can drive processes while the stub keeps answering."""

    def __init__(self) -> None:
        import asyncio

        from tests.ingest.upstream import Upstream

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.stub = Upstream()
        self._thread = threading.Thread(target=self.loop.run_forever, name="upstream", daemon=True)

    def _call(self, coro: Any) -> Any:
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def start(self) -> UpstreamThread:
        self._thread.start()
        self._call(self.stub.start())
        return self

    def stop(self) -> None:
        try:
            self._call(self.stub.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def down(self) -> None:
        self._call(self.stub.go_down())

    def up(self) -> None:
        self._call(self.stub.come_up())

    def fail(self, status: int) -> None:
        self.loop.call_soon_threadsafe(lambda: self.stub.fail(status, times=None))

    def heal(self) -> None:
        self.loop.call_soon_threadsafe(self.stub.heal)

    def slow(self, delay_s: float) -> None:
        self.loop.call_soon_threadsafe(setattr, self.stub, "delay_s", delay_s)

    def snapshot(self) -> tuple[list[Any], list[int]]:
        """(accepted bodies, status of every request) as of now."""
        async def grab() -> tuple[list[Any], list[int]]:
            return list(self.stub.accepted), [r.status for r in self.stub.requests]
        result: tuple[list[Any], list[int]] = self._call(grab())
        return result


def canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass
class EwsAccounting:
    produced: int  # ews_history rows scored here (source vitalgate)
    outbox: Counter[str]  # canonical body → rows in the outbox for those points
    states: Counter[str]  # outbox state → rows
    unqueued: int  # produced points without an outbox row
    accepted: Counter[str]  # canonical body → times the upstream accepted it
    requests: Counter[int]  # HTTP status → requests the upstream answered

    @property
    def duplicates(self) -> Counter[str]:
        return self.accepted - self.outbox

    @property
    def undelivered(self) -> Counter[str]:
        return self.outbox - self.accepted

    @property
    def foreign(self) -> int:
        """Accepted bodies that match no outbox row at all (must be 0)."""
        return sum(n for body, n in self.accepted.items() if body not in self.outbox)


def ews_accounting(ews_dbs: Iterable[Path], accepted: list[Any], statuses: list[int]) -> EwsAccounting:
    produced = unqueued = 0
    outbox: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for path in ews_dbs:
        with ro(path) as c:
            produced += int(c.execute(
                "SELECT COUNT(*) FROM ews_history WHERE source='vitalgate'").fetchone()[0])
            unqueued += int(c.execute(
                "SELECT COUNT(*) FROM ews_history h WHERE source='vitalgate' AND NOT EXISTS"
                " (SELECT 1 FROM ews_outbox o WHERE o.history_id = h.id)").fetchone()[0])
            for body, state in c.execute(
                    "SELECT o.body, o.state FROM ews_outbox o JOIN ews_history h ON h.id = o.history_id"
                    " WHERE h.source='vitalgate'"):
                outbox[canonical(json.loads(body))] += 1
                states[str(state)] += 1
    return EwsAccounting(produced, outbox, states, unqueued,
                         Counter(canonical(b) for b in accepted), Counter(statuses))


def gateway_pending(buffer_db: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Readings still in a gateway's store-and-forward buffer (not yet acknowledged by the
    broker): not lost, they go out on the gateway's next connection."""
    from vitalgate.contract import Reading

    out: dict[tuple[str, int], dict[str, float]] = {}
    with ro(buffer_db) as c:
        # only unacknowledged rows: acknowledged ones kept for `republish` must not hide a loss
        for payload, in c.execute("SELECT payload FROM outbox WHERE kind=0 AND acked_ms IS NULL"):
            r = Reading.model_validate_json(payload)
            out[(r.device_id, r.seq)] = r.vitals.present()
    return out


def wait_stable(read: Callable[[], tuple[Any, ...]], *, settle_s: float, timeout: float, what: str,
                done: Callable[[tuple[Any, ...]], bool] = lambda _: True) -> tuple[Any, ...]:
    """Poll ``read`` until it returns the same value for ``settle_s`` and ``done`` holds."""
    deadline = time.monotonic() + timeout
    last = read()
    since = time.monotonic()
    while True:
        time.sleep(0.5)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif done(now) and time.monotonic() - since >= settle_s:
            return now
        if time.monotonic() > deadline:
            raise E2EError(f"timed out after {timeout:.0f}s waiting for {what} (last: {now})")


class Monitor:
    """Polls ingest's /healthz and /metrics every ``interval`` s into a log file (diagnostics:
    when did the consumer stall, how deep was its queue)."""

    KEEP = ("queue_full", "queue_depth", "duplicates_total", "mqtt_connected", "outbox{",
            'messages_total{kind="reading"}')

    def __init__(self, ports: list[int], path: Path, interval: float = 2.0) -> None:
        self.ports, self.path, self.interval = ports, path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def _run(self) -> None:
        with self.path.open("a") as f:
            while not self._stop.wait(self.interval):
                for port in self.ports:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                            text = r.read().decode()
                        kept = [ln for ln in text.splitlines()
                                if not ln.startswith("#") and any(k in ln for k in self.KEEP)]
                        line = " ".join(ln.replace("vitalgate_ingest_", "") for ln in kept)
                    except (OSError, ValueError) as exc:
                        line = f"unreachable ({exc.__class__.__name__})"
                    f.write(f"{time.monotonic() - self.t0:7.1f} :{port} {line}\n")
                    f.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------- gaps (issue 12)


def stored_seqs(db: Path) -> dict[tuple[str, str], set[int]]:
    """(device_id, stream) → the distinct seqs stored (any vital)."""
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    with ro(db) as c:
        for d, st, s in c.execute("SELECT DISTINCT device_id, stream, seq FROM readings"
                                  " WHERE seq IS NOT NULL"):
            out[(str(d), str(st))].add(int(s))
    return dict(out)


def gap_seqs(db: Path) -> dict[tuple[str, str], set[int]]:
    """(device_id, stream) → the seqs ingest reports missing (its open gaps)."""
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    with ro(db) as c:
        for d, st, lo, hi in c.execute("SELECT device_id, stream, from_seq, to_seq FROM seq_gaps"):
            out[(str(d), str(st))].update(range(int(lo), int(hi) + 1))
    return dict(out)


def gap_accounting(generated: dict[str, int], db: Path,
                   pending: dict[str, set[int]] | None = None) -> dict[str, int]:
    """Per device seqs 0..n-1 generated: each is stored, reported as a gap, or still in a
    gateway buffer; returns the figures and ``silent``: seqs in none of them."""
    stored = stored_seqs(db)
    gaps = gap_seqs(db)
    figures = {"generated": 0, "stored": 0, "reported_gaps": 0, "still_buffered": 0, "silent": 0,
               "both_stored_and_gap": 0}
    for device_id, n in generated.items():
        got = set().union(*(v for (d, _), v in stored.items() if d == device_id))
        gap = set().union(*(v for (d, _), v in gaps.items() if d == device_id))
        buffered = (pending or {}).get(device_id, set())
        for seq in range(n):
            figures["generated"] += 1
            if seq in got:
                figures["stored"] += 1
                figures["both_stored_and_gap"] += seq in gap
            elif seq in gap:
                figures["reported_gaps"] += 1
            elif seq in buffered:
                figures["still_buffered"] += 1
            else:
                figures["silent"] += 1
    return figures


def metric(port: int, name: str) -> float:
    """One sample of ingest's /metrics (exact name with labels), 0 when absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0

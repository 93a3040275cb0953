"""Ingest on PostgreSQL with several instances (issue 13), in one run:

* readings/s committed with EWS scoring on: SQLite (one process, the baseline) vs PostgreSQL
  with one instance and with two instances on one MQTT shared subscription;
* publish → EWS latency (p50/p99), 1,000 patients at one reading per second each: SQLite and
  PostgreSQL with one instance (the baselines), PostgreSQL with two;
* failover: SIGKILL one of two instances under that load; time until its partitions are
  owned again (lease log, database clock) and scored again (first fenced emission).

    python -m benchmarks.instances            # 30 000 readings; 30 s latency; failover
    python -m benchmarks.instances --quick    # 10 000 readings; 15 s

Every instance is a real ``python -m vitalgate ingest`` process; the publisher and the EWS
subscriber are child processes of :mod:`benchmarks.ingest` (same roles). A rate is the
readings committed (rows counted in the store) over the time from the first publish to the
last commit. The machine is shared (2 cores): compare ratios within the run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from benchmarks.load_options import load_parser
from vitalgate.broker import Mosquitto, free_port, wait_port
from vitalgate.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
VITALS_PER_READING = 3  # the burst and steady roles send heart rate, SpO2, respiratory rate


def _ingest(name: str, data: Path, mqtt_url: str, db_url: str | None, *,
            group: str | None, extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITALGATE_MQTT_URL": mqtt_url,
           "VITALGATE_HTTP_PORT": str(port), "VITALGATE_HTTP_HOST": "127.0.0.1",
           "VITALGATE_DATA_DIR": str(data), "VITALGATE_INSTANCE_ID": name,
           "VITALGATE_SQLITE_SYNCHRONOUS": "NORMAL",
           **({"VITALGATE_DATABASE_URL": db_url} if db_url else {}),
           **({"VITALGATE_SHARED_GROUP": group} if group else {}), **(extra or {})}
    log = (data.parent / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], cwd=ROOT, env=env,
                            stdout=log, stderr=log)
    wait_port("127.0.0.1", port, timeout=60)
    return proc, port


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _role(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.ingest", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _count(db: Path | str) -> int:
    if isinstance(db, Path):
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
            return int(c.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    with psycopg.connect(db, autocommit=True) as c:
        row = c.execute("SELECT COUNT(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


def _pg_one(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(sql).fetchone()
        return None if row is None else row[0]


def throughput(tmp: Path, broker: Mosquitto, pg: PostgresServer, label: str, *, engine: str,
               instances: int, n: int) -> dict[str, float]:
    db_url = pg.create_database(f"bench_{label}") if engine == "postgres" else None
    group = "bench" if instances > 1 else None
    procs = []
    try:
        for i in range(instances):
            data = tmp / f"{label}-{i}"
            data.mkdir()
            proc, _ = _ingest(f"{label}-{i}", data, broker.url, db_url, group=group,
                              extra={"VITALGATE_MQTT_CLIENT_ID": f"bench-{label}-{i}"})
            procs.append(proc)
        time.sleep(3.0 if engine == "postgres" else 1.5)  # connected, partitions leased
        target = n * VITALS_PER_READING
        where: Path | str = db_url if db_url else tmp / f"{label}-0" / "ingest.sqlite3"
        pub = _role("--role", "burst", "--port", str(broker.port), "--n", str(n),
                    "--patients", "500", "--per-msg", "1")
        deadline = time.monotonic() + 600
        got = 0
        while got < target and time.monotonic() < deadline:
            time.sleep(0.05)
            got = _count(where)
        committed_at = time.time() * 1000
        out = json.loads(pub.communicate()[0])
        seconds = (committed_at - out["start"]) / 1000
        return {"readings": n, "rows": got, "seconds": seconds, "rate": n / seconds}
    finally:
        _stop(procs)
        if db_url:
            pg.drop_database(f"bench_{label}")


#: what the latency runs change from the defaults: every reading is scored on its own
#: (median of one) and every change is emitted (no rate limit), so each reading gives one EWS.
LATENCY_ENV = {"VITALGATE_MEDIAN_K": "1", "VITALGATE_EWS_MIN_INTERVAL_S": "0"}


def _start_latency(tmp: Path, broker: Mosquitto, label: str, db_url: str | None,
                   instances: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(instances):
        data = tmp / f"{label}-{i}"
        data.mkdir()
        proc, _ = _ingest(f"{label}-{i}", data, broker.url, db_url,
                          group=label if instances > 1 else None,
                          extra={**LATENCY_ENV, "VITALGATE_MQTT_CLIENT_ID": f"bench-{label}-{i}"})
        procs.append(proc)
    time.sleep(4.0)  # connected, partitions leased and warm-started
    return procs


def _measure_latency(broker: Mosquitto, patients: int, seconds: int) -> dict[str, Any]:
    sub = _role("--role", "ews", "--port", str(broker.port), "--seconds", str(seconds))
    assert sub.stdout is not None
    sub.stdout.readline()
    pub = _role("--role", "steady", "--port", str(broker.port), "--patients", str(patients),
                "--seconds", str(seconds))
    sent = json.loads(pub.communicate()[0])["sent"]
    lat = np.array(json.loads(sub.communicate()[0].splitlines()[-1]))
    return {"sent": sent, "ews": len(lat), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


def latency(tmp: Path, broker: Mosquitto, pg: PostgresServer, label: str, *, engine: str,
            patients: int, seconds: int) -> dict[str, Any]:
    """Publish → EWS with one instance (the baselines of the two-instance figure)."""
    db_url = pg.create_database(f"bench_{label}") if engine == "postgres" else None
    procs = _start_latency(tmp, broker, label, db_url, 1)
    try:
        return _measure_latency(broker, patients, seconds)
    finally:
        _stop(procs)
        if db_url:
            pg.drop_database(f"bench_{label}")


def latency_and_failover(tmp: Path, broker: Mosquitto, pg: PostgresServer, *, patients: int,
                         seconds: int) -> dict[str, Any]:
    db_url = pg.create_database("bench_latency")
    procs = _start_latency(tmp, broker, "lat", db_url, 2)
    try:
        result = _measure_latency(broker, patients, seconds)
        # failover under the same load: kill lat-0, measure on the database's clock
        pub = _role("--role", "steady", "--port", str(broker.port), "--patients", str(patients),
                    "--seconds", "40")
        time.sleep(8)
        held = {int(p) for (p,) in _rows(db_url, "SELECT part FROM partition_leases"
                                                 " WHERE owner = 'lat-0'")}
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        killed = int(_pg_one(db_url, "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000"
                                     " AS BIGINT)"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owned = _rows(db_url, "SELECT part, acquired_at, first_emit_at FROM partition_lease_log"
                                  f" WHERE owner = 'lat-1' AND acquired_at > {killed}")
            if {int(p) for p, _, _ in owned} >= held:
                break
            time.sleep(0.2)
        time.sleep(3)
        owned = _rows(db_url, "SELECT part, acquired_at, first_emit_at FROM partition_lease_log"
                              f" WHERE owner = 'lat-1' AND acquired_at > {killed}")
        taken = [int(a) - killed for p, a, _ in owned if int(p) in held]
        scored = [int(e) - killed for p, _, e in owned if int(p) in held and e is not None]
        pub.communicate()
        result.update({"partitions": len(held), "taken": len(taken),
                       "owned_again_max_s": max(taken) / 1000 if taken else float("nan"),
                       "owned_again_median_s": float(np.median(taken)) / 1000 if taken else float("nan"),
                       "scored_again_median_s": float(np.median(scored)) / 1000 if scored else float("nan"),
                       "scored_again_max_s": max(scored) / 1000 if scored else float("nan")})
        return result
    finally:
        _stop(procs)
        pg.drop_database("bench_latency")


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return list(c.execute(sql.encode()).fetchall())


def main() -> None:
    parser = load_parser(__doc__, n=30_000, patients=1000, seconds=30)
    args = parser.parse_args()
    if args.quick:
        args.n, args.seconds = 10_000, 15
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workdir = Path(tempfile.mkdtemp(prefix="vitalgate-bench-postgres-"))
        workdir.chmod(0o755)
        pg = PostgresServer(workdir=workdir, fsync=False)
        broker = Mosquitto(workdir=tmp / "mq")
        broker.workdir.mkdir()  # type: ignore[union-attr]
        pg.start()
        try:
            with broker:
                rows = []
                for label, engine, k in (("sqlite1", "sqlite", 1), ("pg1", "postgres", 1),
                                         ("pg2", "postgres", 2)):
                    t = throughput(tmp, broker, pg, label, engine=engine, instances=k, n=args.n)
                    rows.append((label, engine, k, t))
                base = rows[0][3]["rate"]
                print(f"committed readings/s, {args.n} QoS 1 readings (3 vitals each, 500"
                      " patients, EWS scoring on), every instance a process:")
                for _label, engine, k, t in rows:
                    print(f"  {engine:8s} × {k} instance(s)  {t['rate']:8.0f} readings/s"
                          f"  ({t['rate'] / base:.2f} × SQLite)  [{t['seconds']:.1f} s,"
                          f" {t['rows']} rows]")
                print(f"publish → EWS on MQTT, {args.patients} patients × 1 reading/s ×"
                      f" {args.seconds} s:")
                runs = [(f"{engine} × 1", latency(tmp, broker, pg, f"lat{engine}", engine=engine,
                                                  patients=args.patients, seconds=args.seconds))
                        for engine in ("sqlite", "postgres")]
                lat = latency_and_failover(tmp, broker, pg, patients=args.patients,
                                           seconds=args.seconds)
                runs.append(("postgres × 2", lat))
                base_p99 = runs[0][1]["p99_ms"]
                for name, r in runs:
                    print(f"  {name:13s} sent {r['sent']}, EWS {r['ews']}: p50 {r['p50_ms']:.1f} ms"
                          f"   p99 {r['p99_ms']:.1f} ms ({r['p99_ms'] / base_p99:.1f} × SQLite)"
                          f"   max {r['max_ms']:.1f} ms")
                print(f"failover (SIGKILL one of two, lease 10 s): {lat['taken']} of"
                      f" {lat['partitions']} partitions owned again after median"
                      f" {lat['owned_again_median_s']:.1f} s, max {lat['owned_again_max_s']:.1f} s;"
                      f" scored again (first emission) median {lat['scored_again_median_s']:.1f} s,"
                      f" max {lat['scored_again_max_s']:.1f} s")
        finally:
            pg.remove()


if __name__ == "__main__":
    main()

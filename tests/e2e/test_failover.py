"""Three ingest processes on one PostgreSQL and one MQTT shared subscription, 200 fleet
patients; SIGKILL one instance mid-stream, later a second, then restart both (issue 13).

Real parts: ``python -m vitalgate ingest`` processes, a private Mosquitto, a private
PostgreSQL 15, a local upstream HTTP server standing in for Cexup, the fleet simulator. A
fourth ingest process (SQLite, its own non-shared subscription) receives the very same stream
at the same time: the single-instance reference for the EWS histories.

Figures printed (``pytest -m e2e tests/e2e/test_failover.py -s``) and asserted:

* every (device, stream, seq, vital) the broker carried is stored exactly once;
* never two instances scoring the same patient: the lease log's ownership periods of each
  partition, and the emissions fenced under each, never overlap;
* no duplicate EWS point, and no history differs from the single-instance run's before the
  first kill;
* every patient's EWS history equals the single-instance run's (an xfail, not strict: on a
  machine that keeps up 0-2 of 200 still differ, some runs none: a held change released by a
  pause in the patient's data, which counts processing time from the last reading's arrival,
  and that reading came late through an adopted session; on an overloaded machine the lone
  survivor receives readings later than the feed's 20 s hold and they are scored late, which
  re-deriving history would fix and is not built. Each differing patient is classified by its
  first difference (duplicate, no failure, during the outage, after the restart; near a
  handover), the figures printed and its histories, readings and ownership written to
  differences.json);
* every EWS point reached the upstream;
* time from each kill to the dead instance's partitions being owned, and scored, again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.db import leases
from ingest.ownership import PARTITIONS, partition_of
from tests.e2e.harness import (
    E2EError,
    Proc,
    Recorder,
    expand,
    fleet_proc,
    healthy,
    http_json,
    ingest_proc,
    table,
    wait_for,
    wait_stable,
)
from tests.ingest.upstream import Upstream
from vitalgate.broker import Mosquitto
from vitalgate.postgres import PostgresServer

pytestmark = pytest.mark.e2e

PATIENTS = 200
#: one simulated minute per real second: each patient reads once a second (200 messages/s)
SPEED = 60.0
SIM_DURATION = "100m"  # 100 s real
GROUP = "ingest"
INSTANCES = ("ingest-1", "ingest-2", "ingest-3")
LEASE_S = 10.0  # the default: the failover figure is the default's
KILL_1_AT, KILL_2_AT, RESTART_AT = 20.0, 45.0, 65.0
HOLD_S = 5.0
Point = tuple[int, int, str, str]


@dataclass
class Run:
    carried: set[tuple[str, int, str]]
    stored: Counter[tuple[str, int, str]]
    cluster_ews: dict[str, list[tuple[int, int, str, str]]]
    reference_ews: dict[str, list[tuple[int, int, str, str]]]
    history_keys: set[tuple[str, int, int]]
    upstream: Counter[tuple[str, int, int]]
    log: list[leases.Interval]
    kills: dict[str, int]  # instance → the database's clock at its SIGKILL
    fleet_total: int
    started: int = 0  # the database's clock when the stream started
    restarted: int = 0  # ... when the killed instances were started again
    triggers: dict[tuple[str, int, int], str] | None = None  # cluster point → trigger
    feed: dict[str, Any] | None = None  # instance → its /healthz "instance" figures at the end
    stops: dict[str, int | None] | None = None  # process → its exit code after SIGTERM
    stop_tails: dict[str, str] | None = None  # ... its log's tail when that was not 0
    differences: Path | None = None  # the differing patients' details (_dump_differences)


def _pg(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        return list(c.execute(sql, params).fetchall())


def _db_now(url: str) -> int:
    return int(_pg(url, f"SELECT {leases.DB_NOW_MS}")[0][0])


def _ews_rows(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[int, int, str, str]]]:
    out: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for u, t, p, r, k in rows:
        out[str(u)].append((int(t), int(p), str(r), str(k)))
    for v in out.values():
        v.sort()
    return out


def _scenario(tmp: Path, pg_url: str, upstream_url: str, upstream_key: str) -> Run:
    logs = tmp / "logs"
    logs.mkdir()
    broker = Mosquitto(workdir=tmp / "mosquitto")
    broker.workdir.mkdir()  # type: ignore[union-attr]
    broker.start()
    recorder = Recorder(broker.url, "e2e-failover-recorder").start()
    procs: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    # the same policy in every process: a 5 s rate limit, decided on event time while a
    # patient's data pauses less than the grace (above the feed's hold, ingest.feed.HOLD_MS)
    common = {"VITALGATE_EWS_MIN_INTERVAL_S": "5", "VITALGATE_EWS_PAUSE_GRACE_S": "25"}
    try:
        for name in INSTANCES:
            proc, ports[name] = ingest_proc(
                logs, name, mqtt_url=broker.url, data_dir=tmp / name,
                client_id=f"vitalgate-ingest-{name}", shared_group=GROUP,
                upstream_url=upstream_url, upstream_key=upstream_key,
                extra_env={**common, "VITALGATE_DATABASE_URL": pg_url,
                           "VITALGATE_INSTANCE_ID": name, "VITALGATE_LEASE_S": f"{LEASE_S:g}"})
            procs[name] = proc.start()
        ref, ports["reference"] = ingest_proc(logs, "reference", mqtt_url=broker.url,
                                              data_dir=tmp / "reference",
                                              client_id="vitalgate-ingest-reference",
                                              extra_env=common)
        procs["reference"] = ref.start()
        for name in (*INSTANCES, "reference"):
            wait_for(partial(healthy, ports[name]), 90, f"{name} healthy")
        # every instance holds its share before the stream starts
        wait_for(lambda: len(_pg(pg_url, "SELECT DISTINCT owner FROM partition_leases"
                                 " WHERE owner IS NOT NULL")) == len(INSTANCES), 60,
                 "three owners")
        fleet = fleet_proc(logs, "ward-failover", mqtt_url=broker.url, patients=PATIENTS,
                           scenarios="stable,sepsis,respiratory,fever", speed=SPEED,
                           duration=SIM_DURATION, seed=1313)
        procs["fleet"] = fleet.start()
        t0 = time.monotonic()
        started = _db_now(pg_url)
        kills: dict[str, int] = {}
        for name, at in ((INSTANCES[0], KILL_1_AT), (INSTANCES[1], KILL_2_AT)):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            procs[name].sigkill()
            kills[name] = _db_now(pg_url)
        time.sleep(max(0.0, t0 + RESTART_AT - time.monotonic()))
        restarted = _db_now(pg_url)
        for name in kills:
            procs[name].start()
        assert fleet.wait(240) == 0, fleet.stderr_tail()
        total = int(fleet.stdout().split(" readings in ")[0].rsplit(" ", 1)[1])

        def counts() -> tuple[Any, ...]:
            return (recorder.count(),
                    _pg(pg_url, "SELECT COUNT(*) FROM readings")[0][0],
                    _pg(pg_url, "SELECT COUNT(*) FROM ews_outbox WHERE state = 'pending'")[0][0])

        with contextlib.suppress(E2EError):  # what did not settle shows in the figures
            wait_stable(counts, settle_s=5, timeout=180, what="the cluster to settle",
                        done=lambda c: c[2] == 0)
        time.sleep(HOLD_S)  # the owners' last held readings scored
        feed = {}
        for name in INSTANCES:
            with contextlib.suppress(OSError, ValueError):
                body = http_json(f"http://127.0.0.1:{ports[name]}/healthz", api_key=None)
                data = body.get("data", body)
                feed[name] = data["instance"]
        # a stop that does not end cleanly is asserted on its own (the figures still print)
        stops = {name: procs[name].terminate() for name in (*INSTANCES, "reference")}
        stop_tails = {name: procs[name].stderr_tail() for name, rc in stops.items() if rc != 0}
        stored = Counter((str(d), int(s), str(v)) for d, s, v in _pg(
            pg_url, "SELECT device_id, seq, vital FROM readings WHERE seq IS NOT NULL"))
        cluster = _ews_rows(_pg(pg_url, "SELECT user_code, produce_at, point, result, risk"
                                " FROM ews_history WHERE source = 'vitalgate'"))
        keys = {(str(u), int(t), int(p)) for u, t, p in _pg(
            pg_url, "SELECT user_code, produce_at, point FROM ews_history"
            " WHERE source = 'vitalgate'")}
        triggers = {(str(u), int(t), int(p)): str(k) for u, t, p, k in _pg(
            pg_url, "SELECT user_code, produce_at, point, trigger FROM ews_history"
            " WHERE source = 'vitalgate'")}
        with sqlite3.connect(f"file:{tmp / 'reference' / 'ews.sqlite3'}?mode=ro", uri=True) as c:
            reference = _ews_rows(c.execute(
                "SELECT user_code, produce_at, point, result, risk FROM ews_history"
                " WHERE source = 'vitalgate'").fetchall())
        with psycopg.connect(pg_url, autocommit=True) as pg:
            from ingest.db.engine import Conn, Dialect

            log = leases.intervals(Conn(pg, Dialect.POSTGRES))
        _dump_differences(tmp / "differences.json", pg_url, tmp / "reference" / "ews.sqlite3",
                          cluster, reference, log)
        return Run(carried=expand(recorder.readings()), stored=stored, cluster_ews=cluster,
                   reference_ews=reference, history_keys=keys, upstream=Counter(),
                   log=log, kills=kills, fleet_total=total, started=started,
                   restarted=restarted, triggers=triggers, feed=feed, stops=stops,
                   stop_tails=stop_tails, differences=tmp / "differences.json")
    finally:
        for p in reversed(procs.values()):
            p.terminate()
        recorder.stop()
        broker.stop()


def _dump_differences(path: Path, pg_url: str, ref_db: Path,
                      cluster: dict[str, list[Point]], reference: dict[str, list[Point]],
                      log: list[leases.Interval]) -> None:
    """For each patient whose history differs: both histories in full (with emission time,
    trigger and seq), its readings within a minute of the first difference and its
    partition's ownership periods, written to ``path`` for diagnosis (printed by the test)."""
    cols = "produce_at, point, result, risk, emitted_at, trigger, seq"
    out = {}
    for u in sorted(set(cluster) | set(reference)):
        at = _first_difference(cluster.get(u, []), reference.get(u, []))
        if at is None:
            continue
        with sqlite3.connect(f"file:{ref_db}?mode=ro", uri=True) as c:
            ref_rows = c.execute(f"SELECT {cols} FROM ews_history WHERE user_code = ?"
                                 " AND source = 'vitalgate' ORDER BY produce_at", (u,)).fetchall()
        part = partition_of(u, PARTITIONS)
        out[u] = {
            "first_difference": at, "partition": part,
            "cluster": _pg(pg_url, f"SELECT {cols} FROM ews_history WHERE user_code = %s"
                           " AND source = 'vitalgate' ORDER BY produce_at", (u,)),
            "reference": ref_rows,
            "readings": _pg(pg_url, "SELECT ts, device_id, seq, vital, value, received_at, id"
                            " FROM readings WHERE user_code = %s AND ts BETWEEN %s AND %s"
                            " ORDER BY ts, device_id, seq, vital", (u, at - 60_000, at + 60_000)),
            "ownership": [[i.epoch, i.owner, i.acquired_at, i.ended_at, i.end_reason,
                           i.first_emit_at, i.last_emit_at] for i in log if i.part == part],
        }
    path.write_text(json.dumps(out, indent=1, default=str))


#: a difference this close to a handover of the patient's partition (before: the warm start
#: re-scores readings up to the takeover; after: the new owner's first points) is put down to it
HANDOVER_BEFORE_MS, HANDOVER_AFTER_MS = 15_000, 5_000


def _first_difference(a: list[Point], b: list[Point]) -> int | None:
    """The event time (produce_at) where two sorted histories first part, None if equal."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return min(x[0], y[0])
    if len(a) != len(b):
        return (a if len(a) > len(b) else b)[min(len(a), len(b))][0]
    return None


def classify(run: Run) -> tuple[dict[str, list[str]], set[str]]:
    """Each patient whose history differs, by its first difference: a duplicate point in the
    cluster; else when it happened: before the first kill (no failure at all), while an
    instance was down (the outage), after the restart. Also the patients whose first
    difference is near a handover of their partition (not the stream's initial ownership)."""
    handovers: dict[int, list[int]] = defaultdict(list)
    for i in run.log:
        if i.acquired_at > run.started:
            handovers[i.part].append(i.acquired_at)
    first_kill = min(run.kills.values())
    out: dict[str, list[str]] = {k: [] for k in (
        "duplicate point", "no failure at all", "during the outage", "after the restart")}
    near: set[str] = set()
    for u in sorted(set(run.cluster_ews) | set(run.reference_ews)):
        mine, ref = run.cluster_ews.get(u, []), run.reference_ews.get(u, [])
        at = _first_difference(mine, ref)
        if at is None:
            continue
        if any(h - HANDOVER_BEFORE_MS <= at <= h + HANDOVER_AFTER_MS
               for h in handovers[partition_of(u, PARTITIONS)]):
            near.add(u)
        if len(mine) != len(set(mine)):
            out["duplicate point"].append(u)
        elif at >= run.restarted:
            out["after the restart"].append(u)
        elif at >= first_kill:
            out["during the outage"].append(u)
        else:
            out["no failure at all"].append(u)
    return out, near


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Run:
    tmp = tmp_path_factory.mktemp("failover")
    pg_url = postgres_server.create_database("e2e_failover")

    async def go() -> Run:
        up = await Upstream(api_key="e2e-upstream").start()
        try:
            result = await asyncio.to_thread(_scenario, tmp, pg_url, up.url, up.api_key)
            result.upstream = Counter((str(b["user_code"]), int(b["produce_at"]), int(b["point"]))
                                      for b in up.accepted if isinstance(b, dict))
            return result
        finally:
            await up.stop()

    try:
        return asyncio.run(go())
    finally:
        postgres_server.drop_database("e2e_failover")


def test_every_instance_stops_cleanly_on_sigterm(run: Run) -> None:
    assert run.stops is not None and run.stop_tails is not None
    assert all(rc == 0 for rc in run.stops.values()), "\n".join(
        f"{name}: exit {run.stops[name]}\n{tail}" for name, tail in run.stop_tails.items())


def test_every_reading_the_broker_carried_is_stored_exactly_once(run: Run) -> None:
    stored = set(run.stored)
    dupes = sum(n - 1 for n in run.stored.values() if n > 1)
    print("\n" + table(["figure", "value"], [
        ("fleet's own total (readings)", run.fleet_total),
        ("(device, seq, vital) the broker carried", len(run.carried)),
        ("stored rows (PostgreSQL)", sum(run.stored.values())),
        ("stored more than once", dupes),
        ("carried but not stored", len(run.carried - stored)),
        ("stored but never carried", len(stored - run.carried)),
    ]))
    assert dupes == 0
    assert stored == run.carried


def test_never_two_instances_scoring_the_same_patient(run: Run) -> None:
    by_owner = Counter(i.owner for i in run.log)
    emitting = Counter(i.owner for i in run.log if i.emissions)
    bad = leases.overlaps(run.log)
    print("\n" + table(["figure", "value"], [
        ("ownership periods (partition, epoch) recorded", len(run.log)),
        ("periods per instance", dict(sorted(by_owner.items()))),
        ("periods with emissions per instance", dict(sorted(emitting.items()))),
        ("periods ended by expiry (a dead owner)", sum(i.end_reason == "expired" for i in run.log)),
        ("periods ended by release (rebalancing, stop)",
         sum(i.end_reason == "released" for i in run.log)),
        ("consecutive periods of one partition overlapping", len(bad)),
    ]))
    assert set(by_owner) == set(INSTANCES)
    assert bad == []


def _first_kill_split(run: Run) -> tuple[int, list[str]]:
    """Duplicate points in the cluster's history, and the patients whose points made before the
    first kill differ from the reference's."""
    first_kill = min(run.kills.values())
    patients = set(run.cluster_ews) | set(run.reference_ews)
    dup = sum(len(v) - len(set(v)) for v in run.cluster_ews.values())
    differ = sorted(u for u in patients
                    if [r for r in run.cluster_ews.get(u, []) if r[0] < first_kill]
                    != [r for r in run.reference_ews.get(u, []) if r[0] < first_kill])
    return dup, differ


def test_no_duplicate_point_and_no_history_differs_before_any_failure(run: Run) -> None:
    """What the deterministic owner order, the emission identity check and the takeover
    seeding guarantee (the measured causes of 101 and 7 differing patients before them)."""
    dup, differ_before = _first_kill_split(run)
    assert dup == 0
    assert differ_before == []


@pytest.mark.xfail(strict=False, reason=(
    "measured (docs/scaling.md, 'Failover: measured'): no duplicate, no history differs before"
    " the first kill; on a machine that keeps up 0-2 of 200 still differ (a held change"
    " released by a data pause, counted from the last reading's arrival, which came late"
    " through an adopted session), many more when it is overloaded (readings later than the"
    " feed's 20 s hold are scored late: re-deriving a history from a late reading is not"
    " built). Storage, ownership and delivery hold."))
def test_every_patients_ews_history_equals_the_single_instance_run(run: Run) -> None:
    patients = set(run.cluster_ews) | set(run.reference_ews)
    differ = sorted(u for u in patients if run.cluster_ews.get(u) != run.reference_ews.get(u))
    extra = sum(len(set(run.cluster_ews.get(u, [])) - set(run.reference_ews.get(u, [])))
                for u in patients)
    missing = sum(len(set(run.reference_ews.get(u, [])) - set(run.cluster_ews.get(u, [])))
                  for u in patients)
    dup = sum(len(v) - len(set(v)) for v in run.cluster_ews.values())
    first_kill = min(run.kills.values())

    def before(rows: list[tuple[int, int, str, str]] | None) -> list[tuple[int, int, str, str]]:
        return [r for r in rows or [] if r[0] < first_kill]

    differ_before = [u for u in patients
                     if before(run.cluster_ews.get(u)) != before(run.reference_ews.get(u))]
    print("\n" + table(["figure", "value"], [
        ("patients scored (cluster / reference)",
         f"{len(run.cluster_ews)} / {len(run.reference_ews)}"),
        ("EWS points (cluster / reference)", f"{sum(map(len, run.cluster_ews.values()))} / "
                                             f"{sum(map(len, run.reference_ews.values()))}"),
        ("patients whose history differs", len(differ)),
        ("... in the points made before the first kill", len(differ_before)),
        ("points only in the cluster (extra)", extra),
        ("points only in the reference (missing)", missing),
        ("duplicate points in the cluster", dup),
    ]))
    causes, near = classify(run)
    triggers = run.triggers or {}
    rows = []
    for cause, users in causes.items():
        first: Counter[str] = Counter()  # the trigger of each patient's first extra point
        for u in users:
            extra_u = sorted(set(run.cluster_ews.get(u, [])) - set(run.reference_ews.get(u, [])))
            if extra_u:
                first[triggers.get((u, extra_u[0][0], extra_u[0][1]), "?")] += 1
        rows.append((cause, len(users), sum(u in near for u in users), dict(first) or "-"))
    print(table(["differing patients, by first difference", "patients",
                 "of which near a handover", "first extra point's trigger"], rows))
    print("instance figures at the end (/healthz):", run.feed)
    for users in causes.values():
        for u in users[:1]:
            at = _first_difference(run.cluster_ews.get(u, []), run.reference_ews.get(u, []))
            print(u, "first difference at", at, "(stream start", run.started, ")")
            print("  cluster  ", [r for r in run.cluster_ews.get(u, []) if r[0] >= (at or 0)][:6])
            print("  reference", [r for r in run.reference_ews.get(u, []) if r[0] >= (at or 0)][:6])
    if differ:
        print("each differing patient's histories, readings and ownership:", run.differences)
    assert len(run.reference_ews) == PATIENTS
    assert dup == 0
    assert differ == []


def test_every_ews_point_reached_the_upstream(run: Run) -> None:
    got = set(run.upstream)
    twice = sum(n - 1 for n in run.upstream.values() if n > 1)
    print("\n" + table(["figure", "value"], [
        ("EWS points in the shared history", len(run.history_keys)),
        ("distinct points the upstream accepted", len(got)),
        ("accepted more than once", twice),
        ("in the history, never delivered", len(run.history_keys - got)),
    ]))
    assert run.history_keys - got == set()


def test_time_from_kill_to_patients_scored_again(run: Run) -> None:
    rows = []
    for name, killed in run.kills.items():
        held = {i.part for i in run.log if i.owner == name and i.acquired_at <= killed
                and (i.ended_at is None or i.ended_at >= killed)}
        owned_again, scored_again = [], []
        for part in held:
            after = sorted((i for i in run.log if i.part == part and i.acquired_at > killed),
                           key=lambda i: i.epoch)
            assert after, f"partition {part} of {name} never taken again"
            owned_again.append(after[0].acquired_at - killed)
            # taken over only once the dead owner's lease had expired (database clock)
            before = [i for i in run.log if i.part == part and i.owner == name
                      and i.acquired_at <= killed]
            assert before and before[-1].ended_at is not None
            assert before[-1].end_reason == "expired"
            assert after[0].acquired_at >= before[-1].ended_at
            emits = [i.first_emit_at for i in after if i.first_emit_at is not None]
            if emits:
                scored_again.append(min(emits) - killed)
        rows.append((name, len(held), f"{min(owned_again) / 1000:.1f}",
                     f"{statistics.median(owned_again) / 1000:.1f}",
                     f"{max(owned_again) / 1000:.1f}",
                     f"{statistics.median(scored_again) / 1000:.1f}" if scored_again else "-"))
    print("\n" + table(["killed", "partitions", "owned again min s", "median s", "max s",
                        "first emission median s"], rows))

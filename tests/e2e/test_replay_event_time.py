"""A replay of real ICU stays scored on event time (issue 11): `vitalgate replay --timestamps sim`
of PhysioNet Challenge 2019 patients at 36,000× (ten recorded hours per real second) onto a real
Mosquitto into a real ingest service gives exactly the EWS points that the same scorer and the
same emission policy give offline over the same rows, on the rows' own timeline.

Before event time (freshness and the policy's intervals on the ingest's wall clock, and a "sim"
timeline that started now and so lay up to 118 h in the future), the same run gave 15 points for
the 8 stays where the offline trajectory has 627 (docs/ews-delivery.md).

Run: ``pytest -m e2e tests/e2e/test_replay_event_time.py -s`` (prints the counts).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from ews.stream import StreamScorer
from ews.tables import TABLES
from ingest import store
from ingest.emit_policy import EmitPolicy, Snapshot, Trigger, decide, heartbeat_due
from simulators.importers import load_tracks
from simulators.mqtt_out import GatewayPublisher
from simulators.physiology import SimClock
from simulators.replay import MqttReplaySink, ReplayItem, replay_tracks
from tests.support.ingest_service import connected, eventually, settings_for
from vitalgate.broker import Mosquitto

pytestmark = pytest.mark.e2e

#: the longest stays in ../shared/data/physionet2019 (86-120 hourly rows) and two short ones
PATIENTS = ("p100837", "p100658", "p100068", "p100705", "p100232", "p100049", "p100001", "p100002")
SPEED = 36_000.0
Point = tuple[int, str, int, str]  # point, result, produce_at, trigger


def offline(items: list[ReplayItem], freshness_ms: int, median_k: int, table: str,
            policy: EmitPolicy) -> dict[str, list[Point]]:
    """The stream scorer and the emission policy over the rows in time order, each row scored
    when it happens (the clock is the row's own time): what the patient had in real time."""
    out: dict[str, list[Point]] = defaultdict(list)
    by_patient: dict[str, list[ReplayItem]] = defaultdict(list)
    for item in items:
        assert item.user_code is not None
        by_patient[item.user_code].append(item)
    for code, rows in by_patient.items():
        now = [0]
        scorer = StreamScorer(TABLES[table], freshness_ms=freshness_ms, median_k=median_k,
                              clock=lambda now=now: now[0])
        last: Snapshot | None = None
        last_at: int | None = None
        for row in sorted(rows, key=lambda r: r.ts):
            now[0] = row.ts
            scorer.update([code] * len(row.vitals), list(row.vitals), list(row.vitals.values()),
                          [row.ts] * len(row.vitals))
            for score in scorer.rescore():
                if not score.valid or score.produce_at is None:
                    continue
                snap = Snapshot(score.point, score.result, score.risk, score.produce_at)
                d = decide(policy, snap, last, last_at, row.ts)
                trigger = d.trigger
                if (not d.emit and not d.hold and last is not None
                        and heartbeat_due(policy, last_at, row.ts, True)
                        and snap.produce_at >= last.produce_at):
                    trigger = Trigger.HEARTBEAT
                if trigger is not None:
                    out[code].append((snap.point, snap.result, snap.produce_at, trigger.value))
                    last, last_at = snap, row.ts
    return dict(out)


async def test_replay_at_36000x_gives_the_offline_event_time_trajectory(
    tmp_path: Path, mosquitto: Mosquitto, shared_data: Path
) -> None:
    tracks = [t for name in PATIENTS for t in load_tracks(shared_data / "physionet2019" / f"{name}.psv")]
    settings = settings_for(tmp_path / "data", mosquitto.url)
    delivered: list[ReplayItem] = []
    async with connected(settings) as svc:
        publisher = GatewayPublisher(mosquitto.url, "replay-icu").connect()
        sink = MqttReplaySink(publisher)

        def forward(item: ReplayItem) -> None:
            sink(item)  # raises ValueError for a row the contract refuses (counted by replay)
            delivered.append(item)

        clock = SimClock(speed=SPEED)
        try:
            stats = await asyncio.to_thread(replay_tracks, tracks, forward, clock=clock,
                                            timestamps="sim")
        finally:
            publisher.close()
        assert stats.rows == len(delivered) > 500 and stats.rejected == 0
        # the timeline ends at the replay's start: nothing was stamped in the future
        assert max(i.ts for i in delivered) == clock.start_ms
        expected_rows = sum(len(i.vitals) for i in delivered)

        async def stored() -> bool:
            return int(await svc.service.db.read(store.count_readings)) == expected_rows

        await eventually(stored, timeout=30)
        engine = svc.service.engine
        emitted = [-1]

        def settled() -> bool:  # every committed batch observed: the count stops moving
            before, emitted[0] = emitted[0], engine.emitted
            return before == engine.emitted and svc.service.consumer.queue_depth == 0

        await eventually(settled, timeout=15, interval=0.5)

    db = sqlite3.connect(settings.ews_db_path)
    online: dict[str, list[Point]] = defaultdict(list)
    for code, point, result, produce_at, trigger in db.execute(
        "SELECT user_code, point, result, produce_at, trigger FROM ews_history"
        " WHERE source = 'vitalgate' ORDER BY id"
    ):
        online[str(code)].append((int(point), str(result), int(produce_at), str(trigger)))
    db.close()

    policy = EmitPolicy(immediate_on_risk_rise=settings.ews_immediate_on_rise,
                        min_interval_ms=int(settings.ews_min_interval_s * 1000),
                        heartbeat_ms=int(settings.ews_heartbeat_s * 1000))
    reference = offline(delivered, settings.freshness_ms, settings.median_k, settings.ews_table,
                        policy)
    n_online = sum(map(len, online.values()))
    n_offline = sum(map(len, reference.values()))
    print(f"\n{len(delivered)} rows of {len(PATIENTS)} stays replayed at {SPEED:.0f}x: "
          f"{n_online} EWS points emitted, {n_offline} offline on event time")
    assert len(reference) == len(PATIENTS) and n_offline > 5 * len(PATIENTS)
    assert dict(online) == reference

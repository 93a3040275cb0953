"""Channel ``fhir`` on the durable outbox, on both engines (``database_url``: SQLite and a real
PostgreSQL), against the real FHIR server: an outage with readings and NEWS2 points flowing, an
outbox restart, the server back: every Observation once, each patient's rows in order. Time is
injected (FakeTime): the outbox's backoff over the outage takes milliseconds."""

from __future__ import annotations

import asyncio
import random

from ingest.db.readings import StoredReading
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import EwsEngine
from ingest.fhir import codes
from ingest.fhir.delivery import FhirDelivery
from ingest.fhir.resources import news2_id, vitals_units
from ingest.outbox import Outbox, RetryPolicy
from tests.ingest.ews_support import Open, query, stop
from tests.ingest.upstream import FakeTime
from tests.support.fhir import FhirServer
from tests.support.ingest_service import eventually

SYSTEM = "urn:oid:1.2.3"
PATIENTS = ("OB-1", "OB-2")
STEPS = (  # respiratory rate per reading: each changes the score (emitted at once)
    16.0, 22.0, 25.0, 10.0)
NORMAL = {"heart_rate": 72.0, "spo2": 98.0, "systolic_bp": 120.0, "diastolic_bp": 80.0,
          "temperature": 36.8}


def readings(patient: int, step: int, ts: int) -> list[StoredReading]:
    device = f"0b00000000{patient:02d}"
    vitals = {**NORMAL, "respiratory_rate": STEPS[step]}
    return [StoredReading(device, PATIENTS[patient], "gw-ob", k, v, ts, step, "realtime", False, ts)
            for k, v in vitals.items()]


async def test_outage_restart_and_recovery_every_observation_once(
        store: Open, fhir_server: FhirServer) -> None:
    clock = FakeTime()
    policy = RetryPolicy(timeout_s=5.0)
    fhir_server.kill()

    def make() -> tuple[EwsEngine, Outbox, FhirDelivery]:
        db = store()
        outbox = Outbox(db, upstream_url=None, api_key=None, clock=clock, sleep=clock.sleep,
                        rng=random.Random(3))
        engine = EwsEngine(db, clock=clock, policy=EmitPolicy(min_interval_ms=0),
                           notify=outbox.notify)
        fhir = FhirDelivery.attach(url=fhir_server.url, token=None, patient_system=SYSTEM,
                                   batch=8, db=db, outbox=outbox, engine=engine, clock=clock,
                                   retry=policy)
        return engine, outbox, fhir

    sent: list[StoredReading] = []

    async def feed(engine: EwsEngine, fhir: FhirDelivery, steps: range) -> None:
        """Each step: every patient's readings to FHIR and the engine, then a minute on."""
        for step in steps:
            for p in range(len(PATIENTS)):
                rs = readings(p, step, clock.now)
                sent.extend(rs)
                await fhir.enqueue_readings(rs)
                engine.observe([(r.user_code or "", r.vital, r.value, r.ts) for r in rs])
            clock.advance(60_000)

    engine, outbox, fhir = make()
    task = asyncio.create_task(outbox.run())
    try:
        await feed(engine, fhir, range(2))
        await eventually(lambda: outbox.metrics("fhir")["retried"] >= 2, timeout=60)
        assert outbox.metrics("fhir")["delivered"] == 0
    finally:
        await stop(task)
    depth = outbox.metrics("fhir")["depth"]
    assert depth == 2 * 2 * 2  # per patient and step: a readings row and a NEWS2 row
    engine.close()

    # a new outbox on the same store (another life of the service): the rows are still there
    engine, outbox, fhir = make()
    assert outbox.metrics("fhir")["depth"] == depth
    fhir_server.start()
    task = asyncio.create_task(outbox.run())
    try:
        await feed(engine, fhir, range(2, len(STEPS)))
        await eventually(lambda: outbox.metrics("fhir")["depth"] == 0, timeout=120)
    finally:
        await stop(task)
    m = outbox.metrics("fhir")
    assert m["failed"] == 0 and m["delivered"] == 2 * 2 * len(STEPS)
    # per patient, rows were delivered in enqueue order (ids increase with delivery time)
    db = store()
    for patient in PATIENTS:
        rows = query(db, "SELECT id, updated_at FROM ews_outbox WHERE channel = 'fhir'"
                         " AND user_code = ? ORDER BY id", (patient,))
        assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    built = vitals_units(sent, SYSTEM)
    expected = {e.value for u in built.units for e in u.observations}
    got = [i["value"] for o in fhir_server.search("Observation", category="vital-signs",
                                                  _count="1000") for i in o["identifier"]]
    assert len(got) == len(expected) == len(PATIENTS) * len(STEPS) * 5 and set(got) == expected
    points = [p for u in PATIENTS for p in engine.history(u, page=1, size=100)[0]]
    assert len(points) == len(PATIENTS) * len(STEPS)
    news = [i["value"] for o in fhir_server.search(
        "Observation", code=f"{codes.SNOMED}|{codes.NEWS2_TOTAL}", _count="1000")
        for i in o["identifier"]]
    assert sorted(news) == sorted(news2_id(p, SYSTEM) for p in points)
    engine.close()

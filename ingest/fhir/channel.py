"""The FHIR channel: what the service hands to the durable outbox (rows), and how a row is sent.

The service calls :meth:`FhirChannel.readings_rows` with each commit's stored readings and
:meth:`FhirChannel.points_rows` with each batch of emitted NEWS2 points; every row it gets back
is enqueued on the outbox's channel ``fhir``. A row is one patient's units packed to at most
``fhir_batch`` entries (one transaction Bundle), so per-patient order is the outbox's row order;
its dedup key names exactly the Observations it carries (the same readings enqueued twice are
absorbed by the outbox; sent twice, by the server's conditional create).

``derivedFrom`` of a NEWS2 point: the channel remembers, per patient, the Observation of the
newest reading of each vital it enqueued (bounded: ``max_patients``, least recently seen first
out, evictions counted). A point refers to those of its scored vitals measured at or before its
``produce_at``; after a restart, until a vital is measured again, a point refers to none for
that vital (counted as ``derived_unknown``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ingest.db.readings import StoredReading
from ingest.fhir import codes
from ingest.fhir.bundle import DEFAULT_BATCH, pack
from ingest.fhir.resources import (
    Entry,
    FhirBuildError,
    ScorePoint,
    Unit,
    news2_unit,
    vitals_units,
)
from ingest.fhir.transport import Attempt, Transport
from ingest.outbox import Verdict

#: the outbox channel name.
CHANNEL: Final = "fhir"
#: patients whose newest vital Observations are remembered for ``derivedFrom`` (a ward has tens;
#: a hospital group a few thousand; ~1 KiB each).
DEFAULT_MAX_PATIENTS: Final = 100_000
#: the scored NEWS2 parameters that are vitals (the others, oxygen and consciousness, are the
#: clinician-set context: nothing to derive from).
_SCORED_VITALS: Final = ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")


@dataclass(frozen=True, slots=True)
class OutRow:
    """One outbox row of channel ``fhir``."""

    user_code: str
    dedup_key: str
    body: str


def encode(units: Sequence[Unit]) -> str:
    return json.dumps({"units": [u.to_json() for u in units]}, separators=(",", ":"))


def decode(body: str) -> list[Unit]:
    obj = json.loads(body)
    return [Unit.from_json(u) for u in obj["units"]]


def _key(prefix: str, units: Iterable[Unit]) -> str:
    idents = sorted(e.value for u in units for e in u.observations)
    return prefix + hashlib.sha256("\n".join(idents).encode()).hexdigest()


class FhirChannel:
    """Turns committed readings and emitted points into outbox rows (pure but for the bounded
    memory behind ``derivedFrom``); ``counts`` says what became of every input."""

    def __init__(self, patient_system: str = codes.DEFAULT_PATIENT_SYSTEM, *,
                 batch: int = DEFAULT_BATCH, max_patients: int = DEFAULT_MAX_PATIENTS) -> None:
        if batch < 1 or max_patients < 1:
            raise ValueError("batch and max_patients must be >= 1")
        self.patient_system = patient_system
        self.batch = batch
        self.max_patients = max_patients
        #: user_code → vital → (event time, its Observation entry)
        self._latest: OrderedDict[str, dict[str, tuple[int, Entry]]] = OrderedDict()
        self.counts: dict[str, int] = dict.fromkeys(
            ("readings", "observations", "points", "rows", "skipped_no_patient",
             "skipped_unbuildable", "derived_unknown", "memory_evicted"), 0)
        #: readings_rows runs on the event loop, points_rows inside the EWS engine's
        #: transaction (a worker thread): the memory and counts are shared
        self.lock = threading.Lock()

    def _remember(self, user_code: str, vital: str, ts: int, entry: Entry) -> None:
        mine = self._latest.get(user_code)
        if mine is None:
            mine = self._latest[user_code] = {}
            if len(self._latest) > self.max_patients:
                self._latest.popitem(last=False)
                self.counts["memory_evicted"] += 1
        else:
            self._latest.move_to_end(user_code)
        held = mine.get(vital)
        if held is None or ts >= held[0]:
            mine[vital] = (ts, entry)

    def readings_rows(self, readings: Iterable[StoredReading],
                      models: Mapping[str, str] | None = None) -> list[OutRow]:
        """Stored readings of one commit → rows (one or more per patient, in order)."""
        with self.lock:
            return self._readings_rows(readings, models)

    def _readings_rows(self, readings: Iterable[StoredReading],
                       models: Mapping[str, str] | None = None) -> list[OutRow]:
        vital_readings = list(readings)
        self.counts["readings"] += len(vital_readings)
        built = vitals_units(vital_readings, self.patient_system, models)
        for r, _reason in built.skipped:
            self.counts["skipped_no_patient" if r.user_code is None else "skipped_unbuildable"] += 1
        by_patient: dict[str, list[Unit]] = {}
        for unit, mine in zip(built.units, built.by_vital, strict=True):
            by_patient.setdefault(unit.user_code, []).append(unit)
            self.counts["observations"] += len(unit.observations)
            for vital, entry in mine.items():
                ts = _effective_ms(entry)
                self._remember(unit.user_code, vital, ts, entry)
        rows: list[OutRow] = []
        for user_code, units in by_patient.items():
            for batch in pack(units, self.batch):
                rows.append(OutRow(user_code, _key("v:", batch), encode(batch)))
        self.counts["rows"] += len(rows)
        return rows

    def points_rows(self, points: Iterable[ScorePoint]) -> list[OutRow]:
        """Emitted NEWS2 points → one row each."""
        with self.lock:
            return self._points_rows(points)

    def _points_rows(self, points: Iterable[ScorePoint]) -> list[OutRow]:
        rows: list[OutRow] = []
        for p in points:
            self.counts["points"] += 1
            mine = self._latest.get(p.user_code, {})
            derived: list[Entry] = []
            for vital in _SCORED_VITALS:
                if vital not in p.components or vital in p.missing:
                    continue
                held = mine.get(vital)
                if held is None or held[0] > p.produce_at:
                    self.counts["derived_unknown"] += 1
                    continue
                derived.append(held[1])
            try:
                unit = news2_unit(p, self.patient_system, derived)
            except FhirBuildError:
                self.counts["skipped_unbuildable"] += 1
                continue
            rows.append(OutRow(p.user_code, _key("n:", [unit]), encode([unit])))
        self.counts["rows"] += len(rows)
        return rows


def _effective_ms(entry: Entry) -> int:
    from datetime import datetime

    text = str(entry.resource["effectiveDateTime"]).replace("Z", "+00:00")
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def send_row(transport: Transport, body: str) -> Attempt:
    """Deliver one row: its units in as few Bundles as the transport packs. All delivered:
    delivered; any to retry: retry (the whole row again later: conditional creates absorb what
    already arrived); else some refused for good: failed, naming how many (the others arrived;
    a requeue sends them again harmlessly)."""
    try:
        units = decode(body)
    except (ValueError, KeyError, TypeError) as exc:
        return Attempt(Verdict.FAILED, None, f"unreadable FHIR outbox row: {type(exc).__name__}")
    if not units:
        return Attempt(Verdict.DELIVERED, None, "empty row")
    attempts = await transport.send(units)
    retry = [a for a in attempts if a.verdict in (Verdict.RETRY_ALL, Verdict.RETRY_ITEM)]
    if retry:
        wide = any(a.verdict is Verdict.RETRY_ALL for a in retry)
        first = retry[0]
        return Attempt(Verdict.RETRY_ALL if wide else Verdict.RETRY_ITEM, first.status,
                       first.detail, max((a.retry_after_s or 0.0 for a in retry), default=None) or None)
    failed = [a for a in attempts if a.verdict is Verdict.FAILED]
    # units sent in one Bundle share its Attempt (and its counts): count each Bundle once
    bundles = {id(a): a for a in attempts if a.verdict is Verdict.DELIVERED}.values()
    created = sum(a.created for a in bundles)
    existing = sum(a.existing for a in bundles)
    if failed:
        return Attempt(Verdict.FAILED, failed[0].status,
                       f"{len(failed)} of {len(units)} units refused (the others delivered): "
                       f"{failed[0].detail}", None, created, existing)
    return Attempt(Verdict.DELIVERED, attempts[0].status if attempts else None, "", None,
                   created, existing)

"""Pure builders: stored readings and NEWS2 points → FHIR R4 resources (JSON-ready dicts).

No I/O, no clock: everything a resource says comes from its input. One stored reading message
(one device, one ``seq``, one event time) becomes one :class:`Unit`: an Observation per vital
(systolic and diastolic together as one blood-pressure panel), plus the Patient, the watch's
Device and the gateway's Device they refer to, each a conditional create keyed by its
identifier, so that sending a unit twice creates nothing the second time.

References are written *logically* (``{"type": ..., "identifier": ...}``, valid R4 on their own);
:mod:`ingest.fhir.bundle` makes them literal (``urn:uuid:``) when the target is in the same
transaction Bundle, which it always is for the Patient and Devices of a unit.

The Observation identifier follows the PHD IG's conditional-create identifier: the
concatenation ``device-patient value-patient system-MDC code-time-value(s)`` (time as
``YYYYMMDDTHHMMSS.fff`` UTC), here SHA-256 hashed (hex) so that no patient code travels in a
search URL in clear and the value has a fixed length.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import urlencode
from uuid import NAMESPACE_URL, uuid5

from ingest.db.readings import StoredReading
from ingest.fhir import codes
from vitalgate.contract import (
    DEVICE_ID_RE,
    GATEWAY_ID_RE,
    USER_CODE_RE,
    mac_from_device_id,
    matches,
)

Json = dict[str, Any]

#: the most characters of a device model carried into Device.modelNumber / deviceName.
MAX_MODEL_CHARS: Final = 128


class FhirBuildError(ValueError):
    """An input a resource cannot be built from (no patient, an unknown vital...)."""


def iso_utc(ms: int) -> str:
    """Epoch milliseconds → FHIR dateTime/instant in UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _phd_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]


def _num(value: float) -> str:
    return repr(float(value))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource of a transaction: created only if no resource of its type carries its
    identifier (``ifNoneExist``)."""

    resource_type: str
    system: str
    value: str
    resource: Json = field(hash=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.resource_type, self.system, self.value)

    @property
    def full_url(self) -> str:
        """A stable ``urn:uuid:`` for the resource within any Bundle (name-based UUID)."""
        return f"urn:uuid:{uuid5(NAMESPACE_URL, '|'.join(self.key))}"

    @property
    def if_none_exist(self) -> str:
        return urlencode({"identifier": f"{self.system}|{self.value}"})

    def to_json(self) -> Json:
        return {"resourceType": self.resource_type, "system": self.system, "value": self.value,
                "resource": self.resource}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Entry:
        return cls(str(obj["resourceType"]), str(obj["system"]), str(obj["value"]),
                   dict(obj["resource"]))


@dataclass(frozen=True, slots=True)
class Unit:
    """What one outbox row delivers: the entries of one reading message or one NEWS2 point,
    for one patient (``user_code``: per-patient order), Patients and Devices included."""

    user_code: str
    kind: str  #: "vitals" or "news2"
    entries: tuple[Entry, ...]

    @property
    def observations(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.resource_type == "Observation")

    def to_json(self) -> Json:
        return {"user_code": self.user_code, "kind": self.kind,
                "entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Unit:
        return cls(str(obj["user_code"]), str(obj["kind"]),
                   tuple(Entry.from_json(e) for e in obj["entries"]))


def logical(resource_type: str, system: str, value: str, display: str | None = None) -> Json:
    ref: Json = {"type": resource_type, "identifier": {"system": system, "value": value}}
    if display:
        ref["display"] = display
    return ref


# ------------------------------------------------------------------------------ Patient, Device


def patient(user_code: str, system: str) -> Entry:
    if not matches(USER_CODE_RE, user_code):
        raise FhirBuildError(f"user_code {user_code!r} does not match {USER_CODE_RE.pattern}")
    res: Json = {"resourceType": "Patient", "identifier": [{"system": system, "value": user_code}],
                 "active": True}
    return Entry("Patient", system, user_code, res)


def watch(device_id: str, model: str | None = None) -> Entry:
    """The watch (a PHD): identified by its Bluetooth address."""
    if not matches(DEVICE_ID_RE, device_id):
        raise FhirBuildError(f"device_id {device_id!r} does not match {DEVICE_ID_RE.pattern}")
    mac = mac_from_device_id(device_id)
    res: Json = {"resourceType": "Device",
                 "identifier": [{"system": codes.BLUETOOTH_SYSTEM, "value": mac}],
                 "status": "active"}
    model = (model or "").strip()[:MAX_MODEL_CHARS]
    if model:
        res["deviceName"] = [{"name": model, "type": "model-name"}]
        res["modelNumber"] = model
    return Entry("Device", codes.BLUETOOTH_SYSTEM, mac, res)


def gateway(gateway_id: str) -> Entry:
    """The Raspberry Pi gateway (the PHD IG's Personal Health Gateway)."""
    if not matches(GATEWAY_ID_RE, gateway_id):
        raise FhirBuildError(f"gateway_id {gateway_id!r} does not match {GATEWAY_ID_RE.pattern}")
    res: Json = {
        "resourceType": "Device",
        "identifier": [{"system": codes.GATEWAY_SYSTEM, "value": gateway_id}],
        "status": "active",
        "type": {"coding": [{"system": codes.MDC, "code": codes.MDC_GATEWAY_TYPE,
                             "display": "MDC_MOC_VMS_MDS_AHD"}],
                 "text": "vitalgate BLE gateway (Raspberry Pi)"},
        "deviceName": [{"name": gateway_id, "type": "user-friendly-name"}],
    }
    return Entry("Device", codes.GATEWAY_SYSTEM, gateway_id, res)


# ------------------------------------------------------------------------------ vitals


def _quantity(value: float, code: codes.VitalCode) -> Json:
    if not math.isfinite(value):
        raise FhirBuildError(f"value {value!r} is not a finite number")
    return {"value": float(value), "unit": code.unit, "system": codes.UCUM, "code": code.ucum}


def _category(code: str, display: str) -> list[Json]:
    return [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": code, "display": display}],
             "text": display}]


def observation_id(device_id: str, user_code: str, patient_system: str, mdc: str, ts: int,
                   values: Sequence[float]) -> str:
    """The PHD-style conditional-create identifier value (hashed): the same measurement of the
    same device for the same patient has the same identifier, whatever sent it and how often."""
    parts = [device_id.upper(), user_code, patient_system, mdc, _phd_time(ts),
             *(_num(v) for v in values)]
    return _hash("-".join(parts))


def _observation(first: StoredReading, user_code: str, patient_system: str, code: codes.VitalCode,
                 values: Sequence[float]) -> Json:
    ident = observation_id(first.device_id, user_code, patient_system, code.mdc.code, first.ts,
                           values)
    obs: Json = {
        "resourceType": "Observation",
        "meta": {"profile": [codes.PROFILE_BASE + "vitalsigns", code.profile]},
        "identifier": [{"system": codes.OBSERVATION_ID_SYSTEM, "value": ident}],
        "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": code.code_json(),
        "subject": logical("Patient", patient_system, user_code),
        "effectiveDateTime": iso_utc(first.ts),
        "device": logical("Device", codes.BLUETOOTH_SYSTEM, mac_from_device_id(first.device_id)),
    }
    obs["issued"] = iso_utc(first.received_at)
    if first.gateway_id:
        obs["extension"] = [{"url": codes.GATEWAY_EXTENSION,
                             "valueReference": logical("Device", codes.GATEWAY_SYSTEM,
                                                       first.gateway_id)}]
    return obs


def vital_observation(r: StoredReading, patient_system: str) -> Entry:
    """One non-blood-pressure vital → its Observation."""
    if r.user_code is None:
        raise FhirBuildError("the reading has no patient (its device is assigned to none)")
    if r.vital not in codes.SINGLE_VITALS:
        raise FhirBuildError(f"vital {r.vital!r} is not one of {sorted(codes.SINGLE_VITALS)}")
    code = codes.vital_code(r.vital, r.source)
    obs = _observation(r, r.user_code, patient_system, code, [r.value])
    obs["valueQuantity"] = _quantity(r.value, code)
    ident = obs["identifier"][0]["value"]
    return Entry("Observation", codes.OBSERVATION_ID_SYSTEM, ident, obs)


def _bp_component(code: codes.VitalCode, value: float | None) -> Json:
    comp: Json = {"code": code.code_json()}
    if value is None:
        comp["dataAbsentReason"] = {"coding": [{"system": codes.DATA_ABSENT,
                                                "code": "not-performed",
                                                "display": "Not Performed"}]}
    else:
        comp["valueQuantity"] = _quantity(value, code)
    return comp


def blood_pressure(systolic: StoredReading | None, diastolic: StoredReading | None,
                   patient_system: str) -> Entry:
    """Systolic and diastolic of one reading → one 85354-9 panel (a side the reading did not
    carry is a component with a dataAbsentReason, as the bp profile requires both)."""
    first = systolic or diastolic
    if first is None:
        raise FhirBuildError("a blood pressure panel needs a systolic or a diastolic value")
    if first.user_code is None:
        raise FhirBuildError("the reading has no patient (its device is assigned to none)")
    sys_v = None if systolic is None else systolic.value
    dia_v = None if diastolic is None else diastolic.value
    values = [v if v is not None else math.nan for v in (sys_v, dia_v)]
    obs = _observation(first, first.user_code, patient_system, codes.BLOOD_PRESSURE, values)
    obs["component"] = [_bp_component(codes.SYSTOLIC, sys_v), _bp_component(codes.DIASTOLIC, dia_v)]
    ident = obs["identifier"][0]["value"]
    return Entry("Observation", codes.OBSERVATION_ID_SYSTEM, ident, obs)


def _message_key(r: StoredReading) -> tuple[str, str, int | None, int, str, str | None]:
    return (r.device_id, r.stream, r.seq, r.ts, r.source, r.user_code)


@dataclass(frozen=True, slots=True)
class Built:
    """Units built from stored readings, and the readings no unit could be made of (``skipped``:
    no patient, or a vital FHIR has no code for here; with the reason)."""

    units: list[Unit]
    skipped: list[tuple[StoredReading, str]]
    #: per unit (aligned), the Observation entry of each of its vitals (both BP vitals share one)
    by_vital: list[dict[str, Entry]]


def vitals_units(readings: Iterable[StoredReading], patient_system: str,
                 models: Mapping[str, str] | None = None) -> Built:
    """Committed readings → one unit per reading message (device, stream, seq, event time).

    ``models``: device_id → model, for the Device resource (optional)."""
    groups: dict[tuple[str, str, int | None, int, str, str | None], list[StoredReading]] = {}
    skipped: list[tuple[StoredReading, str]] = []
    for r in readings:
        if r.user_code is None:
            skipped.append((r, "no patient: the device is assigned to none"))
        elif r.vital not in codes.SINGLE_VITALS and r.vital not in codes.BP_VITALS:
            skipped.append((r, f"no FHIR code for vital {r.vital!r}"))
        else:
            groups.setdefault(_message_key(r), []).append(r)
    units: list[Unit] = []
    by_vital: list[dict[str, Entry]] = []
    for group in groups.values():
        first = group[0]
        assert first.user_code is not None
        try:
            entries = [patient(first.user_code, patient_system),
                       watch(first.device_id, (models or {}).get(first.device_id))]
            if first.gateway_id:
                entries.append(gateway(first.gateway_id))
            mine: dict[str, Entry] = {}
            bp = {r.vital: r for r in group if r.vital in codes.BP_VITALS}
            for r in group:
                if r.vital in codes.SINGLE_VITALS:
                    mine[r.vital] = vital_observation(r, patient_system)
            if bp:
                panel = blood_pressure(bp.get("systolic_bp"), bp.get("diastolic_bp"), patient_system)
                for vital in bp:
                    mine[vital] = panel
        except FhirBuildError as exc:
            skipped += [(r, str(exc)) for r in group]
            continue
        seen: set[tuple[str, str, str]] = set()
        for e in mine.values():
            if e.key not in seen:
                seen.add(e.key)
                entries.append(e)
        units.append(Unit(first.user_code, "vitals", tuple(entries)))
        by_vital.append(mine)
    return Built(units, skipped, by_vital)


# ------------------------------------------------------------------------------ NEWS2


class ScorePoint(Protocol):
    """What a NEWS2 Observation needs of an EWS point (``ingest.ews_engine.EwsPoint``)."""

    @property
    def user_code(self) -> str: ...
    @property
    def point(self) -> int: ...
    @property
    def risk(self) -> str: ...
    @property
    def partial(self) -> bool: ...
    @property
    def missing(self) -> tuple[str, ...]: ...
    @property
    def components(self) -> dict[str, int]: ...
    @property
    def produce_at(self) -> int: ...
    @property
    def emitted_at(self) -> int | None: ...


def news2_id(p: ScorePoint, patient_system: str) -> str:
    """The same score of the same patient at the same event time: one identifier (a re-sent or
    heartbeat-repeated point is absorbed by conditional create; a changed one is new)."""
    comps = ",".join(f"{k}={v}" for k, v in sorted(p.components.items()))
    parts = [p.user_code, patient_system, codes.NEWS2_TOTAL, _phd_time(p.produce_at),
             str(int(p.point)), comps, "partial" if p.partial else "complete"]
    return _hash("-".join(parts))


def news2_observation(p: ScorePoint, patient_system: str,
                      derived_from: Sequence[Entry] = ()) -> Entry:
    """An emitted NEWS2 point → its Observation: the SNOMED CT total-score code, an integer value,
    the risk band as interpretation, one component per sub-score (a missing vital: a component
    with a dataAbsentReason), ``derivedFrom`` the vitals' Observations, and, where the score is
    partial, the partial extension and a note naming what was missing or assumed."""
    if not matches(USER_CODE_RE, p.user_code):
        raise FhirBuildError(f"user_code {p.user_code!r} does not match {USER_CODE_RE.pattern}")
    if isinstance(p.point, bool) or not 0 <= int(p.point) <= 30:
        raise FhirBuildError(f"point {p.point!r} is not a NEWS2 total (0..30)")
    if p.risk not in codes.NEWS2_RISK:
        raise FhirBuildError(f"risk {p.risk!r} is not one of {sorted(codes.NEWS2_RISK)}")
    display, v3 = codes.NEWS2_RISK[p.risk]
    interp: list[Json] = [{"system": codes.NEWS2_RISK_SYSTEM, "code": p.risk, "display": display}]
    if int(p.point) == 0:
        v3 = "N"
    if v3 is not None:
        interp.append({"system": codes.INTERPRETATION, "code": v3,
                       "display": codes.INTERPRETATION_DISPLAY[v3]})
    components: list[Json] = []
    for name, text in codes.NEWS2_PARAMETERS.items():
        comp: Json = {"code": {"coding": [{"system": codes.NEWS2_PARAMETER_SYSTEM, "code": name,
                                           "display": text}], "text": f"NEWS2 {text}"}}
        if name in p.components:
            comp["valueInteger"] = int(p.components[name])
        elif name in p.missing:
            comp["dataAbsentReason"] = {"coding": [{"system": codes.DATA_ABSENT,
                                                    "code": "not-performed",
                                                    "display": "Not Performed"}]}
        else:
            continue
        components.append(comp)
    ident = news2_id(p, patient_system)
    obs: Json = {
        "resourceType": "Observation",
        "identifier": [{"system": codes.NEWS2_ID_SYSTEM, "value": ident}],
        "status": "final",
        "category": _category("survey", "Survey"),
        "code": {"coding": [{"system": codes.SNOMED, "code": codes.NEWS2_TOTAL}],
                 "text": codes.NEWS2_TEXT},
        "subject": logical("Patient", patient_system, p.user_code),
        "effectiveDateTime": iso_utc(p.produce_at),
        "valueInteger": int(p.point),
        "interpretation": [{"coding": interp, "text": display}],
    }
    if p.emitted_at is not None:
        obs["issued"] = iso_utc(p.emitted_at)
    if components:
        obs["component"] = components
    refs: list[Json] = []
    seen: set[tuple[str, str, str]] = set()
    for e in derived_from:
        if e.resource_type == "Observation" and e.key not in seen:
            seen.add(e.key)
            refs.append(logical("Observation", e.system, e.value))
    if refs:
        obs["derivedFrom"] = refs
    if p.partial:
        obs["extension"] = [{"url": codes.PARTIAL_EXTENSION, "valueBoolean": True}]
        what = ", ".join(p.missing) or "some parameters"
        obs["note"] = [{"text": f"Partial NEWS2 score: missing or assumed: {what}"}]
    return Entry("Observation", codes.NEWS2_ID_SYSTEM, ident, obs)


def news2_unit(p: ScorePoint, patient_system: str, derived_from: Sequence[Entry] = ()) -> Unit:
    """The NEWS2 Observation and its Patient. The vitals it derives from are referenced by
    identifier (resolved to ``urn:uuid`` when they travel in the same Bundle): they were, or
    will be, delivered by their own units, earlier in the same patient's order."""
    return Unit(p.user_code, "news2", (patient(p.user_code, patient_system),
                                       news2_observation(p, patient_system, derived_from)))

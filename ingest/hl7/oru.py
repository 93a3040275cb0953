"""ORU^R01 (HL7 v2.6, IHE PCD-01 "Communicate PCD Data", DEC profile) of readings and scores.

One message per contract reading (one device, one event time: every vital it carried) and one
per emitted NEWS2 point, composed as python-hl7 containers (segments, fields, repetitions,
components, subcomponents: the library places every separator) and rendered by it. Free text
goes through :func:`ingest.hl7.text.field_text`; every value is bounded to its v2.6 length.

:func:`validate_v26` parses a message with hl7apy at its strict level (every value against its
data type and length) and validates it against the v2.6 ORU_R01 structure: the tests run it on
every kind of message; ``validate=True`` runs it as each is built. It is not on by default:
it takes 100-300x as long as building (benchmarks/hl7_out.py, docs/benchmarks.md), too slow
for a ward's stream.

The message control id (MSH-10) is derived from what the message is about (the reading's
patient, device, seq, event time and values; the point's patient, history row and time), never
from a counter or a clock, so the same item built again, or sent again, has the same id and a
receiver recognises a resend. The message text itself is built once, when its outbox row is
written, and sent verbatim on every attempt (MSH-7 is the build time, processing time).

Times: OBR-7 and OBX-14 are event time (when measured; for a score, the time of the newest
vital it used); MSH-7 is processing time. All in UTC with an explicit ``+0000`` offset.

docs/hl7.md has the full segment mapping.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import hl7

from ews.score import Score
from ingest.db.readings import StoredReading
from ingest.hl7 import vocab
from ingest.hl7.text import field_text
from vitalgate.contract import DEVICE_ID_RE, USER_CODE_RE, mac_from_device_id, matches

VERSION: Final = "2.6"
#: MSH-21: the IHE PCD-01 message profile (PCD TF-2, "IHE PCD ORU^R01").
PROFILE: Final = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
#: OBR-4: the universal service id IHE PCD uses for periodic monitoring data.
SERVICE: Final = vocab.Coded("182777000", "monitoring of patient", "SCT")
#: MSH-15 / MSH-16: the sender asks for an accept acknowledgment (commit level), never an
#: application acknowledgment (PCD-01's choice: the ACK of the MLLP exchange is the answer).
ACCEPT_ACK: Final = "AL"
APPLICATION_ACK: Final = "NE"
#: OBX-11 of device measurements: "R" (results entered, not verified), as IHE PCD prescribes
#: for unvalidated device data; "X" for a row that carries no value (the blood pressure's
#: compound row); a score is "F" (final) or "P" (preliminary) while partial.
DEVICE_RESULT: Final = "R"
NO_VALUE: Final = "X"
#: bounds of free text (escaped characters); HD namespace ids (IS) hold 20, ST 199 in v2.6.
MAX_NAMESPACE: Final = 20
MAX_TEXT: Final = 199
#: a comment (NTE-3, FT): the score's causes and missing inputs, at most this long.
MAX_COMMENT: Final = 1000
#: an ISO object identifier (assigning authority / facility given as an OID).
_OID: Final = re.compile(r"[0-2](\.(0|[1-9][0-9]*)){1,40}")

Kind = Literal["vitals", "ews"]


@dataclass(frozen=True, slots=True)
class OruConfig:
    """What the hospital configures (settings ``hl7_facility``, ``hl7_patient_authority``)."""

    #: MSH-4 sending facility: a namespace id (up to 20 characters) or an ISO OID.
    facility: str = "vitalgate"
    #: PID-3.4 assigning authority of the patient identifier (user_code): namespace or OID.
    patient_authority: str = "vitalgate"
    #: MSH-3 sending application.
    application: str = "vitalgate"
    #: the EWS chart the engine scores with (settings ``ews_table``): picks the total's code.
    table: str = "news2"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the registry knows of a watch (free text from the device or an API client)."""

    name: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ReadingGroup:
    """One contract reading as stored: every vital one device measured at one time."""

    user_code: str
    device_id: str
    gateway_id: str | None
    ts: int  #: event time (epoch ms)
    seq: int | None
    source: str
    vitals: tuple[tuple[str, float], ...]
    ward: str | None = None
    bed: str | None = None
    device: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One emitted EWS point: the score (the one score type, e.g. an
    ``ingest.ews_engine.EwsPoint``), its history row, and where the patient is."""

    score: Score
    history_id: int | None = None
    ward: str | None = None
    bed: str | None = None

    @property
    def components(self) -> list[tuple[str, int]]:
        """The sub-scores by parameter name (the message's and the control id's order)."""
        return sorted(self.score.components.items())


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """A built message: its control id, whose it is (the outbox's ordering key), its text."""

    control_id: str
    user_code: str
    er7: str  #: segments separated by CR, no MLLP framing
    kind: Kind | None = None  #: what it reports (None: read back from the outbox)

    def to_bytes(self) -> bytes:
        return self.er7.encode("utf-8")


class BuildError(ValueError):
    """An item that cannot become a message (e.g. no patient); ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ------------------------------------------------------------------------------- values


def dtm(epoch_ms: int) -> str:
    """HL7 DTM in UTC with milliseconds and offset: ``20261201231800.123+0000``."""
    t = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return t.strftime("%Y%m%d%H%M%S") + f".{epoch_ms % 1000:03d}+0000"


def number(value: float) -> str:
    """An NM value: at most 4 decimals, no trailing zeros (72, 36.8, 97.25)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def eui64(device_id: str) -> str:
    """The device's EUI-64 from its MAC-48 (IEEE's mapping: FFFE inserted after the OUI)."""
    return (device_id[:6] + "fffe" + device_id[6:]).upper()


def control_id(*parts: object) -> str:
    """A stable 20-character MSH-10 from what the message is about (fits v2.5's ST(20) too)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return "VG" + digest[:18].upper()


# ------------------------------------------------------------------------------- building

#: a field as given to :func:`_segment`: a leaf string; a tuple of components (each a string or
#: a tuple of subcomponents); a list of repetitions (each such a tuple).
Value = str | tuple[Any, ...] | list[tuple[Any, ...]]


def _field(m: Any, v: Value) -> Any:
    if isinstance(v, str):
        return v
    reps = v if isinstance(v, list) else [v]
    return m.create_field([
        m.create_repetition([m.create_component(list(c)) if isinstance(c, tuple) else c
                             for c in rep])
        for rep in reps])


def _segment(m: Any, name: str, fields: Mapping[int, Value]) -> None:
    """Append segment ``name`` with ``fields`` by position (1-based; the rest empty)."""
    width = max(fields) if fields else 0
    m.append(m.create_segment([name, *(_field(m, fields.get(i, "")) for i in range(1, width + 1))]))


def _trim(v: tuple[Any, ...]) -> tuple[Any, ...]:
    """A component tuple without its empty tail (``a^b^^`` is ``a^b``)."""
    n = len(v)
    while n > 1 and v[n - 1] in ("", ()):
        n -= 1
    return v[:n]


def _hd(value: str) -> str | tuple[str, ...]:
    """An HD (hierarchic designator): an OID as universal id (type ISO), else a namespace id."""
    if _OID.fullmatch(value) is not None and len(value) <= MAX_TEXT:
        return ("", value, "ISO")
    return field_text(value, MAX_NAMESPACE)


def hd(value: str, sep: str = "^") -> str:
    """:func:`_hd` as text: ``sep`` joins its parts (``&`` where the HD is a component)."""
    v = _hd(value)
    return v if isinstance(v, str) else sep.join(v)


def _cwe(c: vocab.Coded | vocab.Unit) -> tuple[str, ...]:
    return tuple(c.cwe().split("^"))


def _header(m: Any, config: OruConfig, control: str, now_ms: int) -> None:
    # MSH-1 / MSH-2 are the separators themselves (python-hl7 renders the MSH specially)
    _segment(m, "MSH", {1: "|", 2: "^~\\&", 3: field_text(config.application, MAX_NAMESPACE),
                        4: _hd(config.facility), 7: dtm(now_ms), 9: ("ORU", "R01", "ORU_R01"),
                        10: control, 11: "P", 12: VERSION, 15: ACCEPT_ACK, 16: APPLICATION_ACK,
                        18: "UNICODE UTF-8", 21: tuple(PROFILE.split("^"))})


def _patient(m: Any, config: OruConfig, user_code: str, ward: str | None,
             bed: str | None) -> None:
    if not matches(USER_CODE_RE, user_code):
        raise BuildError("user_code", f"{user_code!r} is not a user code")
    # PI: patient internal identifier (the Cexup user_code) of the configured authority; the
    # name is not known to vitalgate (and stays where it is): XPN-7 name type U, unspecified
    _segment(m, "PID", {1: "1", 3: (field_text(user_code, MAX_TEXT), "", "",
                                    _hd(config.patient_authority), "PI"),
                        5: ("", "", "", "", "", "", "U")})
    if ward:
        # inpatient (the watches are worn on a ward); PV1-3 point of care ^ room ^ bed ^ facility
        _segment(m, "PV1", {1: "1", 2: "I", 3: (field_text(ward, MAX_NAMESPACE), "",
                                                field_text(bed, MAX_NAMESPACE),
                                                _hd(config.facility))})


def _order(m: Any, control: str, ts: int) -> None:
    # OBR-3 filler order number: unique per message; OBR-7: event time
    _segment(m, "OBR", {1: "1", 3: (control, "vitalgate"), 4: _cwe(SERVICE), 7: dtm(ts)})


@dataclass(slots=True)
class _Rows:
    """Adds OBX rows (and their NTE comments) to a message, numbering OBX-1."""

    m: Any
    n: int = 0

    def add(self, *, value_type: str, code: vocab.Coded, sub_id: str, value: Value = "",
            unit: vocab.Unit | None = None, flag: str = "", status: str = DEVICE_RESULT,
            ts: int | None = None, method: vocab.Coded | None = None,
            equipment: Sequence[tuple[str, ...]] = (), comments: Sequence[str] = ()) -> None:
        self.n += 1
        fields: dict[int, Value] = {1: str(self.n), 2: value_type, 3: _cwe(code), 4: sub_id,
                                    5: value, 11: status}
        if unit is not None:
            fields[6] = _cwe(unit)
        if flag:
            fields[8] = flag
        if ts is not None:
            fields[14] = dtm(ts)
        if method is not None:
            fields[17] = _cwe(method)
        if equipment:
            fields[18] = list(equipment)
        _segment(self.m, "OBX", fields)
        for i, text in enumerate(comments, start=1):
            _segment(self.m, "NTE", {1: str(i), 3: text})


def _start(config: OruConfig, control: str, now_ms: int, user_code: str, ward: str | None,
           bed: str | None, ts: int) -> Any:
    """A message's MSH, PID (and PV1) and OBR: whom it is about and the event time ``ts``."""
    m = hl7.Message("\r", [])
    _header(m, config, control, now_ms)
    _patient(m, config, user_code, ward, bed)
    _order(m, control, ts)
    return m


def _finish(m: Any, control: str, user_code: str, kind: Kind, validate: bool) -> Hl7Message:
    er7 = str(m)
    if validate:
        validate_v26(er7)
    return Hl7Message(control, user_code, er7, kind)


def validate_v26(er7: str) -> None:
    """Parse ``er7`` with hl7apy (strict: data types and lengths) and validate it against the
    HL7 v2.6 structure its MSH-9 names; raises hl7apy's error naming the element otherwise."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT).validate()


def reading_control_id(g: ReadingGroup) -> str:
    vitals = ",".join(f"{k}={v!r}" for k, v in sorted(g.vitals))
    return control_id("vitals", g.user_code, g.device_id, g.seq, g.ts, g.source, vitals)


def build_reading(g: ReadingGroup, config: OruConfig, now_ms: int, *,
                  validate: bool = False) -> Hl7Message:
    """The ORU^R01 of one reading: one OBX per vital (blood pressure: a compound row and its
    systolic / diastolic facets), then the device's model and name."""
    if not matches(DEVICE_ID_RE, g.device_id):
        raise BuildError("device_id", f"{g.device_id!r} is not a device id")
    if not g.vitals:
        raise BuildError("vitals", "a reading without vitals")
    control = reading_control_id(g)
    m = _start(config, control, now_ms, g.user_code, g.ward, g.bed, g.ts)
    equipment = [(eui64(g.device_id), "", eui64(g.device_id), "EUI-64"),
                 (mac_from_device_id(g.device_id), "MAC")]
    if g.gateway_id:
        equipment.append((field_text(g.gateway_id, MAX_TEXT), "VITALGATE-GATEWAY"))
    method = vocab.MANUAL_MEASUREMENT if g.source == "manual" else vocab.AUTO_MEASUREMENT
    rows = _Rows(m)
    values = dict(g.vitals)
    metric = 0
    for name in vocab.ORDER:
        if name == "blood_pressure":
            facets = [(c, values[v]) for c, v in ((vocab.BP_SYS, "systolic_bp"),
                                                  (vocab.BP_DIA, "diastolic_bp")) if v in values]
            if not facets:
                continue
            metric += 1
            sub = f"1.1.1.{metric}"
            rows.add(value_type="", code=vocab.BP, sub_id=sub, status=NO_VALUE, ts=g.ts,
                     method=method, equipment=equipment)
            for k, (code, value) in enumerate(facets, start=1):
                rows.add(value_type="NM", code=code, sub_id=f"{sub}.{k}", value=number(value),
                         unit=vocab.MM_HG, ts=g.ts, method=method, equipment=equipment)
            continue
        if name not in values:
            continue
        metric += 1
        if name == "heart_rate":
            code, unit = vocab.heart_rate_code(g.source), vocab.PER_MIN
        else:
            code, unit = vocab.SIMPLE[name]
        rows.add(value_type="NM", code=code, sub_id=f"1.1.1.{metric}", value=number(values[name]),
                 unit=unit, ts=g.ts, method=method, equipment=equipment)
    if rows.n == 0:
        raise BuildError("vitals", f"no known vital in {sorted(values)}")
    if g.device.model:
        rows.add(value_type="ST", code=vocab.MODEL, sub_id="1",
                 value=field_text(g.device.model, MAX_TEXT), equipment=equipment[:1])
    if g.device.name:
        rows.add(value_type="ST", code=vocab.DEVICE_NAME, sub_id="1",
                 value=field_text(g.device.name, MAX_TEXT), equipment=equipment[:1])
    return _finish(m, control, g.user_code, "vitals", validate)


def score_control_id(item: ScoreItem) -> str:
    s = item.score
    comps = ",".join(f"{k}={v}" for k, v in item.components)
    return control_id("ews", s.user_code, item.history_id, s.produce_at, s.point, s.risk, comps)


def build_score(item: ScoreItem, config: OruConfig, now_ms: int, *,
                validate: bool = False) -> Hl7Message:
    """The ORU^R01 of one EWS point: the total (with the risk band's abnormal flag, the causes
    and missing inputs as comments), the risk band, one row per sub-score."""
    s = item.score
    if s.risk not in vocab.RISK:
        raise BuildError("risk", f"{s.risk!r} is not a risk band")
    if not 0 <= s.point <= 99:
        raise BuildError("point", f"{s.point} is not a score")
    if s.produce_at is None:
        raise BuildError("produce_at", "a score without an event time (no vitals)")
    control = score_control_id(item)
    m = _start(config, control, now_ms, s.user_code, item.ward, item.bed, s.produce_at)
    band_text, flag = vocab.RISK[s.risk]
    status = "P" if s.partial else "F"
    comments = []
    if s.cause:
        comments.append(field_text("cause: " + "; ".join(s.cause), MAX_COMMENT))
    if s.missing:
        comments.append(field_text("partial, missing: " + ", ".join(s.missing), MAX_COMMENT))
    rows = _Rows(m)
    rows.add(value_type="NM", code=vocab.total_code(config.table), sub_id="1",
             value=str(int(s.point)), unit=vocab.SCORE, flag=flag, status=status,
             ts=s.produce_at, comments=comments)
    word = field_text(s.result, MAX_NAMESPACE)
    band = _trim((s.risk, band_text, vocab.LOCAL, word, word if word else "",
                  vocab.CEXUP if word else ""))
    rows.add(value_type="CWE", code=vocab.RISK_BAND, sub_id="2", value=band, status=status,
             ts=s.produce_at)
    for k, (name, points) in enumerate(item.components, start=1):
        code = vocab.subscore_code(config.table, field_text(name, 40))
        rows.add(value_type="NM", code=code, sub_id=f"3.{k}", value=str(int(points)),
                 unit=vocab.SCORE, status=status, ts=s.produce_at)
    return _finish(m, control, s.user_code, "ews", validate)


# ------------------------------------------------------------------------------- inputs


def group_readings(rows: Iterable[StoredReading], *, ward_of: Mapping[str, str] | None = None,
                   devices: Mapping[str, DeviceInfo] | None = None) -> list[ReadingGroup]:
    """Committed reading rows (one per vital) → one group per reading, in the rows' order of
    first appearance. Rows without a patient are left out."""
    groups: dict[tuple[str, str, str | None, int, int | None, str], list[StoredReading]] = {}
    for r in rows:
        if not r.user_code:
            continue
        key = (r.user_code, r.device_id, r.gateway_id, r.ts, r.seq, r.source)
        groups.setdefault(key, []).append(r)
    ward_of, devices = ward_of or {}, devices or {}
    out = []
    for (user_code, device_id, gateway_id, ts, seq, source), members in groups.items():
        out.append(ReadingGroup(
            user_code=user_code, device_id=device_id, gateway_id=gateway_id, ts=ts,
            seq=seq, source=source, vitals=tuple((r.vital, r.value) for r in members),
            ward=ward_of.get(gateway_id) if gateway_id else None,
            device=devices.get(device_id, DeviceInfo())))
    return out


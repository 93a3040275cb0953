"""The MQTT contract between gateways and the ingestion service (version 1).

This is the ONE module that the gateway, the simulators and the ingestion service share:
topic names, payload models and their JSON codec. ``docs/mqtt.md`` documents it for third-party
gateways. Extend it only with new optional fields or new message kinds; never break version 1.

Payload models are pydantic models that ignore unknown fields (the contract says so) and
reject wrong types, unknown versions and implausible values with an error naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ews.score import Result, Risk, Score

VERSION: Final = 1
DEFAULT_PREFIX: Final = "vitals/v1"
MAX_PAYLOAD_BYTES: Final = 256 * 1024
#: the deepest nesting of arrays and objects a payload may have. A contract payload needs 3
#: (an array of readings, a reading, its vitals); the bound is checked by a linear scan BEFORE
#: ``json.loads`` so that no recursion limit is ever the guard (``[`` × 100 000 would otherwise
#: raise RecursionError inside the parser).
MAX_JSON_DEPTH: Final = 16
QOS: Final = 1

# Bounds of integers, strings and lists (the store holds signed 64-bit integers; every bound
# below is far inside that and still far beyond anything a real gateway sends).
#: readings in one reading payload (an array): 256 KiB hold ~1 300 full readings; the bound
#: stops 80 000 tiny junk items (``{}``) from becoming 80 000 dead letters.
MAX_READINGS_PER_MESSAGE: Final = 2_000
#: an ECG chunk's index within its recording (600 s at 10 kHz in 100-sample chunks is 60 000).
MAX_ECG_CHUNK_SEQ: Final = 65_535
#: samples in one ECG chunk (gateways send 10..5 000).
MAX_ECG_CHUNK_SAMPLES: Final = 10_000
#: received signal strength (dBm): Bluetooth LE's RSSI is a signed byte, -127..+20 by spec.
RSSI_RANGE: Final = (-127, 20)
#: devices one gateway may report, and its buffer counters (fit a signed 32-bit integer).
MAX_GATEWAY_DEVICES: Final = 100_000
MAX_COUNTER: Final = 2**31 - 1
#: free-text fields: device name, model, gateway version.
MAX_NAME_CHARS: Final = 128
MAX_MODEL_CHARS: Final = 128
MAX_VERSION_CHARS: Final = 64
#: an EWS's cause list (one per scored parameter, ~10 in NEWS2), missing list, components.
MAX_EWS_ITEMS: Final = 32
MAX_EWS_ITEM_CHARS: Final = 200

GATEWAY_ID_RE: Final = re.compile(r"^[a-z0-9-]{1,64}$")
DEVICE_ID_RE: Final = re.compile(r"^[0-9a-f]{12}$")
USER_CODE_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: a buffer's stream identity: 16 lower-case hex digits (64 random bits), made once when a
#: gateway's buffer is created. (device_id, stream, seq) names a reading across buffer resets:
#: a deleted or replaced buffer starts a new stream, so its seq 0 is never taken for the old one's.
STREAM_RE: Final = re.compile(r"^[0-9a-f]{16}$")
#: an ECG recording's name (gateways use ``{device_id}-{start_ms}``).
RECORDING_RE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: a MAC address in any common spelling: colons, dashes or none, any case.
MAC_RE: Final = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")
# Every identifier pattern is matched WHOLE: Python's ``re.match`` with ``$`` lets a trailing
# newline through ("abc\n" matches ``^abc$``), so code checks with :func:`matches` (fullmatch);
# pydantic's patterns (Rust regex, where ``$`` is the end of the text) are whole too.

GatewayId = Annotated[str, StringConstraints(pattern=GATEWAY_ID_RE.pattern)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
UserCode = Annotated[str, StringConstraints(pattern=USER_CODE_RE.pattern)]
StreamId = Annotated[str, StringConstraints(pattern=STREAM_RE.pattern)]
#: a per-stream sequence number: fits SQLite's and PostgreSQL's signed 64-bit integers with room
#: (2**53 also keeps it exact in every JSON implementation).
Seq = Annotated[int, Field(ge=0, le=2**53)]
EpochMs = Annotated[int, Field(ge=0, lt=10**14)]
Recording = Annotated[str, StringConstraints(pattern=RECORDING_RE.pattern)]
Mac = Annotated[str, StringConstraints(pattern=MAC_RE.pattern)]
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
EwsWord = Annotated[str, StringConstraints(max_length=MAX_EWS_ITEM_CHARS)]


def matches(pattern: re.Pattern[str], value: object) -> bool:
    """Whether ``value`` is a string matching ``pattern`` as a whole (``fullmatch``)."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None

# Physiological plausibility: a value outside these closed ranges is not a measurement of a
# living patient but a sensor error, and is rejected rather than stored or scored.
# Units are the contract's: /min, %, mmHg, °C.
PLAUSIBLE: Final[dict[str, tuple[float, float]]] = {
    "heart_rate": (20.0, 300.0),
    "spo2": (50.0, 100.0),
    "systolic_bp": (40.0, 300.0),
    "diastolic_bp": (20.0, 200.0),
    "temperature": (25.0, 45.0),
    "respiratory_rate": (2.0, 80.0),
}
VITALS: Final = tuple(PLAUSIBLE)


class Source(StrEnum):
    REALTIME = "realtime"
    HISTORY = "history"
    ECG = "ecg"
    MANUAL = "manual"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON, omitting absent optional fields."""
        return self.model_dump_json(exclude_none=True).encode()


class Vitals(BaseModel):
    """Any non-empty subset of the six vitals; absent means not measured (never 0 or null)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    heart_rate: float | None = None
    spo2: float | None = None
    systolic_bp: float | None = None
    diastolic_bp: float | None = None
    temperature: float | None = None
    respiratory_rate: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Vitals:
        present = self.present()
        if not present:
            raise ValueError("vitals is empty: at least one vital is required")
        for name, value in present.items():
            low, high = PLAUSIBLE[name]
            if not (low <= value <= high):  # also false for NaN
                raise ValueError(f"vitals.{name}={value} is outside the plausible range {low}..{high}")
        return self

    def present(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Reading(_Message):
    device_id: DeviceId
    seq: Seq
    ts: EpochMs
    vitals: Vitals
    source: Source = Source.REALTIME
    replayed: bool = False
    user_code: UserCode | None = None
    #: the gateway buffer's stream identity; absent for third-party gateways without one
    #: (their readings are one stream per device, as in contract version 1 without it)
    stream: StreamId | None = None


class EcgChunk(_Message):
    device_id: DeviceId
    recording: Recording
    seq: int = Field(ge=0, le=MAX_ECG_CHUNK_SEQ)
    ts: EpochMs
    fs: float = Field(gt=0, le=10_000)
    samples: list[int] = Field(max_length=MAX_ECG_CHUNK_SAMPLES)
    last: bool = False
    user_code: UserCode | None = None

    @field_validator("samples")
    @classmethod
    def _samples_24bit(cls, v: list[int]) -> list[int]:
        for s in v:
            if not -(2**23) <= s < 2**23:
                raise ValueError(f"samples: {s} does not fit a signed 24-bit sample")
        return v


class DeviceStatus(_Message):
    device_id: DeviceId
    name: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)] | None = None
    mac: Mac | None = None
    model: Annotated[str, StringConstraints(max_length=MAX_MODEL_CHARS)] | None = None
    connected: bool
    battery: Annotated[int, Field(ge=0, le=100)] | None = None
    rssi: Annotated[int, Field(ge=RSSI_RANGE[0], le=RSSI_RANGE[1])] | None = None
    last_seen: EpochMs | None = None
    user_code: UserCode | None = None


class GatewayStatus(_Message):
    online: bool
    gateway_id: GatewayId | None = None
    version: Annotated[str, StringConstraints(max_length=MAX_VERSION_CHARS)] | None = None
    devices: Annotated[int, Field(ge=0, le=MAX_GATEWAY_DEVICES)] | None = None
    buffered: Counter | None = None
    evicted: Counter | None = None
    ts: EpochMs | None = None


#: the most readings one ``republish`` command may ask for (larger gaps take several commands).
MAX_REPUBLISH: Final = 10_000


class Command(_Message):
    """ingest → gateway. ``ecg``: record for ``seconds``; ``sync``: read the watch's history;
    ``republish``: publish again, from the buffer if still there, this device's readings of
    ``stream`` with ``from_seq <= seq <= to_seq`` (a gap ingest detected)."""

    cmd: Literal["ecg", "sync", "republish"]
    device_id: DeviceId
    seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    stream: StreamId | None = None
    from_seq: Seq | None = None
    to_seq: Seq | None = None

    @model_validator(mode="after")
    def _range(self) -> Command:
        if self.cmd == "republish":
            if self.stream is None or self.from_seq is None or self.to_seq is None:
                raise ValueError("republish needs stream, from_seq and to_seq")
            if not 0 <= self.to_seq - self.from_seq < MAX_REPUBLISH:
                raise ValueError(f"republish range {self.from_seq}..{self.to_seq} is empty or "
                                 f"longer than {MAX_REPUBLISH}")
        return self


class Ews(_Message):
    """The Cexup EWS item plus vitalgate's own fields (risk, partial, missing, components):
    the MQTT serialiser of ``ews.score.Score`` (its words are ews's Result and Risk)."""

    user_code: UserCode
    point: int = Field(ge=0, le=30)
    result: Result
    cause: list[EwsWord] = Field(default_factory=list, max_length=MAX_EWS_ITEMS)
    produce_at: EpochMs
    risk: Risk | None = None
    partial: bool | None = None
    missing: list[EwsWord] | None = Field(default=None, max_length=MAX_EWS_ITEMS)
    components: dict[EwsWord, Annotated[int, Field(ge=0, le=3)]] | None = Field(
        default=None, max_length=MAX_EWS_ITEMS)

    @classmethod
    def of(cls, score: Score) -> Ews:
        """The MQTT ``{prefix}/ews/{user_code}`` payload of ``score`` (one backed by vitals:
        with an event time)."""
        if score.produce_at is None:
            raise ValueError(f"{score.user_code}: a score of no vitals has no EWS payload")
        return cls(user_code=score.user_code, point=score.point, result=Result(score.result),
                   cause=list(score.cause), produce_at=score.produce_at, risk=Risk(score.risk),
                   partial=score.partial, missing=list(score.missing),
                   components=dict(score.components))


# ---------------------------------------------------------------------------------- topics


class Kind(StrEnum):
    GATEWAY_STATUS = "gateway_status"
    DEVICE_STATUS = "device_status"
    READING = "reading"
    ECG = "ecg"
    CMD = "cmd"
    EWS = "ews"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: which kind of message, from which gateway / device / patient."""

    kind: Kind
    gateway_id: str | None = None
    device_id: str | None = None
    user_code: str | None = None


class ContractError(ValueError):
    """A topic or payload that breaks the contract. ``reason`` is a short stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def gateway_status(self, gateway_id: str) -> str:
        return f"{self.prefix}/{gateway_id}/status"

    def device_status(self, gateway_id: str, device_id: str) -> str:
        return f"{self.prefix}/{gateway_id}/{device_id}/status"

    def reading(self, gateway_id: str, device_id: str) -> str:
        return f"{self.prefix}/{gateway_id}/{device_id}/reading"

    def ecg(self, gateway_id: str, device_id: str) -> str:
        return f"{self.prefix}/{gateway_id}/{device_id}/ecg"

    def cmd(self, gateway_id: str) -> str:
        return f"{self.prefix}/{gateway_id}/cmd"

    def ews(self, user_code: str) -> str:
        return f"{self.prefix}/ews/{user_code}"

    def gateway_subscriptions(self) -> list[str]:
        """What the ingestion service subscribes to (everything gateways publish)."""
        return [f"{self.prefix}/+/status", f"{self.prefix}/+/+/status",
                f"{self.prefix}/+/+/reading", f"{self.prefix}/+/+/ecg"]

    def parse(self, topic: str) -> Topic:
        if not topic.startswith(self.prefix + "/"):
            raise ContractError("topic", f"{topic!r} is not under prefix {self.prefix!r}")
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) == 2 and parts[0] == "ews":
            _check(USER_CODE_RE, parts[1], "user_code")
            return Topic(Kind.EWS, user_code=parts[1])
        if len(parts) == 2 and parts[1] in ("status", "cmd"):
            _check(GATEWAY_ID_RE, parts[0], "gateway_id")
            kind = Kind.GATEWAY_STATUS if parts[1] == "status" else Kind.CMD
            return Topic(kind, gateway_id=parts[0])
        if len(parts) == 3 and parts[2] in ("status", "reading", "ecg"):
            _check(GATEWAY_ID_RE, parts[0], "gateway_id")
            _check(DEVICE_ID_RE, parts[1], "device_id")
            kind = {"status": Kind.DEVICE_STATUS, "reading": Kind.READING, "ecg": Kind.ECG}[parts[2]]
            return Topic(kind, gateway_id=parts[0], device_id=parts[1])
        raise ContractError("topic", f"{topic!r} is not a contract topic")


def _check(pattern: re.Pattern[str], value: str, name: str) -> None:
    if not matches(pattern, value):
        raise ContractError("topic", f"{name} {value!r} does not match {pattern.pattern}")


# ---------------------------------------------------------------------------------- payloads

_MODELS: Final[dict[Kind, type[_Message]]] = {
    Kind.GATEWAY_STATUS: GatewayStatus,
    Kind.DEVICE_STATUS: DeviceStatus,
    Kind.READING: Reading,
    Kind.ECG: EcgChunk,
    Kind.CMD: Command,
    Kind.EWS: Ews,
}
_READINGS = TypeAdapter(list[Reading])


def json_depth(payload: bytes | str, limit: int | None = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of arrays/objects in JSON ``payload``, without parsing it: brackets
    inside strings do not count (a quote is a string's edge unless an odd run of backslashes
    precedes it). Vectorised over the UTF-8 bytes (no multi-byte character contains these
    ASCII bytes), linear, no recursion: the one depth guard of MQTT payloads (load_json) and
    REST bodies (ingest.api.envelope.read_json). On text that is not JSON the count can only
    be wrong after the first thing a parser would refuse, so it never understates what a
    parser would reach. Exact up to ``limit``; deeper is reported as ``limit + 1`` (``None``:
    always exact). Not a validator: json.loads is.

    Measured against the former regex scan (docs/benchmarks.md, "One JSON depth guard"): ~18×
    faster on a 256 KiB reading array, ~10× on a 1 MiB device body; only ``[`` × 500 000 at the
    very start is faster to refuse by a left-to-right scan that stops at the limit (9 ms here,
    3 µs there). :func:`json_too_deep` spares small payloads the scan."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if not raw:
        return 0
    b = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(b == 34)
    if quotes.size and b"\\" in raw:  # drop quotes after an odd run of backslashes
        plain = np.flatnonzero(b != 92)  # sorted; every quote is in it
        at = np.searchsorted(plain, quotes)
        before = plain[at - 1]  # the plain byte before each quote
        run = np.where(at > 0, quotes - before - 1, quotes)
        quotes = quotes[run % 2 == 0]
    opens = np.flatnonzero((b == 91) | (b == 123))
    if not opens.size:
        return 0
    closes = np.flatnonzero((b == 93) | (b == 125))
    # a bracket is outside strings iff an even number of quotes precedes it
    opens = opens[np.searchsorted(quotes, opens) % 2 == 0]
    closes = closes[np.searchsorted(quotes, closes) % 2 == 0]
    if not opens.size:
        return 0
    if opens.size + closes.size < b.size // 8:  # few brackets (real bodies): sort just them
        positions = np.concatenate((opens, closes))
        steps = np.concatenate((np.ones(opens.size, np.int32), -np.ones(closes.size, np.int32)))
        steps = steps[np.argsort(positions, kind="stable")]
    else:  # mostly brackets (hostile): one dense pass
        steps = np.zeros(b.size, dtype=np.int32)
        steps[opens] = 1
        steps[closes] = -1
    depth = max(0, int(np.cumsum(steps, dtype=np.int32).max()))
    return depth if limit is None else min(depth, limit + 1)


def json_too_deep(payload: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``payload`` nests arrays/objects deeper than ``limit``: the guard before a parse.
    A payload with no more ``[``/``{`` than ``limit`` cannot (two counts at C speed: every real
    MQTT message and most REST bodies), so :func:`json_depth` scans only the others."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return json_depth(raw, limit) > limit


def load_json(payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a payload as JSON, enforcing the size and nesting limits BEFORE parsing;
    ContractError names what is wrong."""
    if len(payload) > max_bytes:
        raise ContractError("oversize", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    if json_too_deep(payload, max_depth):
        raise ContractError("json", f"payload nests arrays/objects deeper than {max_depth}")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError("json", f"payload is not UTF-8 JSON ({str(exc)[:200]})") from None
    except RecursionError:  # unreachable after the depth scan; kept so no parser quirk escapes
        raise ContractError("json", f"payload nests deeper than {max_depth}") from None


def _version_of(obj: Any) -> None:
    if isinstance(obj, dict) and "v" in obj and obj["v"] != VERSION:
        raise ContractError("version", f"unknown contract version v={repr(obj['v'])[:40]}")


def validation_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode(kind: Kind, payload: bytes) -> _Message:
    """Decode one non-reading message of ``kind``."""
    obj = load_json(payload)
    _version_of(obj)
    try:
        return _MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        raise ContractError("schema", validation_detail(exc)) from None


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """The readings of one reading payload: the valid ones, and one error per invalid item.

    A reading payload may be a JSON array; one bad item never costs its neighbours.
    """

    readings: list[Reading]
    errors: list[ContractError]


def decode_readings(payload: bytes) -> ReadingBatch:
    obj = load_json(payload)
    if isinstance(obj, list) and len(obj) > MAX_READINGS_PER_MESSAGE:
        raise ContractError("schema", f"reading array of {len(obj)} items exceeds "
                                      f"{MAX_READINGS_PER_MESSAGE}")
    items = obj if isinstance(obj, list) else [obj]
    good: list[Reading] = []
    bad: list[ContractError] = []
    for i, item in enumerate(items):
        where = f"item {i}: " if isinstance(obj, list) else ""
        try:
            _version_of(item)
            good.append(Reading.model_validate(item))
        except ContractError as exc:
            bad.append(ContractError(exc.reason, where + exc.detail))
        except ValidationError as exc:
            bad.append(ContractError("schema", where + validation_detail(exc)))
    if isinstance(obj, list) and not obj:
        bad.append(ContractError("schema", "reading array is empty"))
    return ReadingBatch(good, bad)


def encode_readings(readings: list[Reading]) -> bytes:
    """One reading as an object, several as a JSON array."""
    if len(readings) == 1:
        return readings[0].to_bytes()
    return _READINGS.dump_json(readings, exclude_none=True)


# ---------------------------------------------------------------------------------- identities


def device_id_from_mac(mac: str) -> str:
    """``D0:61:AE:D4:58:94`` (any separator, any case) → ``d061aed45894``."""
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", mac).lower()
    if len(hexdigits) != 12 or len(mac) not in (12, 14, 17):
        raise ValueError(f"not a MAC address: {mac!r}")
    return hexdigits


def mac_from_device_id(device_id: str) -> str:
    """``d061aed45894`` → ``D0:61:AE:D4:58:94``."""
    if not matches(DEVICE_ID_RE, device_id):
        raise ValueError(f"not a device id: {device_id!r}")
    return ":".join(device_id[i : i + 2] for i in range(0, 12, 2)).upper()


def normalise_mac(mac: str) -> str:
    """Any MAC spelling → upper-case colon form."""
    return mac_from_device_id(device_id_from_mac(mac))

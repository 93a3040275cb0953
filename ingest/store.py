"""The readings store's domain: what a batch holds, the group commit, the API's record shapes.

The tables, connections and SQL are ingest/db's (:mod:`ingest.db.readings`, :mod:`ingest.db.ecg`,
:mod:`ingest.db.dead_letters`, :mod:`ingest.db.gaps`; set up by :mod:`ingest.db.schema`);
this module decides what to write and shapes what is read, the same on SQLite and PostgreSQL.
Functions take a :class:`ingest.db.Conn` and run inside the caller's transaction.

Readings are stored one row per vital; the identities that make QoS 1 redeliveries harmless
are described in :mod:`ingest.db.readings`. ECG chunks wait until chunks ``0..n`` and the
``last`` one are present; they are then reassembled into one recording whose samples are
int32 little-endian.

Event time vs processing time: a reading is *late* by ``received_at - ts``; it is accepted
when its event time lies in the window ``now - max_reading_age .. now + max_future_skew``
(``now`` is processing time, the consumer's clock at commit): outside it, a ``too_old``
dead letter (``future`` is the consumer's, at classification). On PostgreSQL the readings
partitions cover that window; a reading whose day has no partition (the maintenance task
behind) is a ``no_partition`` dead letter: counted and kept, never lost silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np

from ingest import registry
from ingest.db import Conn, Dialect, Location, gaps, schema
from ingest.db import Database as _Database
from ingest.db import dead_letters as dl
from ingest.db import ecg as ecg_db
from ingest.db import readings as readings_db
from ingest.db.dead_letters import DeadLetter as DeadLetter
from ingest.db.engine import StoreOpenError as StoreOpenError
from ingest.db.readings import StoredReading as StoredReading
from vitalgate.contract import (
    MAX_ECG_CHUNK_SEQ,
    DeviceStatus,
    EcgChunk,
    GatewayStatus,
    Reading,
    Source,
    mac_from_device_id,
)

#: ``readings.flags``: measured (``ts``) more than ``late_after_ms`` before it arrived
#: (``received_at``): buffered, replayed, a history sync, or a clock behind.
FLAG_LATE: Final = 1
#: late although a live (realtime, not replayed) measurement: the watch's or the gateway's
#: clock is behind; the reading is kept and scored by its own timestamp, but suspect.
FLAG_CLOCK_SUSPECT: Final = 2
#: default of ``IngestSettings.late_after_s`` (ms).
LATE_AFTER_MS: Final = 3_600_000
#: default of ``IngestSettings.max_reading_age_days`` (ms): the oldest event time accepted.
MAX_READING_AGE_MS: Final = 90 * 86_400_000

#: Cexup medical-record types → the contract's vitals (BLOOD_PRESSURE pairs two) and units.
RECORD_TYPES: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "TEMPERATURE": (("temperature",), "°C"),
    "HEART_RATE": (("heart_rate",), "/min"),
    "BLOOD_PRESSURE": (("systolic_bp", "diastolic_bp"), "mmHg"),
    "BLOOD_OXYGEN": (("spo2",), "%"),
    "RESPIRATION": (("respiratory_rate",), "/min"),
}
ECG_TYPE: Final = "ELECTROCARDIOGRAPH"
VITAL_TYPE: Final[dict[str, str]] = {
    "temperature": "TEMPERATURE", "heart_rate": "HEART_RATE", "systolic_bp": "BLOOD_PRESSURE",
    "spo2": "BLOOD_OXYGEN", "respiratory_rate": "RESPIRATION",
}


# ------------------------------------------------------------------------- what a batch holds


# DeadLetter lives in ingest.dead_letters (imported above, so store.DeadLetter still names it);
# StoredReading, one committed vital (a row of readings), in ingest.db.readings, likewise.
# ``topic``/``payload`` on the items below: the message they came from, for the dead letter
# written when the store refuses them (foreign_device, ecg_too_large, store_error).


@dataclass(frozen=True, slots=True)
class ReadingsIn:
    gateway_id: str
    device_id: str
    readings: list[Reading]
    received_at: int
    topic: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class DeviceStatusIn:
    gateway_id: str
    status: DeviceStatus
    received_at: int
    topic: str = ""
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class GatewayStatusIn:
    gateway_id: str
    status: GatewayStatus
    received_at: int


@dataclass(frozen=True, slots=True)
class EcgChunkIn:
    gateway_id: str
    chunk: EcgChunk
    received_at: int
    topic: str = ""
    payload: bytes = b""


Item = DeadLetter | ReadingsIn | DeviceStatusIn | GatewayStatusIn | EcgChunkIn


@dataclass(frozen=True, slots=True)
class CompletedRecording:
    id: int
    device_id: str
    recording: str
    user_code: str | None
    gateway_id: str | None
    ts: int
    fs: float


@dataclass(slots=True)
class CommitResult:
    readings: list[StoredReading] = field(default_factory=list)
    duplicates: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    recordings: list[CompletedRecording] = field(default_factory=list)
    newest_received: int = 0
    #: per device: the union of the flags of its late readings in this batch
    late: dict[str, int] = field(default_factory=dict)
    #: late readings of the batch by flag ("late", "clock_suspect")
    late_counts: dict[str, int] = field(default_factory=dict)
    gaps: gaps.Update = field(default_factory=gaps.Update)
    #: dead letters already kept (same topic, payload, reason, detail): counted, not stored
    dead_repeats: int = 0
    #: dead letters evicted (oldest first) to keep the table within its bounds
    dead_evicted: int = 0
    #: the table's size after this commit (None when this commit wrote no dead letter)
    dead_stats: dl.Stats | None = None
    #: partial ECG chunks discarded because their recording exceeded the size cap
    ecg_discarded: int = 0

    def merge(self, other: CommitResult) -> None:
        """Add ``other`` (a part of the same transaction) to this result."""
        self.readings += other.readings
        self.duplicates += other.duplicates
        self.dead += other.dead
        self.recordings += other.recordings
        self.newest_received = max(self.newest_received, other.newest_received)
        self.dead_repeats += other.dead_repeats
        self.dead_evicted += other.dead_evicted
        self.dead_stats = other.dead_stats or self.dead_stats
        self.ecg_discarded += other.ecg_discarded
        for device_id, flags in other.late.items():
            self.late[device_id] = self.late.get(device_id, 0) | flags
        for flag, n in other.late_counts.items():
            self.late_counts[flag] = self.late_counts.get(flag, 0) + n
        self.gaps.add(other.gaps)


@dataclass(frozen=True, slots=True)
class EcgLimits:
    """The size cap of one ECG recording (``IngestSettings.ecg_max_*``)."""

    max_chunks: int = MAX_ECG_CHUNK_SEQ + 1
    max_samples: int = 600_000


DEFAULT_ECG_LIMITS: Final = EcgLimits()
DEFAULT_DEAD_LIMITS: Final = dl.Limits()


# --------------------------------------------------------------------------------- database


class Database(_Database):
    """The readings store (an :class:`ingest.db.Database` set up by :mod:`ingest.db.schema`)
    at a SQLite path or any :class:`Location`: for tools and tests that open it by path."""

    def __init__(self, where: Path | Location, *, synchronous: str = "FULL",
                 window: tuple[int, int] | None = None, readonly: bool = False) -> None:
        location = where if isinstance(where, Location) else Location(Dialect.SQLITE, path=where)
        super().__init__(location, setup=schema.make_setup(window=window),
                         synchronous=synchronous, name="ingest", readonly=readonly)


# ------------------------------------------------------------------------------ group commit


def commit_batch(
    conn: Conn, items: Sequence[Item], *, now: int, holder: str,
    dead_limits: dl.Limits = DEFAULT_DEAD_LIMITS,
    ecg_limits: EcgLimits = DEFAULT_ECG_LIMITS,
    late_after_ms: int = LATE_AFTER_MS,
    ward_of: Mapping[str, str] | None = None,
    max_age_ms: int = MAX_READING_AGE_MS,
) -> CommitResult:
    """Write one batch of decoded messages (inside the caller's transaction).

    ``ward_of``: gateway id → ward, from ``roaming_groups`` (devices roam within a ward).
    ``max_age_ms``: a reading measured (event time) before ``now - max_age_ms`` (processing
    time) is a ``too_old`` dead letter; on PostgreSQL one whose day has no partition is a
    ``no_partition`` dead letter (see the module's docstring)."""
    reg: Any = conn  # the registry takes the connection as it is (h13d ports its signatures)
    out = CommitResult()
    arrivals = gaps.Arrivals()
    ecg_touched: set[tuple[str, str]] = set()
    dead: list[DeadLetter] = []
    items, rows, dirty = _owned(conn, items, dead, ward_of or {}, now, holder)
    # statuses first, so that readings of the same batch see a device's newest user_code
    for item in items:
        out.newest_received = max(out.newest_received, item.received_at)
        if isinstance(item, DeadLetter):
            dead.append(item)
        elif isinstance(item, DeviceStatusIn):
            s = item.status
            dirty.add(s.device_id)
            registry.seen_on_mqtt(reg, s.device_id, gateway_id=item.gateway_id, now=now,
                                  holder=holder, last_seen=s.last_seen, status=s)
        elif isinstance(item, GatewayStatusIn):
            g = item.status
            readings_db.upsert_gateway(conn, item.gateway_id, g.online, g.version, g.devices,
                                       g.buffered, g.evicted, g.ts, now)
    # one registry touch per device of the batch
    touched: dict[str, tuple[str, int, str | None]] = {}
    for item in items:
        if isinstance(item, ReadingsIn) and item.readings:
            _, seen, code = touched.get(item.device_id, (item.gateway_id, 0, None))
            for r in item.readings:
                seen = max(seen, r.ts)
                code = r.user_code or code
            touched[item.device_id] = (item.gateway_id, seen, code)
        elif isinstance(item, EcgChunkIn):
            _, seen, code = touched.get(item.chunk.device_id, (item.gateway_id, 0, None))
            touched[item.chunk.device_id] = (item.gateway_id, max(seen, item.chunk.ts),
                                             item.chunk.user_code or code)
    # the rows read by _owned, but read again where this batch wrote (one query for all);
    # devices in one sorted order (two instances' batches: a deadlock is retried by the
    # consumer as a whole batch, but the order makes it rare)
    touched = dict(sorted(touched.items()))
    stale = [d for d in touched if d in dirty or d not in rows]
    rows = {**rows, **registry.lookup(reg, stale)} if stale else rows
    assigned = registry.seen_many(reg, touched, now=now, holder=holder, rows=rows)
    window = _Window(now - max_age_ms, readings_db.partitions(conn))
    pending: list[_Pending] = []
    for item in items:
        if isinstance(item, ReadingsIn):
            dev_code, dev_source = assigned.get(item.device_id, (None, None))
            for r in item.readings:
                refused = window.refuse(r)
                if refused is not None:
                    dead.append(DeadLetter(item.topic, item.payload, refused[0],
                                           f"reading seq {r.seq}: {refused[1]}", item.received_at))
                    continue
                user_code = dev_code if dev_source == "api" else (r.user_code or dev_code)
                pending.append(_Pending(item, r, user_code))
                arrivals.add(r.device_id, r.stream or "", item.gateway_id, r.seq)
        elif isinstance(item, EcgChunkIn):
            dev_code, dev_source = assigned.get(item.chunk.device_id, (None, None))
            code = dev_code if dev_source == "api" else (item.chunk.user_code or dev_code)
            stored = _insert_chunk(conn, item, code, ecg_limits, now)
            if stored is True:
                ecg_touched.add((item.chunk.device_id, item.chunk.recording))
            elif stored is not False:
                discarded, detail = stored
                out.ecg_discarded += discarded
                dead.append(DeadLetter(item.topic, item.payload, "ecg_too_large", detail,
                                       item.received_at))
    _insert_readings(conn, out, pending, late_after_ms)
    for device_id, recording in sorted(ecg_touched):
        done = _assemble(conn, device_id, recording, now)
        if done is not None:
            out.recordings.append(done)
    for letter, stored in zip(dead, dl.insert_many(conn, dead, dead_limits), strict=True):
        out.newest_received = max(out.newest_received, letter.received_at)
        if not stored:
            out.dead_repeats += 1
        out.dead.append(letter)
    if dead:
        out.dead_evicted = dl.enforce(conn, dead_limits)
        out.dead_stats = dl.stats(conn)
    out.gaps = gaps.observe(conn, arrivals, now)
    return out


@dataclass(frozen=True, slots=True)
class _Window:
    """The event times a commit stores: from ``oldest`` on, on a day with a partition."""

    oldest: int
    parts: readings_db.Partitions

    def refuse(self, r: Reading) -> tuple[str, str] | None:
        if r.ts < self.oldest:
            return "too_old", (f"ts {r.ts} is before the oldest accepted event time {self.oldest}"
                               " (max_reading_age_days before arrival)")
        if not self.parts.covers(r.ts):
            return "no_partition", (f"ts {r.ts}: no readings partition for its UTC day yet"
                                    " (partition maintenance behind; stored as a dead letter)")
        return None


class _Pending(NamedTuple):
    item: ReadingsIn
    reading: Reading
    user_code: str | None


def _device_of(item: Item) -> tuple[str, str] | None:
    """``(device_id, gateway_id)`` of an item about a device."""
    if isinstance(item, ReadingsIn):
        return item.device_id, item.gateway_id
    if isinstance(item, DeviceStatusIn):
        return item.status.device_id, item.gateway_id
    if isinstance(item, EcgChunkIn):
        return item.chunk.device_id, item.gateway_id
    return None


def _owned(conn: Conn, items: Sequence[Item], dead: list[DeadLetter],
           ward_of: Mapping[str, str], now: int, holder: str
           ) -> tuple[list[Item], dict[str, Any], set[str]]:
    """The items whose device belongs to the gateway they came from; the others become
    ``foreign_device`` dead letters. A device belongs to the gateway that first registered it
    (the first in this batch, for a device not registered yet) or to the one the API assigned,
    or it roamed to a gateway of its owner's ward after the owner reported it disconnected.

    Also returns the registry rows of the batch's devices, read in one round trip before
    anything is written (:func:`ingest.registry.lookup`), and the devices this function wrote
    to (claimed or roamed: their rows are stale). A device registered with an owner (the
    steady state) costs no further statement; only a new or unowned device is claimed one by
    one (:func:`ingest.registry.claim`, atomic across instances)."""
    c: Any = conn  # the registry takes the connection as it is (h13d ports its signatures)
    about_all = [a for a in map(_device_of, items) if a is not None]
    # every device row this commit writes, locked first, in one order (registry.by_macs)
    rows: dict[str, Any] = (registry.lookup(c, (d for d, _ in about_all), lock=True)
                            if about_all else {})
    dirty: set[str] = set()
    # the owner each device has in the database as this batch writes it (None: unowned yet)
    owners: dict[str, str | None] = {d: (None if r[5] is None else str(r[5]))
                                     for d, r in rows.items()}
    claims: dict[str, str] = {}
    released: dict[str, bool] = {}  # the owner's newest status in this batch: disconnected?
    kept: list[Item] = []
    for item in items:
        about = _device_of(item)
        if about is not None:
            device_id, gateway_id = about
            # trust on first use, claimed once however many instances race (registry.claim)
            owner = claims.get(device_id) or owners.get(device_id)
            if owner is None:
                owner = registry.claim(c, device_id, gateway_id, now=now, holder=holder)
                owners[device_id] = owner
                dirty.add(device_id)
            ward = ward_of.get(gateway_id)
            if (owner is not None and owner != gateway_id and ward is not None
                    and ward_of.get(owner) == ward
                    and released.get(device_id, _released(rows.get(device_id)))):
                registry.roam(c, device_id, owner, gateway_id, ward, now)
                released.pop(device_id, None)
                owner = owners[device_id] = gateway_id
                dirty.add(device_id)
            if owner is not None and owner != gateway_id:
                assert not isinstance(item, DeadLetter | GatewayStatusIn)
                dead.append(DeadLetter(
                    item.topic, item.payload, "foreign_device",
                    f"device {device_id} belongs to gateway {owner!r}, not {gateway_id!r}"
                    " (move it through the API: PUT /api/device/{id} with gateway_id)",
                    item.received_at))
                continue
            claims[device_id] = gateway_id
            if isinstance(item, DeviceStatusIn):
                released[device_id] = not item.status.connected
        kept.append(item)
    return kept, rows, dirty


def _released(row: Sequence[Any] | None) -> bool:
    """:func:`ingest.registry.released_by_owner` from the row read at the batch's start (the
    batch's statuses are written after the ownership check; roaming and claims do not change
    ``connected``)."""
    return row is not None and row[6] == 0


def reading_flags(r: Reading, received_at: int, late_after_ms: int) -> int:
    """``FLAG_LATE`` / ``FLAG_CLOCK_SUSPECT`` of a reading (event time vs processing time)."""
    if received_at - r.ts <= late_after_ms:
        return 0
    live = r.source is Source.REALTIME and not r.replayed
    return FLAG_LATE | (FLAG_CLOCK_SUSPECT if live else 0)


def _insert_readings(conn: Conn, out: CommitResult, pending: Sequence[_Pending],
                     late_after_ms: int = LATE_AFTER_MS) -> None:
    """The batch's readings in one batched insert. A reading whose (device, stream, seq) has a
    stored vital already (before, or earlier in this batch) is a duplicate as a whole; one of
    which no vital was new (a history record stored under another seq) is one too."""
    known = readings_db.known_seqs(conn, sorted({(p.reading.device_id, p.reading.stream or "",
                                                   p.reading.seq) for p in pending}))
    taken: set[tuple[str, str, int]] = set()
    rows: list[StoredReading] = []
    owners: list[int] = []  # index into `kept` of each row
    kept: list[tuple[_Pending, int]] = []
    for p in pending:
        r, item = p.reading, p.item
        key = (r.device_id, r.stream or "", r.seq)
        if key in known or key in taken:
            out.duplicates += 1
            continue
        taken.add(key)
        flags = reading_flags(r, item.received_at, late_after_ms)
        kept.append((p, flags))
        for vital, value in r.vitals.present().items():
            rows.append(StoredReading(r.device_id, p.user_code, item.gateway_id, vital, value,
                                      r.ts, r.seq, r.source.value, r.replayed,
                                      item.received_at, key[1], flags))
            owners.append(len(kept) - 1)
    new = readings_db.insert(conn, rows)
    stored = [0] * len(kept)
    for row, owner, is_new in zip(rows, owners, new, strict=True):
        if is_new:
            stored[owner] += 1
            out.readings.append(row)
    for (p, flags), n in zip(kept, stored, strict=True):
        if not n:
            out.duplicates += 1  # a history record already stored under another seq
        elif flags:
            device_id = p.reading.device_id
            out.late[device_id] = out.late.get(device_id, 0) | flags
            for name, bit in (("late", FLAG_LATE), ("clock_suspect", FLAG_CLOCK_SUSPECT)):
                if flags & bit:
                    out.late_counts[name] = out.late_counts.get(name, 0) + 1


def _insert_chunk(
    conn: Conn, item: EcgChunkIn, user_code: str | None, limits: EcgLimits, now: int,
) -> bool | tuple[int, str]:
    """``True`` when stored, ``False`` when already stored, ``(discarded, detail)`` when the
    recording exceeds the size cap: its partial chunks are deleted (``discarded`` of them) and
    its later chunks are refused too."""
    c = item.chunk
    state = ecg_db.chunk_state(conn, c.device_id, c.recording, c.seq)
    if state.assembled:
        return False  # a chunk of a recording already assembled (redelivery)
    if state.rejected:
        return 0, f"recording {c.recording!r} was refused as too large; chunk {c.seq} dropped"
    have = state.chunks
    if c.seq >= limits.max_chunks or have + 1 > limits.max_chunks \
            or state.samples + len(c.samples) > limits.max_samples:
        ecg_db.reject(conn, c.device_id, c.recording, now)
        return have, (f"recording {c.recording!r} exceeds {limits.max_chunks} chunks or "
                      f"{limits.max_samples} samples (chunk {c.seq}); {have} partial chunks "
                      "discarded")
    return ecg_db.insert_chunk(conn, c.device_id, c.recording, c.seq, c.ts, c.fs,
                               np.asarray(c.samples, dtype="<i4").tobytes(), c.last, user_code,
                               item.gateway_id, item.received_at)


def _assemble(conn: Conn, device_id: str, recording: str, now: int) -> CompletedRecording | None:
    done = ecg_db.assemble(conn, device_id, recording, now)
    if done is None:
        return None
    rec_id, user_code, gateway_id, ts, fs = done
    return CompletedRecording(rec_id, device_id, recording, user_code, gateway_id, ts, fs)


# ------------------------------------------------------------------------------------ ECG


def recording_signal(conn: Conn, rec_id: int) -> np.ndarray[Any, np.dtype[np.int32]]:
    blob = ecg_db.samples_of(conn, rec_id)
    return np.frombuffer(blob, dtype="<i4").astype(np.int32) if blob else np.zeros(0, np.int32)


def save_analysis(
    conn: Conn, rec: CompletedRecording, analysis: dict[str, Any], *,
    quality: str | None, mean_hr: float | None, now: int,
) -> StoredReading | None:
    """Store an ECG summary; when ``mean_hr`` is given (good quality) also store it as a
    ``heart_rate`` reading with source ``ecg``. Returns that reading if new."""
    ecg_db.save_analysis(conn, rec.id, json.dumps(analysis, default=_json_default), quality,
                         mean_hr)
    if mean_hr is None:
        return None
    if not readings_db.insert_ecg_reading(conn, rec.device_id, rec.user_code, rec.gateway_id,
                                          "heart_rate", mean_hr, rec.ts, Source.ECG.value, now,
                                          rec.recording):
        return None
    return StoredReading(rec.device_id, rec.user_code, rec.gateway_id, "heart_rate", mean_hr,
                         rec.ts, None, Source.ECG.value, False, now)


def unanalysed(conn: Conn, limit: int = 100) -> list[CompletedRecording]:
    return [CompletedRecording(*r) for r in ecg_db.unanalysed(conn, limit)]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _recording_json(row: Sequence[Any], with_samples: bool = False) -> dict[str, Any]:
    (rid, device_id, recording, user_code, ts, fs, n, analysis, quality, mean_hr, created) = row[:11]
    out: dict[str, Any] = {
        "id": rid, "recording": recording, "device_mac": mac_from_device_id(device_id),
        "member_id": user_code, "fs": fs, "n_samples": n,
        "duration_s": round(n / fs, 3) if fs else None, "created_at": ts,
        "received_at": created, "quality": quality, "mean_hr": mean_hr,
        "analysis": json.loads(analysis) if analysis else None,
    }
    if with_samples:
        out["samples"] = np.frombuffer(bytes(row[11]), dtype="<i4").tolist()
    return out


def get_recording(conn: Conn, recording: str) -> dict[str, Any] | None:
    row = ecg_db.by_name(conn, recording)
    return _recording_json(row, with_samples=True) if row else None


def list_recordings(
    conn: Conn, user_code: str, page: int, size: int
) -> tuple[list[dict[str, Any]], int]:
    rows, total = ecg_db.of_patient(conn, user_code, page, size)
    return [_recording_json(r) for r in rows], total


# ------------------------------------------------------------------------------------ reads


def _record(row: Sequence[Any]) -> dict[str, Any]:
    rid, device_id, user_code, vital, value, dia, ts, source, recording, quality = row
    if vital == "ecg":
        rtype: str = ECG_TYPE
        val: Any = {"recording": recording, "mean_hr": value, "quality": quality}
        unit = None
    elif vital == "systolic_bp":
        rtype, val, unit = "BLOOD_PRESSURE", {"systole": value, "diastole": dia}, "mmHg"
    else:
        rtype = VITAL_TYPE[vital]
        val, unit = value, RECORD_TYPES[rtype][1]
    return {
        "id": rid, "device_mac": mac_from_device_id(device_id), "member_id": user_code,
        "type": rtype, "value": val, "unit": unit,
        "method": "MANUAL" if source == Source.MANUAL.value else "AUTOMATIC",
        "source": source, "created_at": ts,
    }


def records(
    conn: Conn, user_code: str, types: Iterable[str], start: int, end: int,
    page: int, size: int, newest_first: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """A patient's records of ``types`` with ``start <= created_at < end``, paged."""
    types = list(types)
    vitals = [RECORD_TYPES[t][0][0] for t in types if t in RECORD_TYPES]
    rows, total = readings_db.record_rows(conn, user_code, vitals, start, end, ECG_TYPE in types,
                                          page, size, newest_first)
    return [_record(r) for r in rows], total


def latest(conn: Conn, user_code: str) -> dict[str, Any]:
    """Each type's latest record of a patient (``None`` when there is none)."""
    out: dict[str, Any] = {}
    for rtype, (vitals, _) in RECORD_TYPES.items():
        row = readings_db.latest_row(conn, user_code, vitals[0])
        out[rtype] = _record(row) if row else None
    rec = ecg_db.latest_of(conn, user_code)
    out[ECG_TYPE] = _recording_json(rec) if rec else None
    return out


#: rows :func:`warm_items` returns at most (one per patient and vital: ~30,000 patients).
WARM_MAX_ROWS: Final = 200_000


@dataclass(frozen=True, slots=True)
class WarmItems:
    """What a restarted engine is fed: ``items`` (user_code, vital, value, ts) and, aligned with
    them, when each arrived (``received_at``, processing time); ``truncated`` when the bound
    cut the selection short."""

    items: list[tuple[str, str, float, int]]
    arrived: list[int]
    truncated: bool = False


def warm_items(conn: Conn, since_ms: int, window_ms: int,
               max_rows: int = WARM_MAX_ROWS) -> WarmItems:
    """Each live patient's newest value per vital, on the patient's own event clock.

    Live: a reading measured or received at or after ``since_ms`` (``max(ts, received_at)``,
    served by the ``readings_kept`` index), so a replayed or late-stamped patient (measured
    hours ago, received just now) counts. Kept: the newest value of each vital measured at
    most ``window_ms`` before that patient's newest reading (event time, as the scorer's
    freshness). At most ``max_rows`` rows (``truncated`` says when more were there)."""
    rows = readings_db.warm_rows(conn, since_ms, max_rows + 1)
    truncated = len(rows) > max_rows
    rows = rows[:max_rows]
    newest: dict[str, int] = {}
    for u, _v, _x, t, _r in rows:
        newest[u] = max(newest.get(u, t), t)
    kept = [(str(u), str(v), float(x), int(t), int(r)) for u, v, x, t, r in rows
            if t >= newest[u] - window_ms]
    return WarmItems([k[:4] for k in kept], [k[4] for k in kept], truncated)


def dead_letters(
    conn: Conn, page: int, size: int, reason: str | None = None, *,
    with_payload: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """The dead letters, newest first (see :func:`ingest.db.dead_letters.list_dead_letters`)."""
    return dl.list_dead_letters(conn, page, size, reason, with_payload=with_payload)


def write_probe(conn: Conn, now: int) -> None:
    """A small real write (see :func:`ingest.db.readings.write_probe`)."""
    readings_db.write_probe(conn, now)


def count_readings(conn: Conn) -> int:
    return readings_db.count(conn)


# ---------------------------------------------------------------------------------- retention

#: what retention deletes, and by which time. Readings and recordings measured long before they
#: arrived (a clock behind, a long-buffered history) are kept by the LATER of measurement and
#: arrival time, ``max(ts, received_at)``, so nothing accepted is deleted before it was kept
#: ``retention_days``; partial ECG chunks, dead letters and refusals by arrival (processing) time.
RETAINED: Final = (
    ("readings", "max(ts, received_at)"),
    ("ecg_recordings", "max(ts, created_at)"),
    ("ecg_chunks", "received_at"),
    ("dead_letters", "received_at"),
    ("ecg_rejected", "at"),
)


def retention_step(conn: Conn, cutoff_ms: int, batch: int, *,
                   accepted_from_ms: int | None = None) -> dict[str, int]:
    """One short transaction of retention; returns the rows deleted per table.

    On PostgreSQL it first DETACHes and DROPs the readings partitions wholly past the cutoff
    by both times (:func:`ingest.db.readings.drop_expired_partitions`; their rows count as
    ``readings``) and not inside the accepted event-time window (from ``accepted_from_ms``:
    a reading may still arrive for those days), then deletes at most ``batch`` rows per table
    past it, and forgets as many stream identities of deleted readings (``reading_ids``: an
    index, not reported)."""
    deleted: dict[str, int] = {}
    keep = cutoff_ms if accepted_from_ms is None else min(cutoff_ms, accepted_from_ms)
    dropped = readings_db.drop_expired_partitions(conn, cutoff_ms, keep_from_ms=keep)
    if sum(dropped.values()):
        deleted["readings"] = sum(dropped.values())
    n = readings_db.expire(conn, cutoff_ms, batch)
    if n:
        deleted["readings"] = deleted.get("readings", 0) + n
    readings_db.trim_identities(conn, cutoff_ms, batch)
    deleted.update(ecg_db.expire(conn, cutoff_ms, batch))
    n = dl.expire(conn, cutoff_ms, batch)
    if n:
        deleted["dead_letters"] = n
    return deleted

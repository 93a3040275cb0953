"""Replay recorded vitals (JSONL, CSV, PhysioNet) in their own timing, and record a broker.

Timing: all tracks of a replay share one timeline whose origin is the earliest row. A row
recorded ``offset`` ms after the origin is delivered when the replay's simulated clock reaches
``start + offset`` — that is ``offset / speed`` ms of real time after the start — so an hourly
PhysioNet 2019 patient at ``--speed 3600`` delivers one row per second.

Timestamps: with ``timestamps="wall"`` (default) a reading's ``ts`` is the real time at which it
is delivered, ``start + round(offset / speed)``: the consumer sees fresh readings whose spacing is
the recorded spacing scaled by 1/speed. With ``"sim"`` the ``ts`` keeps the recorded spacing
(event time as recorded) on a timeline that ENDS at the replay's start: ``ts = start - span +
offset`` where ``span`` is the recording's last offset. The recording's last reading is stamped
with the start time and every reading lies in the past when it is delivered, so a consumer that
rejects readings from the future (ingest's ``future`` skew) takes them all, and an ingest scoring
on event time gives the EWS trajectory the patient had in real time, at any ``speed``.

Identity: a track keeps its ``device_id`` and ``user_code`` when the recording has them; a
PhysioNet track gets a deterministic locally administered device id and 13-character
user_code derived from its name. ``seq`` counts per device from ``seq_base`` (0).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from simulators.mqtt_out import GatewayPublisher, Received, Subscriber
from simulators.physiology import SimClock
from simulators.recording import JsonlWriter, RecordedMessage, RecordedReading, Track
from vitalgate.contract import (
    USER_CODE_RE,
    ContractError,
    DeviceStatus,
    Kind,
    Reading,
    Source,
    Topics,
    Vitals,
    decode_readings,
    load_json,
    matches,
)

log = logging.getLogger(__name__)

Timestamps = Literal["wall", "sim"]
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One recorded row, due now: who, when (``ts`` as decided above), what."""

    device_id: str
    user_code: str | None
    ts: int
    offset_ms: int
    vitals: dict[str, float]
    track: str


class ReplaySink(Protocol):
    """Where replayed rows go: MQTT (:class:`MqttReplaySink`), virtual watches, a list..."""

    def __call__(self, item: ReplayItem) -> None: ...


@dataclass
class ReplayStats:
    rows: int = 0
    tracks: int = 0
    span_ms: int = 0
    rejected: int = 0


def identity_for(name: str) -> tuple[str, str]:
    """A deterministic (device_id, user_code) for a recording without one. The device id's
    first octet is ``11xxxx10`` (locally administered, unicast)."""
    digest = hashlib.sha256(f"vitalgate-replay:{name}".encode()).digest()
    octets = bytearray(digest[:6])
    octets[0] = 0xC2 | (octets[0] & 0x3C)
    code = "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[6:19])
    return octets.hex(), code


def replay_tracks(
    tracks: Sequence[Track],
    sink: ReplaySink | Callable[[ReplayItem], None],
    speed: float = 1.0,
    clock: SimClock | None = None,
    timestamps: Timestamps = "wall",
) -> ReplayStats:
    """Deliver every row of ``tracks`` to ``sink`` in recorded order and timing.

    ``clock`` (a SimClock; its ``start_ms`` is the replay's start) defaults to the wall clock
    at ``speed``. A sink that raises ValueError rejects that row (counted); others propagate."""
    clock = clock or SimClock(speed=speed)
    speed = clock.speed
    stats = ReplayStats(tracks=len(tracks))
    non_empty = [t for t in tracks if len(t)]
    if not non_empty:
        return stats
    origin = min(int(t.t_ms[0]) for t in non_empty)
    span = max(int(t.t_ms[-1]) for t in non_empty) - origin  # "sim": the timeline ends at start
    ids = []
    for track in tracks:
        device_id, user_code = identity_for(track.name)
        if track.user_code and matches(USER_CODE_RE, track.user_code):
            user_code = track.user_code
        ids.append((track.device_id or device_id, user_code))
    heap = [(int(t.t_ms[0]) - origin, i, 0) for i, t in enumerate(tracks) if len(t)]
    heapq.heapify(heap)
    start = clock.start_ms
    while heap:
        offset, i, row = heapq.heappop(heap)
        track = tracks[i]
        if row + 1 < len(track):
            heapq.heappush(heap, (int(track.t_ms[row + 1]) - origin, i, row + 1))
        vitals = track.row(row)
        if not vitals:
            continue
        clock.sleep_until(start + offset)
        ts = start + round(offset / speed) if timestamps == "wall" else start - span + offset
        item = ReplayItem(ids[i][0], ids[i][1], ts, offset, vitals, track.name)
        try:
            sink(item)
        except ValueError as exc:
            stats.rejected += 1
            log.warning("replay: row %d of %s rejected: %s", row, track.name, exc)
            continue
        stats.rows += 1
        stats.span_ms = offset
    return stats


class MqttReplaySink:
    """Publishes replayed rows as contract Readings, like a gateway: per device a retained
    status on first sight, then readings with ``seq`` from ``seq_base``."""

    def __init__(self, publisher: GatewayPublisher, seq_base: int = 0) -> None:
        self.publisher = publisher
        self.seq_base = seq_base
        self.seq: dict[str, int] = {}

    def __call__(self, item: ReplayItem) -> None:
        seq = self.seq.get(item.device_id)
        if seq is None:
            seq = self.seq_base
            self.publisher.device_status(
                DeviceStatus(
                    device_id=item.device_id, name=f"replay {item.track}"[:64], model="replay",
                    connected=True, last_seen=item.ts, user_code=item.user_code,
                )
            )
        reading = Reading(  # ValidationError is a ValueError: the row is rejected and counted
            device_id=item.device_id, seq=seq, ts=item.ts, vitals=Vitals(**item.vitals),
            source=Source.REALTIME, user_code=item.user_code,
        )
        self.publisher.send_readings(item.device_id, [reading])
        self.seq[item.device_id] = seq + 1


# ------------------------------------------------------------------------------ record


@dataclass
class RecordStats:
    readings: int = 0
    messages: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


class Recorder:
    """Turns broker messages into JSONL lines: valid readings as reading lines; with
    ``include_other`` every other contract message as a message line. Invalid payloads are
    counted, logged and kept as message lines (nothing seen is lost)."""

    def __init__(self, writer: JsonlWriter, prefix: str, include_other: bool = False) -> None:
        self.writer = writer
        self.topics = Topics(prefix)
        self.include_other = include_other
        self.stats = RecordStats()

    def subscriptions(self) -> list[str]:
        if self.include_other:
            return [*self.topics.gateway_subscriptions(), self.topics.ews("+"), self.topics.cmd("+")]
        return [self.topics.reading("+", "+")]

    def handle(self, msg: Received) -> None:
        try:
            topic = self.topics.parse(msg.topic)
            if topic.kind is not Kind.READING:
                if self.include_other:
                    self._message(msg, load_json(msg.payload))
                return
            batch = decode_readings(msg.payload)
        except ContractError as exc:
            self._reject(msg, str(exc))
            return
        for r in batch.readings:
            vitals = r.vitals.present()
            self.writer.write(
                RecordedReading(r.ts, vitals, r.device_id, r.user_code, topic.gateway_id, r.source.value, r.seq)
            )
            self.stats.readings += 1
        for err in batch.errors:
            self._reject(msg, str(err), keep=False)
        if batch.errors:
            self._message(msg, _json_or_text(msg.payload))

    def _message(self, msg: Received, payload: object) -> None:
        self.writer.write(RecordedMessage(msg.rx_ms, msg.topic, payload, msg.retained))
        self.stats.messages += 1

    def _reject(self, msg: Received, detail: str, keep: bool = True) -> None:
        self.stats.rejected += 1
        if len(self.stats.errors) < 100:
            self.stats.errors.append(detail)
        log.warning("record: %s on %s", detail, msg.topic)
        if keep:
            self._message(msg, _json_or_text(msg.payload))


def _json_or_text(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


def record(
    url: str,
    writer: JsonlWriter,
    prefix: str,
    duration_s: float | None = None,
    include_other: bool = False,
    stop: Callable[[], bool] = lambda: False,
    ready: Callable[[], None] = lambda: None,
) -> RecordStats:
    """Record the broker to ``writer`` for ``duration_s`` (or until ``stop()``); ``ready`` is
    called once the subscriptions are acknowledged."""
    recorder = Recorder(writer, prefix, include_other)
    sub = Subscriber(url, recorder.subscriptions()).connect()
    ready()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while not stop():
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                recorder.handle(sub.queue.get(timeout=wait))
            except queue.Empty:
                continue
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a recording normally
    try:
        while True:  # drain what already arrived
            try:
                recorder.handle(sub.queue.get_nowait())
            except queue.Empty:
                break
    finally:
        sub.close()
    if sub.overflow:
        recorder.stats.rejected += sub.overflow
        log.warning("record: %d messages lost to a full queue", sub.overflow)
    return recorder.stats

"""Recorded vitals: the common :class:`Track`, and the project's JSONL and CSV recording formats.

JSONL (``vitalgate record`` writes it, ``vitalgate replay`` reads it), one JSON object a line:

* a reading: ``{"t": 1632889813001, "device_id": "d061aed45894", "user_code": "AMSe5Sn8Gkxj7",
  "vitals": {"heart_rate": 72, "spo2": 97}, "gateway_id": "ward3-bed12", "source": "realtime",
  "seq": 12}`` — ``t`` (ms, epoch or relative) and a non-empty ``vitals`` are required; the rest
  is optional;
* any other message seen on the broker: ``{"t": <received ms>, "topic": "...", "payload": <the
  JSON payload>, "retained": false}``.

CSV: a header row, then one row per reading; a time column ``ts`` (integer ms, epoch or
relative) or ``time`` (seconds as a number, or an ISO 8601 date-time), optional ``user_code`` and
``device_id``, and any of the six vital columns named as in the contract; an empty cell means
absent.

Bad lines never stop a read: each is counted in ``errors`` with its line number, and values
outside the contract's plausible ranges are dropped and counted per vital.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
from numpy.typing import NDArray

from vitalgate.contract import PLAUSIBLE, VITALS

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
#: errors kept verbatim per read (all are counted).
MAX_ERRORS_KEPT: Final = 100


class RecordingError(ValueError):
    """A recording that cannot be read at all (not one bad line: those are counted)."""


@dataclass
class Track:
    """One patient's recorded vitals: sorted times (ms) and one float array per vital (NaN =
    absent). ``t_ms`` is relative to the recording's origin; ``origin_ms`` is that origin as
    epoch ms when the recording knows it."""

    name: str
    t_ms: IntArray
    vitals: dict[str, FloatArray]
    user_code: str | None = None
    device_id: str | None = None
    origin_ms: int | None = None
    #: implausible values dropped while reading, per vital.
    dropped: dict[str, int] = field(default_factory=dict)
    #: other per-row columns worth keeping (e.g. SepsisLabel), same length as t_ms.
    annotations: dict[str, FloatArray] = field(default_factory=dict)
    #: static descriptors (e.g. Age, RecordID).
    meta: dict[str, float | str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t_ms.shape[0])

    def row(self, i: int) -> dict[str, float]:
        """The vitals present in row ``i``."""
        out: dict[str, float] = {}
        for vital, values in self.vitals.items():
            value = float(values[i])
            if not math.isnan(value):
                out[vital] = value
        return out

    def count(self, vital: str) -> int:
        values = self.vitals.get(vital)
        return 0 if values is None else int(np.count_nonzero(~np.isnan(values)))


def build_track(
    name: str,
    rows: Iterable[tuple[int, Mapping[str, float]]],
    **extra: Any,
) -> Track:
    """A Track from (t_ms, {vital: value}) rows: sorted by time (stable), implausible values
    dropped and counted, rows left without any vital removed."""
    times: list[int] = []
    columns: dict[str, list[float]] = {v: [] for v in VITALS}
    dropped: dict[str, int] = {}
    for t, vitals in rows:
        kept = plausible(vitals, dropped)
        if not kept:
            continue
        times.append(int(t))
        for v in VITALS:
            columns[v].append(kept.get(v, math.nan))
    order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
    t_ms = np.asarray(times, dtype=np.int64)[order]
    arrays = {v: np.asarray(columns[v], dtype=np.float64)[order] for v in VITALS}
    return Track(name, t_ms, arrays, dropped=dropped, **extra)


def plausible(vitals: Mapping[str, float], dropped: dict[str, int]) -> dict[str, float]:
    """The finite, plausible contract vitals of ``vitals``; counts the implausible ones."""
    kept: dict[str, float] = {}
    for vital, value in vitals.items():
        if vital not in PLAUSIBLE or value is None or math.isnan(value):
            continue
        low, high = PLAUSIBLE[vital]
        if low <= value <= high:
            kept[vital] = float(value)
        else:
            dropped[vital] = dropped.get(vital, 0) + 1
    return kept


# ---------------------------------------------------------------------------------- JSONL


@dataclass(frozen=True, slots=True)
class RecordedReading:
    t: int
    vitals: dict[str, float]
    device_id: str | None = None
    user_code: str | None = None
    gateway_id: str | None = None
    source: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.t}
        for key in ("device_id", "user_code"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["vitals"] = self.vitals
        for key in ("gateway_id", "source", "seq"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    t: int
    topic: str
    payload: Any
    retained: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "topic": self.topic, "payload": self.payload, "retained": self.retained}


@dataclass
class JsonlContent:
    readings: list[RecordedReading] = field(default_factory=list)
    messages: list[RecordedMessage] = field(default_factory=list)
    #: "line N: what is wrong" for the first MAX_ERRORS_KEPT bad lines; ``bad`` counts all.
    errors: list[str] = field(default_factory=list)
    bad: int = 0

    def _error(self, lineno: int, detail: str) -> None:
        self.bad += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"line {lineno}: {detail}")


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def parse_jsonl_line(line: str) -> RecordedReading | RecordedMessage:
    """One JSONL line; ValueError naming the field when it is not a reading or a message."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError("t must be a number of milliseconds")
    if "topic" in obj:
        if not isinstance(obj["topic"], str):
            raise ValueError("topic must be a string")
        return RecordedMessage(int(t), obj["topic"], obj.get("payload"), bool(obj.get("retained", False)))
    vitals = obj.get("vitals")
    if not isinstance(vitals, dict) or not vitals:
        raise ValueError("vitals must be a non-empty object")
    clean: dict[str, float] = {}
    for name, value in vitals.items():
        if name not in PLAUSIBLE:
            continue  # unknown vitals are ignored, as in the contract
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"vitals.{name} must be a number")
        clean[name] = float(value)
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ValueError("seq must be an integer")
    return RecordedReading(
        t=int(t),
        vitals=clean,
        device_id=_opt_str(obj, "device_id"),
        user_code=_opt_str(obj, "user_code"),
        gateway_id=_opt_str(obj, "gateway_id"),
        source=_opt_str(obj, "source"),
        seq=seq,
    )


def read_jsonl(path: str | Path | IO[str]) -> JsonlContent:
    content = JsonlContent()
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = parse_jsonl_line(line)
            except ValueError as exc:
                content._error(lineno, str(exc))
                continue
            if isinstance(item, RecordedReading):
                content.readings.append(item)
            else:
                content.messages.append(item)
    return content


class JsonlWriter:
    """Appends readings and messages to a JSONL file, one flushed line each."""

    def __init__(self, path: str | Path | IO[str]) -> None:
        if isinstance(path, str | Path):
            self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self._owned = True
        else:
            self._fh, self._owned = path, False
        self.lines = 0

    def write(self, item: RecordedReading | RecordedMessage) -> None:
        self._fh.write(json.dumps(item.to_json(), separators=(",", ":")) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        if self._owned:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(path: str | Path | IO[str], items: Iterable[RecordedReading | RecordedMessage]) -> int:
    with JsonlWriter(path) as writer:
        for item in items:
            writer.write(item)
        return writer.lines


def tracks_from_readings(readings: Iterable[RecordedReading], name: str = "recording") -> list[Track]:
    """Group readings by patient (device_id, else user_code) into Tracks on a common origin
    (the earliest reading), keeping each patient's identity."""
    groups: dict[tuple[str | None, str | None], list[RecordedReading]] = {}
    for r in readings:
        groups.setdefault((r.device_id, r.user_code if r.device_id is None else None), []).append(r)
    if not groups:
        return []
    origin = min(r.t for rs in groups.values() for r in rs)
    tracks = []
    for (device_id, _), rs in groups.items():
        user_code = next((r.user_code for r in rs if r.user_code), None)
        label = device_id or user_code or name
        tracks.append(
            build_track(
                label,
                ((r.t - origin, r.vitals) for r in rs),
                device_id=device_id,
                user_code=user_code,
                origin_ms=origin,
            )
        )
    return tracks


def tracks_to_readings(tracks: Iterable[Track]) -> Iterator[RecordedReading]:
    """The rows of Tracks as readings (absolute ``t`` when the origin is known)."""
    for track in tracks:
        origin = track.origin_ms or 0
        for i in range(len(track)):
            vitals = track.row(i)
            if vitals:
                yield RecordedReading(
                    int(track.t_ms[i]) + origin, vitals, track.device_id, track.user_code
                )


# ---------------------------------------------------------------------------------- CSV


@dataclass
class CsvContent:
    tracks: list[Track]
    errors: list[str] = field(default_factory=list)
    bad: int = 0


def _csv_time(row: Mapping[str, str], column: str) -> int:
    text = (row.get(column) or "").strip()
    if not text:
        raise ValueError(f"{column} is empty")
    if column == "ts":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"ts={text!r} is not an integer of milliseconds") from None
    try:
        seconds = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"time={text!r} is neither seconds nor ISO 8601") from None
        return round(stamp.timestamp() * 1000)
    if not math.isfinite(seconds):
        raise ValueError(f"time={text!r} is not finite")
    return round(seconds * 1000)


def read_csv(path: str | Path | IO[str]) -> CsvContent:
    """A CSV recording → one Track per patient (device_id, else user_code, else one track)."""
    try:
        return _read_csv(path)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RecordingError(f"CSV unreadable: {exc}") from None


def _read_csv(path: str | Path | IO[str]) -> CsvContent:
    errors: list[str] = []
    bad = 0
    readings: list[RecordedReading] = []
    with _open(path) as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        reader.fieldnames = fields
        column = "ts" if "ts" in fields else "time" if "time" in fields else None
        if column is None:
            raise RecordingError(f"CSV has no ts or time column (columns: {', '.join(fields)})")
        if not any(v in fields for v in VITALS):
            raise RecordingError(f"CSV has no vital column (expected some of {', '.join(VITALS)})")
        for row in reader:
            lineno = reader.line_num
            try:
                t = _csv_time(row, column)
                vitals: dict[str, float] = {}
                for vital in VITALS:
                    text = (row.get(vital) or "").strip()
                    if text:
                        try:
                            vitals[vital] = float(text)
                        except ValueError:
                            raise ValueError(f"{vital}={text!r} is not a number") from None
                if not vitals:
                    raise ValueError("no vital in the row")
            except ValueError as exc:
                bad += 1
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append(f"line {lineno}: {exc}")
                continue
            readings.append(
                RecordedReading(
                    t, vitals, (row.get("device_id") or "").strip() or None,
                    (row.get("user_code") or "").strip() or None,
                )
            )
    return CsvContent(tracks_from_readings(readings, Path(getattr(path, "name", "csv")).stem), errors, bad)


def write_csv(path: str | Path | IO[str], tracks: Iterable[Track]) -> int:
    """Tracks → CSV with ``ts`` (absolute ms when known), user_code, device_id and the vitals."""
    rows = 0
    with _open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["ts", "user_code", "device_id", *VITALS])
        for r in tracks_to_readings(tracks):
            writer.writerow(
                [r.t, r.user_code or "", r.device_id or "", *(_fmt(r.vitals.get(v)) for v in VITALS)]
            )
            rows += 1
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) else repr(value)


class _open:
    """Open a path, or pass an already open text stream through (without closing it)."""

    def __init__(self, path: str | Path | IO[str], mode: str = "r") -> None:
        self._path = path
        self._mode = mode
        self._fh: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        if isinstance(self._path, str | Path):
            self._fh = open(self._path, self._mode, encoding="utf-8", newline="")
            return self._fh
        if isinstance(self._path, io.TextIOBase | io.StringIO) or hasattr(self._path, "read"):
            return self._path
        raise TypeError(f"not a path or a text stream: {self._path!r}")

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()

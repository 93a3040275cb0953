"""Readers for real patient recordings (PhysioNet), each producing :class:`Track` objects in the
contract's vital names and units, with implausible values dropped and counted.

=====================  ==========================================================================
format                 mapping to the contract
=====================  ==========================================================================
Challenge 2019 .psv    hourly rows, time = ICULOS hours; HR, O2Sat, SBP, DBP, Temp, Resp;
                       ``NaN`` = missing; SepsisLabel kept as an annotation.
Challenge 2012 .txt    ``Time,Parameter,Value`` with Time = hh:mm since admission; HR, RespRate,
                       Temp, NISysABP (else SysABP), NIDiasABP (else DiasABP), SaO2 → spo2
                       (**arterial** blood-gas saturation, sparse, not pulse oximetry);
                       Value −1 = missing, and 0 is never a measurement of these; the 00:00
                       descriptors (RecordID, Age, Gender, Height, ICUType, Weight) go to ``meta``.
WFDB numerics (.hea)   MIMIC-II 1/min numerics in signal format 16 (little-endian int16,
                       interleaved); physical = (raw − baseline) / gain from the header; raw
                       −32768 (WFDB's invalid sample) and physical 0 are missing. HR (else
                       PULSE), SpO2, RESP, NBPSys (else ABPSys), NBPDias (else ABPDias).
=====================  ==========================================================================

Non-invasive pressures are preferred to arterial lines because the watch measures like a cuff;
the invasive one fills the gaps. A replayed Track keeps its own timing (hourly, irregular,
per minute), scaled by the replay's speed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from simulators.recording import (
    RecordingError,
    Track,
    build_track,
    read_csv,
    read_jsonl,
    tracks_from_readings,
)

MS_PER_HOUR: Final = 3_600_000
MS_PER_MINUTE: Final = 60_000

PSV_COLUMNS: Final = {
    "HR": "heart_rate",
    "O2Sat": "spo2",
    "SBP": "systolic_bp",
    "DBP": "diastolic_bp",
    "Temp": "temperature",
    "Resp": "respiratory_rate",
}
PSV_ANNOTATIONS: Final = ("SepsisLabel", "MAP", "FiO2")

#: Challenge 2012 parameter → (vital, priority); a lower priority wins at the same time.
P2012_PARAMETERS: Final = {
    "HR": ("heart_rate", 0),
    "RespRate": ("respiratory_rate", 0),
    "Temp": ("temperature", 0),
    "NISysABP": ("systolic_bp", 0),
    "SysABP": ("systolic_bp", 1),
    "NIDiasABP": ("diastolic_bp", 0),
    "DiasABP": ("diastolic_bp", 1),
    "SaO2": ("spo2", 0),
}
P2012_DESCRIPTORS: Final = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")

#: WFDB signal description → (vital, priority).
WFDB_SIGNALS: Final = {
    "HR": ("heart_rate", 0),
    "PULSE": ("heart_rate", 1),
    "SpO2": ("spo2", 0),
    "RESP": ("respiratory_rate", 0),
    "NBPSys": ("systolic_bp", 0),
    "ABPSys": ("systolic_bp", 1),
    "NBPDias": ("diastolic_bp", 0),
    "ABPDias": ("diastolic_bp", 1),
}
WFDB_INVALID: Final = -32768

FORMATS: Final = ("auto", "jsonl", "csv", "psv", "physionet2012", "wfdb")


class ImportFormatError(RecordingError):
    """A file this reader cannot read; the message names the file and what is wrong."""


# ------------------------------------------------------------------------- Challenge 2019


def read_psv(path: str | Path) -> Track:
    """One Challenge 2019 patient file (``pNNNNNN.psv``)."""
    path = Path(path)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ImportFormatError(f"{path.name}: empty")
    header = lines[0].split("|")
    if "ICULOS" not in header:
        raise ImportFormatError(f"{path.name}: no ICULOS column (not a Challenge 2019 .psv)")
    col = {name: i for i, name in enumerate(header)}
    rows: list[tuple[int, dict[str, float]]] = []
    notes: dict[str, list[float]] = {a: [] for a in PSV_ANNOTATIONS if a in col}
    note_times: list[int] = []
    bad = 0
    for line in lines[1:]:
        cells = line.split("|")
        if len(cells) != len(header):
            bad += 1
            continue
        try:
            hours = float(cells[col["ICULOS"]])
            values = {v: float(cells[col[c]]) for c, v in PSV_COLUMNS.items() if c in col}
            extra = {a: float(cells[col[a]]) for a in notes}
        except ValueError:
            bad += 1
            continue
        if math.isnan(hours):
            bad += 1
            continue
        t = round(hours * MS_PER_HOUR)
        rows.append((t, values))
        note_times.append(t)
        for a, value in extra.items():
            notes[a].append(value)
    track = build_track(path.stem, rows, meta={"format": "physionet2019", "bad_rows": bad})
    # annotations on the kept rows' times (rows without vitals were removed)
    times = np.asarray(note_times, dtype=np.int64)
    idx = np.searchsorted(times, track.t_ms)
    track.annotations = {a: np.asarray(vals, dtype=np.float64)[idx] for a, vals in notes.items()}
    return track


# ------------------------------------------------------------------------- Challenge 2012

_HHMM = re.compile(r"^(\d{1,3}):(\d{2})$")


def read_physionet2012(path: str | Path) -> Track:
    """One Challenge 2012 record (``NNNNNN.txt``, ``Time,Parameter,Value``)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip().replace(" ", "") != "Time,Parameter,Value":
        raise ImportFormatError(f"{path.name}: first line is not 'Time,Parameter,Value'")
    meta: dict[str, float | str] = {"format": "physionet2012"}
    by_time: dict[int, dict[str, tuple[float, int]]] = {}
    bad = 0
    for line in lines[1:]:
        parts = line.strip().split(",")
        if len(parts) != 3:
            bad += bool(line.strip())
            continue
        stamp, parameter, text = parts
        match = _HHMM.fullmatch(stamp)
        try:
            value = float(text)
        except ValueError:
            bad += 1
            continue
        if match is None:
            bad += 1
            continue
        t = (int(match[1]) * 60 + int(match[2])) * MS_PER_MINUTE
        if t == 0 and parameter in P2012_DESCRIPTORS:
            meta[parameter] = value
            continue
        mapped = P2012_PARAMETERS.get(parameter)
        if mapped is None or value <= 0 or math.isnan(value):
            continue  # another parameter, or −1 / 0 = not measured
        vital, priority = mapped
        slot = by_time.setdefault(t, {})
        if vital not in slot or priority < slot[vital][1]:
            slot[vital] = (value, priority)
    meta["bad_rows"] = bad
    rows = [(t, {v: val for v, (val, _) in slot.items()}) for t, slot in sorted(by_time.items())]
    return build_track(path.stem, rows, meta=meta)


# ------------------------------------------------------------------------- WFDB numerics


@dataclass(frozen=True, slots=True)
class WfdbSignal:
    file: str
    fmt: int
    gain: float
    baseline: int
    units: str
    description: str


@dataclass(frozen=True, slots=True)
class WfdbHeader:
    record: str
    fs: float
    n_samples: int
    signals: list[WfdbSignal]


_GAIN = re.compile(r"^([-+0-9.eE]+)?(?:\(([-+0-9]+)\))?(?:/(.*))?$")


def parse_wfdb_header(text: str, name: str = "header") -> WfdbHeader:
    """The record line and signal lines of a WFDB ``.hea`` (comments skipped)."""
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ImportFormatError(f"{name}: empty header")
    record = lines[0].split()
    try:
        n_sig = int(record[1])
        fs = float(record[2].split("/")[0]) if len(record) > 2 else 250.0
        n_samples = int(record[3]) if len(record) > 3 else 0
    except (IndexError, ValueError):
        raise ImportFormatError(f"{name}: bad record line {lines[0]!r}") from None
    if n_sig != len(lines) - 1 or n_sig < 1:
        raise ImportFormatError(f"{name}: record line says {n_sig} signals, found {len(lines) - 1}")
    signals = []
    for ln in lines[1:]:
        f = ln.split()
        try:
            fmt = int(f[1].split("x")[0].split(":")[0].split("+")[0])
            gm = _GAIN.fullmatch(f[2]) if len(f) > 2 else None
            if gm is None:
                raise ValueError(f[2])
            gain = float(gm[1]) if gm[1] else 200.0
            adc_zero = int(f[4]) if len(f) > 4 else 0
            baseline = int(gm[2]) if gm[2] else adc_zero
            desc = " ".join(f[8:]) if len(f) > 8 else ""
        except (IndexError, ValueError):
            raise ImportFormatError(f"{name}: bad signal line {ln!r}") from None
        signals.append(WfdbSignal(f[0], fmt, gain or 200.0, baseline, gm[3] or "", desc))
    return WfdbHeader(record[0], fs, n_samples, signals)


def read_wfdb_numerics(hea_path: str | Path) -> Track:
    """A WFDB numerics record (format 16, one .dat) → Track at the record's sampling rate."""
    hea_path = Path(hea_path)
    header = parse_wfdb_header(hea_path.read_text(), hea_path.name)
    files = {s.file for s in header.signals}
    if len(files) != 1 or any(s.fmt != 16 for s in header.signals):
        raise ImportFormatError(f"{hea_path.name}: only single-file signal format 16 is supported")
    dat = hea_path.parent / files.pop()
    if not dat.is_file():
        raise ImportFormatError(f"{hea_path.name}: signal file {dat.name} not found")
    raw = np.fromfile(dat, dtype="<i2")
    n_sig = len(header.signals)
    if raw.size % n_sig:
        raise ImportFormatError(f"{dat.name}: {raw.size} samples do not divide into {n_sig} signals")
    frames = raw.reshape(-1, n_sig).astype(np.int64)
    n = frames.shape[0]
    period_ms = 1000.0 / header.fs
    t_ms = np.round(np.arange(n) * period_ms).astype(np.int64)
    best: dict[str, tuple[int, np.ndarray]] = {}
    for i, sig in enumerate(header.signals):
        mapped = WFDB_SIGNALS.get(sig.description)
        if mapped is None:
            continue
        vital, priority = mapped
        physical = (frames[:, i] - sig.baseline) / sig.gain
        physical[(frames[:, i] == WFDB_INVALID) | (physical == 0)] = np.nan
        if vital in best:
            prio, current = best[vital]
            first, second = (physical, current) if priority < prio else (current, physical)
            best[vital] = (min(prio, priority), np.where(np.isnan(first), second, first))
        else:
            best[vital] = (priority, physical)
    rows = (
        (int(t_ms[k]), {v: float(arr[k]) for v, (_, arr) in best.items()}) for k in range(n)
    )
    return build_track(
        header.record,
        rows,
        meta={"format": "wfdb", "fs": header.fs, "samples": n},
    )


# ------------------------------------------------------------------------- dispatch


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".psv":
        return "psv"
    if suffix == ".hea":
        return "wfdb"
    if suffix == ".txt":
        with path.open() as fh:
            if fh.readline().strip().startswith("Time,Parameter,Value"):
                return "physionet2012"
    raise ImportFormatError(f"{path.name}: cannot tell the format; pass --format ({', '.join(FORMATS[1:])})")


@dataclass
class Loaded:
    """The Tracks of one file or directory, and the lines or rows that could not be read."""

    tracks: list[Track]
    bad: int = 0
    errors: list[str] | None = None


def load(path: str | Path, fmt: str = "auto") -> Loaded:
    """Every Track in a file, or in every recognised file of a directory (sorted by name)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if path.is_dir():
        out = Loaded([], 0, [])
        for child in sorted(path.iterdir()):
            if child.suffix.lower() not in (".jsonl", ".csv", ".psv", ".hea", ".txt"):
                continue
            try:
                part = load(child, fmt)
            except ImportFormatError:
                if fmt != "auto":
                    raise
                continue  # e.g. a README.txt beside the records
            out.tracks.extend(part.tracks)
            out.bad += part.bad
            out.errors = (out.errors or []) + [f"{child.name}: {e}" for e in part.errors or []]
        return out
    if not path.is_file():
        raise ImportFormatError(f"not found: {path}")
    try:
        return _load_file(path, fmt)
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"{path.name}: not text ({exc.reason})") from None


def _load_file(path: Path, fmt: str) -> Loaded:
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "psv":
        return _single(read_psv(path))
    if kind == "physionet2012":
        return _single(read_physionet2012(path))
    if kind == "wfdb":
        return _single(read_wfdb_numerics(path))
    if kind == "csv":
        content = read_csv(path)
        return Loaded(content.tracks, content.bad, content.errors)
    jsonl = read_jsonl(path)
    return Loaded(tracks_from_readings(jsonl.readings, path.stem), jsonl.bad, jsonl.errors)


def _single(track: Track) -> Loaded:
    bad = track.meta.get("bad_rows", 0)
    return Loaded([track], int(bad) if isinstance(bad, int | float) else 0, [])


def load_tracks(path: str | Path, fmt: str = "auto") -> list[Track]:
    return load(path, fmt).tracks


def total_dropped(tracks: Iterable[Track]) -> dict[str, int]:
    out: dict[str, int] = {}
    for track in tracks:
        for vital, n in track.dropped.items():
            out[vital] = out.get(vital, 0) + n
    return out

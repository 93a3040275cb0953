"""Beat-detection accuracy of ews.ecg on the real annotated records in ../shared/data.

    python -m benchmarks.ecg_validation            # print and update docs/ecg.md
    python -m benchmarks.ecg_validation --no-write  # print only

Convention (AAMI EC57 / bxb-like): reference = annotations with a beat code
(N L R B A a J S V r F e j n E / f Q ?), channel 0 only; a detection matches an unmatched
reference beat within 150 ms; beats in the first and last second are not scored (filter
start-up and edge effects). Each record runs at its native rate and resampled to 250 Hz with
scipy.signal.resample_poly (what the E86 watch delivers). One set of detector settings for all.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from ews.ecg import BEAT_SYMBOLS, detect_r_peaks, match_beats, read_annotations, read_record

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "ecg.md"
START, END = "<!-- ecg-validation:start -->", "<!-- ecg-validation:end -->"
WATCH_FS = 250
MATCH_S = 0.150
EDGE_S = 1.0
NPZ_RECORDS = (102, 104, 106, 114, 116, 121, 123)


@dataclass(frozen=True)
class Record:
    name: str
    signal: npt.NDArray[np.float64]
    fs: float
    beats: npt.NDArray[np.int64]
    note: str


def load_records(data: Path = DATA) -> list[Record]:
    out: list[Record] = []
    for db, rec, note in (("mitdb", "100", "MLII"), ("svdb", "800", "ECG1, SVDB")):
        sig, fs, _names = read_record(data / db / rec)
        samples, symbols = read_annotations(data / db / rec)
        is_beat = np.array([s in BEAT_SYMBOLS for s in symbols], dtype=bool)
        out.append(Record(f"{db}/{rec}", sig[:, 0], fs, samples[is_beat], note))
    for r in NPZ_RECORDS:
        z = np.load(data / "mitdb" / f"mitdb_{r}_ch0.npz")
        lead = "V5, paced" if r in (102, 104) else "MLII"
        out.append(
            Record(f"mitdb/{r}", z["ecg_mv"].astype(np.float64), float(z["fs"]), z["beats"], lead)
        )
    out.sort(key=lambda r: r.name)
    return out


@dataclass(frozen=True)
class Row:
    record: str
    note: str
    fs: float
    n_ref: int
    tp: int
    fn: int
    fp: int
    se: float
    ppv: float
    fiducial_ms: float
    seconds: float


def evaluate(rec: Record, fs_out: float) -> Row:
    x, ref = rec.signal, rec.beats
    if fs_out != rec.fs:
        up, down = int(fs_out), int(rec.fs)
        g = int(np.gcd(up, down))
        x = resample_poly(x, up // g, down // g)
        ref = np.round(ref * fs_out / rec.fs).astype(np.int64)
    t0 = time.perf_counter()
    det = detect_r_peaks(x, fs_out)
    elapsed = time.perf_counter() - t0
    edge = round(EDGE_S * fs_out)
    m = match_beats(ref, det, round(MATCH_S * fs_out), start=edge, end=x.size - edge)
    # fiducial error: median |detection − nearest annotation| over matched-distance beats
    pos = np.searchsorted(det, ref)
    left = np.abs(ref - det[np.clip(pos - 1, 0, det.size - 1)])
    right = np.abs(det[np.clip(pos, 0, det.size - 1)] - ref)
    nearest = np.minimum(left, right)
    nearest = nearest[nearest <= MATCH_S * fs_out]
    fid = float(np.median(nearest)) * 1000.0 / fs_out if nearest.size else float("nan")
    return Row(
        rec.name, rec.note, fs_out, m.true_positives + m.false_negatives, m.true_positives,
        m.false_negatives, m.false_positives, 100 * m.sensitivity, 100 * m.positive_predictivity,
        fid, elapsed,
    )  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = [
        "| record | lead | fs (Hz) | ref beats | TP | FN | FP | Se % | +P % | median fiducial error (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.record} | {r.note} | {r.fs:g} | {r.n_ref} | {r.tp} | {r.fn} | {r.fp} | "
            f"{r.se:.2f} | {r.ppv:.2f} | {r.fiducial_ms:.1f} |"
        )
    for fs_label, sel in (("native", [r for r in rows if r.fs != WATCH_FS]),
                          ("250 Hz", [r for r in rows if r.fs == WATCH_FS])):  # fmt: skip
        tp, fn, fp = (sum(getattr(r, k) for r in sel) for k in ("tp", "fn", "fp"))
        lines.append(
            f"| **all, {fs_label}** | | | {tp + fn} | {tp} | {fn} | {fp} | "
            f"{100 * tp / (tp + fn):.2f} | {100 * tp / (tp + fp):.2f} | |"
        )
    return "\n".join(lines)


def write_doc(text: str, doc: Path = DOC) -> None:
    block = f"{START}\n{text}\n{END}"
    old = doc.read_text() if doc.exists() else "# ECG analytics\n"
    if START in old and END in old:
        new = old[: old.index(START)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/ecg.md")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    rows: list[Row] = []
    for rec in load_records(args.data):
        for fs_out in (rec.fs, float(WATCH_FS)):
            rows.append(evaluate(rec, fs_out))
    text = table(rows)
    cmd = "python -m benchmarks.ecg_validation"
    text = (
        f"Generated by `{cmd}` (match window {MATCH_S * 1000:.0f} ms, first and last "
        f"{EDGE_S:g} s not scored, channel 0, beat codes only).\n\n{text}"
    )
    sys.stdout.write(text + "\n")
    worst = min(min(r.se, r.ppv) for r in rows)
    sys.stdout.write(f"\nworst Se/+P over all records and rates: {worst:.2f} %\n")
    if not args.no_write:
        write_doc(text)
        sys.stdout.write(f"updated {DOC.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

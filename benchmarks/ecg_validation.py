"""Beat-detection accuracy of ews.ecg against annotated PhysioNet records and the field's open detectors.

    python -m benchmarks.ecg_validation                     # print and update docs/ecg.md
    python -m benchmarks.ecg_validation --no-write          # print only
    python -m benchmarks.ecg_validation --mitdb DIR         # all MIT-BIH records found in DIR

Convention (AAMI EC57 / bxb-like): reference = annotations with a beat code
(N L R B A a J S V r F e j n E / f Q ?), channel 0 only; a detection matches an unmatched
reference beat within 150 ms; beats in the first and last second are not scored (filter
start-up and edge effects); ventricular flutter/fibrillation episodes (``[`` … ``]``, record 207)
are not scored, as EC57 and bxb do. Every record is resampled to 250 Hz with
scipy.signal.resample_poly (what the E86 watch delivers). One set of detector settings for all.

Anchors, same records, same resampled signal, same matching, same run: neurokit2's default
detector (``ecg_clean`` + ``ecg_peaks``, method "neurokit"), neurokit2's Pan–Tompkins
(method "pantompkins1985" for both) and sleepecg's ``detect_heartbeats``. They are benchmark-only
dependencies (``pip install -e '.[bench]'``); without them the anchors' columns are left out.

Held-out discipline: the MIT-BIH records sorted by number are split alternately; even positions
(100, 102, 104, …) are the tuning set the detector's constants were chosen on, odd positions
(101, 103, 105, …) and SVDB are held out. Totals are given for both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from ews.ecg import BEAT_SYMBOLS, detect_r_peaks, match_beats, read_annotations, read_record
from ews.ecg.evaluate import flutter_spans, noisy_copy, outside_spans

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TEST_MITDB = ROOT / "tests" / "data" / "mitdb"
DOC = ROOT / "docs" / "ecg.md"
START, END = "<!-- ecg-validation:start -->", "<!-- ecg-validation:end -->"
WATCH_FS = 250
MATCH_S = 0.150
EDGE_S = 1.0
NPZ_RECORDS = (102, 104, 106, 114, 116, 121, 123)

IntArray = npt.NDArray[np.int64]
Detector = Callable[[npt.NDArray[np.float64], float], IntArray]


@dataclass(frozen=True)
class Record:
    name: str
    signal: npt.NDArray[np.float64]
    fs: float
    beats: IntArray
    note: str
    excluded: list[tuple[int, int]] = field(default_factory=list)  # sample spans not scored
    second: npt.NDArray[np.float64] | None = None  # channel 1 (V1, V2, V4 or V5), if recorded
    second_name: str = ""


def _wfdb(base: Path, name: str, note: str) -> Record:
    sig, fs, names = read_record(base)
    samples, symbols = read_annotations(base)
    is_beat = np.array([s in BEAT_SYMBOLS for s in symbols], dtype=bool)
    lead = names[0] if names else note
    second = sig[:, 1] if sig.shape[1] > 1 else None
    second_name = names[1] if len(names) > 1 else ""
    return Record(
        name, sig[:, 0], fs, samples[is_beat], note or lead, flutter_spans(samples, symbols),
        second, second_name,
    )  # fmt: skip


def load_records(data: Path = DATA, mitdb_dirs: tuple[Path, ...] = (TEST_MITDB,)) -> list[Record]:
    """Shared records, then every ``NNN.hea`` with its ``.atr`` in ``mitdb_dirs`` (WFDB wins)."""
    out: dict[str, Record] = {}
    for r in NPZ_RECORDS:
        path = data / "mitdb" / f"mitdb_{r}_ch0.npz"
        if path.exists():
            z = np.load(path)
            lead = "V5" if r in (102, 104) else "MLII"
            out[f"mitdb/{r}"] = Record(
                f"mitdb/{r}", z["ecg_mv"].astype(np.float64), float(z["fs"]), z["beats"], lead
            )
    if (data / "mitdb" / "100.hea").exists():
        out["mitdb/100"] = _wfdb(data / "mitdb" / "100", "mitdb/100", "MLII")
    if (data / "svdb" / "800.hea").exists():
        out["svdb/800"] = _wfdb(data / "svdb" / "800", "svdb/800", "ECG1")
    for d in mitdb_dirs:
        for hea in sorted(d.glob("[0-9][0-9][0-9].hea")):
            if hea.with_suffix(".atr").exists():
                name = f"mitdb/{hea.stem}"
                out[name] = _wfdb(hea.with_suffix(""), name, "")
    return [out[k] for k in sorted(out)]


#: The 48 MIT-BIH Arrhythmia records; even positions are the tuning set, odd ones held out.
MITDB_RECORDS: tuple[str, ...] = tuple(
    str(n)
    for n in (*range(100, 125), *range(200, 235))
    if n not in (110, 120, 204, 206, 211, 216, 218, 224, 225, 226, 227, 229)
)


def split_of(name: str) -> str:
    """'tune' for even positions of :data:`MITDB_RECORDS`, 'held-out' otherwise (and non-MIT)."""
    db, _, rec = name.partition("/")
    if db == "mitdb" and rec in MITDB_RECORDS and MITDB_RECORDS.index(rec) % 2 == 0:
        return "tune"
    return "held-out"


def _anchors() -> dict[str, Detector]:
    """The open detectors installed here (benchmark-only dependencies)."""
    found: dict[str, Detector] = {}
    try:
        nk = importlib.import_module("neurokit2")
    except ImportError:
        nk = None
    if nk is not None:

        def nk_method(method: str) -> Detector:
            def run(x: npt.NDArray[np.float64], fs: float) -> IntArray:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clean = nk.ecg_clean(x, sampling_rate=int(fs), method=method)
                    _, info = nk.ecg_peaks(clean, sampling_rate=int(fs), method=method)
                return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)

            return run

        found["neurokit2"] = nk_method("neurokit")
        found["nk2 Pan–Tompkins"] = nk_method("pantompkins1985")
    try:
        sleepecg = importlib.import_module("sleepecg")
    except ImportError:
        sleepecg = None
    if sleepecg is not None:

        def sl(x: npt.NDArray[np.float64], fs: float) -> IntArray:
            return np.asarray(sleepecg.detect_heartbeats(x, fs), dtype=np.int64)

        found["sleepecg"] = sl
    return found


@dataclass(frozen=True)
class Score:
    tp: int
    fn: int
    fp: int
    seconds: float

    @property
    def se(self) -> float:
        return 100 * self.tp / (self.tp + self.fn) if self.tp + self.fn else 100.0

    @property
    def ppv(self) -> float:
        return 100 * self.tp / (self.tp + self.fp) if self.tp + self.fp else 100.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fn + self.fp
        return 100 * 2 * self.tp / d if d else 100.0


def total(scores: list[Score]) -> Score:
    return Score(*(sum(getattr(s, k) for s in scores) for k in ("tp", "fn", "fp", "seconds")))


def resampled(rec: Record) -> tuple[npt.NDArray[np.float64], IntArray, list[tuple[int, int]]]:
    if rec.fs == WATCH_FS:
        return rec.signal, rec.beats, rec.excluded
    up, down = WATCH_FS, int(rec.fs)
    g = int(np.gcd(up, down))
    x = np.asarray(resample_poly(rec.signal, up // g, down // g), dtype=np.float64)
    k = WATCH_FS / rec.fs
    ref = np.round(rec.beats * k).astype(np.int64)
    spans = [(round(a * k), min(round(b * k), 2**62)) for a, b in rec.excluded]
    return x, ref, spans


def score(
    x: npt.NDArray[np.float64], ref: IntArray, spans: list[tuple[int, int]], det_fn: Detector
) -> Score:
    t0 = time.perf_counter()
    det = np.unique(np.asarray(det_fn(x, float(WATCH_FS)), dtype=np.int64))
    elapsed = time.perf_counter() - t0
    edge = round(EDGE_S * WATCH_FS)
    m = match_beats(
        outside_spans(ref, spans), outside_spans(det, spans), round(MATCH_S * WATCH_FS),
        start=edge, end=x.size - edge,
    )  # fmt: skip
    return Score(m.true_positives, m.false_negatives, m.false_positives, elapsed)


OURS = "ews.ecg"


def run(records: list[Record], anchors: dict[str, Detector]) -> dict[str, dict[str, Score]]:
    """record name → detector name → score, every detector on the same signal in one run."""
    dets: dict[str, Detector] = {OURS: detect_r_peaks, **anchors}
    out: dict[str, dict[str, Score]] = {}
    for rec in records:
        x, ref, spans = resampled(rec)
        out[rec.name] = {name: score(x, ref, spans, fn) for name, fn in dets.items()}
    return out


def table(records: list[Record], res: dict[str, dict[str, Score]]) -> str:
    names = [r.name for r in records]
    dets = list(next(iter(res.values())))
    anchors = dets[1:]
    head = "| record | lead | set | ref beats | TP | FN | FP | Se % | +P % |"
    rule = "|---|---|---|---:|---:|---:|---:|---:|---:|"
    for a in anchors:
        head += f" {a} Se / +P % |"
        rule += "---:|"
    lines = [head, rule]
    for rec in records:
        s = res[rec.name][OURS]
        fse = " ⚠" if s.se < 99.5 else ""
        fpp = " ⚠" if s.ppv < 99.5 else ""
        row = (
            f"| {rec.name} | {rec.note} | {split_of(rec.name)} | {s.tp + s.fn} | {s.tp} | "
            f"{s.fn} | {s.fp} | {s.se:.2f}{fse} | {s.ppv:.2f}{fpp} |"
        )
        for a in anchors:
            t = res[rec.name][a]
            row += f" {t.se:.2f} / {t.ppv:.2f} |"
        lines.append(row)
    lines += ["", "| detector | records | Se % | +P % | F1 % | worst record Se / +P % | time (s) |",
              "|---|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for label, sel in (
        ("all", names),
        ("tune", [n for n in names if split_of(n) == "tune"]),
        ("held-out", [n for n in names if split_of(n) == "held-out"]),
    ):
        for d in dets:
            t = total([res[n][d] for n in sel])
            worst_se = min(sel, key=lambda n: res[n][d].se)
            worst_pp = min(sel, key=lambda n: res[n][d].ppv)
            lines.append(
                f"| {'**' + d + '**' if d == OURS else d} | {label} ({len(sel)}) | {t.se:.2f} | "
                f"{t.ppv:.2f} | {t.f1:.2f} | {worst_se} {res[worst_se][d].se:.2f} / "
                f"{worst_pp} {res[worst_pp][d].ppv:.2f} | {t.seconds:.2f} |"
            )
    return "\n".join(lines)


NOISE_RECORDS = ("mitdb/100", "mitdb/118", "mitdb/119")  # NSTDB adds its noise to 118 and 119
NOISE_SNR_DB = (12, 6, 0)
NOISE_BANDS = {"muscle (10–100 Hz)": (10.0, 100.0), "electrode motion (0.5–8 Hz)": (0.5, 8.0)}


def noise_stress(records: list[Record], anchors: dict[str, Detector]) -> str:
    """Se / +P per detector on clean records with added noise (all of NOISE_RECORDS found)."""
    dets: dict[str, Detector] = {OURS: detect_r_peaks, **anchors}
    chosen = [r for r in records if r.name in NOISE_RECORDS]
    if not chosen:
        return ""
    head = "| noise | SNR (dB) |" + "".join(f" {d} Se / +P % |" for d in dets)
    lines = [head, "|---|---:|" + "---:|" * len(dets)]
    prepared = [resampled(r) for r in chosen]
    for b_i, (label, band) in enumerate(NOISE_BANDS.items()):
        for snr in NOISE_SNR_DB:
            cells = []
            for fn in dets.values():
                scores = []
                for r_i, (x, ref, spans) in enumerate(prepared):
                    y = noisy_copy(x, ref, WATCH_FS, band, snr, seed=1000 * b_i + 10 * r_i + snr)
                    scores.append(score(y, ref, spans, fn))
                t = total(scores)
                cells.append(f" {t.se:.2f} / {t.ppv:.2f} |")
            lines.append(f"| {label} | {snr} |" + "".join(cells))
    names = ", ".join(r.name for r in chosen)
    return f"Noise stress ({names}; all beats pooled):\n\n" + "\n".join(lines)


def second_lead(records: list[Record], anchors: dict[str, Detector]) -> str:
    """Totals per detector on channel 1 of every two-lead WFDB record (a lead nobody tuned on)."""
    dets: dict[str, Detector] = {OURS: detect_r_peaks, **anchors}
    chosen = [r for r in records if r.second is not None and r.name.startswith("mitdb/")]
    if not chosen:
        return ""
    per: dict[str, list[Score]] = {d: [] for d in dets}
    for r in chosen:
        assert r.second is not None
        x, ref, spans = resampled(Record(r.name, r.second, r.fs, r.beats, "", r.excluded))
        for d, fn in dets.items():
            per[d].append(score(x, ref, spans, fn))
    lines = [
        "| detector | Se % | +P % | F1 % | records under 98 % (Se or +P) |",
        "|---|---:|---:|---:|---:|",
    ]
    for d, sc in per.items():
        t = total(sc)
        under = sum(1 for v in sc if min(v.se, v.ppv) < 98.0)
        lines.append(f"| {d} | {t.se:.2f} | {t.ppv:.2f} | {t.f1:.2f} | {under} of {len(sc)} |")
    leads = sorted({r.second_name for r in chosen})
    return (
        f"Second lead (channel 1: {', '.join(leads)}) of the {len(chosen)} MIT-BIH WFDB records, "
        "same scoring (a check on a lead nobody tuned for; see docs/ecg.md for how it was used):\n\n"
        + "\n".join(lines)
    )


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
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument(
        "--mitdb", type=Path, action="append", default=None,
        help=f"folder of MIT-BIH WFDB records NNN.hea/.dat/.atr (default {TEST_MITDB})",
    )  # fmt: skip
    ap.add_argument("--no-anchors", action="store_true", help="skip neurokit2 / sleepecg")
    args = ap.parse_args(argv)
    mitdb = tuple(args.mitdb) if args.mitdb else (TEST_MITDB,)
    records = load_records(args.data, mitdb)
    anchors = {} if args.no_anchors else _anchors()
    res = run(records, anchors)
    stress = noise_stress(records, anchors)
    lead2 = second_lead(records, anchors)
    cmd = "python -m benchmarks.ecg_validation" + "".join(f" --mitdb …/{d.name}" for d in mitdb)
    missing = (
        "" if anchors or args.no_anchors else " (neurokit2/sleepecg not installed: no anchors)"
    )
    text = (
        f"Generated by `{cmd}`{missing}: {len(records)} records at {WATCH_FS} Hz, match window "
        f"{MATCH_S * 1000:.0f} ms, first and last {EDGE_S:g} s and ventricular flutter episodes "
        f"not scored, channel 0, beat codes only. ⚠ = below 99.5 %.\n\n{table(records, res)}"
    )
    for extra in (stress, lead2):
        if extra:
            text += "\n\n" + extra
    sys.stdout.write(text + "\n")
    if not args.no_write:
        write_doc(text)
        sys.stdout.write(f"updated {DOC.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

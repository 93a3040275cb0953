"""Speed of ews.ecg.analyse on one hour of 250 Hz ECG, against a band-pass-only baseline.

    python -m benchmarks.ecg_speed

Signal: MIT-BIH record 100 (MLII) resampled 360 → 250 Hz with resample_poly and tiled to 1 h
(900,000 samples). Baseline, same data and run: one zero-phase Butterworth band-pass
(scipy.signal.sosfiltfilt, order 2, 5–20 Hz), the least any filter-based detector must do.
Figures are the best of several repeats (least disturbed by other processes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import signal as sps

from benchmarks.timing import best_of
from ews.ecg import analyse, detect_r_peaks, read_record

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FS = 250
SECONDS = 3600
REPEATS = 5


def one_hour() -> np.ndarray:
    sig, _fs, _ = read_record(DATA / "mitdb" / "100")
    x = sps.resample_poly(sig[:, 0], 25, 36)
    reps = int(np.ceil(SECONDS * FS / x.size))
    return np.tile(x, reps)[: SECONDS * FS]


def main() -> int:
    x = one_hour()
    sos = sps.butter(2, (5.0, 20.0), btype="bandpass", fs=FS, output="sos")
    t_base = best_of(lambda: sps.sosfiltfilt(sos, x), REPEATS)
    t_detect = best_of(lambda: detect_r_peaks(x, FS), REPEATS)
    t_analyse = best_of(lambda: analyse(x, FS), REPEATS)
    summary = analyse(x, FS)
    hours = x.size / FS / 3600
    out = [
        f"input: {x.size} samples = {hours:.2f} h at {FS} Hz, {len(summary.beats)} beats",
        f"baseline sosfiltfilt band-pass : {t_base * 1000:8.1f} ms",
        f"detect_r_peaks                 : {t_detect * 1000:8.1f} ms  "
        f"({t_detect / t_base:.1f}x baseline, {hours * 3600 / t_detect:,.0f}x real time)",
        f"analyse (detect+SQI+HRV)       : {t_analyse * 1000:8.1f} ms  "
        f"({t_analyse / t_base:.1f}x baseline, {hours * 3600 / t_analyse:,.0f}x real time)",
        f"target < 1 s for analyse: {'met' if t_analyse < 1.0 else 'NOT met'}",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

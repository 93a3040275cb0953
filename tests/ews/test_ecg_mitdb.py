"""Beat detection against the cardiologists' annotations of real MIT-BIH / SVDB recordings.

Deterministic accuracy assertions: detections within 150 ms of an annotated beat (AAMI EC57
match window), first and last second of each record not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from ews.ecg import analyse, detect_r_peaks, match_beats
from tests.support.wfdb_records import read_annotated


def score(
    x: npt.NDArray[np.float64], fs: float, beats: npt.NDArray[np.int64], to_fs: int
) -> tuple[float, float]:
    up, down = to_fs, int(fs)
    g = np.gcd(up, down)
    y = resample_poly(x, up // g, down // g)
    ref = np.round(beats * to_fs / fs).astype(np.int64)
    det = detect_r_peaks(y, float(to_fs))
    m = match_beats(ref, det, round(0.15 * to_fs), start=to_fs, end=y.size - to_fs)
    return m.sensitivity, m.positive_predictivity


def test_record_100_at_watch_rate(shared_data: Path) -> None:
    r = read_annotated(shared_data / "mitdb" / "100")
    se, ppv = score(r.ecg, r.fs, r.beats, 250)
    assert se >= 0.995 and ppv >= 0.995, (se, ppv)


def test_record_100_fiducial_accuracy_and_summary(shared_data: Path) -> None:
    r = read_annotated(shared_data / "mitdb" / "100")
    x, fs, beats = r.ecg, r.fs, r.beats
    det = detect_r_peaks(x, fs)
    nearest = np.abs(det[:, None] - beats[None, :]).min(axis=0)
    assert np.median(nearest) <= 2  # median within 2 samples (5.6 ms) of the annotation
    s = analyse(x, fs)
    assert s.quality == "good" and not s.irregular_rhythm
    assert s.mean_hr_bpm is not None and abs(s.mean_hr_bpm - 75.5) < 1.0  # 2273 beats / 30 min


def test_svdb_800_at_watch_rate(shared_data: Path) -> None:
    r = read_annotated(shared_data / "svdb" / "800")
    se, ppv = score(r.ecg, r.fs, r.beats, 250)
    assert se >= 0.99 and ppv >= 0.99, (se, ppv)


def test_record_106_ventricular_bigeminy(shared_data: Path) -> None:
    z = np.load(shared_data / "mitdb" / "mitdb_106_ch0.npz")
    se, ppv = score(z["ecg_mv"].astype(np.float64), float(z["fs"]), z["beats"], 250)
    assert se >= 0.99 and ppv >= 0.99, (se, ppv)

"""ews.ecg on synthetic ECG with a known truth: polarity, wander, amplitude, noise, rates, quality."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ews.ecg import EcgSummary, analyse, detect_r_peaks, match_beats

# (offset from R in s, amplitude in mV, width sigma in s): P, Q, R, S, T
WAVES = (
    (-0.20, 0.15, 0.025),
    (-0.03, -0.12, 0.010),
    (0.00, 1.00, 0.012),
    (0.03, -0.25, 0.010),
    (0.28, 0.30, 0.050),
)


def synth_ecg(
    rr_s: npt.ArrayLike, fs: float, start_s: float = 0.6, tail_s: float = 1.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """ECG (mV), one Gaussian-sum beat after each RR interval; returns signal and R indices."""
    rr = np.asarray(rr_s, dtype=np.float64)
    beat_t = start_s + np.concatenate([[0.0], np.cumsum(rr)])
    n = int(np.ceil((beat_t[-1] + tail_s) * fs))
    t = np.arange(n) / fs
    x = np.zeros(n)
    for bt in beat_t:
        lo, hi = int(max(0, (bt - 0.4) * fs)), int(min(n, (bt + 0.6) * fs))
        for off, amp, sd in WAVES:
            x[lo:hi] += amp * np.exp(-0.5 * ((t[lo:hi] - bt - off) / sd) ** 2)
    return x, np.round(beat_t * fs).astype(np.int64)


def regular(n: int = 120, rr: float = 0.8) -> npt.NDArray[np.float64]:
    return np.full(n, rr)


def assert_detects(x: npt.NDArray[np.float64], fs: float, truth: npt.NDArray[np.int64]) -> None:
    det = detect_r_peaks(x, fs)
    m = match_beats(truth, det, tolerance=round(0.15 * fs))
    assert m.false_negatives == 0 and m.false_positives == 0, m
    # fiducial on the R wave: within 10 ms of the truth
    nearest = np.abs(det[:, None] - truth[None, :]).min(axis=0)
    assert nearest.max() <= round(0.010 * fs) + 1


@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0])
def test_clean_signal_at_each_rate(fs: float) -> None:
    x, truth = synth_ecg(regular(), fs)
    assert_detects(x, fs, truth)


def test_inverted_polarity_peaks_on_the_negative_r() -> None:
    x, truth = synth_ecg(regular(), 250.0)
    assert_detects(-x, 250.0, truth)
    det = detect_r_peaks(-x, 250.0)
    assert (-x[det] < -0.9).all()  # refined onto the (now negative) R extremum


def test_baseline_wander_and_offset() -> None:
    fs = 250.0
    x, truth = synth_ecg(regular(), fs)
    t = np.arange(x.size) / fs
    x = x + 1.5 * np.sin(2 * np.pi * 0.25 * t) + 0.8 * np.sin(2 * np.pi * 0.05 * t) + 3.0
    assert_detects(x, fs, truth)


def test_amplitude_changes_both_ways() -> None:
    fs = 250.0
    x, truth = synth_ecg(regular(150), fs)
    t = np.arange(x.size) / fs
    # lead loosens: QRS falls to 30 % within 1 s at 30 s, recovers at 60 s, triples at 90 s
    gain = np.interp(t, [0, 30, 31, 60, 61, 90, 91, 1e9], [1, 1, 0.3, 0.3, 1, 1, 3, 3])
    assert_detects(x * gain, fs, truth)


def test_added_noise() -> None:
    fs = 250.0
    rng = np.random.default_rng(7)
    x, truth = synth_ecg(regular(), fs)
    t = np.arange(x.size) / fs
    noisy = x + rng.normal(0, 0.05, x.size) + 0.1 * np.sin(2 * np.pi * 50 * t)
    assert_detects(noisy, fs, truth)


def test_tachycardia_and_bradycardia() -> None:
    fs = 250.0
    rr = np.concatenate([np.full(60, 0.4), np.full(30, 1.5)])  # 150 bpm then 40 bpm
    x, truth = synth_ecg(rr, fs)
    assert_detects(x, fs, truth)


def test_nan_gap_is_bridged_and_no_beat_inside() -> None:
    fs = 250.0
    x, truth = synth_ecg(regular(), fs)
    gap = slice(int(30 * fs), int(33 * fs))
    x[gap] = np.nan
    det = detect_r_peaks(x, fs)
    assert not ((det >= gap.start) & (det < gap.stop)).any()
    outside = truth[(truth < gap.start - 10) | (truth >= gap.stop + 10)]
    assert match_beats(outside, det, round(0.15 * fs)).false_negatives == 0


@pytest.mark.parametrize(
    ("signal", "fs", "message"),
    [
        (np.zeros((100, 2)), 250.0, "1-D"),
        (np.zeros(100), 250.0, "at least 2 s"),
        (np.array([0.0] * 600 + [np.inf]), 250.0, "infinite"),
        (np.zeros(5000), 50.0, "fs must be between"),
        (np.zeros(5000), float("nan"), "fs must be between"),
        (np.zeros(5000), "fast", "fs must be a number"),
        (["a"] * 5000, 250.0, "array of numbers"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(
    signal: object, fs: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        detect_r_peaks(signal, fs)
    with pytest.raises(ValueError, match=message):
        analyse(signal, fs)


def test_all_nan_and_flat_give_no_beats() -> None:
    assert detect_r_peaks(np.full(2500, np.nan), 250.0).size == 0
    assert detect_r_peaks(np.zeros(2500), 250.0).size == 0
    s = analyse(np.zeros(2500), 250.0)
    assert s.quality == "unusable" and s.mean_hr_bpm is None and s.usable_fraction == 0.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    fs=st.sampled_from([125.0, 250.0, 360.0, 500.0]),
    seconds=st.floats(2.0, 12.0),
    scale=st.sampled_from([1e-6, 1.0, 1e3]),
)
def test_random_noise_never_crashes(seed: int, fs: float, seconds: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, scale, int(seconds * fs))
    if seed % 3 == 0:
        x[rng.integers(0, x.size, x.size // 10)] = np.nan
    det = detect_r_peaks(x, fs)
    assert det.dtype == np.int64
    assert (np.diff(det) > 0).all()
    assert det.size == 0 or (det[0] >= 0 and det[-1] < x.size)
    summary = analyse(x, fs)
    assert set(summary.usable_beats) <= set(summary.beats)
    json.dumps(summary.to_dict())


# --- analyse(): quality, HR/HRV, rhythm hint ---------------------------------------------


def test_regular_rhythm_summary() -> None:
    fs = 250.0
    x, truth = synth_ecg(regular(150, 0.75), fs)  # 80 bpm
    s = analyse(x, fs)
    assert isinstance(s, EcgSummary)
    assert s.quality == "good" and s.usable_fraction == 1.0
    assert s.mean_hr_bpm == pytest.approx(80.0, abs=0.5)
    assert s.sdnn_ms is not None and s.sdnn_ms < 5.0
    assert s.rmssd_ms is not None and s.rmssd_ms < 5.0
    assert not s.irregular_rhythm
    assert len(s.rr_ms) == len(truth) - 1 and len(s.hr_bpm) == len(s.rr_ms)
    d = s.to_dict()
    assert json.loads(json.dumps(d))["quality"] == "good"
    assert "not a diagnosis" in str(d["note"])


def test_sinus_arrhythmia_is_not_flagged() -> None:
    # slow respiratory modulation of ±8 % over ~5 beats: variable but regular
    k = np.arange(150)
    x, _ = synth_ecg(0.9 * (1 + 0.08 * np.sin(2 * np.pi * k / 5.0)), 250.0)
    s = analyse(x, 250.0)
    assert not s.irregular_rhythm
    assert s.sdnn_ms is not None and s.sdnn_ms > 30


def test_random_rr_is_flagged_irregular() -> None:
    rng = np.random.default_rng(3)
    rr = rng.uniform(0.45, 1.1, 150)  # AF-like: irregularly irregular
    x, truth = synth_ecg(rr, 250.0)
    s = analyse(x, 250.0)
    assert s.irregular_rhythm
    assert s.nrmssd is not None and s.nrmssd > 0.1
    m = match_beats(truth, np.asarray(s.beats), round(0.15 * 250))
    assert m.false_negatives == 0 and m.false_positives == 0


def test_rmssd_matches_alternating_rr() -> None:
    # RR alternates 800/860 ms: every successive difference is 60 ms, all within 20 % of median
    rr = np.tile([0.80, 0.86], 75)
    x, _ = synth_ecg(rr, 250.0)
    s = analyse(x, 250.0)
    assert s.rmssd_ms == pytest.approx(60.0, abs=6.0)
    assert s.sdnn_ms == pytest.approx(30.0, abs=4.0)


def test_ectopic_rr_excluded_from_hrv() -> None:
    rr = np.full(150, 0.8)
    rr[50], rr[51] = 0.5, 1.1  # a premature beat and its compensatory pause
    x, _ = synth_ecg(rr, 250.0)
    s = analyse(x, 250.0)
    assert s.rmssd_ms is not None and s.rmssd_ms < 5.0
    assert s.n_normal_rr == len(s.rr_ms) - 2


def test_flatline_segment_marked_unusable_and_excluded() -> None:
    fs = 250.0
    x, _truth = synth_ecg(regular(150, 0.8), fs)  # ~121 s
    lo, hi = int(40 * fs), int(70 * fs)
    x[lo:hi] = x[lo]  # electrode off: stuck value
    s = analyse(x, fs)
    bad = [seg for seg in s.segments if not seg.usable]
    assert bad and all(seg.reason in ("flatline", "no_beats") for seg in bad)
    assert all(lo / fs - 10 <= seg.start_s and seg.end_s <= hi / fs + 10 for seg in bad)
    assert 0.6 < s.usable_fraction < 0.85
    assert s.quality == "fair"
    assert not any(lo <= b < hi for b in s.usable_beats)
    assert all(rr < 2000 for rr in s.rr_ms)  # no interval spans the gap
    assert s.mean_hr_bpm == pytest.approx(75.0, abs=0.5)


def test_noise_burst_marked_noisy() -> None:
    fs = 250.0
    rng = np.random.default_rng(11)
    x, _ = synth_ecg(regular(150, 0.8), fs)
    lo, hi = int(50 * fs), int(80 * fs)
    x[lo:hi] += rng.normal(0, 1.0, hi - lo)  # motion artefact louder than the QRS
    s = analyse(x, fs)
    noisy = [seg for seg in s.segments if seg.reason == "noisy"]
    assert noisy and all(lo / fs - 10 <= seg.start_s < hi / fs for seg in noisy)
    clean = [seg for seg in s.segments if seg.end_s <= lo / fs or seg.start_s >= hi / fs]
    assert all(seg.usable for seg in clean)


def test_clipping_marked() -> None:
    fs = 250.0
    x, _ = synth_ecg(regular(150, 0.8), fs)
    lo, hi = int(20 * fs), int(40 * fs)
    x[lo:hi] = np.clip(x[lo:hi] * 8, -0.6, 0.6)  # amplifier saturates
    x = np.clip(x, -0.6, 0.6)
    s = analyse(x, fs)
    assert any(seg.reason == "clipping" for seg in s.segments)

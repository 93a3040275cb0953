"""Signal-quality index per fixed window: which stretches of an ECG can be trusted.

Each window (10 s by default) is checked, in this order, for hard failures — missing samples,
flatline / electrode off, clipping at the recorder's rails, too few beats — and otherwise scored
by how alike its beats are (beat-to-beat morphology correlation) and how far the QRS stands out
of the 5–20 Hz noise between beats. Every constant in :class:`QualitySettings` says why.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .detect import Prepared

__all__ = ["QualitySettings", "SegmentQuality", "assess_segments"]

Reason = Literal["ok", "missing", "flatline", "clipping", "no_beats", "noisy"]


@dataclass(frozen=True)
class QualitySettings:
    """Quality constants, from ECG physiology and common SQI practice (not fitted per record)."""

    window_s: float = 10.0
    """Window length: 10 s holds ≥ 7 beats at 40 bpm, enough to compare beats to each other."""
    min_window_s: float = 3.0
    """A shorter tail is merged into the previous window."""
    max_missing_fraction: float = 0.2
    """More than 20 % NaN (bridged by interpolation) and the window is not trusted."""
    flat_amplitude_mv: float = 0.05
    """1–99 % range of the 0.5–40 Hz signal below 50 µV: no QRS (normal QRS ≥ 0.3 mV) → flatline."""
    flat_step_fraction: float = 0.5
    """Or over half the samples repeat the previous value exactly: a stuck/disconnected input."""
    clip_fraction: float = 0.02
    """Over 2 % of the window (0.2 s) pinned at the record's extreme values → saturated."""
    min_beats: int = 2
    """Fewer than two beats: no RR interval, nothing to analyse (asystole or no signal)."""
    beat_half_width_s: float = 0.1
    """Beat morphology compared over ±100 ms around the R peak (the QRS and its shoulders)."""
    usable_correlation: float = 0.6
    """Beat-shape recurrence below 0.6: beats do not repeat → noise, not ECG (random noise scores
    0.2–0.5 by this measure, real ECG windows ≥ 0.8 even with bigeminy)."""
    min_qrs_noise_ratio: float = 2.0
    """RMS of the 5–20 Hz signal at the QRS over its RMS between beats below 2: QRS does not stand
    out of high-frequency / motion noise."""
    good_qrs_noise_ratio: float = 4.0
    """Ratio for a 'good' window."""
    qrs_half_width_s: float = 0.06
    """Samples within ±60 ms of a beat count as QRS for the noise ratio; ±250 ms are excluded
    from the between-beat noise (they hold the T wave's steep parts)."""
    guard_s: float = 0.25


DEFAULT_QUALITY = QualitySettings()


@dataclass(frozen=True)
class SegmentQuality:
    """Quality of one window ``[start_s, end_s)``; ``sqi`` in 0..1 (0 = unusable)."""

    start: int
    end: int
    start_s: float
    end_s: float
    sqi: float
    usable: bool
    reason: Reason
    n_beats: int
    correlation: float
    qrs_noise_ratio: float

    def to_dict(self) -> dict[str, object]:
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "sqi": round(self.sqi, 3),
            "usable": self.usable,
            "reason": self.reason,
            "n_beats": self.n_beats,
            "correlation": round(self.correlation, 3),
            "qrs_noise_ratio": round(self.qrs_noise_ratio, 2),
        }


def _windows(n: int, fs: float, s: QualitySettings) -> list[tuple[int, int]]:
    w = max(1, round(s.window_s * fs))
    edges = [*list(range(0, n, w)), n]
    if len(edges) > 2 and edges[-1] - edges[-2] < s.min_window_s * fs:
        del edges[-2]
    return list(itertools.pairwise(edges))


def _best_correlation(
    beats: npt.NDArray[np.int64], clean: npt.NDArray[np.float64], hw: int
) -> float:
    """Median over beats of how well each beat's shape recurs in the window.

    Per beat: its correlation with the beat ranked ⌈(k−1)/3⌉-th most similar among the k−1 others,
    i.e. its shape is shared by at least a third of the window (so bigeminy and trigeminy still
    score high, random noise does not)."""
    if beats.size < 2:
        return 0.0
    idx = np.clip(beats[:, None] + np.arange(-hw, hw + 1)[None, :], 0, clean.size - 1)
    seg = clean[idx]
    seg = seg - seg.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(seg, axis=1)
    norm[norm == 0] = np.inf
    seg = seg / norm[:, None]
    corr = seg @ seg.T
    np.fill_diagonal(corr, -1.0)
    k = beats.size
    rank = max(1, -(-(k - 1) // 3))
    kth = np.sort(corr, axis=1)[:, k - rank]
    return float(np.median(kth))


def assess_segments(
    p: Prepared, beats: npt.NDArray[np.int64], s: QualitySettings = DEFAULT_QUALITY
) -> tuple[SegmentQuality, ...]:
    """Score every window of the prepared signal given the detected beats."""
    fs = p.fs
    n = p.raw.size
    finite = p.raw[~p.nan_mask]
    gmax = float(finite.max()) if finite.size else 0.0
    gmin = float(finite.min()) if finite.size else 0.0
    tol = 1e-3 * (gmax - gmin)
    hw = max(1, round(s.beat_half_width_s * fs))
    qhw = max(1, round(s.qrs_half_width_s * fs))
    guard = max(qhw, round(s.guard_s * fs))

    # per-sample masks, built once for the whole record
    same = np.zeros(n, dtype=bool)
    same[1:] = p.raw[1:] == p.raw[:-1]
    at_rail = (p.raw >= gmax - tol) | (p.raw <= gmin + tol)
    pinned = at_rail & (same | np.roll(same, -1)) & ~p.nan_mask
    near_qrs = np.zeros(n + 1, dtype=np.int64)
    near_guard = np.zeros(n + 1, dtype=np.int64)
    if beats.size:
        np.add.at(near_qrs, np.clip(beats - qhw, 0, n), 1)
        np.add.at(near_qrs, np.clip(beats + qhw + 1, 0, n), -1)
        np.add.at(near_guard, np.clip(beats - guard, 0, n), 1)
        np.add.at(near_guard, np.clip(beats + guard + 1, 0, n), -1)
    in_qrs = np.cumsum(near_qrs)[:n] > 0
    in_guard = np.cumsum(near_guard)[:n] > 0
    band2 = p.band * p.band

    out: list[SegmentQuality] = []
    for a, b in _windows(n, fs, s):
        length = b - a
        wb = beats[(beats >= a) & (beats < b)]
        reason: Reason = "ok"
        corr = 0.0
        ratio = 0.0
        clean = p.clean[a:b]
        if p.nan_mask[a:b].mean() > s.max_missing_fraction:
            reason = "missing"
        elif (
            float(np.percentile(clean, 99) - np.percentile(clean, 1)) < s.flat_amplitude_mv
            or same[a:b].mean() > s.flat_step_fraction
        ):
            reason = "flatline"
        elif pinned[a:b].sum() > s.clip_fraction * length:
            reason = "clipping"
        elif wb.size < s.min_beats:
            reason = "no_beats"
        else:
            corr = _best_correlation(wb, p.clean, hw)
            q = in_qrs[a:b]
            quiet = ~in_guard[a:b]
            sig = float(np.sqrt(band2[a:b][q].mean())) if q.any() else 0.0
            noise = float(np.sqrt(band2[a:b][quiet].mean())) if quiet.any() else 0.0
            ratio = sig / noise if noise > 0 else (np.inf if sig > 0 else 0.0)
            if corr < s.usable_correlation or ratio < s.min_qrs_noise_ratio:
                reason = "noisy"
        usable = reason == "ok"
        if usable:
            c_part = (corr - s.usable_correlation) / (1.0 - s.usable_correlation)
            r_part = (min(ratio, s.good_qrs_noise_ratio) - s.min_qrs_noise_ratio) / (
                s.good_qrs_noise_ratio - s.min_qrs_noise_ratio
            )
            sqi = 0.5 + 0.5 * min(max(c_part, 0.0), max(r_part, 0.0))
        else:
            sqi = 0.0
        out.append(
            SegmentQuality(
                start=a,
                end=b,
                start_s=a / fs,
                end_s=b / fs,
                sqi=float(sqi),
                usable=usable,
                reason=reason,
                n_beats=int(wb.size),
                correlation=float(corr),
                qrs_noise_ratio=float(min(ratio, 1e6)),
            )
        )
    return tuple(out)

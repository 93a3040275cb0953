"""Beat-by-beat comparison of detections against reference annotations (EC57-style)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, sosfiltfilt

__all__ = ["MatchResult", "flutter_spans", "match_beats", "noisy_copy", "outside_spans"]


@dataclass(frozen=True)
class MatchResult:
    """Counts of a one-to-one matching; Se = TP/(TP+FN), +P = TP/(TP+FP)."""

    true_positives: int
    false_negatives: int
    false_positives: int

    @property
    def sensitivity(self) -> float:
        d = self.true_positives + self.false_negatives
        return self.true_positives / d if d else 1.0

    @property
    def positive_predictivity(self) -> float:
        d = self.true_positives + self.false_positives
        return self.true_positives / d if d else 1.0


def match_beats(
    reference: npt.ArrayLike,
    detected: npt.ArrayLike,
    tolerance: int,
    start: int = 0,
    end: int | None = None,
) -> MatchResult:
    """Match each reference beat to at most one detection within ``tolerance`` samples.

    Greedy in time order on the closest unmatched detection (a detection is used once).
    Only beats with ``start <= index < end`` on either side are scored.
    """
    ref = np.sort(np.asarray(reference, dtype=np.int64))
    det = np.sort(np.asarray(detected, dtype=np.int64))
    hi = np.iinfo(np.int64).max if end is None else end
    ref = ref[(ref >= start) & (ref < hi)]
    det = det[(det >= start) & (det < hi)]
    used = np.zeros(det.size, dtype=bool)
    tp = 0
    j = 0
    for r in ref:
        while j < det.size and det[j] < r - tolerance:
            j += 1
        best = -1
        k = j
        while k < det.size and det[k] <= r + tolerance:
            if not used[k] and (best < 0 or abs(det[k] - r) < abs(det[best] - r)):
                best = k
            k += 1
        if best >= 0:
            used[best] = True
            tp += 1
    return MatchResult(tp, int(ref.size - tp), int(det.size - tp))


def flutter_spans(
    samples: npt.ArrayLike, symbols: tuple[str, ...] | list[str]
) -> list[tuple[int, int]]:
    """``[start, end)`` sample spans of ventricular flutter/fibrillation (``[`` … ``]`` annotations).

    AAMI EC57 (and PhysioNet's ``bxb``) leave these episodes out of QRS-detection scoring: their
    waves are annotated ``!`` (flutter waves), not beats, so neither misses nor extra detections
    inside them are counted. An unclosed ``[`` runs to the end of the record.
    """
    s = np.asarray(samples, dtype=np.int64)
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for pos, sym in zip(s.tolist(), symbols, strict=True):
        if sym == "[" and start is None:
            start = int(pos)
        elif sym == "]" and start is not None:
            spans.append((start, int(pos) + 1))
            start = None
    if start is not None:
        spans.append((start, int(np.iinfo(np.int64).max)))
    return spans


def outside_spans(x: npt.ArrayLike, spans: list[tuple[int, int]]) -> npt.NDArray[np.int64]:
    """The sample indices of ``x`` not inside any ``[start, end)`` span."""
    a = np.asarray(x, dtype=np.int64)
    keep = np.ones(a.size, dtype=bool)
    for lo, hi in spans:
        keep &= ~((a >= lo) & (a < hi))
    return a[keep]


def noisy_copy(
    x: npt.ArrayLike,
    ref: npt.ArrayLike,
    fs: float,
    band: tuple[float, float],
    snr_db: float,
    seed: int,
) -> npt.NDArray[np.float64]:
    """``x`` (sampled at ``fs``, R peaks at ``ref``) plus Gaussian noise band-passed to ``band``,
    at an NSTDB-style SNR.

    As the MIT-BIH Noise Stress Test Database defines it: S = (median QRS peak-to-peak)² / 8,
    N = noise variance, SNR = 10 log10(S / N). Synthetic noise (the NSTDB noise recordings are
    not available here), fixed seed: every detector sees the same samples."""
    xa = np.asarray(x, dtype=np.float64)
    ra = np.asarray(ref, dtype=np.int64)
    if xa.ndim != 1 or not np.isfinite(xa).all():
        raise ValueError("x must be a 1-D array of finite samples")
    if not 0 < band[0] < band[1] or not np.isfinite(snr_db) or not fs > 2 * band[0]:
        raise ValueError(
            f"need 0 < band[0] < band[1] below fs/2 and a finite SNR, got {band}, {snr_db}"
        )
    hw = round(0.05 * fs)
    inner = ra[(ra > hw) & (ra < xa.size - hw)]
    if inner.size == 0:
        raise ValueError("ref holds no R peak inside x: the signal amplitude is undefined")
    pp = float(np.median([np.ptp(xa[b - hw : b + hw]) for b in inner]))
    hi = min(band[1], 0.45 * fs)
    sos = butter(2, (band[0], hi), btype="bandpass", fs=fs, output="sos")
    noise = sosfiltfilt(sos, np.random.default_rng(seed).normal(size=xa.size))
    noise *= pp / np.sqrt(8.0) / 10 ** (snr_db / 20.0) / noise.std()
    return np.asarray(xa + noise, dtype=np.float64)

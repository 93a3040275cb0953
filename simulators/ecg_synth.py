"""Synthetic single-lead ECG at the E86's 250 Hz, as the watch's raw signed 24-bit integers.

Each beat is a sum of five Gaussians (P, Q, R, S, T) placed in time around its R peak, in the
spirit of McSharry et al.'s ECGSYN (IEEE TBME 50(3), 2003) but written directly in time rather
than as their ODE. R peaks follow the patient's heart rate, with beat-to-beat variability
(RR × (1 + N(0, RR_JITTER))) and respiratory sinus arrhythmia. Baseline wander (respiration and
a slow drift) and white noise are added.

Scale: the project's choice, not a documented property of the watch (whose ADC gain is not
published): **1 mV = 2**16 = 65,536 counts** (:data:`COUNTS_PER_MV`), so the 24-bit range
covers ±128 mV. :func:`to_mv` converts back.

The signal is a pure function of (seed, sample index): the R-peak train is generated forward
from ``origin_ms`` by a seeded generator and cached, the noise is hashed per sample index. So
consecutive calls join seamlessly and a call for any earlier stretch returns the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from simulators.hashing import hash_normal, patient_key

FS: Final = 250.0
COUNTS_PER_MV: Final = 2**16
INT24_MIN: Final = -(2**23)
INT24_MAX: Final = 2**23 - 1
#: SD of the beat-to-beat relative change of the RR interval (healthy short-term HRV ~3 %).
RR_JITTER: Final = 0.03
#: relative depth of respiratory sinus arrhythmia and the breathing rate it follows.
RSA_DEPTH: Final = 0.02
RESP_HZ: Final = 0.25
#: the beat train starts this long before ``origin_ms`` (so a call at the origin has history).
LEAD_IN_MS: Final = 60_000
#: how far ahead the heart rate is sampled at once when extending the beat train.
HR_BLOCK_MS: Final = 120_000
#: white noise SD and baseline wander amplitudes (respiratory, slow), mV.
NOISE_MV: Final = 0.015
WANDER_RESP_MV: Final = 0.06
WANDER_SLOW_MV: Final = 0.05
WANDER_SLOW_HZ: Final = 0.05

# (name, offset from R in s at RR = 1 s, amplitude mV, width SD s, offset scales with √RR?)
WAVES: Final[tuple[tuple[str, float, float, float, bool], ...]] = (
    ("P", -0.165, 0.15, 0.022, False),
    ("Q", -0.028, -0.12, 0.008, False),
    ("R", 0.000, 1.10, 0.009, False),
    ("S", 0.030, -0.28, 0.009, False),
    ("T", 0.270, 0.32, 0.045, True),  # QT lengthens with RR (Bazett)
)

HeartRate = Callable[[NDArray[np.int64]], NDArray[np.float64]] | float


def to_mv(counts: Sequence[int] | NDArray[np.int64]) -> NDArray[np.float64]:
    """Raw counts → millivolts (see :data:`COUNTS_PER_MV`)."""
    return np.asarray(counts, dtype=np.float64) / COUNTS_PER_MV


def to_counts(mv: NDArray[np.float64]) -> NDArray[np.int64]:
    """Millivolts → raw signed 24-bit counts (clipped)."""
    return np.clip(np.rint(mv * COUNTS_PER_MV), INT24_MIN, INT24_MAX).astype(np.int64)


class EcgSynth:
    """One patient's ECG. ``heart_rate`` is a constant (/min) or a function of epoch-ms arrays."""

    def __init__(
        self,
        seed: int | tuple[int, ...] = 0,
        heart_rate: HeartRate = 70.0,
        origin_ms: int = 0,
        fs: float = FS,
    ) -> None:
        self.fs = float(fs)
        self.origin_ms = int(origin_ms)
        self._hr = heart_rate
        seeds = seed if isinstance(seed, tuple) else (seed,)
        self._seed_seq = [int(s) % 2**63 for s in seeds]
        rng = np.random.default_rng(self._seed_seq)
        self._key = patient_key(int(rng.integers(0, 2**62)), 0)  # keys the per-sample noise
        self._amp = float(rng.uniform(0.8, 1.2))  # patient's QRS size
        self._wander_phase = rng.uniform(0, 2 * math.pi, 2)
        self._rng = np.random.default_rng([*self._seed_seq, 1])
        self._peaks: list[float] = [self.origin_ms - LEAD_IN_MS + float(self._rng.uniform(0, 800))]

    def _rate(self, t_ms: NDArray[np.int64]) -> NDArray[np.float64]:
        if callable(self._hr):
            return np.asarray(self._hr(t_ms), dtype=np.float64)
        return np.full(t_ms.shape, float(self._hr))

    def _extend(self, until_ms: float) -> None:
        """Grow the R-peak train until it passes ``until_ms`` (plus a beat)."""
        while self._peaks[-1] <= until_ms + 2000:
            start = self._peaks[-1]
            grid = np.arange(int(start), int(start) + HR_BLOCK_MS + 1000, 1000, dtype=np.int64)
            rates = np.clip(self._rate(grid), 20.0, 300.0)
            jitter = self._rng.standard_normal(int(HR_BLOCK_MS / 200))
            t = start
            for j in jitter:
                if t >= start + HR_BLOCK_MS:
                    break
                hr = float(np.interp(t, grid, rates))
                rsa = 1 + RSA_DEPTH * math.sin(2 * math.pi * RESP_HZ * t / 1000)
                t += 60_000.0 / hr * rsa * max(0.5, 1 + RR_JITTER * float(j))
                self._peaks.append(t)

    def millivolts(self, start_ms: int, n: int) -> NDArray[np.float64]:
        """``n`` samples in mV from the sample at or after ``start_ms``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        k0 = math.ceil((start_ms - self.origin_ms) * self.fs / 1000 - 1e-9)
        t = self.origin_ms + (k0 + np.arange(n, dtype=np.int64)) * (1000.0 / self.fs)
        if n == 0:
            return np.zeros(0)
        if t[0] < self.origin_ms - LEAD_IN_MS / 2:
            raise ValueError(f"ECG requested at {start_ms}, before the patient's start {self.origin_ms}")
        self._extend(float(t[-1]))
        peaks = np.asarray(self._peaks)
        rr = np.diff(peaks, prepend=peaks[0] - 1000.0) / 1000.0
        i = np.searchsorted(peaks, t, side="right") - 1
        signal = np.zeros(n)
        for j in (i - 1, i, i + 1):
            j = np.clip(j, 0, len(peaks) - 1)
            dt = (t - peaks[j]) / 1000.0
            scale = np.sqrt(np.clip(rr[j], 0.3, 2.0))
            for _name, offset, amp, width, stretches in WAVES:
                centre = offset * scale if stretches else offset
                signal += amp * np.exp(-0.5 * ((dt - centre) / width) ** 2)
        signal *= self._amp
        ts = t / 1000.0
        signal += WANDER_RESP_MV * np.sin(2 * math.pi * RESP_HZ * ts + self._wander_phase[0])
        signal += WANDER_SLOW_MV * np.sin(2 * math.pi * WANDER_SLOW_HZ * ts + self._wander_phase[1])
        signal += NOISE_MV * hash_normal(self._key, k0 + np.arange(n, dtype=np.int64), 7)
        return signal

    def counts(self, start_ms: int, n: int) -> list[int]:
        """``n`` raw signed 24-bit samples from ``start_ms`` (what the watch sends)."""
        return [int(c) for c in to_counts(self.millivolts(start_ms, n))]

    def r_peaks_ms(self, start_ms: float, end_ms: float) -> NDArray[np.float64]:
        """The true R-peak times in [start_ms, end_ms) (for tests of beat detectors)."""
        self._extend(end_ms)
        peaks = np.asarray(self._peaks)
        return peaks[(peaks >= start_ms) & (peaks < end_ms)]

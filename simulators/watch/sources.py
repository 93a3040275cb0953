"""Default, deterministic signal sources of the virtual watch (used when none are injected).

They are deliberately simple: a patient at rest with slow drifts and seeded jitter, and a
stylised ECG. Realistic trajectories live in ``simulators.physiology`` / ``ecg_synth`` and are
injected by whoever builds the watch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

from simulators.ecg_synth import COUNTS_PER_MV

#: ts ms → contract vital names (``vitalgate.contract.VITALS``) and values in contract units.
VitalsSource = Callable[[int], Mapping[str, float]]
#: (start ts ms, n samples) → raw signed 24-bit ECG samples at 250 Hz.
EcgSource = Callable[[int, int], Sequence[int]]

# Resting adult baseline and the amplitude of a slow (10-minute) drift around it.
_BASELINE: dict[str, tuple[float, float, float]] = {
    # name: (mean, drift amplitude, jitter σ)
    "heart_rate": (72.0, 6.0, 1.5),
    "spo2": (97.0, 1.0, 0.4),
    "systolic_bp": (122.0, 6.0, 2.0),
    "diastolic_bp": (78.0, 4.0, 1.5),
    "temperature": (36.7, 0.2, 0.05),
    "respiratory_rate": (15.0, 2.0, 0.5),
}
_DRIFT_PERIOD_MS = 600_000
# ECG: 250 samples/s, in the project's raw scale (simulators.ecg_synth.COUNTS_PER_MV; the
# SDK's own scale is not documented), so that ingest's ecg_counts_per_mv fits every source.
_ECG_FS = 250
_ECG_GAIN = float(COUNTS_PER_MV)
# P, Q, R, S, T waves as (centre within the beat in s, width s, amplitude mV).
_ECG_WAVES: tuple[tuple[float, float, float], ...] = (
    (0.16, 0.025, 0.12),
    (0.29, 0.010, -0.10),
    (0.31, 0.012, 1.00),
    (0.33, 0.010, -0.20),
    (0.55, 0.040, 0.30),
)


def default_vitals(seed: int = 0) -> VitalsSource:
    """A seeded resting patient: the same (seed, ts) always gives the same values."""

    def vitals(ts_ms: int) -> Mapping[str, float]:
        rng = random.Random(f"{seed}:{ts_ms}")
        phase = 2 * math.pi * (ts_ms % _DRIFT_PERIOD_MS) / _DRIFT_PERIOD_MS
        out: dict[str, float] = {}
        for i, (name, (mean, drift, sigma)) in enumerate(_BASELINE.items()):
            out[name] = mean + drift * math.sin(phase + i + seed) + rng.gauss(0.0, sigma)
        out["spo2"] = min(out["spo2"], 100.0)
        return out

    return vitals


def default_ecg(seed: int = 0, heart_rate: float = 72.0) -> EcgSource:
    """A stylised sinus rhythm (sum of Gaussian waves) with seeded baseline noise."""
    beat_s = 60.0 / heart_rate

    def ecg(start_ts_ms: int, n: int) -> Sequence[int]:
        out: list[int] = []
        for i in range(n):
            t = start_ts_ms / 1000.0 + i / _ECG_FS
            within = t % beat_s
            mv = sum(a * math.exp(-(((within - c) / w) ** 2) / 2) for c, w, a in _ECG_WAVES)
            noise = random.Random(f"{seed}:{start_ts_ms}:{i}").gauss(0.0, 0.01)
            out.append(round((mv + noise) * _ECG_GAIN))
        return out

    return ecg

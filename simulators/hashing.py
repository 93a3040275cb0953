"""Counter-based randomness: values that are a pure function of (key, counter, stream).

A SplitMix64 hash of (patient key, time slot, stream) instead of a sequential generator, so
sampling the same patient at the same millisecond always gives the same value, whatever was
sampled before (simulators.physiology, simulators.ecg_synth, simulators.fleet).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser, element-wise (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _u64(values: object) -> NDArray[np.uint64]:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)


def hash_uniform(key: NDArray[np.uint64], counter: object, stream: int) -> FloatArray:
    """Uniform (0, 1) values, a pure function of (key, counter, stream); broadcasts."""
    h = _mix(_mix(key ^ _u64(stream * 0x632BE59BD9B4E019 % 2**63)) ^ _u64(counter))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def hash_normal(key: NDArray[np.uint64], counter: object, stream: int) -> FloatArray:
    """Standard normal values (Box-Muller on two hash streams)."""
    u1 = hash_uniform(key, counter, stream * 2 + 1000)
    u2 = hash_uniform(key, counter, stream * 2 + 1001)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def patient_key(seed: int, index: int | IntArray) -> NDArray[np.uint64]:
    return _mix(_mix(_u64(seed % 2**63)) ^ _u64(index))

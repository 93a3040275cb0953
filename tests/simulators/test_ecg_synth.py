"""Synthetic ECG: beats follow the heart rate, chunks join seamlessly, 24-bit counts."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.ecg_synth import COUNTS_PER_MV, FS, INT24_MAX, INT24_MIN, EcgSynth, to_mv
from simulators.physiology import Cohort

START = 1_700_000_000_000


def count_r_peaks(mv: np.ndarray, threshold: float = 0.6) -> int:
    """Upward threshold crossings with a 200 ms refractory period."""
    above = mv > threshold
    rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    kept, last = 0, -(10**9)
    for i in rising:
        if i - last >= 0.2 * FS:
            kept, last = kept + 1, i
    return kept


@pytest.mark.parametrize("hr", [45, 72, 120, 160])
def test_beat_rate_matches_the_requested_heart_rate(hr: float) -> None:
    synth = EcgSynth(seed=hr, heart_rate=hr, origin_ms=START)
    mv = to_mv(synth.counts(START, int(FS * 120)))  # two minutes
    beats = count_r_peaks(mv)
    assert abs(beats / 2 - hr) <= max(2, 0.03 * hr)
    assert len(synth.r_peaks_ms(START, START + 120_000)) == pytest.approx(beats, abs=1)


def test_beats_follow_a_patient_whose_heart_rate_rises() -> None:
    cohort = Cohort(["sepsis"], seed=3, start_ms=START)
    patient = cohort.patients[0]
    early = count_r_peaks(to_mv(patient.ecg(START, int(FS * 60))))
    late_start = START + 10 * 3_600_000
    late = count_r_peaks(to_mv(patient.ecg(late_start, int(FS * 60))))
    assert abs(early - cohort.true_heart_rate(0, [START + 30_000])[0]) <= 4
    assert abs(late - cohort.true_heart_rate(0, [late_start + 30_000])[0]) <= 4
    assert late > early + 20


def test_consecutive_chunks_join_seamlessly_and_are_deterministic() -> None:
    a = EcgSynth(seed=5, heart_rate=80, origin_ms=START)
    chunks = a.counts(START, 1000) + a.counts(START + 4000, 777) + a.counts(START + 4000 + 3108, 5000)
    whole = EcgSynth(seed=5, heart_rate=80, origin_ms=START).counts(START, 6777)
    assert chunks == whole
    assert a.counts(START + 400, 10) == whole[100:110]  # going back gives the same samples
    other = EcgSynth(seed=6, heart_rate=80, origin_ms=START).counts(START, 6777)
    assert other != whole


def test_shape_amplitude_and_counts() -> None:
    synth = EcgSynth(seed=1, heart_rate=70, origin_ms=START)
    counts = synth.counts(START, int(FS * 30))
    assert all(INT24_MIN <= c <= INT24_MAX for c in counts)
    mv = to_mv(counts)
    assert 0.8 < np.percentile(mv, 99.9) < 1.6  # R waves around 1.1 mV
    assert -0.6 < mv.min() < -0.1  # S waves dip below the baseline
    assert np.median(np.abs(np.diff(mv))) < 0.02  # mostly smooth between beats
    assert to_mv([COUNTS_PER_MV])[0] == 1.0


def test_bad_requests_are_errors() -> None:
    synth = EcgSynth(seed=1, origin_ms=START)
    with pytest.raises(ValueError, match="before the patient's start"):
        synth.counts(START - 3_600_000, 10)
    with pytest.raises(ValueError, match="n must be"):
        synth.counts(START, -1)
    assert synth.counts(START, 0) == []

"""Simulated patients: determinism, scenario directions, artefacts, identities, scenario files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from simulators import scenarios
from simulators.physiology import Cohort, SimClock, SteppedTime, fleet_patients
from vitalgate.contract import DEVICE_ID_RE, PLAUSIBLE, VITALS, Reading, Vitals

H = 3_600_000
START = 1_700_000_000_000


def window_means(cohort: Cohort, hour: float) -> dict[str, np.ndarray]:
    """Per-patient mean of each vital over 30 minutes from ``hour`` (sampled per minute);
    NaN for a patient whose watch measured nothing then (off the wrist)."""
    t = START + int(hour * H) + np.arange(30) * 60_000
    out = {}
    for v, a in cohort.sample(t).items():
        count = np.sum(~np.isnan(a), axis=1)
        total = np.sum(np.nan_to_num(a), axis=1)
        out[v] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def test_same_seed_same_values_other_seed_other_values() -> None:
    t = START + np.arange(0, 4 * H, 300_000)
    a = Cohort(["stable", "sepsis", "copd"], seed=7, start_ms=START).sample(t)
    b = Cohort(["stable", "sepsis", "copd"], seed=7, start_ms=START).sample(t)
    c = Cohort(["stable", "sepsis", "copd"], seed=8, start_ms=START).sample(t)
    for v in VITALS:
        np.testing.assert_array_equal(a[v], b[v])  # NaN positions included
    assert any(not np.array_equal(a[v], c[v], equal_nan=True) for v in VITALS)


def test_patients_do_not_depend_on_cohort_size_or_sampling_order() -> None:
    small = fleet_patients(4, ["stable", "sepsis"], seed=3, start_ms=START)
    large = fleet_patients(40, ["stable", "sepsis"], seed=3, start_ms=START)
    for p, q in zip(small, large[:4], strict=True):
        assert (p.user_code, p.mac) == (q.user_code, q.mac)
        late = q.vitals(START + 5 * H)  # sampled first, out of order
        assert p.vitals(START + 2 * H) == q.vitals(START + 2 * H)
        assert p.vitals(START + 5 * H) == late


def test_sepsis_raises_hr_rr_temperature_and_lowers_sbp_over_hours() -> None:
    cohort = Cohort(["sepsis"] * 100, seed=1, start_ms=START)
    before, after = window_means(cohort, 0), window_means(cohort, 9)
    assert np.nanmedian(after["heart_rate"] - before["heart_rate"]) > 25
    assert np.nanmedian(after["respiratory_rate"] - before["respiratory_rate"]) > 6
    assert np.nanmedian(after["temperature"] - before["temperature"]) > 1.2
    assert np.nanmedian(before["systolic_bp"] - after["systolic_bp"]) > 15


def test_respiratory_deterioration_lowers_spo2_and_raises_rr() -> None:
    cohort = Cohort(["respiratory"] * 100, seed=2, start_ms=START)
    before, after = window_means(cohort, 0), window_means(cohort, 9)
    assert np.nanmedian(before["spo2"] - after["spo2"]) > 5
    assert np.nanmedian(after["respiratory_rate"] - before["respiratory_rate"]) > 6


def test_copd_spo2_lives_between_84_and_92() -> None:
    cohort = Cohort(["copd"] * 50, seed=3, start_ms=START)
    spo2 = cohort.sample(START + np.arange(0, 12 * H, 600_000))["spo2"]
    present = spo2[~np.isnan(spo2)]
    assert present.size > 0.8 * spo2.size
    assert np.mean((present >= 84) & (present <= 92)) > 0.95
    assert 86 <= np.nanmedian(present) <= 90


def test_bradycardia_fever_and_stable() -> None:
    brady = window_means(Cohort(["bradycardia"] * 50, seed=4, start_ms=START), 8)
    assert np.nanmedian(brady["heart_rate"]) < 45
    fever_c = Cohort(["fever"] * 50, seed=4, start_ms=START)
    assert np.nanmedian(window_means(fever_c, 6)["temperature"]) > 38.7
    assert np.nanmedian(window_means(fever_c, 0)["temperature"]) < 37.5
    stable = Cohort(["stable"] * 100, seed=4, start_ms=START)
    drift = window_means(stable, 8)["heart_rate"] - window_means(stable, 0)["heart_rate"]
    assert abs(np.nanmedian(drift)) < 3


def test_values_are_quantised_like_the_watch_and_plausible() -> None:
    cohort = Cohort(["sepsis", "copd", "bradycardia"] * 20, seed=5, start_ms=START)
    sample = cohort.sample(START + np.arange(0, 24 * H, 900_000))
    for v, a in sample.items():
        present = a[~np.isnan(a)]
        low, high = PLAUSIBLE[v]
        assert present.min() >= low and present.max() <= high
        scale = 10 if v == "temperature" else 1
        np.testing.assert_allclose(present * scale, np.round(present * scale), atol=1e-9)
    bp = ~np.isnan(sample["systolic_bp"]) & ~np.isnan(sample["diastolic_bp"])
    assert np.all(sample["systolic_bp"][bp] - sample["diastolic_bp"][bp] >= 10)


def _scenario(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(body)
    return path


def test_off_wrist_gaps_remove_every_vital_for_whole_stretches(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "offwrist", 'extends = "stable"\n[artefacts]\n'
                     "off_wrist_probability = 0.4\noff_wrist_minutes = 20\ndropout = 0\n")
    cohort = Cohort([path] * 5, seed=6, start_ms=START)
    sample = cohort.sample(START + np.arange(0, 12 * H, 60_000))  # per minute
    all_absent = np.all(np.stack([np.isnan(a) for a in sample.values()]), axis=0)
    any_absent = np.any(np.stack([np.isnan(a) for a in sample.values()]), axis=0)
    assert 0.25 < all_absent.mean() < 0.55
    np.testing.assert_array_equal(all_absent, any_absent)  # no single dropouts when dropout = 0
    for row in all_absent:  # gaps come in whole stretches of >= 20 minutes (edges aside)
        edges = np.flatnonzero(np.diff(row.astype(int)))
        runs = np.diff(edges)[::2] if row[edges[0] + 1] else np.diff(edges)[1::2]
        assert runs.size and runs.min() >= 20
    patient = cohort.patients[0]
    gap = START + int(np.flatnonzero(all_absent[0])[0]) * 60_000
    assert patient.vitals(gap) == {}


def test_dropouts_miss_single_vitals_and_clean_scenario_misses_none(tmp_path: Path) -> None:
    clean = _scenario(tmp_path, "clean", 'extends = "stable"\n[artefacts]\n'
                      "off_wrist_probability = 0\ndropout = 0\n")
    t = START + np.arange(0, 6 * H, 60_000)
    assert not any(np.isnan(a).any() for a in Cohort([clean] * 3, 1, START).sample(t).values())
    lossy = _scenario(tmp_path, "lossy", 'extends = "stable"\n[artefacts]\n'
                      "off_wrist_probability = 0\ndropout = 0.2\n")
    sample = Cohort([lossy] * 3, 1, START).sample(t)
    missing = np.stack([np.isnan(a) for a in sample.values()])
    assert 0.15 < missing.mean() < 0.25
    assert np.any(missing.any(axis=0) & ~missing.all(axis=0))


def test_motion_artefacts_spike_heart_rate_upwards(tmp_path: Path) -> None:
    still = _scenario(tmp_path, "still", 'extends = "stable"\n[artefacts]\nmotion_per_hour = 0\n')
    moving = _scenario(tmp_path, "moving", 'extends = "stable"\n[artefacts]\nmotion_per_hour = 20\n')
    t = START + np.arange(0, 6 * H, 60_000)
    a = Cohort([still] * 10, 2, START).sample(t)["heart_rate"]
    b = Cohort([moving] * 10, 2, START).sample(t)["heart_rate"]
    diff = b - a
    diff = diff[~np.isnan(diff)]
    assert diff.min() >= 0 and np.mean(diff > 5) > 0.15


def test_drift_is_autocorrelated(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "drifty", 'extends = "stable"\n[noise]\nheart_rate = 0\n[spread]\n'
                     "heart_rate = 0\n[artefacts]\nmotion_per_hour = 0\noff_wrist_probability = 0\n"
                     "dropout = 0\n")
    cohort = Cohort([path] * 200, 9, START)
    hr = cohort.true_values(START + np.arange(0, 24 * H, 60_000))["heart_rate"] - 75
    lag1 = np.corrcoef(hr[:, :-1].ravel(), hr[:, 1:].ravel())[0, 1]
    lag5h = np.corrcoef(hr[:, :-300].ravel(), hr[:, 300:].ravel())[0, 1]
    assert lag1 > 0.9
    assert abs(lag5h) < 0.2
    assert 2.0 < hr.std() < 4.0  # drift SD 3


def test_identities_are_stable_unique_and_valid() -> None:
    patients = fleet_patients(500, ["stable"], seed=11)
    codes = {p.user_code for p in patients}
    assert len(codes) == 500 and all(re.fullmatch(r"[A-Za-z0-9]{13}", c) for c in codes)
    assert len({p.device_id for p in patients}) == 500
    for p in patients[:50]:
        assert DEVICE_ID_RE.match(p.device_id)
        first = int(p.mac[:2], 16)
        assert first & 0b11 == 0b10 and first >> 6 == 0b11  # local, unicast, BLE static
        assert p.name == "E86 " + p.mac.replace(":", "")[-4:]
    assert fleet_patients(1, ["stable"], seed=11)[0].user_code == patients[0].user_code


def test_patient_vitals_plug_into_a_contract_reading() -> None:
    patient = fleet_patients(3, ["sepsis"], seed=1, start_ms=START)[2]
    for hour in range(12):
        vitals = patient.vitals(START + hour * H)
        if vitals:
            Reading(device_id=patient.device_id, seq=hour, ts=START + hour * H,
                    vitals=Vitals(**vitals), user_code=patient.user_code)
    ecg = patient.ecg(START + H, 500)
    assert len(ecg) == 500 and all(isinstance(s, int) for s in ecg)


def test_sim_clock_runs_at_speed_with_injected_time() -> None:
    t = SteppedTime(100.0)
    clock = SimClock(START, speed=60, time_fn=t.time, sleep_fn=t.sleep)
    assert clock.now_ms() == START
    clock.sleep_until(START + H)  # one simulated hour = one real minute
    assert t.now == pytest.approx(160.0)
    assert clock.now_ms() == START + H and clock.real_ms() == START + 60_000
    assert clock.to_real_ms(START + 2 * H) == START + 120_000
    with pytest.raises(ValueError, match="speed"):
        SimClock(START, speed=0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[baseline]\nheart_rate = "fast"\n', "baseline.heart_rate"),
        ('extends = "stable"\n[trajectory]\nheartrate = [[0, 80]]\n', "trajectory.heartrate"),
        ('extends = "stable"\n[trajectory]\nspo2 = [[2, 90], [1, 88]]\n', "trajectory.spo2"),
        ('extends = "stable"\n[trajectory]\nspo2 = [[0, 140]]\n', "trajectory.spo2[0]"),
        ('extends = "stable"\n[artefacts]\nmotion_per_hr = 1\n', "artefacts.motion_per_hr"),
        ('extends = "stable"\n[artefacts]\ndropout = 1.5\n', "artefacts.dropout"),
        ("[baseline]\nheart_rate = 70\n", "baseline.spo2"),
        ('extends = "nonesuch"\n', "nonesuch"),
        ("[baseline\n", "not valid TOML"),
    ],
)
def test_scenario_errors_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    path = _scenario(tmp_path, "broken", body)
    with pytest.raises(scenarios.ScenarioError) as info:
        scenarios.load_file(path)
    assert field in str(info.value) and "broken.toml" in str(info.value)


def test_builtin_scenarios_load_and_unknown_is_named() -> None:
    names = scenarios.available()
    assert {"stable", "sepsis", "respiratory", "copd", "bradycardia", "fever"} <= set(names)
    for name in names:
        assert scenarios.load(name).name == name
    with pytest.raises(scenarios.ScenarioError, match="unknown scenario 'sepsys'"):
        scenarios.load("sepsys")

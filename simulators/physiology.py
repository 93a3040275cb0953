"""Simulated patients: vital-sign trajectories for a whole cohort at once, deterministic by seed.

Every value is a pure function of (seed, patient index, timestamp): sampling the same patient
at the same millisecond always gives the same reading, whatever was sampled before and however
many patients the cohort has (patient *i* of a cohort of 10 is patient *i* of a cohort of
5,000 given the same scenario). That is what lets the fleet publisher, the virtual watches and
the tests look at the same patients without sharing state. Randomness comes from a counter-based
hash (SplitMix64) of (patient key, time slot, stream), not from a sequential generator.

A reading is built as::

    true(t)     = trajectory(t - onset) + patient offset + drift(t)
    measured(t) = true(t) + noise + motion artefact, clipped to PLAUSIBLE, quantised like the watch

* trajectory: the scenario's keyframes (piecewise linear in hours), see simulators.scenarios;
* patient offset: N(0, spread) per patient and vital;
* drift: a stationary Gaussian process with the Ornstein-Uhlenbeck covariance
  ``sd² exp(-|Δt|/τ)``, built as a sum of random cosines whose angular frequencies are drawn
  from the OU spectrum (a Cauchy distribution of scale 1/τ): a pure function of time;
* noise: white, N(0, noise) per reading;
* motion artefacts: whole minutes (chance ``motion_per_hour/60`` each) in which heart rate reads
  high by |N(0, motion_hr_sd)| and SpO2 low by |N(0, motion_spo2_sd)|;
* off-wrist: the timeline is cut into stretches of ``off_wrist_minutes`` (at a per-patient
  phase); each stretch is off the wrist with ``off_wrist_probability``: no vital at all;
* dropout: each vital of each reading is missing with ``dropout``;
* quantisation: integers for heart rate, SpO2, blood pressure and respiratory rate, 0.1 °C.

Absent values are NaN in arrays and missing keys in :meth:`Patient.vitals`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from simulators import scenarios as scenario_files
from simulators.ecg_synth import EcgSynth
from simulators.hashing import hash_normal, hash_uniform, patient_key
from simulators.scenarios import Scenario
from vitalgate.clock import epoch_ms
from vitalgate.contract import PLAUSIBLE, VITALS, device_id_from_mac

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

MS_PER_HOUR: Final = 3_600_000
MS_PER_MINUTE: Final = 60_000
#: cosines per vital in the drift process: enough for the OU covariance to within a few %.
DRIFT_COMPONENTS: Final = 24
#: decimals the watch reports per vital (0 = integer).
DECIMALS: Final[dict[str, int]] = {v: 0 for v in VITALS} | {"temperature": 1}
#: the smallest pulse pressure (systolic - diastolic) a simulated reading keeps, mmHg.
MIN_PULSE_PRESSURE: Final = 10.0
#: the "true" heart rate given to the ECG synthesiser is kept within this range, /min.
ECG_HR_RANGE: Final = (30.0, 220.0)
USER_CODE_LENGTH: Final = 13
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# Hash streams: each kind of random draw has its own, so they are independent.
_S_PARAM, _S_NOISE, _S_MOTION, _S_OFF, _S_DROP, _S_ID = 1, 2, 3, 4, 5, 6


def user_code_for(seed: int, index: int) -> str:
    """A stable opaque 13-character code like Cexup's ("AMSe5Sn8Gkxj7")."""
    key = patient_key(seed, index)
    digits = hash_uniform(key, np.arange(USER_CODE_LENGTH), _S_ID)
    return "".join(_ALPHABET[int(d * len(_ALPHABET))] for d in digits)


def mac_for(seed: int, index: int) -> str:
    """A stable MAC, upper-case colon form. The first octet is ``11xxxx10``: locally
    administered and unicast as a MAC, and a valid BLE random static address too."""
    key = patient_key(seed, index)
    octets = [int(u * 256) for u in hash_uniform(key, np.arange(6), _S_ID + 100)]
    octets[0] = 0xC2 | (octets[0] & 0x3C)
    return ":".join(f"{o:02X}" for o in octets)


# ------------------------------------------------------------------------------ clock


class SimClock:
    """Simulated time running at ``speed`` × real time from ``start_ms``.

    ``time_fn`` (seconds, monotonic) and ``sleep_fn`` are injectable so tests control time.
    ``real_ms`` is the real timeline anchored at the same start: with ``start_ms`` = now, it is
    the wall clock.
    """

    def __init__(
        self,
        start_ms: int | None = None,
        speed: float = 1.0,
        time_fn: Callable[[], float] = time.monotonic,
        sleep_fn: Callable[[float], None] = time.sleep,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        self.start_ms = epoch_ms() if start_ms is None else int(start_ms)
        self.speed = float(speed)
        self._time = time_fn
        self._sleep = sleep_fn
        self._t0 = time_fn()

    def now_ms(self) -> int:
        """The simulated time now."""
        return self.start_ms + int((self._time() - self._t0) * 1000 * self.speed)

    def real_ms(self) -> int:
        """The real time now, on the timeline that starts at ``start_ms``."""
        return self.start_ms + int((self._time() - self._t0) * 1000)

    def to_real_ms(self, sim_ms: int) -> int:
        """When simulated time ``sim_ms`` happens on the real timeline."""
        return self.start_ms + round((sim_ms - self.start_ms) / self.speed)

    def sleep_until(self, sim_ms: int) -> None:
        wait = (sim_ms - self.now_ms()) / 1000 / self.speed
        if wait > 0:
            self._sleep(wait)


class SteppedTime:
    """A time source whose sleep advances it instantly: for :class:`SimClock` in tests and
    offline runs (``SimClock(time_fn=t.time, sleep_fn=t.sleep)``)."""

    def __init__(self, start: float = 0.0, quantum: float = 0.0) -> None:
        self.now = start
        #: sleeps last a whole number of quanta (seconds), like a coarse timer; 0 = exact.
        self.quantum = quantum

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.quantum > 0:
            seconds = math.ceil(seconds / self.quantum) * self.quantum
        self.now += seconds


# ------------------------------------------------------------------------------ cohort


@dataclass(frozen=True, slots=True)
class _VitalParams:
    offset: FloatArray  # (P,)
    noise: FloatArray  # (P,)
    drift: FloatArray  # (P,)
    omega: FloatArray  # (P, K) rad/hour
    phase: FloatArray  # (P, K)


class Cohort:
    """Patients following scenarios; patient *i* follows ``scenarios[i]``."""

    def __init__(
        self,
        scenarios: Sequence[str | Path | Scenario],
        seed: int = 0,
        start_ms: int | None = None,
    ) -> None:
        if not scenarios:
            raise ValueError("a cohort needs at least one patient")
        self.seed = int(seed)
        self.start_ms = epoch_ms() if start_ms is None else int(start_ms)
        loaded: dict[str, Scenario] = {}
        names: list[str] = []
        for s in scenarios:
            sc = scenario_files.load(s)
            loaded.setdefault(sc.name, sc)
            names.append(sc.name)
        self.scenarios: list[Scenario] = list(loaded.values())
        order = {sc.name: i for i, sc in enumerate(self.scenarios)}
        self.scenario_index: IntArray = np.array([order[n] for n in names], dtype=np.int64)
        self.size = len(names)
        index = np.arange(self.size, dtype=np.int64)
        self.keys = patient_key(self.seed, index)
        k = self.keys

        def per_patient(getter: Callable[[Scenario], float]) -> FloatArray:
            table = np.array([getter(sc) for sc in self.scenarios], dtype=np.float64)
            return table[self.scenario_index]

        self.tau_h = per_patient(lambda sc: sc.artefacts.drift_tau_h)
        self.motion_p = per_patient(lambda sc: sc.artefacts.motion_per_hour / 60.0)
        self.motion_hr = per_patient(lambda sc: sc.artefacts.motion_hr_sd)
        self.motion_spo2 = per_patient(lambda sc: sc.artefacts.motion_spo2_sd)
        self.off_p = per_patient(lambda sc: sc.artefacts.off_wrist_probability)
        self.off_ms = per_patient(lambda sc: sc.artefacts.off_wrist_minutes * MS_PER_MINUTE)
        self.dropout = per_patient(lambda sc: sc.artefacts.dropout)
        self.onset_ms = (
            per_patient(lambda sc: sc.artefacts.onset_jitter_h) * MS_PER_HOUR * hash_uniform(k, 0, _S_PARAM)
        )
        self.off_phase_ms = self.off_ms * hash_uniform(k, 1, _S_PARAM)
        comp = np.arange(DRIFT_COMPONENTS)
        self.params: dict[str, _VitalParams] = {}
        for vi, vital in enumerate(VITALS):
            base = 100 + vi * 1000
            u_omega = hash_uniform(k[:, None], base + comp, _S_PARAM)
            # OU spectrum: Cauchy(0, 1/τ) angular frequency; the far tail is clipped (it would
            # only add white noise at sub-second scales, which `noise` already covers).
            omega = np.clip(np.tan(np.pi * (u_omega - 0.5)), -1e4, 1e4) / self.tau_h[:, None]
            self.params[vital] = _VitalParams(
                offset=self._table("spread", vital) * hash_normal(k, base, _S_PARAM),
                noise=self._table("noise", vital),
                drift=self._table("drift", vital),
                omega=omega,
                phase=2 * np.pi * hash_uniform(k[:, None], base + 500 + comp, _S_PARAM),
            )
        self._patients: list[Patient] | None = None

    def _table(self, attr: str, vital: str) -> FloatArray:
        """Per-patient value of a sparse per-vital scenario table (0 where absent)."""
        rows: list[float] = []
        for sc in self.scenarios:
            table: dict[str, float] = getattr(sc, attr)
            rows.append(table.get(vital, 0.0))
        return np.array(rows, dtype=np.float64)[self.scenario_index]

    # -------------------------------------------------------------------- sampling

    def _times(self, t_ms: object, rows: IntArray) -> IntArray:
        t = np.asarray(t_ms, dtype=np.int64)
        if t.ndim == 0:
            t = t.reshape(1)
        if t.ndim == 1:
            t = np.broadcast_to(t, (len(rows), t.shape[0]))
        if t.ndim != 2 or t.shape[0] != len(rows):
            raise ValueError(f"t_ms must be (times,) or (patients={len(rows)}, times), not {t.shape}")
        return t

    def _rows(self, patients: Sequence[int] | IntArray | None) -> IntArray:
        if patients is None:
            return np.arange(self.size, dtype=np.int64)
        rows = np.asarray(patients, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.size):
            raise IndexError(f"patient index out of range 0..{self.size - 1}")
        return rows

    def true_values(
        self, t_ms: object, patients: Sequence[int] | IntArray | None = None
    ) -> dict[str, FloatArray]:
        """Trajectory + patient offset + drift, unclipped, without the watch's errors."""
        rows = self._rows(patients)
        t = self._times(t_ms, rows)
        t_h = (t - self.start_ms - self.onset_ms[rows, None]) / MS_PER_HOUR
        t_abs_h = (t - self.start_ms) / MS_PER_HOUR
        sc_rows = self.scenario_index[rows]
        out: dict[str, FloatArray] = {}
        for vital in VITALS:
            p = self.params[vital]
            value = np.empty(t.shape, dtype=np.float64)
            for si, sc in enumerate(self.scenarios):
                sel = sc_rows == si
                if sel.any():
                    hours, vals = sc.keyframes(vital)
                    value[sel] = np.interp(t_h[sel], hours, vals)
            value += p.offset[rows, None]
            drift_sd = p.drift[rows]
            if drift_sd.any():
                acc = np.zeros(t.shape, dtype=np.float64)
                omega, phase = p.omega[rows], p.phase[rows]
                for c in range(DRIFT_COMPONENTS):
                    acc += np.cos(omega[:, c, None] * t_abs_h + phase[:, c, None])
                value += drift_sd[:, None] * np.sqrt(2.0 / DRIFT_COMPONENTS) * acc
            out[vital] = value
        return out

    def sample(
        self, t_ms: object, patients: Sequence[int] | IntArray | None = None
    ) -> dict[str, FloatArray]:
        """What the watches measure at ``t_ms``: vital → array[patients, times], NaN = absent.

        ``t_ms`` is (times,) shared by all patients or (patients, times) per patient;
        ``patients`` selects rows (all by default)."""
        rows = self._rows(patients)
        t = self._times(t_ms, rows)
        values = self.true_values(t, rows)
        key = self.keys[rows, None]
        rel = t - self.start_ms
        minute = np.floor_divide(rel, MS_PER_MINUTE)
        motion = hash_uniform(key, minute, _S_MOTION) < self.motion_p[rows, None]
        window = np.floor((rel + self.off_phase_ms[rows, None]) / self.off_ms[rows, None])
        off = hash_uniform(key, window.astype(np.int64), _S_OFF) < self.off_p[rows, None]
        for vi, vital in enumerate(VITALS):
            v = values[vital]
            v += self.params[vital].noise[rows, None] * hash_normal(key, t, _S_NOISE * 16 + vi)
            if vital == "heart_rate":
                v += motion * self.motion_hr[rows, None] * np.abs(hash_normal(key, minute, 40))
            elif vital == "spo2":
                v -= motion * self.motion_spo2[rows, None] * np.abs(hash_normal(key, minute, 41))
        values["diastolic_bp"] = np.minimum(
            values["diastolic_bp"], values["systolic_bp"] - MIN_PULSE_PRESSURE
        )
        for vi, vital in enumerate(VITALS):
            low, high = PLAUSIBLE[vital]
            q: FloatArray = np.round(np.clip(values[vital], low, high), DECIMALS[vital]).astype(np.float64)
            drop = hash_uniform(key, t, _S_DROP * 16 + vi) < self.dropout[rows, None]
            q[drop | off] = np.nan
            values[vital] = q
        return values

    def true_heart_rate(self, index: int, t_ms: object) -> FloatArray:
        """The heart rate the heart beats at (for the ECG): no measurement error, clipped."""
        hr = self.true_values(np.asarray(t_ms, dtype=np.int64).reshape(-1), [index])["heart_rate"][0]
        return np.clip(hr, *ECG_HR_RANGE)  # type: ignore[no-any-return]

    # -------------------------------------------------------------------- patients

    @property
    def patients(self) -> list[Patient]:
        if self._patients is None:
            self._patients = [Patient(self, i) for i in range(self.size)]
        return self._patients


@dataclass(eq=False)
class Patient:
    """One simulated patient wearing one watch; plugs into a virtual watch as its sources."""

    cohort: Cohort
    index: int
    user_code: str = field(init=False)
    mac: str = field(init=False)
    _ecg: EcgSynth | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_code = user_code_for(self.cohort.seed, self.index)
        self.mac = mac_for(self.cohort.seed, self.index)

    @property
    def device_id(self) -> str:
        return device_id_from_mac(self.mac)

    @property
    def name(self) -> str:
        """The watch's advertised name, as a real E86: ``E86 `` + the last two MAC octets."""
        return "E86 " + self.mac.replace(":", "")[-4:]

    @property
    def scenario(self) -> str:
        return self.cohort.scenarios[int(self.cohort.scenario_index[self.index])].name

    def vitals(self, ts_ms: int) -> dict[str, float]:
        """The vitals the watch measures at ``ts_ms``; absent ones are left out (off the wrist:
        empty)."""
        sample = self.cohort.sample([int(ts_ms)], [self.index])
        return {v: float(a[0, 0]) for v, a in sample.items() if not np.isnan(a[0, 0])}

    def ecg(self, start_ms: int, n: int) -> list[int]:
        """``n`` raw ECG samples (250 Hz, signed 24-bit counts) from ``start_ms``."""
        if self._ecg is None:
            index = self.index
            self._ecg = EcgSynth(
                seed=(self.cohort.seed, index),
                heart_rate=lambda t: self.cohort.true_heart_rate(index, t),
                origin_ms=self.cohort.start_ms,
            )
        return self._ecg.counts(start_ms, n)


def fleet_patients(
    n: int, scenarios: Sequence[str | Path | Scenario], seed: int = 0, start_ms: int | None = None
) -> list[Patient]:
    """``n`` patients assigned the scenarios round-robin (the fleet's patients)."""
    if n < 1 or not scenarios:
        raise ValueError("need n >= 1 and at least one scenario")
    return Cohort([scenarios[i % len(scenarios)] for i in range(n)], seed, start_ms).patients

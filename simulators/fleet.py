"""Fleet mode: thousands of simulated patients published straight onto MQTT as one gateway
would publish them (no BLE), generated in numpy batches per tick.

Each patient's watch measures every ``rate_s`` simulated seconds, at a per-patient phase so the
load is spread. At each tick every reading that has come due is sampled at once for the whole
cohort (:meth:`Cohort.sample` on a patients × due-times grid); a patient with several due
readings (high speed, or catching up) gets them as one JSON array (at most ``max_batch``).
A slot in which the watch measured nothing (off the wrist, everything dropped out) produces no
reading and consumes no ``seq``: per device, ``seq`` runs 0, 1, 2, … without holes.

Timestamps: ``timestamps="wall"`` (default) stamps a reading with the real time at which it is
due (``SimClock.to_real_ms``), so a consumer's freshness window works against its own clock
while the patient's course runs ``speed`` × faster; ``"sim"`` stamps simulated time. Simulated
time runs ``speed`` × faster than real time, so a "sim" timeline that starts now lies in the
future at once (and ingest dead-letters readings stamped later than their arrival plus
``max_future_skew_s``, reason ``future``): start its clock at :func:`sim_start_ms`, so that the
simulated timeline **ends at the start**, as ``vitalgate replay --timestamps sim`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import numpy as np

from simulators.hashing import hash_uniform
from simulators.physiology import Cohort, Patient, SimClock
from vitalgate.contract import VITALS, DeviceStatus, Reading, Source, Vitals

log = logging.getLogger(__name__)

#: readings in one message at most (a 6-vital reading is ~250 bytes: 60 make ~15 KB).
MAX_BATCH: Final = 60
_S_PHASE: Final = 50
_S_STATUS: Final = 51

Timestamps = Literal["wall", "sim"]


def sim_start_ms(now_ms: int, duration_s: float, timestamps: Timestamps) -> int:
    """Where the simulated timeline of a run of ``duration_s`` simulated seconds starts.

    ``"wall"``: now (readings are stamped on the real timeline anyway). ``"sim"``: ``duration_s``
    before now, so the run ends at the start: after ``r`` real seconds simulated time is
    ``now − duration + speed·r ≤ now``, at any speed, so no reading is in the future when it
    arrives (event time never later than processing time)."""
    return now_ms if timestamps == "wall" else now_ms - round(duration_s * 1000)


class FleetSink(Protocol):
    """Where the fleet's messages go (GatewayPublisher, or anything with these methods)."""

    def gateway_status(self, online: bool, devices: int | None = None, ts: int | None = None) -> None: ...

    def device_status(self, status: DeviceStatus) -> None: ...

    def send_readings(self, device_id: str, readings: list[Reading]) -> None: ...


@dataclass
class FleetStats:
    patients: int = 0
    readings: int = 0
    messages: int = 0
    #: measurement slots that produced nothing (off the wrist / all vitals dropped out).
    empty_slots: int = 0
    sim_ms: int = 0
    ticks: int = 0


def device_status(patient: Patient, ts: int, connected: bool = True) -> DeviceStatus:
    """The retained status a gateway would publish for this patient's watch."""
    key = patient.cohort.keys[patient.index : patient.index + 1]
    u = hash_uniform(key, np.arange(2), _S_STATUS)
    return DeviceStatus(
        device_id=patient.device_id,
        name=patient.name,
        mac=patient.mac,
        model="E86",
        connected=connected,
        battery=40 + int(u[0] * 61),
        rssi=-85 + int(u[1] * 35),
        last_seen=ts,
        user_code=patient.user_code,
    )


class Fleet:
    """Publishes a cohort's readings to ``sink`` as simulated time passes on ``clock``."""

    def __init__(
        self,
        cohort: Cohort,
        sink: FleetSink,
        clock: SimClock,
        rate_s: float = 60.0,
        timestamps: Timestamps = "wall",
        max_batch: int = MAX_BATCH,
    ) -> None:
        if not rate_s > 0:
            raise ValueError(f"rate_s must be > 0, not {rate_s}")
        self.cohort = cohort
        self.sink = sink
        self.clock = clock
        self.rate_ms = max(1, round(rate_s * 1000))
        self.timestamps = timestamps
        self.max_batch = max(1, max_batch)
        n = cohort.size
        phase = hash_uniform(cohort.keys, 0, _S_PHASE) * self.rate_ms
        #: the schedule's origin: the first readings fall in [start_ms, start_ms + rate).
        self.start_ms = clock.now_ms()
        self.next_t = self.start_ms + phase.astype(np.int64)
        self.seq = np.zeros(n, dtype=np.int64)
        self.stats = FleetStats(patients=n)
        patients = cohort.patients
        self._device_ids = [p.device_id for p in patients]
        self._user_codes = [p.user_code for p in patients]

    def _stamp(self, sim_ms: int) -> int:
        return self.clock.to_real_ms(sim_ms) if self.timestamps == "wall" else sim_ms

    def announce(self) -> None:
        """Gateway online, then every watch's retained status."""
        ts = self._stamp(self.clock.now_ms())
        self.sink.gateway_status(True, devices=self.cohort.size, ts=ts)
        for patient in self.cohort.patients:
            self.sink.device_status(device_status(patient, ts))

    def tick(self, now_ms: int) -> int:
        """Publish every reading due at or before ``now_ms``; returns how many."""
        lag = now_ms - self.next_t
        due = np.where(lag >= 0, lag // self.rate_ms + 1, 0)
        np.minimum(due, self.max_batch, out=due)
        rows = np.flatnonzero(due)
        if rows.size == 0:
            return 0
        self.stats.ticks += 1
        width = int(due[rows].max())
        times = self.next_t[rows, None] + np.arange(width, dtype=np.int64) * self.rate_ms
        sample = self.cohort.sample(times, rows)
        cube = np.stack([sample[v] for v in VITALS], axis=-1).tolist()  # rows × width × vitals
        times_l = times.tolist()
        due_l = due[rows].tolist()
        sent = 0
        for i, row in enumerate(rows.tolist()):
            device_id = self._device_ids[row]
            readings: list[Reading] = []
            seq = int(self.seq[row])
            for k in range(due_l[i]):
                present = {v: x for v, x in zip(VITALS, cube[i][k], strict=True) if x == x}
                if not present:
                    self.stats.empty_slots += 1
                    continue
                readings.append(
                    Reading(
                        device_id=device_id,
                        seq=seq,
                        ts=self._stamp(times_l[i][k]),
                        vitals=Vitals(**present),
                        source=Source.REALTIME,
                        user_code=self._user_codes[row],
                    )
                )
                seq += 1
            if readings:
                self.sink.send_readings(device_id, readings)
                self.stats.messages += 1
                sent += len(readings)
            self.seq[row] = seq
        self.next_t[rows] += due[rows] * self.rate_ms
        self.stats.readings += sent
        return sent

    def run(self, duration_s: float, announce: bool = True) -> FleetStats:
        """Announce (unless told not to), then publish every reading due in the first
        ``duration_s`` simulated seconds after ``start_ms``. With ``"sim"`` stamps the run ends
        ``duration_s`` after the clock's start instead (:func:`sim_start_ms`: now), however long
        it took from the clock's start to this fleet's: at 3600× a 10 ms connect is 36 simulated
        seconds, which would otherwise land in the future."""
        start = self.start_ms
        origin = self.clock.start_ms if self.timestamps == "sim" else start
        end = max(start, origin + round(duration_s * 1000))
        if announce:
            self.announce()
        while True:
            now = min(self.clock.now_ms(), end)
            self.tick(now)
            upcoming = int(self.next_t.min())
            if upcoming > end:
                break
            if upcoming > now:
                self.clock.sleep_until(upcoming)
        self.stats.sim_ms = end - start
        return self.stats

"""The four virtual health devices, built from the wire formats of :mod:`gatt.health`.

* :class:`VirtualHeartRateStrap` – Heart Rate Measurement (0x2A37, notify) with skin contact
  and RR intervals, every ``interval_s``; nothing stored.
* :class:`VirtualPulseOximeter` – Continuous Measurement (0x2A5F, notify) every
  ``interval_s``; every ``spot_every``-th a time-stamped Spot-Check (0x2A5E, indicate), stored
  while no central listens; the Record Access Control Point (0x2A52, write + indicate) reports
  the stored spot-checks (the device keeps them: it is never told to delete).
* :class:`VirtualBloodPressureCuff` – Blood Pressure Measurement (0x2A35, indicate, time
  stamped, with pulse rate); its memory (``stored`` at start, plus what it measured while
  alone) is indicated whenever a central subscribes, the whole memory every time.
* :class:`VirtualThermometer` – Temperature Measurement (0x2A1C, indicate, time stamped);
  measurements taken while alone are kept and indicated on the next subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Final

from bumble.device import Connection
from bumble.gatt import Characteristic, CharacteristicValue

from gatt.health import (
    BloodPressureMeasurement,
    HeartRateMeasurement,
    PlxContinuous,
    PlxSpotCheck,
    RacpCommand,
    RacpOp,
    RacpOperator,
    RacpResponse,
    RacpResult,
    TemperatureMeasurement,
)
from simulators.devices.base import Radio, Sent, VirtualHealthDevice, jitter


def _char(uuid16: int, props: Characteristic.Properties,
          write: Callable[[Connection | None, bytes], None] | None = None) -> Characteristic[bytes]:
    value: bytes | CharacteristicValue[bytes] = (
        CharacteristicValue(write=write) if write is not None else b"")
    perms = Characteristic.WRITEABLE if write is not None else Characteristic.READABLE
    return Characteristic(f"{uuid16:04X}", props, perms, value)


_NOTIFY: Final = Characteristic.Properties.NOTIFY
_INDICATE: Final = Characteristic.Properties.INDICATE


class VirtualHeartRateStrap(VirtualHealthDevice):
    service16: ClassVar[int] = 0x180D
    name_prefix: ClassVar[str] = "HRM"

    def characteristics(self) -> list[Characteristic[bytes]]:
        self.hr_char = _char(0x2A37, _NOTIFY)
        return [self.hr_char]

    def measure(self, utc_s: float) -> None:
        rate = int(jitter(self.rng, 72, 6))
        rr = tuple(int(60 / rate * 1024 + self.rng.randint(-20, 20)) for _ in range(2))
        m = HeartRateMeasurement(rate, sensor_contact=True, rr_intervals=rr)
        if self.send(self.hr_char, bytes(m), indicate=False):
            self.sent.append(Sent("hr", None, m.vitals()))


class VirtualPulseOximeter(VirtualHealthDevice):
    service16: ClassVar[int] = 0x1822
    name_prefix: ClassVar[str] = "PLX"

    def __init__(self, radio: Radio, mac: str, *, spot_every: int = 3,
                 stored: list[tuple[float, dict[str, float]]] | None = None,
                 **kwargs: object) -> None:
        super().__init__(radio, mac, **kwargs)  # type: ignore[arg-type]
        self.spot_every = max(1, spot_every)
        self.stored = list(stored or [])
        self._n = 0

    def characteristics(self) -> list[Characteristic[bytes]]:
        self.continuous = _char(0x2A5F, _NOTIFY)
        self.spot = _char(0x2A5E, _INDICATE)
        self.racp = _char(0x2A52, Characteristic.Properties.WRITE | _INDICATE, self._on_racp)
        return [self.spot, self.continuous, self.racp]

    def measure(self, utc_s: float) -> None:
        self._n += 1
        spo2, pulse = jitter(self.rng, 97, 1.5), jitter(self.rng, 75, 5)
        m = PlxContinuous(spo2, pulse)
        if self.send(self.continuous, bytes(m), indicate=False):
            self.sent.append(Sent("plx-continuous", None, m.vitals()))
        if self._n % self.spot_every == 0:
            spot = PlxSpotCheck(spo2, pulse, timestamp=self.local_stamp(utc_s))
            if self.send(self.spot, bytes(spot), indicate=True):
                self.sent.append(Sent("plx-spot", int(utc_s) * 1000, spot.vitals()))
            self.store(utc_s, spot.vitals())  # kept in memory until asked (RACP)

    def _on_racp(self, connection: Connection | None, value: bytes) -> None:
        if connection is None:
            return
        try:
            command = RacpCommand.from_bytes(value)
        except ValueError:
            self.stats.bad_writes += 1
            return
        if command.op != RacpOp.REPORT_STORED_RECORDS:
            self.send(self.racp, bytes(RacpResponse(RacpOp.RESPONSE, command.op,
                                                    RacpResult.OP_CODE_NOT_SUPPORTED)), indicate=True)
            return
        records = list(self.stored) if command.operator == RacpOperator.ALL_RECORDS else []
        for utc_s, vitals in records:
            spot = PlxSpotCheck(vitals.get("spo2"), vitals.get("heart_rate"),
                                timestamp=self.local_stamp(utc_s))
            if self.send(self.spot, bytes(spot), indicate=True):
                self.stats.stored_sent += 1
                self.sent.append(Sent("plx-spot", int(utc_s) * 1000, spot.vitals(), stored=True))
        result = RacpResult.SUCCESS if records else RacpResult.NO_RECORDS_FOUND
        self.send(self.racp, bytes(RacpResponse(RacpOp.RESPONSE, command.op, result)), indicate=True)


class _StoringDevice(VirtualHealthDevice):
    """A device that indicates its whole memory when a central subscribes to ``char``."""

    kind: ClassVar[str]
    #: the measurement characteristic (16-bit), indicated: one per storing device
    measurement16: ClassVar[int]

    def __init__(self, radio: Radio, mac: str, *,
                 stored: list[tuple[float, dict[str, float]]] | None = None,
                 **kwargs: object) -> None:
        super().__init__(radio, mac, **kwargs)  # type: ignore[arg-type]
        self.stored = list(stored or [])

    def encode(self, utc_s: float, vitals: dict[str, float]) -> bytes:
        raise NotImplementedError

    def characteristics(self) -> list[Characteristic[bytes]]:
        self._char = _char(self.measurement16, _INDICATE)
        return [self._char]

    @property
    def char(self) -> Characteristic[bytes]:
        return self._char

    def on_subscribed(self, connection: Connection, char: Characteristic[bytes]) -> None:
        if char is not self.char:
            return
        for utc_s, vitals in list(self.stored):
            if self.send(char, self.encode(utc_s, vitals), indicate=True):
                self.stats.stored_sent += 1
                self.sent.append(Sent(self.kind, int(utc_s) * 1000, vitals, stored=True))

    def take(self, utc_s: float, vitals: dict[str, float]) -> None:
        if self.send(self.char, self.encode(utc_s, vitals), indicate=True):
            self.sent.append(Sent(self.kind, int(utc_s) * 1000, vitals))
        self.store(utc_s, vitals)  # a cuff keeps its memory; it sends it all on each connect


class VirtualBloodPressureCuff(_StoringDevice):
    service16: ClassVar[int] = 0x1810
    name_prefix: ClassVar[str] = "BPM"
    kind: ClassVar[str] = "bp"
    measurement16: ClassVar[int] = 0x2A35

    def encode(self, utc_s: float, vitals: dict[str, float]) -> bytes:
        sys_, dia = vitals["systolic_bp"], vitals["diastolic_bp"]
        return bytes(BloodPressureMeasurement(
            sys_, dia, round((sys_ + 2 * dia) / 3), timestamp=self.local_stamp(utc_s),
            pulse_rate=vitals.get("heart_rate")))

    def measure(self, utc_s: float) -> None:
        self.take(utc_s, {"systolic_bp": jitter(self.rng, 122, 8), "diastolic_bp": jitter(self.rng, 79, 5),
                          "heart_rate": jitter(self.rng, 70, 5)})


class VirtualThermometer(_StoringDevice):
    service16: ClassVar[int] = 0x1809
    name_prefix: ClassVar[str] = "THERMO"
    kind: ClassVar[str] = "thermometer"
    measurement16: ClassVar[int] = 0x2A1C

    def encode(self, utc_s: float, vitals: dict[str, float]) -> bytes:
        return bytes(TemperatureMeasurement(vitals["temperature"], timestamp=self.local_stamp(utc_s),
                                            temperature_type=2))

    def measure(self, utc_s: float) -> None:
        self.take(utc_s, {"temperature": jitter(self.rng, 36.9, 0.3, 1)})


#: ``--simulate-devices`` names → classes.
KINDS: Final[dict[str, type[VirtualHealthDevice]]] = {
    "hr": VirtualHeartRateStrap,
    "plx": VirtualPulseOximeter,
    "bp": VirtualBloodPressureCuff,
    "thermometer": VirtualThermometer,
}

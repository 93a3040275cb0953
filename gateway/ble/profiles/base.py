"""One connected standard Bluetooth health device (Heart Rate, PLX, Blood Pressure, Health
Thermometer): the part every profile shares.

* Subscribes to the profile's measurement characteristics that the device offers (bleak
  subscribes to indications where the characteristic only indicates; every indication is
  confirmed by the stack). The callbacks only put ``(uuid, bytes, reception ms)`` onto a
  bounded queue (full: counted in ``frames_dropped``); :meth:`HealthSession.run` consumes it.
* Sets the device's clock through the Current Time Service (0x1805 / 0x2A2B) when the device
  offers it writable: local time in ``settings.timezone``, the same zone the gateway reads the
  devices' time stamps in (a failure is counted, the session goes on: stamps then fall back).
* Maps each measurement (decoded by :mod:`gatt.health`) to a contract reading:
  ``ts`` is the device's time stamp where the measurement carries a valid one, else the
  reception time (processing time stands in for event time; counted in ``reception_stamped``);
  ``source`` is decided by the profile (:meth:`HealthSession.source_of`).
* Each vital is checked on its own against ``vitalgate.contract.PLAUSIBLE``: an implausible one
  is counted in ``rejected_values`` and left out; a special value (NaN, NRes, ±INF) decodes to
  "no value" and is counted in ``special_values``; a measurement left with no vital publishes
  nothing. Undecodable bytes are counted in ``undecodable``. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from gateway.ble.session import Sink, WatchInfo, raise_if_cancel_swallowed
from gateway.buffer import BufferError, Measurement
from gateway.clock_sync import HeldReadings, SyncedClock
from gateway.settings import GatewaySettings
from gatt.health import (
    CURRENT_TIME,
    CurrentTime,
    DateTime,
    GattDecodeError,
    GattMeasurement,
    decoder_for,
)
from vitalgate.contract import PLAUSIBLE, Source, Vitals

log = logging.getLogger(__name__)

#: notifications / indications waiting for the session; a PLX's stored records come in bursts.
QUEUE: Final = 1024
#: a device time stamp later than the reception time by more than this is not believed (a
#: device clock running ahead): the reading is counted in ``future_timestamps`` and not published.
FUTURE_TOLERANCE_MS: Final = 5 * 60_000
#: device-stamped measurements remembered per device to publish each once: a cuff's or a
#: thermometer's memory (tens of records), a PLX's RACP report (its stored records), with room.
REPEATS: Final = 1024


@dataclass
class HealthCounters:
    realtime_readings: int = 0
    history_records: int = 0
    rejected_values: int = 0
    special_values: int = 0
    undecodable: int = 0
    frames_dropped: int = 0
    reception_stamped: int = 0
    future_timestamps: int = 0
    readings_not_stored: int = 0
    clock_set: int = 0
    clock_set_failed: int = 0
    #: RR intervals of a chest strap: not a contract vital, counted and not published.
    rr_intervals: int = 0
    #: heart-rate measurements without skin contact (no value to publish).
    no_contact: int = 0
    racp_requests: int = 0
    racp_failures: int = 0
    #: the device's clock was not set because ours was not synchronised yet (gateway/clock_sync.py).
    clock_not_set: int = 0
    #: reception-stamped readings still held for the clock when the session ended.
    clock_dropped: int = 0
    #: device-stamped measurements already published (a cuff re-sends its memory on reconnect)
    repeats_skipped: int = 0


def characteristics(client: BleakClient) -> dict[str, BleakGATTCharacteristic]:
    """The device's characteristics by lower-case UUID (the first of each)."""
    found: dict[str, BleakGATTCharacteristic] = {}
    for service in client.services:
        for char in service.characteristics:
            found.setdefault(char.uuid.lower(), char)
    return found


def service_uuids(client: BleakClient) -> set[str]:
    return {s.uuid.lower() for s in client.services}


class HealthSession:
    """Base of the profile sessions; the subclasses name their service and measurements."""

    #: profile name as shown in status and logs.
    profile: ClassVar[str]
    #: the primary service that selects this session (full 128-bit, lower case).
    service: ClassVar[str]
    #: measurement characteristics to subscribe to.
    measurements: ClassVar[tuple[str, ...]]
    #: the vitals a complete measurement of this profile has (a missing one was a special value).
    expected: ClassVar[frozenset[str]]
    #: extra characteristics to subscribe to that are not measurements (PLX: RACP).
    controls: ClassVar[tuple[str, ...]] = ()

    def __init__(self, client: BleakClient, watch: WatchInfo, settings: GatewaySettings,
                 sink: Sink, clock: SyncedClock) -> None:
        self.client = client
        self.watch = watch
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.tz = ZoneInfo(settings.timezone)
        self.counters = HealthCounters()
        self.battery: int | None = None
        self.last_reading_ms: int | None = None
        self.ready = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(QUEUE)
        self._sync_now = asyncio.Event()
        #: measurements without a device timestamp, waiting for a synchronised clock to be
        #: stamped with their reception time (as the watch's realtime readings are)
        self.held: HeldReadings[tuple[Vitals, Source]] = HeldReadings()
        #: the device-stamped measurements published lately (device ms, values): a device that
        #: re-sends its memory on every connection publishes each once. The manager hands the
        #: same map to every session of a device, so it outlives reconnects (bounded: REPEATS).
        self.recent: OrderedDict[tuple[int, tuple[tuple[str, float], ...]], None] = OrderedDict()

    # ------------------------------------------------------------------ what the manager uses

    def frame_stats(self) -> dict[str, int]:
        return {}

    def request_sync(self) -> None:
        """An MQTT "sync": profiles with stored records read them again."""
        self._sync_now.set()

    async def record_ecg(self, seconds: float) -> str:
        raise RuntimeError(f"a {self.profile} device records no ECG")

    async def run(self) -> None:
        chars = characteristics(self.client)
        subscribed = 0
        for uuid in (*self.measurements, *self.controls):
            if uuid in chars:
                await self.client.start_notify(chars[uuid], self._notified(uuid))
                raise_if_cancel_swallowed()
                subscribed += uuid in self.measurements
        if not subscribed:
            raise RuntimeError(f"{self.watch.name}: offers none of the {self.profile} measurements")
        try:
            await self._run_subscribed(chars)
        finally:
            if self.held:  # the session ended before the clock synchronised: counted
                self.counters.clock_dropped += len(self.held)
                log.warning("%s: %d readings still waited for the clock when the session ended",
                            self.watch.name, len(self.held))

    async def _run_subscribed(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consume(), name=f"{self.watch.name} measurements")
            if CURRENT_TIME in chars and "write" in chars[CURRENT_TIME].properties:
                await self._set_clock(chars[CURRENT_TIME])
            await self.on_connected(chars)
            self.ready.set()
            while True:
                await self._sync_now.wait()
                self._sync_now.clear()
                await self.on_sync(chars)

    # ------------------------------------------------------------------ profile hooks

    async def on_connected(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        """After subscribing and setting the clock (PLX: read the stored records)."""

    async def on_sync(self, chars: dict[str, BleakGATTCharacteristic]) -> None:
        """An MQTT "sync" command (PLX: read the stored records again)."""

    def on_control(self, uuid: str, data: bytes) -> None:
        """An indication of a control characteristic (PLX: the RACP response)."""

    def source_of(self, uuid: str, measurement: GattMeasurement, device_ms: int | None,
                  received_ms: int) -> Source:
        return Source.REALTIME

    def timestamp_of(self, measurement: GattMeasurement) -> DateTime | None:
        stamp = getattr(measurement, "timestamp", None)
        return stamp if isinstance(stamp, DateTime) else None

    def specials(self, measurement: GattMeasurement, vitals: dict[str, float]) -> int:
        """How many expected values the measurement lacked (sent as NaN / NRes / ±INF)."""
        return len(self.expected - set(vitals))

    def on_measurement(self, uuid: str, measurement: GattMeasurement) -> None:
        """Profile extras (heart rate: count the RR intervals)."""

    # ------------------------------------------------------------------ internals

    async def _set_clock(self, char: BleakGATTCharacteristic) -> None:
        if not self.clock.synchronised():  # never write a wrong time into the device
            self.counters.clock_not_set += 1
            return
        now = datetime.fromtimestamp(self.clock.wall(), UTC).astimezone(self.tz)
        try:
            await self.client.write_gatt_char(char, bytes(CurrentTime.from_datetime(now)), response=True)
            raise_if_cancel_swallowed()
        except Exception as exc:  # a device may refuse the write: stamps fall back, counted
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.counters.clock_set_failed += 1
            log.warning("%s: could not set the clock: %s", self.watch.name, exc)
            return
        self.counters.clock_set += 1

    def _notified(self, uuid: str) -> Any:
        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            try:
                self._queue.put_nowait((uuid, bytes(data), self.clock.ms()))
            except asyncio.QueueFull:
                self.counters.frames_dropped += 1

        return callback

    async def _consume(self) -> None:
        while True:
            uuid, data, received_ms = await self._queue.get()
            if uuid in self.controls:
                try:
                    self.on_control(uuid, data)
                except GattDecodeError as exc:
                    self.counters.undecodable += 1
                    log.debug("%s: bad control indication: %s", self.watch.name, exc)
                continue
            try:
                measurement = decoder_for(uuid)(data)
            except GattDecodeError as exc:
                self.counters.undecodable += 1
                log.debug("%s: undecodable measurement: %s", self.watch.name, exc)
                continue
            self.on_measurement(uuid, measurement)
            self._publish(uuid, measurement, received_ms)

    def _device_ms(self, measurement: GattMeasurement) -> int | None:
        stamp = self.timestamp_of(measurement)
        moment = stamp.to_datetime(self.tz) if stamp is not None else None
        if moment is None or getattr(measurement, "clock_not_set", False):
            return None
        return int(moment.timestamp() * 1000)

    def plausible(self, values: dict[str, float]) -> dict[str, float]:
        kept: dict[str, float] = {}
        for name, value in values.items():
            low, high = PLAUSIBLE[name]
            if low <= value <= high:  # also false for NaN
                kept[name] = value
            else:
                self.counters.rejected_values += 1
        return kept

    def _publish(self, uuid: str, measurement: GattMeasurement, received_ms: int) -> None:
        raw = measurement.vitals()
        self.counters.special_values += self.specials(measurement, raw)
        values = self.plausible(raw)
        if not values:
            return
        device_ms = self._device_ms(measurement)
        synced = self.clock.synchronised()
        # "in the future" can only be judged against a synchronised clock of ours
        if device_ms is not None and synced and device_ms > received_ms + FUTURE_TOLERANCE_MS:
            self.counters.future_timestamps += 1
            log.warning("%s: measurement stamped %d s in the future: not published",
                        self.watch.name, (device_ms - received_ms) // 1000)
            return
        source = self.source_of(uuid, measurement, device_ms, received_ms)
        if device_ms is not None:  # the device's own clock stamped it
            key = (device_ms, tuple(sorted(values.items())))
            if key in self.recent:
                self.counters.repeats_skipped += 1
                return
            if self.store([Measurement(self.watch.device_id, device_ms, Vitals(**values), source,
                                       self.watch.user_code)]):
                self.recent[key] = None  # only once buffered: a refused one is taken again
                while len(self.recent) > REPEATS:
                    self.recent.popitem(last=False)
            return
        self.counters.reception_stamped += 1
        item = (Vitals(**values), source)
        # reception time from a synchronised clock only: held until then (gateway/clock_sync.py)
        stamped = [(received_ms, item)] if synced and not self.held else self.held.stamp(self.clock, item)
        if stamped:
            self.store([Measurement(self.watch.device_id, ts, v, src, self.watch.user_code)
                        for ts, (v, src) in stamped])

    def store(self, items: Sequence[Measurement]) -> bool:
        """Into the buffer; False when it refused them (counted)."""
        try:
            self.sink.add_readings(items)
        except BufferError:  # the buffer logged why (once) and shows its state in status
            self.counters.readings_not_stored += len(items)
            return False
        for item in items:
            if item.source is Source.HISTORY:
                self.counters.history_records += 1
            else:
                self.counters.realtime_readings += 1
                self.last_reading_ms = item.ts
        return True


def lower(uuids: Iterable[str]) -> set[str]:
    return {u.lower() for u in uuids}

"""One connected E86 watch: set it up, turn its frames into readings, sync its history, record ECG.

The BLE notification callbacks only feed a :class:`FrameAssembler` per characteristic and put
whole frames onto a bounded queue; :meth:`WatchSession.run` consumes them:

* replies to the command in flight (same group and key) complete its future;
* group 0x05 frames go to the running history sync (:class:`HistoryReceiver`);
* group 0x06 real-time values become ``Reading(source=realtime)``, ECG samples feed the
  running recording;
* group 0x04 events are acknowledged; anything else is counted and ignored.

Frames with a bad CRC never get here: the assembler drops and counts them, and the
connection carries on. Control operations (set-up, history sync, ECG) take turns on the
watch (one lock), because the watch answers one command at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol, assert_never
from zoneinfo import ZoneInfo

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from pydantic import ValidationError

from e86.clock import set_clock, watch_local_to_utc_ms
from e86.commands import (
    CommandReply,
    DeviceEvent,
    DeviceInfo,
    DeviceName,
    Functions,
    GetRequest,
    MacAddress,
    RealtimeUpload,
    SetMonitoring,
    WearStatus,
    ecg_start_sequence,
    ecg_stop,
)
from e86.constants import (
    COMMAND_CHAR_UUID,
    DATA_CHAR_UUID,
    ECG_SAMPLE_RATE,
    VITAL_HISTORY_KINDS,
    GetKey,
    Group,
    HistoryKind,
)
from e86.errors import E86Error
from e86.frame import Frame, FrameAssembler
from e86.history import BlockEnd, HistoryHeader
from e86.history_receiver import HistoryReceiver
from e86.messages import CollectData, WatchMessage, decode_watch_message
from e86.realtime import EcgSamples, PpgRaw, RealtimeValues
from e86.records import RecordBatch
from gateway.buffer import BufferError, Measurement
from gateway.clock_sync import HeldReadings, SyncedClock
from gateway.settings import GatewaySettings
from vitalgate.contract import EcgChunk, Reading, Source, Vitals

log = logging.getLogger(__name__)


def raise_if_cancel_swallowed() -> None:
    """Raise CancelledError when this task was cancelled during an await that then returned
    normally. bumble does this (Device.start_scanning, a connect through bleak-retry-connector,
    a GATT write): cancelling() stays > 0 but no CancelledError comes, the task runs on deaf
    to its cancellation and the gateway's TaskGroup waits for it forever (SIGTERM did not stop
    a gateway whose status port was taken, or one stopped while its watches connected).
    Called after each BLE await of the gateway's own code."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise asyncio.CancelledError()

#: frames decoded but not yet handled; at ~10 frames/s of ECG this is many seconds of slack.
FRAME_QUEUE: Final = 2048
#: a command the watch does not answer within this (real) time failed.
REPLY_TIMEOUT_S: Final = 5.0
#: during a history sync, the longest (real) silence between two frames of the watch.
HISTORY_FRAME_TIMEOUT_S: Final = 10.0
#: stopping ECG after a recording (also when the requester went away) waits this long at most.
ECG_STOP_TIMEOUT_S: Final = 5.0
#: extra real time granted to an ECG recording beyond its length before it is cut short.
ECG_GRACE_S: Final = 10.0

class HasVitals(Protocol):
    """A realtime message or a history record: what it measured, by contract vital name."""

    def vitals(self) -> dict[str, float]: ...


class Sink(Protocol):
    """Where a session puts what it collected (the store-and-forward buffer)."""

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]: ...

    def add_ecg(self, chunk: EcgChunk) -> None: ...


@dataclass(frozen=True, slots=True)
class WatchInfo:
    device_id: str
    mac: str
    name: str
    user_code: str | None


@dataclass
class SessionCounters:
    realtime_readings: int = 0
    history_records: int = 0
    history_syncs: int = 0
    history_failures: int = 0
    rejected_values: int = 0
    unexpected_frames: int = 0
    frames_dropped: int = 0
    ecg_recordings: int = 0
    ecg_samples: int = 0
    commands_failed: int = 0
    #: real-time readings / ECG chunks the buffer could not store (disk full): the watch keeps
    #: its periodic measurements in its history, which is synced once the buffer writes again
    readings_not_stored: int = 0
    ecg_chunks_not_stored: int = 0
    #: connects at which the watch's clock was not set because ours was not synchronised yet
    clock_not_set: int = 0


class EcgRecording:
    """Cuts the sample stream of one recording into EcgChunk messages (seq from 0, last=True)."""

    def __init__(self, watch: WatchInfo, start_ms: int, seconds: float, chunk: int, sink: Sink) -> None:
        self.watch = watch
        self.start_ms = start_ms
        self.recording = f"{watch.device_id}-{start_ms}"
        self.target = max(1, round(seconds * ECG_SAMPLE_RATE))
        self.chunk = chunk
        self.sink = sink
        self.received = 0
        self.seq = 0
        self._pending: list[int] = []
        self._emitted = 0
        self.not_stored = 0
        self.complete = asyncio.Event()
        self.finished = False

    def add(self, samples: Sequence[int]) -> None:
        if self.finished or self.received >= self.target:
            return
        take = list(samples[: self.target - self.received])
        self.received += len(take)
        self._pending += take
        # keep at least one sample back so the final chunk (last=True) is never empty
        while len(self._pending) > self.chunk:
            self._emit(self._pending[: self.chunk], last=False)
            del self._pending[: self.chunk]
        if self.received >= self.target:
            self.complete.set()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._emit(self._pending, last=True)
            self._pending = []

    def _emit(self, samples: list[int], last: bool) -> None:
        try:
            self.sink.add_ecg(EcgChunk(
                device_id=self.watch.device_id, recording=self.recording, seq=self.seq,
                ts=self.start_ms + self._emitted * 1000 // ECG_SAMPLE_RATE, fs=ECG_SAMPLE_RATE,
                samples=samples, last=last, user_code=self.watch.user_code,
            ))
        except BufferError:  # the buffer logged why (once); the chunk is counted by the session
            self.not_stored += 1
        self.seq += 1
        self._emitted += len(samples)


@dataclass
class _Pending:
    key: tuple[int, int]
    future: asyncio.Future[Frame] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WatchSession:
    def __init__(self, client: BleakClient, watch: WatchInfo, settings: GatewaySettings, sink: Sink,
                 clock: SyncedClock, held: HeldReadings[Vitals] | None = None) -> None:
        self.client = client
        #: realtime readings waiting for a synchronised clock (the manager keeps it per watch,
        #: so what a session held is stamped by the next one)
        self.held: HeldReadings[Vitals] = held if held is not None else HeldReadings()
        self.watch = watch
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.tz = ZoneInfo(settings.timezone)
        self.counters = SessionCounters()
        self.assemblers = {COMMAND_CHAR_UUID: FrameAssembler(), DATA_CHAR_UUID: FrameAssembler()}
        self.battery: int | None = None
        self.worn: bool | None = None
        self.last_reading_ms: int | None = None
        self.ready = asyncio.Event()
        self._frames: asyncio.Queue[Frame] = asyncio.Queue(FRAME_QUEUE)
        self._pending: _Pending | None = None
        self._history: asyncio.Queue[Frame] | None = None
        self._ecg: EcgRecording | None = None
        self._op = asyncio.Lock()
        self._sync_now = asyncio.Event()

    # ------------------------------------------------------------------ stats

    def frame_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for assembler in self.assemblers.values():
            for k, v in assembler.stats.as_dict().items():
                total[k] = total.get(k, 0) + v
        return total

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        """Subscribe, set the watch up, sync, then serve until cancelled or a BLE error."""
        await self.client.start_notify(COMMAND_CHAR_UUID, self._notified(COMMAND_CHAR_UUID))
        await self.client.start_notify(DATA_CHAR_UUID, self._notified(DATA_CHAR_UUID))
        raise_if_cancel_swallowed()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._dispatch(), name=f"{self.watch.name} frames")
            await self._setup()
            self.ready.set()
            tg.create_task(self._sync_loop(), name=f"{self.watch.name} history")

    def request_sync(self) -> None:
        self._sync_now.set()

    async def _setup(self) -> None:
        st = self.settings
        async with self._op:
            if self.clock.synchronised():  # never teach the watch a wrong time (Pi before NTP)
                now = datetime.fromtimestamp(self.clock.wall(), UTC)
                await self._request(set_clock(now, self.tz).to_frame())
            else:
                self.counters.clock_not_set += 1
            info = await self._request(GetRequest(GetKey.DEVICE_INFO).to_frame())
            with contextlib.suppress(E86Error):
                self.battery = DeviceInfo.from_frame(info).battery
            for setting in (SetMonitoring.heart_rate(True, st.hr_interval_min),
                            SetMonitoring.spo2(True, st.spo2_interval_min),
                            SetMonitoring.temperature(True, st.temperature_interval_min)):
                await self._request(setting.to_frame())
            await self._request(RealtimeUpload(st.realtime_upload).to_frame())

    async def _sync_loop(self) -> None:
        interval_s = self.settings.history_sync_min * 60
        while True:
            await self.sync_history()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.clock.real_seconds(interval_s)):
                    await self._sync_now.wait()
            self._sync_now.clear()

    # ------------------------------------------------------------------ frames in

    def _notified(self, uuid: str) -> Any:
        assembler = self.assemblers[uuid]

        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            for frame in assembler.feed(data):
                try:
                    self._frames.put_nowait(frame)
                except asyncio.QueueFull:
                    self.counters.frames_dropped += 1

        return callback

    async def _dispatch(self) -> None:
        while True:
            frame = await self._frames.get()
            try:
                await self._handle(frame)
            except E86Error as exc:
                self.counters.unexpected_frames += 1
                log.debug("%s: undecodable frame %02x %02x: %s", self.watch.name, frame.group, frame.key, exc)

    async def _handle(self, frame: Frame) -> None:
        """The reply to a pending command and the frames of a running history sync go, as
        frames, to whoever awaits them (the history receiver checks CRCs over their bytes);
        everything else is decoded by ``decode_watch_message`` (an ``E86Error`` is counted as
        an unexpected frame) and dispatched by its type."""
        pending = self._pending
        if pending is not None and pending.key == (frame.group, frame.key) and not pending.future.done():
            pending.future.set_result(frame)
        elif frame.group == Group.HISTORY and self._history is not None:
            try:
                self._history.put_nowait(frame)
            except asyncio.QueueFull:
                self.counters.frames_dropped += 1
        else:
            await self._on_message(decode_watch_message(frame))

    async def _on_message(self, message: WatchMessage) -> None:
        """mypy checks that every message of ``WatchMessage`` has its case."""
        match message:
            case RealtimeValues():
                self._on_values(message)
            case EcgSamples():
                if self._ecg is not None:
                    self._ecg.add(message.samples)
                    self.counters.ecg_samples += len(message.samples)
            case PpgRaw():
                pass  # raw PPG waveform: the gateway never asks for it and has no use for it
            case DeviceEvent():
                await self._write(message.ack().to_frame())
            case WearStatus():
                self.worn = message.worn
            case (HistoryHeader() | RecordBatch() | BlockEnd() | CommandReply() | DeviceInfo()
                  | Functions() | MacAddress() | DeviceName() | CollectData()):
                self.counters.unexpected_frames += 1  # a reply or upload nobody is waiting for
            case _:
                assert_never(message)

    def _on_values(self, message: RealtimeValues) -> None:
        vitals = self._vitals(message)
        if vitals is None:
            return
        # event time from a synchronised clock only (gateway/clock_sync.py): held until then
        stamped = self.held.stamp(self.clock, vitals)
        if not stamped:
            return
        try:
            self.sink.add_readings([Measurement(self.watch.device_id, ts, v, Source.REALTIME,
                                                self.watch.user_code) for ts, v in stamped])
        except BufferError:  # the buffer logged why (once) and shows its state in status
            self.counters.readings_not_stored += len(stamped)
            return
        self.counters.realtime_readings += len(stamped)
        self.last_reading_ms = stamped[-1][0]

    def _vitals(self, message: HasVitals) -> Vitals | None:
        """The message's vitals, validated; None if it has none or they are implausible
        (counted, logged)."""
        values = message.vitals()
        if not values:
            return None
        try:
            return Vitals(**values)
        except ValidationError as exc:
            self.counters.rejected_values += 1
            log.warning("%s: implausible values rejected: %s", self.watch.name, exc.errors()[0]["msg"])
            return None

    # ------------------------------------------------------------------ frames out

    async def _write(self, frame: Frame) -> None:
        await self.client.write_gatt_char(COMMAND_CHAR_UUID, bytes(frame), response=True)
        raise_if_cancel_swallowed()

    async def _request(self, frame: Frame, timeout: float = REPLY_TIMEOUT_S) -> Frame:
        """Send a command and wait for the watch's frame with the same group and key."""
        pending = _Pending((frame.group, frame.key))
        self._pending = pending
        try:
            await self._write(frame)
            async with asyncio.timeout(timeout):
                return await pending.future
        except TimeoutError:
            self.counters.commands_failed += 1
            raise TimeoutError(f"{self.watch.name}: no reply to {frame.group:02x} {frame.key:02x}") from None
        finally:
            if self._pending is pending:
                self._pending = None

    # ------------------------------------------------------------------ history

    async def sync_history(self) -> int:
        """Sync every configured kind; returns the records committed. Deletes on the watch only
        what was committed to the buffer first."""
        committed = 0
        async with self._op:
            for name in self.settings.history_kinds:
                committed += await self._sync_kind(VITAL_HISTORY_KINDS[name])
        return committed

    async def _sync_kind(self, kind: HistoryKind) -> int:
        receiver = HistoryReceiver(kind)
        queue: asyncio.Queue[Frame] = asyncio.Queue(FRAME_QUEUE)
        self._history = queue
        committed = 0
        try:
            await self._write(receiver.request())
            while not receiver.done:
                try:
                    async with asyncio.timeout(HISTORY_FRAME_TIMEOUT_S):
                        frame = await queue.get()
                except TimeoutError:
                    receiver.failed = "the watch went silent during the sync"
                    break
                step = receiver.feed(frame)
                if step.records:
                    try:
                        committed += self._commit_records(step.records)
                    except BufferError as exc:  # nothing deleted on the watch: the next sync retries
                        receiver.failed = f"the buffer cannot store records ({exc})"
                        break
                if step.reply is not None:
                    await self._write(step.reply)
        finally:
            self._history = None
        self.counters.history_syncs += 1
        if receiver.failed:
            self.counters.history_failures += 1
            log.warning("%s: history %s sync failed (%s); the watch keeps its records",
                        self.watch.name, kind.name, receiver.failed)
            return committed
        if receiver.expected:
            # the records are committed (fsynced) in the buffer: the watch may forget them now
            await self._request(receiver.delete())
        log.info("%s: history %s: %d records", self.watch.name, kind.name, committed)
        return committed

    def _commit_records(self, records: Sequence[Any]) -> int:
        items: list[Measurement] = []
        for record in records:
            vitals = self._vitals(record)
            if vitals is None:
                continue
            ts = watch_local_to_utc_ms(record.t, self.tz)
            if ts < 0:
                self.counters.rejected_values += 1
                continue
            items.append(Measurement(self.watch.device_id, ts, vitals, Source.HISTORY, self.watch.user_code))
        self.sink.add_readings(items)
        self.counters.history_records += len(items)
        return len(items)

    # ------------------------------------------------------------------ ECG

    async def record_ecg(self, seconds: float) -> str:
        """Record ``seconds`` of ECG into the buffer as EcgChunk messages; returns the recording
        id. The watch is told to stop afterwards whatever happened (with a timeout)."""
        async with self._op:
            rec = EcgRecording(self.watch, self.clock.ms(), seconds, self.settings.ecg_chunk_samples, self.sink)
            self._ecg = rec
            self.counters.ecg_recordings += 1
            try:
                for frame in ecg_start_sequence():
                    await self._request(frame)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.clock.real_seconds(seconds) + ECG_GRACE_S):
                        await rec.complete.wait()
            finally:
                self._ecg = None
                rec.finish()
                try:
                    await asyncio.shield(self._stop_ecg())
                except Exception as exc:  # the link may be gone; logged
                    log.warning("%s: could not stop ECG: %s", self.watch.name, exc)
            self.counters.ecg_chunks_not_stored += rec.not_stored
            log.info("%s: ECG %s: %d samples", self.watch.name, rec.recording, rec.received)
            return rec.recording

    async def _stop_ecg(self) -> None:
        async with asyncio.timeout(ECG_STOP_TIMEOUT_S):
            await self._request(ecg_stop())

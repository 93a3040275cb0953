"""VirtualE86: a Cexup E86 watch as a real bumble GATT peripheral on a :class:`BumbleLink`.

It advertises as ``E86 XXXX`` with the vendor service and Yucheng's manufacturer data, serves
the vendor service (be940001 write + indicate, be940003 indicate), answers the commands of
docs/e86 (/work/shared/ref/e86-protocol.md), measures on its own schedule and keeps a bounded
history so nothing is lost while no central is connected. Frames longer than the ATT payload
are split over several indications (``split_for_mtu``), as the real watch does.

Time: ``clock`` (a :class:`vitalgate.clock.TimeReader`, UTC seconds) runs ``speed`` times faster inside the watch, from the moment
the watch is built. Every scheduled measurement and every ECG sample uses that simulated time,
so a test at speed 60 sees a minute of watch life per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import assert_never

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import (
    AdvertisingEventProperties,
    AdvertisingParameters,
    AdvertisingSet,
    Connection,
    Device,
)
from bumble.gatt import Characteristic, CharacteristicValue, Service

from e86 import commands as cmd
from e86.advertising import default_name
from e86.constants import (
    COMMAND_CHAR_UUID,
    COMPANY_ID,
    DATA_CHAR_UUID,
    ECG_SAMPLE_RATE,
    HISTORY_KINDS,
    MODEL,
    PPG_WORN,
    SERVICE_UUID,
    BlockStatus,
    EcgMode,
    GetKey,
    HistoryKind,
    MeasurementType,
    RealtimeKey,
    SettingKey,
)
from e86.errors import E86Error
from e86.frame import Frame, FrameAssembler, split_for_mtu
from e86.history import BlockAck, HistoryDelete, HistoryHeader, HistoryRequest
from e86.messages import decode_app_message
from simulators.bleak_bumble.link import BumbleLink
from simulators.link_drop import cancel_all, send_or_drop
from simulators.peripheral import VirtualPeripheral
from simulators.watch import encode
from simulators.watch.encode import WatchSample
from simulators.watch.history import RECORDED_KINDS, HistoryStore, SyncSession, make_session
from simulators.watch.sources import EcgSource, VitalsSource, default_ecg, default_vitals
from vitalgate.clock import SYSTEM, ScaledClock, TimeReader

logger = logging.getLogger(__name__)

#: Outgoing frames waiting for the radio; past this, new frames are dropped and counted.
TX_QUEUE_FRAMES = 2048
#: Bytes of records per history frame (whole records; longer than a 23-byte MTU on purpose).
HISTORY_FRAME_PAYLOAD = 200
#: How many times one block is resent before the watch gives the sync up.
MAX_BLOCK_RESENDS = 3
#: Real seconds between checks of the injected clock when nothing else wakes the watch.
MAX_IDLE_SLEEP_S = 0.25
#: HCI reason the watch gives when it leaves range: Connection Timeout (supervision timeout).
OUT_OF_RANGE_REASON = hci.HCI_CONNECTION_TIMEOUT_ERROR
#: Supported-functions bitmap the watch reports (opaque to vitalgate; HR, BP, SpO2, temp, ECG).
FUNCTIONS_BITMAP = bytes((0x1F, 0x00, 0x00, 0x00))
FIRMWARE = (1, 7)
#: WatchSample → real-time frames sent per scheduled reading while real-time upload is on.
#: 06 03 carries BP, HR, HRV, SpO2 and temperature; 06 07 carries the respiratory rate.
DEFAULT_REALTIME_KEYS: tuple[RealtimeKey, ...] = (
    RealtimeKey.BLOOD_PRESSURE,
    RealtimeKey.RESPIRATORY_RATE,
)
#: One-shot measurement type → the real-time frame that answers it.
MEASURE_REPLY_KEY: dict[MeasurementType, RealtimeKey] = {
    MeasurementType.HEART_RATE: RealtimeKey.HEART_RATE,
    MeasurementType.BLOOD_PRESSURE: RealtimeKey.BLOOD_PRESSURE,
    MeasurementType.SPO2: RealtimeKey.SPO2,
    MeasurementType.RESPIRATORY_RATE: RealtimeKey.RESPIRATORY_RATE,
    MeasurementType.TEMPERATURE: RealtimeKey.BLOOD_PRESSURE,  # temperature only travels in 06 03
}


@dataclass
class WatchStats:
    """Counters of one virtual watch (all visible to tests and benchmarks)."""

    connections: int = 0
    disconnections: int = 0
    commands: int = 0
    #: frames the watch could not decode or does not know (ignored, as a real watch would).
    bad_commands: int = 0
    #: command bytes dropped by the watch's frame assembler (bad CRC / garbage).
    bad_command_bytes: int = 0
    frames_sent: int = 0
    indications_sent: int = 0
    #: frames that could not be sent (link dropped, queue full).
    frames_dropped: int = 0
    corrupted: int = 0
    readings: int = 0
    realtime_frames: int = 0
    ecg_frames: int = 0
    ecg_samples: int = 0
    history_syncs: int = 0
    history_blocks_sent: int = 0
    history_resends: int = 0
    history_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def advertised_name(mac: str) -> str:
    """``E86 5894`` for ``D0:61:AE:D4:58:94``."""
    return default_name(mac)


def static_address(mac: str) -> str:
    """The random static address for ``mac``: the two top bits of the first byte set."""
    parts = mac.upper().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    first = int(parts[0], 16) | 0xC0
    return ":".join([f"{first:02X}", *parts[1:]])


@dataclass
class _Link:
    """State of the one central connected to the watch."""

    connection: Connection
    assembler: FrameAssembler
    subscribed: set[str]
    realtime: bool = False
    ecg_task: asyncio.Task[None] | None = None
    sync: SyncSession | None = None


class VirtualE86(VirtualPeripheral):
    """A virtual E86 watch on ``link``; ``async with VirtualE86(link, mac) as watch: ...``."""

    def __init__(
        self,
        link: BumbleLink,
        mac: str,
        *,
        clock: TimeReader = SYSTEM,
        speed: float = 1.0,
        vitals: VitalsSource | None = None,
        ecg: EcgSource | None = None,
        realtime_interval_s: float = 5.0,
        realtime_keys: Sequence[RealtimeKey] = DEFAULT_REALTIME_KEYS,
        history_capacity: int = 10_000,
        ecg_frame_samples: int = 50,
        battery: int = 87,
        seed: int = 0,
        advertising_interval_ms: float = 100.0,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if realtime_interval_s <= 0:
            raise ValueError(f"realtime_interval_s must be positive, got {realtime_interval_s}")
        if not 1 <= ecg_frame_samples <= 1000:
            raise ValueError(f"ecg_frame_samples must be 1..1000, got {ecg_frame_samples}")
        self.link = link
        self.mac = mac.upper()
        self.address = static_address(self.mac)
        self.name = advertised_name(self.mac)
        self.battery = battery
        self.speed = speed
        self.realtime_interval_s = realtime_interval_s
        self.realtime_keys = tuple(realtime_keys)
        self.ecg_frame_samples = ecg_frame_samples
        self.advertising_interval_ms = advertising_interval_ms
        self.stats = WatchStats()
        self.history = HistoryStore(history_capacity)
        #: watch local time − UTC, seconds; set by the gateway's set-clock command.
        self.utc_offset_s = 0.0
        #: monitoring switches as last set: setting key → (on, interval minutes).
        self.monitoring: dict[SettingKey, tuple[bool, int]] = {}
        #: the watch's own time: ``speed`` × the given clock, from now (vitalgate.clock)
        self._clock = ScaledClock(speed, base=clock)
        self._vitals = vitals or default_vitals(seed)
        self._ecg = ecg or default_ecg(seed)
        self._in_range = True
        self._corrupt: list[tuple[int, int | None, int | None]] = []  # [remaining, group, key]
        self._device: Device | None = None
        self._adv_set: AdvertisingSet | None = None
        self._central: _Link | None = None
        self._tx: asyncio.Queue[tuple[Connection, str, bytes]] = asyncio.Queue(TX_QUEUE_FRAMES)
        self._rx: asyncio.Queue[tuple[Connection, Frame]] = asyncio.Queue(256)
        self._tasks: list[asyncio.Task[None]] = []
        self._readvertise: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._stopping = False
        self._next_reading_s = self.now_s() + realtime_interval_s
        self._command_char: Characteristic[bytes] | None = None
        self._data_char: Characteristic[bytes] | None = None

    # -- time --------------------------------------------------------------------------------
    def now_s(self) -> float:
        """Simulated UTC seconds."""
        return self._clock.wall()

    def now_ms(self) -> int:
        return self._clock.ms()

    def watch_time(self, utc_s: float) -> int:
        return encode.watch_time(utc_s, self.utc_offset_s)

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        device = await self.link.add_device(self.name, self.address)
        self._device = device
        self._command_char = Characteristic(
            COMMAND_CHAR_UUID,
            Characteristic.Properties.WRITE
            | Characteristic.Properties.WRITE_WITHOUT_RESPONSE
            | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )
        self._data_char = Characteristic(
            DATA_CHAR_UUID,
            Characteristic.Properties.INDICATE,
            Characteristic.READABLE,
            b"",
        )
        device.add_service(Service(SERVICE_UUID, [self._command_char, self._data_char]))
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        device.on("characteristic_subscription", self._on_subscription)
        self._tasks = [
            asyncio.create_task(self._sender(), name=f"{self.name} tx"),
            asyncio.create_task(self._commands(), name=f"{self.name} rx"),
            asyncio.create_task(self._schedule(), name=f"{self.name} schedule"),
        ]
        await self._advertise()

    async def stop(self) -> None:
        self._stopping = True
        if self._central and self._central.ecg_task:
            self._central.ecg_task.cancel()
        if self._readvertise is not None:
            self._tasks.append(self._readvertise)
        await cancel_all(self._tasks)
        self._tasks = []
        if self._device is not None:
            await self._stop_advertising()
            for connection in list(self._device.connections.values()):
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            self._central = None
            await self.link.remove_device(self._device)
            self._device = None

    # -- controls for tests ------------------------------------------------------------------
    @property
    def in_range(self) -> bool:
        return self._in_range

    @property
    def connected(self) -> bool:
        return self._central is not None

    async def set_in_range(self, in_range: bool) -> None:
        """Out of range: the link drops (supervision timeout) and nobody hears the advertising.
        Back in range: advertising resumes. Measurements go on either way."""
        if in_range == self._in_range:
            return
        self._in_range = in_range
        if in_range:
            await self._advertise()
            return
        await self._stop_advertising()
        if self._central is not None:
            with contextlib.suppress(Exception):
                await self._central.connection.disconnect(OUT_OF_RANGE_REASON)

    def corrupt_next(self, n: int, *, group: int | None = None, key: int | None = None) -> None:
        """Flip a CRC byte of the next ``n`` outgoing frames (optionally only ``group``/``key``)."""
        if n > 0:
            self._corrupt.append((n, group, key))

    def measure_now(self) -> WatchSample:
        """Take a scheduled-style reading at the current simulated time (stored + uploaded)."""
        return self._take_reading(self.now_s())

    # -- advertising ---------------------------------------------------------------------------
    def advertising_data(self) -> bytes:
        return bytes(
            AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes((0x06,))),  # LE General Discoverable, no BR/EDR
                    (
                        AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                        bytes(UUID(SERVICE_UUID)),
                    ),
                    (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                    (
                        AdvertisingData.MANUFACTURER_SPECIFIC_DATA,
                        COMPANY_ID.to_bytes(2, "little")
                        + cmd.MacAddress(self.mac).to_frame().payload,
                    ),
                ]
            )
        )

    async def _advertise(self) -> None:
        device = self._device
        if device is None or not self._in_range or self._central is not None or self._stopping:
            return
        if self._adv_set is None:
            # Extended (non-legacy) connectable advertising: the name, the 128-bit service UUID
            # and the manufacturer data do not fit the 31 bytes of a legacy PDU together, and the
            # simulated link delivers no separate scan response.
            self._adv_set = await device.create_advertising_set(
                advertising_parameters=AdvertisingParameters(
                    advertising_event_properties=AdvertisingEventProperties(
                        is_connectable=True, is_scannable=False, is_legacy=False
                    ),
                    primary_advertising_interval_min=self.advertising_interval_ms,
                    primary_advertising_interval_max=self.advertising_interval_ms,
                ),
                advertising_data=self.advertising_data(),
                auto_restart=False,
            )
        elif not self._adv_set.enabled:
            await self._adv_set.start()

    async def _stop_advertising(self) -> None:
        if self._adv_set is not None and self._adv_set.enabled:
            await self._adv_set.stop()

    # -- connection events -------------------------------------------------------------------
    def _on_connection(self, connection: Connection) -> None:
        self.stats.connections += 1
        self._central = _Link(connection, FrameAssembler(), set())
        connection.on(
            Connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(connection)
        )
        logger.debug("%s: connected", self.name)

    def _on_disconnection(self, connection: Connection) -> None:
        self.stats.disconnections += 1
        central = self._central
        if central is not None and central.connection is connection:
            if central.ecg_task is not None:
                central.ecg_task.cancel()
            if self._inflight is not None:
                self._inflight.cancel()
            self._central = None
        logger.debug("%s: disconnected", self.name)
        if self._in_range and self._device is not None and not self._stopping:
            self._readvertise = asyncio.get_running_loop().create_task(self._advertise())

    def _on_subscription(
        self,
        connection: Connection,
        characteristic: Characteristic[bytes],
        notify: bool,
        indicate: bool,
    ) -> None:
        central = self._central
        if central is None or central.connection is not connection:
            return
        if characteristic is self._data_char:
            uuid = DATA_CHAR_UUID
        elif characteristic is self._command_char:
            uuid = COMMAND_CHAR_UUID
        else:
            return
        if notify or indicate:
            central.subscribed.add(uuid)
        else:
            central.subscribed.discard(uuid)

    def _on_write(self, connection: Connection, value: bytes) -> None:
        central = self._central
        if central is None or central.connection is not connection:
            return
        before = central.assembler.stats.bytes_dropped
        if central.assembler.pending:
            # Left-overs of a garbled write can hold a length the watch would wait on forever;
            # a write that is a whole valid frame by itself starts afresh.
            with contextlib.suppress(E86Error):
                Frame.from_bytes(value)
                central.assembler.reset()
        for frame in central.assembler.feed(value):
            try:
                self._rx.put_nowait((connection, frame))
            except asyncio.QueueFull:
                self.stats.bad_commands += 1
        self.stats.bad_command_bytes += central.assembler.stats.bytes_dropped - before

    # -- sending -------------------------------------------------------------------------------
    def send(self, frame: Frame, *, bulk: bool = False) -> None:
        """Queue one frame for the connected central (be940003 if ``bulk`` else be940001)."""
        central = self._central
        if central is None:
            self.stats.frames_dropped += 1
            return
        data = self._maybe_corrupt(frame)
        try:
            self._tx.put_nowait(
                (central.connection, DATA_CHAR_UUID if bulk else COMMAND_CHAR_UUID, data)
            )
        except asyncio.QueueFull:
            self.stats.frames_dropped += 1

    def _maybe_corrupt(self, frame: Frame) -> bytes:
        data = bytes(frame)
        for i, (remaining, group, key) in enumerate(self._corrupt):
            if (group is None or group == frame.group) and (key is None or key == frame.key):
                if remaining <= 1:
                    del self._corrupt[i]
                else:
                    self._corrupt[i] = (remaining - 1, group, key)
                self.stats.corrupted += 1
                return data[:-1] + bytes((data[-1] ^ 0xFF,))
        return data

    async def _sender(self) -> None:
        while True:
            connection, uuid, data = await self._tx.get()
            central = self._central
            device = self._device
            if central is None or central.connection is not connection or device is None:
                self.stats.frames_dropped += 1
                continue
            char = self._data_char if uuid == DATA_CHAR_UUID else self._command_char
            assert char is not None
            payload = max(1, connection.att_mtu - 3)
            # the link dropped mid-frame (bumble cancels the pending indication): counted
            send = functools.partial(self._indicate_frame, device, connection, char, data, payload)
            if await send_or_drop(self.name, send):
                self.stats.frames_sent += 1
            else:
                self.stats.frames_dropped += 1

    async def _indicate_frame(self, device: Device, connection: Connection,
                              char: Characteristic[bytes], data: bytes, payload: int) -> None:
        for piece in split_for_mtu(data, payload):
            # A task of its own, so that a link drop can cancel an indication whose
            # confirmation will never come (bumble would wait for it for 30 s).
            self._inflight = asyncio.ensure_future(device.indicate_subscriber(connection, char, piece))
            await self._inflight
            self.stats.indications_sent += 1

    # -- commands ------------------------------------------------------------------------------
    async def _commands(self) -> None:
        while True:
            connection, frame = await self._rx.get()
            central = self._central
            if central is None or central.connection is not connection:
                continue
            self.stats.commands += 1
            try:
                self._handle(central, frame)
            except E86Error as exc:
                self.stats.bad_commands += 1
                logger.debug("%s: bad command %r: %s", self.name, frame, exc)

    def _handle(self, central: _Link, frame: Frame) -> None:
        """One command from the app, decoded by ``decode_app_message`` (an ``E86Error`` for a
        frame it does not know: counted as a bad command) and dispatched by its type; mypy
        checks that every command of ``AppMessage`` has its case."""
        command = decode_app_message(frame)
        match command:
            case cmd.SetClock():
                local = command.to_datetime(UTC).timestamp()
                # Offsets are whole minutes; rounding absorbs the command's own latency.
                self.utc_offset_s = round((local - self.now_s()) / 60.0) * 60.0
                self.send(cmd.CommandReply.ok(frame).to_frame())
            case cmd.SetMonitoring():
                self.monitoring[command.key] = (command.on, command.interval_min)
                self.send(cmd.CommandReply.ok(frame).to_frame())
            case cmd.GetRequest():
                self.send(self._get_reply(command.key))
            case cmd.MeasureOnce():
                self.send(cmd.CommandReply.ok(frame).to_frame())
                if command.on:
                    m = self._measure(self.now_s())
                    rt_key = MEASURE_REPLY_KEY[command.type]
                    self.send(encode.realtime(rt_key, m).to_frame(), bulk=True)
            case cmd.RealtimeUpload():
                central.realtime = command.on
                self.send(cmd.CommandReply.ok(frame).to_frame())
            case cmd.WaveformUpload():
                self.send(cmd.CommandReply.ok(frame).to_frame())
            case cmd.EcgControl():
                self.send(cmd.CommandReply.ok(frame).to_frame())
                self._ecg_control(central, command.mode)
            case BlockAck():
                self._on_block_ack(central, command)
            case HistoryDelete():
                self.stats.history_deleted += self.history.delete_synced(command.kind)
                self.send(cmd.CommandReply.ok(frame).to_frame())
            case HistoryRequest():
                self._on_history_request(central, command.kind)
            case cmd.DeviceEventAck():
                pass  # the app's acknowledgement of one of our events: nothing to do
            case _:
                assert_never(command)

    def _get_reply(self, key: GetKey) -> Frame:
        match key:
            case GetKey.DEVICE_INFO:
                return cmd.DeviceInfo(max(0, min(100, self.battery)), *FIRMWARE).to_frame()
            case GetKey.FUNCTIONS:
                return cmd.Functions(FUNCTIONS_BITMAP).to_frame()
            case GetKey.MAC:
                return cmd.MacAddress(self.mac).to_frame()
            case _:
                return cmd.DeviceName(MODEL).to_frame()

    def _ecg_control(self, central: _Link, mode: EcgMode) -> None:
        if mode == EcgMode.START and central.ecg_task is None:
            self.send(cmd.WearStatus(0, PPG_WORN).to_frame())
            central.ecg_task = asyncio.create_task(self._ecg_stream(central), name=f"{self.name} ecg")
        elif mode == EcgMode.STOP and central.ecg_task is not None:
            central.ecg_task.cancel()
            central.ecg_task = None

    def _on_block_ack(self, central: _Link, ack: BlockAck) -> None:
        session = central.sync
        if session is None:
            raise E86Error("block answer without a history sync in progress")
        if ack.status == BlockStatus.RESEND and session.resends < MAX_BLOCK_RESENDS:
            session.resends += 1
            self.stats.history_resends += 1
        else:
            session.index += 1
        if session.done:
            central.sync = None
        else:
            self._send_block(session)

    def _on_history_request(self, central: _Link, kind: HistoryKind) -> None:
        if kind not in RECORDED_KINDS:
            self.send(HistoryHeader(kind).to_frame())  # nothing stored
            return
        records = self.history.snapshot(kind)
        self.stats.history_syncs += 1
        if not records:
            self.send(HistoryHeader(kind).to_frame())
            return
        session = make_session(kind, records, HISTORY_FRAME_PAYLOAD)
        self.send(session.header.to_frame())
        central.sync = session
        self._send_block(session)

    def _send_block(self, session: SyncSession) -> None:
        for frame in session.blocks[session.index]:  # record frames, then the 05 80 block end
            self.send(frame, bulk=True)
        self.stats.history_blocks_sent += 1

    # -- measuring -----------------------------------------------------------------------------
    def _measure(self, utc_s: float) -> WatchSample:
        vitals = self._vitals(int(utc_s * 1000))
        return WatchSample.from_vitals(self.watch_time(utc_s), vitals)

    def _take_reading(self, utc_s: float) -> WatchSample:
        m = self._measure(utc_s)
        self.stats.readings += 1
        for kind in RECORDED_KINDS:
            self.history.add(kind, encode.history_record(kind, m))
        central = self._central
        if central is not None and central.realtime and DATA_CHAR_UUID in central.subscribed:
            for rt_key in self.realtime_keys:
                self.send(encode.realtime(rt_key, m).to_frame(), bulk=True)
                self.stats.realtime_frames += 1
        return m

    async def _schedule(self) -> None:
        while True:
            now = self.now_s()
            while self._next_reading_s <= now:
                self._take_reading(self._next_reading_s)
                self._next_reading_s += self.realtime_interval_s
            wait = (self._next_reading_s - now) / self.speed
            await asyncio.sleep(min(max(wait, 0.0), MAX_IDLE_SLEEP_S))

    async def _ecg_stream(self, central: _Link) -> None:
        """06 05 frames of ``ecg_frame_samples`` samples at 250 Hz of simulated time."""
        start_s = self.now_s()
        sent = 0
        frame_s = self.ecg_frame_samples / ECG_SAMPLE_RATE
        try:
            while True:
                due = int((self.now_s() - start_s) * ECG_SAMPLE_RATE)
                while due - sent >= self.ecg_frame_samples:
                    ts_ms = int(start_s * 1000) + sent * 1000 // ECG_SAMPLE_RATE
                    samples = self._ecg(ts_ms, self.ecg_frame_samples)
                    self.send(encode.ecg(samples).to_frame(), bulk=True)
                    sent += self.ecg_frame_samples
                    self.stats.ecg_frames += 1
                    self.stats.ecg_samples += self.ecg_frame_samples
                await asyncio.sleep(min(frame_s / self.speed, MAX_IDLE_SLEEP_S))
        finally:
            if central.ecg_task is asyncio.current_task():
                central.ecg_task = None


def history_kinds() -> Mapping[HistoryKind, int | None]:
    """Record size of every kind the virtual watch stores (for tests and docs)."""
    return {kind: HISTORY_KINDS[kind].record_size for kind in RECORDED_KINDS}

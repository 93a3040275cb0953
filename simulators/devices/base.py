"""A standard Bluetooth health device as a real bumble GATT peripheral: the shared part.

Each kind (:mod:`simulators.devices.kinds`) adds its service and measurements; this base owns
the bumble Device, the advertising (legacy PDU: flags, the 16-bit service UUIDs, the name), the
Current Time Service (0x1805 / 0x2A2B, read + write: a write sets the device's clock), one
sender task delivering notifications and indications in order (an indication waits for the
central's confirmation) and the measurement schedule on an injected clock.

The device's clock: it stamps measurements in its local time, ``utc + utc_offset_s``. A
Current Time write sets ``utc_offset_s`` to the written local time minus the device's UTC
time, rounded to 15 minutes (a time zone), as a cuff that shows local time does.

Every measurement the device sends is also kept in :attr:`VirtualHealthDevice.sent` as
``Sent(kind, utc_ms, vitals)`` with ``utc_ms`` the UTC instant the device stamped (None when
the measurement carries no time), so tests compare what arrives with what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Final, Protocol

from bumble.core import AdvertisingData
from bumble.device import (
    AdvertisingEventProperties,
    AdvertisingParameters,
    AdvertisingSet,
    Connection,
    Device,
)
from bumble.gatt import Characteristic, CharacteristicValue, Service

from gatt.health import CurrentTime, DateTime, GattDecodeError
from simulators.link_drop import cancel_all, send_or_drop
from simulators.peripheral import VirtualPeripheral
from simulators.watch.e86 import static_address
from vitalgate.clock import SYSTEM, TimeReader

logger = logging.getLogger(__name__)

#: outgoing notifications / indications waiting for the radio; past this, dropped and counted.
TX_QUEUE: Final = 4096
#: how many measurements a device keeps while no central collects them (oldest go first).
STORE_CAPACITY: Final = 1000
#: the longest (real) wait of each step of stopping (advertising off, disconnect).
STOP_STEP_S: Final = 2.0
#: a time zone is a multiple of this (the CTS write is rounded to it).
ZONE_STEP_S: Final = 15 * 60


class Radio(Protocol):
    """Where a device's stack lives: :class:`simulators.bleak_bumble.BumbleLink` (this process)
    or :class:`simulators.devices.relay.RemoteRadio` (a gateway's link, over TCP)."""

    async def add_device(self, name: str, address: str) -> Device: ...

    async def remove_device(self, device: Device) -> None: ...


@dataclass(frozen=True, slots=True)
class Sent:
    kind: str
    utc_ms: int | None
    vitals: dict[str, float]
    stored: bool = False


@dataclass
class DeviceStats:
    connections: int = 0
    disconnections: int = 0
    notifications: int = 0
    indications: int = 0
    dropped: int = 0
    clock_sets: int = 0
    stored_sent: int = 0
    measurements: int = 0
    bad_writes: int = 0


@dataclass
class _Out:
    connection: Connection
    char: Characteristic[bytes]
    value: bytes
    indicate: bool
    done: asyncio.Future[None] | None = field(default=None)


class VirtualHealthDevice(VirtualPeripheral):
    """Base of the virtual health devices; ``async with Kind(radio, mac) as device: ...``."""

    #: the profile's primary service, 16-bit.
    service16: ClassVar[int]
    #: the advertised name's prefix (the MAC's last four hex digits follow).
    name_prefix: ClassVar[str]

    def __init__(self, radio: Radio, mac: str, *, clock: TimeReader = SYSTEM,
                 interval_s: float = 5.0, seed: int = 0, current_time: bool = True) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.radio = radio
        self.mac = mac.upper()
        self.address = static_address(self.mac)
        self.name = f"{self.name_prefix} {self.mac.replace(':', '')[-4:]}"
        self.interval_s = interval_s
        self.clock = clock
        self.rng = random.Random(seed)
        self.current_time = current_time
        self.utc_offset_s = 0.0
        self.stats = DeviceStats()
        self.sent: list[Sent] = []
        self.stored: list[tuple[float, dict[str, float]]] = []  # (utc s, vitals), oldest first
        self.connection: Connection | None = None
        self.subscribed: set[int] = set()  # handles of subscribed characteristics
        self._device: Device | None = None
        self._adv_set: AdvertisingSet | None = None
        self._tx: asyncio.Queue[_Out] = asyncio.Queue(TX_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: asyncio.Future[None] | None = None
        self._stopping = False
        self._in_range = True

    # -- what a kind provides ----------------------------------------------------------------
    def characteristics(self) -> list[Characteristic[bytes]]:
        raise NotImplementedError

    def measure(self, utc_s: float) -> None:
        """Take one scheduled measurement at ``utc_s`` (send it live, or store it)."""
        raise NotImplementedError

    def on_subscribed(self, connection: Connection, char: Characteristic[bytes]) -> None:
        """A central subscribed to ``char`` (a cuff starts sending its memory)."""

    # -- time --------------------------------------------------------------------------------
    def now_s(self) -> float:
        return self.clock.wall()

    def local_stamp(self, utc_s: float) -> DateTime:
        return DateTime.from_datetime(datetime.fromtimestamp(int(utc_s) + self.utc_offset_s, UTC))

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        device = await self.radio.add_device(self.name, self.address)
        self._device = device
        device.add_service(Service(f"{self.service16:04X}", self.characteristics()))
        if self.current_time:
            cts: Characteristic[bytes] = Characteristic(
                f"{0x2A2B:04X}",
                Characteristic.Properties.READ | Characteristic.Properties.WRITE,
                Characteristic.READABLE | Characteristic.WRITEABLE,
                CharacteristicValue(read=self._read_time, write=self._write_time),
            )
            device.add_service(Service(f"{0x1805:04X}", [cts]))
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        device.on("characteristic_subscription", self._on_subscription)
        self._tasks = [asyncio.create_task(self._sender(), name=f"{self.name} tx"),
                       asyncio.create_task(self._schedule(), name=f"{self.name} schedule")]
        await self._advertise()

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []
        if self._device is not None:
            # bounded: over a remote radio whose socket died, HCI commands wait 10 s each
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_STEP_S):
                    if self._adv_set is not None and self._adv_set.enabled:
                        await self._adv_set.stop()
            for connection in list(self._device.connections.values()):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_STEP_S):
                        await connection.disconnect()
            self.connection = None
            await self.radio.remove_device(self._device)
            self._device = None

    async def disconnect(self) -> None:
        """Drop the link (the device then advertises again, as after a measurement)."""
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.disconnect()

    # -- advertising -------------------------------------------------------------------------
    def advertising_data(self) -> bytes:
        return bytes(AdvertisingData([
            (AdvertisingData.FLAGS, bytes((0x06,))),
            (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
             self.service16.to_bytes(2, "little")
             + (0x1805.to_bytes(2, "little") if self.current_time else b"")),
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
        ]))

    async def _advertise(self) -> None:
        device = self._device
        if device is None or self.connection is not None or self._stopping:
            return
        if self._adv_set is None:
            self._adv_set = await device.create_advertising_set(
                advertising_parameters=AdvertisingParameters(
                    advertising_event_properties=AdvertisingEventProperties(
                        is_connectable=True, is_scannable=False, is_legacy=False),
                    primary_advertising_interval_min=100.0,
                    primary_advertising_interval_max=100.0,
                ),
                advertising_data=self.advertising_data(),
                auto_restart=False,
            )
        elif not self._adv_set.enabled:
            await self._adv_set.start()

    # -- connection --------------------------------------------------------------------------
    def _on_connection(self, connection: Connection) -> None:
        self.stats.connections += 1
        self.connection = connection
        self.subscribed = set()
        connection.on(Connection.EVENT_DISCONNECTION,
                      lambda reason: self._on_disconnection(connection))

    def _on_disconnection(self, connection: Connection) -> None:
        self.stats.disconnections += 1
        if self.connection is connection:
            self.connection = None
            self.subscribed = set()
            if self._inflight is not None:
                self._inflight.cancel()
        if not self._stopping and self._device is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._advertise()))

    def _on_subscription(self, connection: Connection, characteristic: Characteristic[bytes],
                         notify: bool, indicate: bool) -> None:
        if connection is not self.connection:
            return
        if notify or indicate:
            first = characteristic.handle not in self.subscribed
            self.subscribed.add(characteristic.handle)
            if first:
                self.on_subscribed(connection, characteristic)
        else:
            self.subscribed.discard(characteristic.handle)

    def _read_time(self, connection: Connection | None) -> bytes:
        local = datetime.fromtimestamp(self.now_s() + self.utc_offset_s, UTC)
        return bytes(CurrentTime.from_datetime(local))

    def _write_time(self, connection: Connection | None, value: bytes) -> None:
        try:
            written = CurrentTime.from_bytes(value).time.to_datetime(UTC)
        except GattDecodeError:
            written = None
        if written is None:
            self.stats.bad_writes += 1
            return
        offset = written.timestamp() - self.now_s()
        self.utc_offset_s = round(offset / ZONE_STEP_S) * ZONE_STEP_S
        self.stats.clock_sets += 1

    # -- sending -----------------------------------------------------------------------------
    def is_subscribed(self, char: Characteristic[bytes]) -> bool:
        return self.connection is not None and char.handle in self.subscribed

    def send(self, char: Characteristic[bytes], value: bytes, *, indicate: bool) -> bool:
        """Queue a notification / indication to the connected subscriber; False if none."""
        if self.connection is None or char.handle not in self.subscribed:
            return False
        try:
            self._tx.put_nowait(_Out(self.connection, char, value, indicate))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        return True

    def store(self, utc_s: float, vitals: dict[str, float]) -> None:
        self.stored.append((utc_s, vitals))
        del self.stored[:-STORE_CAPACITY]

    async def _sender(self) -> None:
        while True:
            out = await self._tx.get()
            device = self._device
            if device is None or out.connection is not self.connection:
                self.stats.dropped += 1
                continue
            if not await send_or_drop(self.name, functools.partial(self._send, device, out)):
                self.stats.dropped += 1

    async def _send(self, device: Device, out: _Out) -> None:
        if out.indicate:
            # its own future: a link drop cancels an indication whose confirmation
            # will never come (bumble would wait 30 s for it)
            self._inflight = asyncio.ensure_future(
                device.indicate_subscriber(out.connection, out.char, out.value))
            await self._inflight
            self.stats.indications += 1
        else:
            await device.notify_subscriber(out.connection, out.char, out.value)
            self.stats.notifications += 1

    async def _schedule(self) -> None:
        next_s = self.now_s() + self.interval_s
        while True:
            await asyncio.sleep(max(0.0, min(0.25, next_s - self.now_s())))
            if self.now_s() >= next_s:
                self.stats.measurements += 1
                self.measure(next_s)
                next_s += self.interval_s


def jitter(rng: random.Random, centre: float, spread: float, digits: int = 0) -> float:
    return round(centre + rng.uniform(-spread, spread), digits)


__all__ = ["DeviceStats", "Radio", "Sent", "VirtualHealthDevice", "jitter"]

"""bleak client backend on the link's bumble central.

Connect (with timeout) → ATT MTU exchange → full GATT discovery into bleak's
``BleakGATTServiceCollection``; reads, writes with and without response, notifications and
indications (by writing the CCCD), disconnect, and ``disconnected_callback`` when the link drops
without the client asking (the peripheral disconnected or went out of range).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, hci
from bumble.device import Connection
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy, Client

from simulators.bleak_bumble.central import SharedCentral
from simulators.bleak_bumble.scanner import BumblePeer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# bumble characteristic property bit → bleak property name (Core Vol 3, Part G, 3.3.1.1).
_PROPERTY_NAMES: tuple[tuple[int, CharacteristicPropertyName], ...] = (
    (Characteristic.Properties.BROADCAST, "broadcast"),
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
    (Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (Characteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
)
# Payload bytes an ATT Write Command loses to its header (opcode + handle).
_WRITE_HEADER = 3


def uuid_text(value: core.UUID) -> str:
    """bleak's lower-case 128-bit text form of any bumble UUID (16/32/128-bit)."""
    return str(uuid.UUID(bytes=bytes(reversed(value.to_bytes(force_128=True)))))


def _peer_address(address_or_ble_device: BLEDevice | str) -> hci.Address:
    if isinstance(address_or_ble_device, BLEDevice) and isinstance(
        address_or_ble_device.details, BumblePeer
    ):
        return address_or_ble_device.details.address
    text = (
        address_or_ble_device.address
        if isinstance(address_or_ble_device, BLEDevice)
        else address_or_ble_device
    )
    try:
        return hci.Address(text, hci.Address.RANDOM_DEVICE_ADDRESS)
    except (ValueError, core.InvalidArgumentError) as exc:
        raise BleakError(f"not a Bluetooth address: {text!r}") from exc


class BumbleClientBackend(BaseBleakClient):
    """bleak ``BaseBleakClient`` on a :class:`BumbleLink` (use ``link.client_backend``)."""

    shared: ClassVar[SharedCentral]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._peer = _peer_address(address_or_ble_device)
        self._name = (
            address_or_ble_device.name
            if isinstance(address_or_ble_device, BLEDevice) and address_or_ble_device.name
            else self.address.replace(":", "-")
        )
        self._services_filter: set[str] | None = kwargs.get("services")
        self._connection: Connection | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    # -- identity / state --------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu_size(self) -> int:
        if self._connection is None:
            return att.ATT_DEFAULT_MTU
        return int(self._gatt.mtu)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    @property
    def _gatt(self) -> Client:
        if self._connection is None:
            raise BleakError(f"{self.address}: not connected")
        return self._connection.gatt_client

    # -- connection ----------------------------------------------------------------------------
    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self._connection is not None:
            return
        if pair:
            logger.debug("%s: pairing is not needed on the simulated link; ignored", self.address)
        timeout = float(kwargs.get("timeout", self._timeout))
        central = self.shared.device
        async with self.shared.connect_lock:
            try:
                connection = await central.connect(
                    self._peer, transport=core.PhysicalTransport.LE, timeout=timeout
                )
            except core.TimeoutError as exc:
                raise TimeoutError(
                    f"{self.address}: no connection within {timeout:g} s (not advertising?)"
                ) from exc
            except core.ConnectionError as exc:
                raise BleakError(f"{self.address}: connection failed: {exc}") from exc
        self._closing = False
        self._connection = connection
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            await self._ask(self._gatt.request_mtu(self.shared.request_mtu))
            self.services = await self._discover()
        except BaseException:
            await self.disconnect()
            raise

    def _on_disconnection(self, reason: int) -> None:
        solicited = self._closing
        self._connection = None
        self.services = None
        self._subscribers.clear()
        logger.debug("%s: disconnected, reason 0x%02X", self.address, reason)
        if not solicited and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._closing = True
        try:
            await connection.disconnect()
        except (core.BaseBumbleError, hci.HCI_Error) as exc:
            logger.debug("%s: disconnect: %s", self.address, exc)
        self._connection = None
        self.services = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        logger.debug("%s: pairing is not needed on the simulated link; ignored", self.address)

    async def unpair(self) -> None:
        raise BleakError("unpair is not supported by the bumble backend (nothing is bonded)")

    # -- discovery -----------------------------------------------------------------------------
    async def _discover(self) -> BleakGATTServiceCollection:
        gatt = self._gatt
        collection = BleakGATTServiceCollection()
        for service in await self._ask(gatt.discover_services()):
            service_uuid = uuid_text(service.uuid)
            if self._services_filter and service_uuid not in self._services_filter:
                continue
            bleak_service = BleakGATTService(service, service.handle, service_uuid)
            collection.add_service(bleak_service)
            for char in await self._ask(gatt.discover_characteristics((), service)):
                properties = [name for bit, name in _PROPERTY_NAMES if char.properties & bit]
                bleak_char = BleakGATTCharacteristic(
                    char,
                    char.handle,
                    uuid_text(char.uuid),
                    properties,
                    lambda: self.mtu_size - _WRITE_HEADER,
                    bleak_service,
                )
                collection.add_characteristic(bleak_char)
                for descriptor in await self._ask(gatt.discover_descriptors(char)):
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            descriptor, descriptor.handle, uuid_text(descriptor.type), bleak_char
                        )
                    )
        return collection

    # -- I/O -----------------------------------------------------------------------------------
    async def _ask(self, operation: Awaitable[T]) -> T:
        """Run one GATT operation, turning bumble's failures into bleak's errors.

        bumble cancels a pending ATT request when the link drops; that surfaces here as a
        ``CancelledError`` that nobody asked for, so it becomes a ``BleakError`` unless this
        task itself is being cancelled.
        """
        try:
            return await operation
        except att.ATT_Error as exc:
            raise BleakGATTProtocolError(int(exc.error_code)) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BleakError(f"{self.address}: disconnected during a GATT operation") from None
        except core.BaseBumbleError as exc:
            raise BleakError(f"{self.address}: {exc}") from exc

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(await self._ask(self._gatt.read_value(characteristic.handle)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(await self._ask(self._gatt.read_value(descriptor.handle)))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        await self._ask(
            self._gatt.write_value(characteristic.handle, bytes(data), with_response=response)
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        await self._ask(self._gatt.write_value(descriptor.handle, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        proxy = characteristic.obj
        if not isinstance(proxy, CharacteristicProxy):
            raise BleakError(f"{characteristic.uuid}: not discovered on this connection")

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        # Notifications are preferred when both are offered (bleak's rule); an indicate-only
        # characteristic gets indications, confirmed by bumble's client.
        await self._ask(self._gatt.subscribe(proxy, subscriber, prefer_notify=True))
        self._subscribers[characteristic.handle] = subscriber

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        proxy = characteristic.obj
        subscriber = self._subscribers.pop(characteristic.handle, None)
        if not isinstance(proxy, CharacteristicProxy) or self._connection is None:
            return
        with contextlib.suppress(BleakError):
            await self._ask(self._gatt.unsubscribe(proxy, subscriber, force=subscriber is None))

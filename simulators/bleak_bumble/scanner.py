"""bleak scanner backend on the link's bumble central.

Advertising reports from bumble (AD structures, RSSI, TX power) become bleak's
``BLEDevice`` + ``AdvertisementData`` exactly as bleak's own backends build them, so filters,
``find_device_by_*`` and ``discover`` in bleak's public API work unchanged.
"""

from __future__ import annotations

import logging
import struct
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.uuids import normalize_uuid_16, normalize_uuid_32
from bumble import hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement

from simulators.bleak_bumble.central import SharedCentral

logger = logging.getLogger(__name__)

# AD types (Core Supplement, Part A, 1.x), from bumble's table.
_AD = AdvertisingData.Type
_UUID16_TYPES: frozenset[int] = frozenset(
    {
        int(_AD.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS),
        int(_AD.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS),
    }
)
_UUID32_TYPES: frozenset[int] = frozenset(
    {
        int(_AD.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS),
        int(_AD.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS),
    }
)
_UUID128_TYPES: frozenset[int] = frozenset(
    {
        int(_AD.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS),
        int(_AD.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS),
    }
)
_NAME_TYPES: frozenset[int] = frozenset(
    {int(_AD.SHORTENED_LOCAL_NAME), int(_AD.COMPLETE_LOCAL_NAME)}
)


@dataclass(frozen=True)
class BumblePeer:
    """``BLEDevice.details`` for a device seen on a bumble link: its full HCI address."""

    address: hci.Address


def address_text(address: hci.Address) -> str:
    """``AA:BB:CC:DD:EE:FF``, without bumble's ``/P`` type suffix (bleak's address form)."""
    return str(address.to_string(False))


def uuid128_text(le_bytes: bytes) -> str:
    """A 128-bit UUID from its little-endian AD form, in bleak's lower-case text form."""
    return str(uuid.UUID(bytes=bytes(reversed(le_bytes))))


def advertisement_data(adv: Advertisement) -> AdvertisementData:
    """bleak ``AdvertisementData`` from one bumble advertisement (all AD structures)."""
    local_name: str | None = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    service_uuids: list[str] = []
    tx_power: int | None = None
    for ad_type, value in adv.data.ad_structures:
        kind = int(ad_type)
        if kind in _NAME_TYPES:
            local_name = value.decode("utf-8", errors="replace")
        elif kind in _UUID16_TYPES:
            service_uuids += [normalize_uuid_16(u) for (u,) in struct.iter_unpack("<H", value)]
        elif kind in _UUID32_TYPES:
            service_uuids += [normalize_uuid_32(u) for (u,) in struct.iter_unpack("<I", value)]
        elif kind in _UUID128_TYPES:
            service_uuids += [
                uuid128_text(value[i : i + 16]) for i in range(0, len(value) - 15, 16)
            ]
        elif kind == int(_AD.MANUFACTURER_SPECIFIC_DATA) and len(value) >= 2:
            manufacturer[int.from_bytes(value[:2], "little")] = bytes(value[2:])
        elif kind == int(_AD.SERVICE_DATA_16_BIT_UUID) and len(value) >= 2:
            service_data[normalize_uuid_16(int.from_bytes(value[:2], "little"))] = bytes(value[2:])
        elif kind == int(_AD.SERVICE_DATA_128_BIT_UUID) and len(value) >= 16:
            service_data[uuid128_text(value[:16])] = bytes(value[16:])
        elif kind == int(_AD.TX_POWER_LEVEL) and value:
            tx_power = int.from_bytes(value[:1], "little", signed=True)
    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer,
        service_data=service_data,
        # The link delivers each PDU as advertisement and scan response; bumble merges both.
        service_uuids=list(dict.fromkeys(service_uuids)),
        tx_power=tx_power,
        rssi=int(adv.rssi),
        platform_data=(adv,),
    )


class BumbleScannerBackend(BaseBleakScanner):
    """bleak ``BaseBleakScanner`` on a :class:`BumbleLink` (use ``link.scanner_backend``)."""

    shared: ClassVar[SharedCentral]

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._scanning_mode = scanning_mode
        self._running = False

    def _on_advertisement(self, adv: Advertisement) -> None:
        data = advertisement_data(adv)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = address_text(adv.address)
        device = self.create_or_update_device(
            address, address, data.local_name, BumblePeer(adv.address), data
        )
        self.call_detection_callbacks(device, data)

    async def start(self) -> None:
        if self._running:
            return
        self.seen_devices = {}
        self.shared.on_advertisement(self._on_advertisement)
        await self.shared.acquire_scan()
        self._running = True

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.shared.remove_advertisement_listener(self._on_advertisement)
        await self.shared.release_scan()

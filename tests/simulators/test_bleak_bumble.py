"""The bleak backend on bumble, driven only through bleak's public API."""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError
from bleak_retry_connector import establish_connection

from e86.commands import GetRequest
from e86.constants import (
    COMMAND_CHAR_UUID,
    COMPANY_ID,
    DATA_CHAR_UUID,
    SERVICE_UUID,
    GetKey,
)
from simulators.bleak_bumble import BumbleLink
from simulators.watch import VirtualE86

MAC_A = "D0:61:AE:D4:58:94"
MAC_B = "D0:61:AE:D4:AB:5C"
CCCD = "00002902-0000-1000-8000-00805f9b34fb"


async def test_scan_finds_two_watches_by_name_and_service() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC_A), VirtualE86(link, MAC_B):
        seen: dict[str, str | None] = {}
        done = asyncio.Event()

        def on_adv(device: object, adv: object) -> None:
            seen[device.address] = adv.local_name  # type: ignore[attr-defined]
            if len(seen) == 2:
                done.set()

        async with BleakScanner(
            on_adv, service_uuids=[SERVICE_UUID], backend=link.scanner_backend
        ) as scanner:
            await asyncio.wait_for(done.wait(), 5)
            found = scanner.discovered_devices_and_advertisement_data
        assert seen == {MAC_A: "E86 5894", MAC_B: "E86 AB5C"}
        _, adv = found[MAC_A]
        assert adv.service_uuids == [SERVICE_UUID]
        assert adv.manufacturer_data[COMPANY_ID] == bytes.fromhex("d061aed45894")
        assert isinstance(adv.rssi, int) and adv.rssi < 0

        by_address = await BleakScanner.find_device_by_address(
            MAC_B, timeout=5, backend=link.scanner_backend
        )
        assert by_address is not None and by_address.name == "E86 AB5C"
        by_name = await BleakScanner.find_device_by_name(
            "E86 5894", timeout=5, backend=link.scanner_backend
        )
        assert by_name is not None and by_name.address == MAC_A
        # A filter on another service keeps both watches out.
        other = await BleakScanner.discover(
            0.3,
            service_uuids=["0000180d-0000-1000-8000-00805f9b34fb"],
            backend=link.scanner_backend,
        )
        assert other == []


async def test_connect_services_mtu_write_read_notify() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC_A):
        device = await BleakScanner.find_device_by_name(
            "E86 5894", timeout=5, backend=link.scanner_backend
        )
        assert device is not None
        client = await establish_connection(
            BleakClient, device, "E86 5894", backend=link.client_backend
        )
        try:
            assert client.is_connected
            assert client.mtu_size == 247
            service = client.services.get_service(SERVICE_UUID)
            assert service is not None
            command = service.get_characteristic(COMMAND_CHAR_UUID)
            data = service.get_characteristic(DATA_CHAR_UUID)
            assert command is not None and data is not None
            assert {"write", "write-without-response", "indicate"} <= set(command.properties)
            assert data.properties == ["indicate"]
            assert [d.uuid for d in command.descriptors] == [CCCD]
            assert command.max_write_without_response_size == 244
            # GAP Device Name (0x2A00) is served by the watch's bumble stack.
            assert (
                await client.read_gatt_char("00002a00-0000-1000-8000-00805f9b34fb") == b"E86 5894"
            )
            got: list[bytearray] = []
            await client.start_notify(command, lambda _c, v: got.append(v))
            # Device info request without response: the reply arrives as an indication.
            await client.write_gatt_char(
                command, bytes(GetRequest(GetKey.DEVICE_INFO)), response=False
            )
            async with asyncio.timeout(5):
                while not got:
                    await asyncio.sleep(0.01)
            assert got[0][:2] == b"\x02\x00"
            await client.stop_notify(command)
            with pytest.raises(BleakError):
                await client.read_gatt_char("0000ffff-0000-1000-8000-00805f9b34fb")
        finally:
            await client.disconnect()
        assert not client.is_connected


async def test_connect_timeout_when_out_of_range_then_reconnect() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC_A) as watch:
        device = await BleakScanner.find_device_by_address(
            MAC_A, timeout=5, backend=link.scanner_backend
        )
        assert device is not None
        await watch.set_in_range(False)
        client = BleakClient(device, timeout=0.3, backend=link.client_backend)
        with pytest.raises(TimeoutError):
            await client.connect()
        assert not client.is_connected
        await watch.set_in_range(True)
        await client.connect()
        assert client.is_connected and watch.connected
        await client.disconnect()


async def test_link_drop_calls_disconnected_callback_and_reconnect_works() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC_A) as watch:
        device = await BleakScanner.find_device_by_address(
            MAC_A, timeout=5, backend=link.scanner_backend
        )
        assert device is not None
        dropped = asyncio.Event()
        client = await establish_connection(
            BleakClient,
            device,
            "E86 5894",
            disconnected_callback=lambda _c: dropped.set(),
            backend=link.client_backend,
        )
        await watch.set_in_range(False)
        await asyncio.wait_for(dropped.wait(), 5)
        assert not client.is_connected
        with pytest.raises(BleakError):
            await client.write_gatt_char(COMMAND_CHAR_UUID, b"\x00")
        await watch.set_in_range(True)
        dropped.clear()
        await client.connect()
        assert client.is_connected
        await client.disconnect()
        # A disconnect the client asked for is not reported as a drop.
        await asyncio.sleep(0.05)
        assert not dropped.is_set()

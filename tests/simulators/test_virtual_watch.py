"""VirtualE86 end to end: bleak public API → bumble backend → bumble link → virtual watch."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from bleak import BleakClient, BleakScanner
from bleak_retry_connector import establish_connection

from e86 import commands
from e86.constants import (
    DATA_CHAR_UUID,
    WATCH_EPOCH_UNIX,
    BlockStatus,
    EcgMode,
    GetKey,
    Group,
    HistoryKey,
    HistoryKind,
    MeasurementType,
    RealtimeKey,
)
from e86.frame import Frame, crc16_ccitt_false
from e86.realtime import EcgSamples, RealtimeValues, decode_realtime
from simulators.bleak_bumble import BumbleLink
from simulators.watch import VirtualE86
from simulators.watch.central import FrameCentral

MAC = "D0:61:AE:D4:58:94"
ALL_RECORD = 20


def fixed_vitals(ts_ms: int) -> dict[str, float]:
    return {
        "heart_rate": 64 + (ts_ms // 5000) % 10,
        "spo2": 96,
        "systolic_bp": 121,
        "diastolic_bp": 79,
        "temperature": 36.8,
        "respiratory_rate": 16,
    }


@asynccontextmanager
async def connected(
    link: BumbleLink, watch: VirtualE86, **kwargs: object
) -> AsyncIterator[tuple[BleakClient, FrameCentral]]:
    device = await BleakScanner.find_device_by_name(
        watch.name, timeout=5, backend=link.scanner_backend
    )
    assert device is not None
    client = await establish_connection(
        BleakClient,
        device,
        watch.name,
        backend=link.client_backend,
        **kwargs,  # type: ignore[arg-type]
    )
    central = FrameCentral(client)
    await central.start()
    try:
        yield client, central
    finally:
        await client.disconnect()


async def sync_history(
    central: FrameCentral, kind: HistoryKind, *, refuse_first: int = 0
) -> list[bytes]:
    """Fetch history of ``kind``; answers 04 to the first ``refuse_first`` blocks whatever happens,
    and 04 to any block whose CRC does not match."""
    header = await central.request(Frame(Group.HISTORY, kind))
    if len(header.payload) <= 2:
        return []
    count, blocks, total = struct.unpack("<HII", header.payload[:10])
    records: list[bytes] = []
    refusals = 0
    while len(records) < count:
        block = bytearray()
        while True:
            uuid, frame = await central.next_frame()
            assert uuid == DATA_CHAR_UUID
            if frame.key == HistoryKey.BLOCK_END:
                break
            block += frame.payload
        _packets, nbytes, crc = struct.unpack("<HHH", frame.payload[:6])
        if (
            crc16_ccitt_false(bytes(block)) != crc
            or len(block) != nbytes
            or refusals < refuse_first
        ):
            refusals += 1
            await central.send(
                Frame(Group.HISTORY, HistoryKey.BLOCK_END, bytes((BlockStatus.RESEND,)))
            )
            continue
        records += [bytes(block[i : i + ALL_RECORD]) for i in range(0, len(block), ALL_RECORD)]
        await central.send(
            Frame(Group.HISTORY, HistoryKey.BLOCK_END, bytes((BlockStatus.ACCEPTED,)))
        )
    assert len(records) == count and sum(map(len, records)) == total and blocks >= 1
    return records


async def test_commands_are_answered_by_indication() -> None:
    async with (
        BumbleLink() as link,
        VirtualE86(link, MAC, battery=64, speed=50, vitals=fixed_vitals) as watch,
        connected(link, watch) as (_, central),
    ):
        info = commands.DeviceInfo.from_frame(
            await central.request(commands.GetRequest(GetKey.DEVICE_INFO).to_frame())
        )
        assert info.battery == 64
        mac = await central.request(commands.GetRequest(GetKey.MAC).to_frame())
        assert commands.MacAddress.from_frame(mac).mac == MAC
        moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
        reply = await central.request(commands.SetClock.from_datetime(moment).to_frame())
        assert reply.payload == b"\x00"
        reply = await central.request(commands.SetMonitoring.heart_rate(True, 5).to_frame())
        assert reply.payload == b"\x00"
        assert watch.monitoring
        # One-shot SpO2 measurement: OK reply, then the value as a real-time upload.
        await central.request(commands.MeasureOnce(True, MeasurementType.SPO2).to_frame())
        value = decode_realtime(await central.expect(Group.REALTIME, RealtimeKey.SPO2))
        assert isinstance(value, RealtimeValues) and value.spo2 == 96
        # Garbage is ignored and counted; the watch keeps answering.
        await central.client.write_gatt_char(
            "be940001-7333-be46-b7ae-689e71722bd5",
            b"\x02\x00\x08\x00\x47\x43\x00\x00",
            response=True,
        )
        info = commands.DeviceInfo.from_frame(
            await central.request(commands.GetRequest(GetKey.DEVICE_INFO).to_frame())
        )
        assert info.battery == 64
        assert watch.stats.bad_command_bytes > 0


async def test_frames_longer_than_the_mtu_are_reassembled() -> None:
    # MTU 23: every 156-byte ECG frame travels in 8 indications of at most 20 bytes.
    async with (
        BumbleLink(request_mtu=23) as link,
        VirtualE86(link, MAC, speed=4) as watch,
        connected(link, watch) as (client, central),
    ):
        assert client.mtu_size == 23
        for step in commands.ecg_start_sequence():
            await central.request(step)
        samples: list[int] = []
        while len(samples) < 250:
            frame = await central.expect(Group.REALTIME, RealtimeKey.ECG)
            assert len(bytes(frame)) > 20
            ecg = decode_realtime(frame)
            assert isinstance(ecg, EcgSamples)
            samples += ecg.samples
        await central.request(commands.EcgControl(EcgMode.STOP).to_frame())
        assert central.longest_chunk == 20
        assert len(samples) % watch.ecg_frame_samples == 0
        assert max(samples) > 500 > min(samples)  # R waves stand out of the baseline
        assert central.crc_errors == 0


async def test_realtime_upload_on_schedule() -> None:
    async with (
        BumbleLink() as link,
        VirtualE86(link, MAC, speed=100, vitals=fixed_vitals) as watch,
        connected(link, watch) as (_, central),
    ):
        await central.request(commands.RealtimeUpload(True).to_frame())
        bp = decode_realtime(await central.expect(Group.REALTIME, RealtimeKey.BLOOD_PRESSURE))
        rr = decode_realtime(await central.expect(Group.REALTIME, RealtimeKey.RESPIRATORY_RATE))
        assert isinstance(bp, RealtimeValues) and isinstance(rr, RealtimeValues)
        assert (bp.systolic_bp, bp.diastolic_bp, bp.spo2, bp.temperature) == (121, 79, 96, 36.8)
        assert rr.respiratory_rate == 16
        assert watch.stats.realtime_frames >= 2


async def test_history_sync_with_one_resend_after_crc_mismatch_then_delete() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC, speed=100, vitals=fixed_vitals) as watch:
        for _ in range(45):  # more than one block
            watch.measure_now()
        async with connected(link, watch) as (_, central):
            watch.corrupt_next(1, group=Group.HISTORY, key=HistoryKey.ALL_RECORDS)
            records = await sync_history(central, HistoryKind.ALL)
            assert len(records) >= 45
            assert watch.stats.corrupted == 1
            assert watch.stats.history_resends == 1
            assert central.crc_errors == 1
            times = [struct.unpack_from("<I", r)[0] for r in records]
            assert times == sorted(times)  # oldest first, each record once
            assert all(64 <= r[6] <= 73 and r[7:9] == bytes((121, 79)) for r in records)
            await central.request(Frame(Group.HISTORY, HistoryKey.DELETE_ALL))
            # Exactly what was synced is deleted; readings taken since are kept.
            assert watch.stats.history_deleted == len(records)


async def test_link_drop_reconnect_and_history_recorded_while_out_of_range() -> None:
    async with BumbleLink() as link, VirtualE86(link, MAC, speed=200, vitals=fixed_vitals) as watch:
        dropped = asyncio.Event()
        async with connected(link, watch, disconnected_callback=lambda _c: dropped.set()) as (
            _,
            central,
        ):
            moment = datetime.fromtimestamp(watch.now_s(), UTC)
            await central.request(commands.SetClock.from_datetime(moment).to_frame())
            await sync_history(central, HistoryKind.ALL)
            await central.request(Frame(Group.HISTORY, HistoryKey.DELETE_ALL))
            await watch.set_in_range(False)
            await asyncio.wait_for(dropped.wait(), 5)
            left_at = watch.now_s()
        readings_before = watch.stats.readings
        while watch.stats.readings < readings_before + 5:  # the watch measures on, alone
            await asyncio.sleep(0.02)
        await watch.set_in_range(True)
        async with connected(link, watch) as (_, central):
            records = await sync_history(central, HistoryKind.ALL)
        times = [struct.unpack_from("<I", r)[0] + WATCH_EPOCH_UNIX for r in records]
        assert len([t for t in times if t >= left_at - 1]) >= 5
        assert watch.stats.connections == 2 and watch.stats.disconnections >= 1

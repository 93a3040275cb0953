"""A minimal frame-level E86 central over bleak's public API (for tests and benchmarks).

Not the gateway: it subscribes to both vendor characteristics, reassembles frames per
characteristic and hands them out through a bounded queue (the notification callback only
enqueues). The gateway's own session manager lives in gateway/ble.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from e86.constants import COMMAND_CHAR_UUID, DATA_CHAR_UUID
from e86.frame import Frame, FrameAssembler

logger = logging.getLogger(__name__)

#: Frames buffered before the oldest is dropped (and counted).
QUEUE_FRAMES = 4096


class FrameCentral:
    """Frames to and from one connected E86 over a connected ``BleakClient``."""

    def __init__(self, client: BleakClient, *, queue_frames: int = QUEUE_FRAMES) -> None:
        self.client = client
        self.assemblers = {COMMAND_CHAR_UUID: FrameAssembler(), DATA_CHAR_UUID: FrameAssembler()}
        self.frames: asyncio.Queue[tuple[str, Frame]] = asyncio.Queue(queue_frames)
        self.dropped = 0
        #: longest ATT value seen per characteristic (to show frames were split).
        self.longest_chunk = 0
        self.chunks = 0

    async def start(self) -> None:
        for uuid in (COMMAND_CHAR_UUID, DATA_CHAR_UUID):
            await self.client.start_notify(uuid, self._on_value)

    def _on_value(self, char: BleakGATTCharacteristic, data: bytearray) -> None:
        self.chunks += 1
        self.longest_chunk = max(self.longest_chunk, len(data))
        uuid = char.uuid
        for frame in self.assemblers[uuid].feed(data):
            if self.frames.full():
                self.frames.get_nowait()
                self.dropped += 1
            self.frames.put_nowait((uuid, frame))

    @property
    def crc_errors(self) -> int:
        return sum(a.stats.crc_errors for a in self.assemblers.values())

    async def send(self, frame: Frame) -> None:
        await self.client.write_gatt_char(COMMAND_CHAR_UUID, bytes(frame), response=True)

    async def next_frame(self, timeout: float = 5.0) -> tuple[str, Frame]:
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def expect(self, group: int, key: int, timeout: float = 5.0) -> Frame:
        """The next frame ``group key``; frames before it are skipped (and returned nowhere)."""
        async with asyncio.timeout(timeout):
            while True:
                _, frame = await self.frames.get()
                if frame.group == group and frame.key == key:
                    return frame

    async def request(self, frame: Frame, timeout: float = 5.0) -> Frame:
        """Send a command and wait for the reply with the same group and key."""
        await self.send(frame)
        return await self.expect(frame.group, frame.key, timeout)

    async def __aiter__(self) -> AsyncIterator[tuple[str, Frame]]:
        while True:
            yield await self.frames.get()

"""The E86 frame, its CRC, reassembly of frames split over indications, and MTU splitting.

Wire layout (both directions)::

    group u8 | key u8 | length u16 LE (= payload + 6) | payload | CRC-16/CCITT-FALSE u16 LE

The CRC covers every byte before it.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Self

from e86.constants import (
    CRC_INIT,
    CRC_SIZE,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    Group,
)
from e86.errors import CrcError, FrameError, LengthError, TruncatedFrame

log = logging.getLogger(__name__)


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor.

    ``binascii.crc_hqx`` is exactly this polynomial without reflection; given init 0xFFFF it
    is CCITT-FALSE (check value: ``b"123456789"`` → 0x29B1).
    """
    return binascii.crc_hqx(data, CRC_INIT)


def _u8(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise FrameError(f"{name} must be an integer 0..255, got {value!r}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One E86 frame: ``bytes(frame)`` encodes, ``Frame.from_bytes`` decodes and checks it."""

    group: int
    key: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        _u8("group", self.group)
        _u8("key", self.key)
        if not isinstance(self.payload, bytes):
            if not isinstance(self.payload, bytearray | memoryview):
                raise FrameError(f"payload must be bytes, got {type(self.payload).__name__}")
            object.__setattr__(self, "payload", bytes(self.payload))
        if len(self.payload) > MAX_PAYLOAD:
            raise LengthError(
                f"payload of {len(self.payload)} bytes exceeds the maximum of {MAX_PAYLOAD}"
            )

    def __bytes__(self) -> bytes:
        head = bytes((self.group, self.key)) + (len(self.payload) + FRAME_OVERHEAD).to_bytes(
            2, "little"
        )
        body = head + self.payload
        return body + crc16_ccitt_false(body).to_bytes(2, "little")

    def __repr__(self) -> str:
        return f"Frame({self.group:02x} {self.key:02x} [{self.payload.hex(' ')}])"

    def __len__(self) -> int:
        """Encoded size in bytes (the length field)."""
        return len(self.payload) + FRAME_OVERHEAD

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode exactly one frame; raises TruncatedFrame, LengthError or CrcError."""
        data = bytes(data)
        if len(data) < FRAME_OVERHEAD:
            raise TruncatedFrame(
                f"frame of {len(data)} bytes is shorter than the {FRAME_OVERHEAD}-byte minimum"
            )
        length = int.from_bytes(data[2:4], "little")
        if length < FRAME_OVERHEAD or length > MAX_FRAME:
            raise LengthError(f"length field {length} is outside {FRAME_OVERHEAD}..{MAX_FRAME}")
        if len(data) < length:
            raise TruncatedFrame(
                f"frame {data[0]:02x} {data[1]:02x} announces {length} bytes, only {len(data)} present"
            )
        if len(data) > length:
            raise LengthError(
                f"frame {data[0]:02x} {data[1]:02x} announces {length} bytes "
                f"but {len(data)} were given ({len(data) - length} trailing)"
            )
        expected = crc16_ccitt_false(data[: length - CRC_SIZE])
        actual = int.from_bytes(data[length - CRC_SIZE : length], "little")
        if expected != actual:
            raise CrcError(expected, actual, data[0], data[1])
        return cls(data[0], data[1], data[HEADER_SIZE : length - CRC_SIZE])


@dataclass(slots=True)
class AssemblerStats:
    """Counters of a FrameAssembler; every dropped byte is counted somewhere."""

    #: good frames delivered.
    frames: int = 0
    #: complete frames whose CRC did not match (dropped, never decoded).
    crc_errors: int = 0
    #: length fields below 6 or above the maximum.
    length_errors: int = 0
    #: incomplete frames abandoned by ``flush()``.
    truncated: int = 0
    #: times the assembler lost sync and scanned forward for the next frame start.
    resyncs: int = 0
    #: bytes discarded while resynchronising (including the bad frames' bytes).
    bytes_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FrameAssembler:
    """Reassembles frames from indications, whatever the chunking.

    ``feed(chunk)`` returns the frames completed by that chunk (several frames in one chunk and
    one frame over several chunks both work). A frame with a bad CRC or a garbage length is
    dropped and counted, and the assembler resynchronises byte by byte, so the good frames
    after it are kept. While resynchronising, only a byte in ``resync_groups`` (default: the
    known groups 0x01–0x07) can start a frame, which keeps garbage from posing as a long
    frame; in sync, frames of any group are delivered. A corrupted length can make the assembler wait for bytes that will
    never come: call ``flush()`` on disconnect or after an idle gap to recover what is
    buffered, and ``reset()`` to start clean (e.g. on reconnect).
    """

    def __init__(
        self,
        *,
        max_frame: int = MAX_FRAME,
        resync_groups: Collection[int] | None = frozenset(Group),
    ) -> None:
        if not FRAME_OVERHEAD <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be within {FRAME_OVERHEAD}..{MAX_FRAME}")
        self._max_frame = max_frame
        self._resync_groups = None if resync_groups is None else frozenset(resync_groups)
        self._buf = bytearray()
        self._in_sync = True
        self.stats = AssemblerStats()

    @property
    def pending(self) -> int:
        """Bytes buffered, waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget buffered bytes (counted as dropped); keeps the statistics."""
        self.stats.bytes_dropped += len(self._buf)
        self._buf.clear()
        self._in_sync = True

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        self._buf += chunk
        return self._drain(final=False)

    def flush(self) -> list[Frame]:
        """End of stream: give up on any incomplete frame and recover the frames behind it."""
        return self._drain(final=True)

    def _lose_sync(self) -> None:
        if self._in_sync:
            self.stats.resyncs += 1
            self._in_sync = False

    def _verified_frame_after(self, buf: bytearray, start: int) -> int:
        """Position of the first complete CRC-valid frame after ``start``, else -1."""
        groups = self._resync_groups
        for q in range(start + 1, len(buf) - FRAME_OVERHEAD + 1):
            if groups is not None and buf[q] not in groups:
                continue
            length = buf[q + 2] | (buf[q + 3] << 8)
            if length < FRAME_OVERHEAD or length > self._max_frame or q + length > len(buf):
                continue
            end = q + length
            if crc16_ccitt_false(bytes(buf[q : end - CRC_SIZE])) == buf[end - 2] | (
                buf[end - 1] << 8
            ):
                return q
        return -1

    def _drain(self, *, final: bool) -> list[Frame]:
        buf = self._buf
        stats = self.stats
        out: list[Frame] = []
        pos = 0
        verified_at = -1
        while True:
            avail = len(buf) - pos
            if avail < HEADER_SIZE:
                if final and avail:
                    if self._in_sync:
                        stats.truncated += 1
                    stats.bytes_dropped += avail
                    pos += avail
                    self._in_sync = True
                break
            if (
                not self._in_sync
                and self._resync_groups is not None
                and buf[pos] not in self._resync_groups
            ):
                pos += 1
                stats.bytes_dropped += 1
                continue
            length = buf[pos + 2] | (buf[pos + 3] << 8)
            if length < FRAME_OVERHEAD or length > self._max_frame:
                if self._in_sync:
                    stats.length_errors += 1
                    log.debug("length field %d at a frame start: resync", length)
                self._lose_sync()
                pos += 1
                stats.bytes_dropped += 1
                continue
            if avail < length:
                if not final:
                    if self._in_sync:
                        break
                    # Out of sync this start is only a guess: if a complete, CRC-checked frame
                    # starts later in the buffer, trust that one instead of waiting.
                    if verified_at <= pos:
                        verified_at = self._verified_frame_after(buf, pos)
                    if verified_at <= pos:
                        break
                    pos += 1
                    stats.bytes_dropped += 1
                    continue
                if self._in_sync:
                    stats.truncated += 1
                self._lose_sync()
                pos += 1
                stats.bytes_dropped += 1
                continue
            end = pos + length
            crc = buf[end - 2] | (buf[end - 1] << 8)
            body = bytes(buf[pos : end - CRC_SIZE])
            if crc16_ccitt_false(body) != crc:
                if self._in_sync:
                    stats.crc_errors += 1
                    log.debug("CRC error in frame %02x %02x (%d bytes)", body[0], body[1], length)
                self._lose_sync()
                pos += 1
                stats.bytes_dropped += 1
                continue
            out.append(Frame(body[0], body[1], body[HEADER_SIZE:]))
            stats.frames += 1
            self._in_sync = True
            pos = end
        del buf[:pos]
        if final:
            self._in_sync = True
        return out


def split_for_mtu(frame_bytes: bytes, att_payload: int) -> list[bytes]:
    """Split an encoded frame into indications of at most ``att_payload`` (= MTU − 3) bytes."""
    if att_payload < 1:
        raise ValueError(f"att_payload must be at least 1, got {att_payload}")
    return [frame_bytes[i : i + att_payload] for i in range(0, len(frame_bytes), att_payload)]

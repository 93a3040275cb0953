"""An asyncio MLLP client: one message at a time over one TCP connection, each answered by its ACK.

MLLP (HL7 v2 Minimal Lower Layer Protocol, release 2) frames a message as
``0x0B <message> 0x1C 0x0D``. The client connects on first use and keeps the connection;
receivers that close it after every ACK (hl7apy's MLLPServer does) are reconnected on the
next send. A failure on a reused connection before any byte of the ACK arrived (the
receiver had closed it while idle) is retried once at once on a fresh connection; every other
failure closes the connection, so a late ACK can never be taken for the next message's, and is
reported as ``unavailable`` for the outbox to retry with backoff.

The log says at INFO where it connected and, once per outage, why it cannot; never a message's
content (patient data stays out of INFO logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from ingest.hl7.ack import ACCEPTED, ERROR, MAX_ACK_BYTES, REJECTED, parse_ack
from ingest.hl7.oru import Hl7Message
from ingest.hl7.transport import Delivery, Outcome

log = logging.getLogger(__name__)

START: Final = b"\x0b"
END: Final = b"\x1c\x0d"
#: the connection attempt is given at most this long (s) when no shorter ack timeout is set.
CONNECT_TIMEOUT_S: Final = 5.0


def frame(payload: bytes) -> bytes:
    """``payload`` in an MLLP block; it must not contain the block characters (the builder's
    text never does: control characters are replaced when a message is built)."""
    if b"\x0b" in payload or b"\x1c" in payload:
        raise ValueError("an HL7 message must not contain MLLP block characters (0x0B, 0x1C)")
    return START + payload + END


def unframe(block: bytes) -> bytes:
    """The content of one MLLP block (whatever preceded its start byte is ignored)."""
    start = block.find(START)
    body = block[start + 1 :] if start >= 0 else block
    return body[: -len(END)] if body.endswith(END) else body


class _Closed(Exception):
    """The connection ended before an ACK began (EOF or reset)."""


class MllpClient:
    """:class:`ingest.hl7.transport.Transport` over MLLP to ``host:port``."""

    def __init__(self, host: str, port: int, *, ack_timeout_s: float = 10.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if ack_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        self.host, self.port = host, port
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = min(connect_timeout_s, ack_timeout_s)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._down: str | None = None  # why the receiver is unavailable (logged once)
        self.connects = 0
        self.sent = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(self, message: Hl7Message) -> Delivery:
        block = frame(message.to_bytes())
        async with self._lock:
            reused = self._writer is not None
            try:
                raw = await self._exchange(block)
            except _Closed as exc:
                await self._drop()
                if not reused:
                    return self._unavailable(f"connection closed before the ACK ({exc})")
                try:  # the receiver had closed the idle connection: once more, fresh
                    raw = await self._exchange(block)
                except (_Closed, OSError, TimeoutError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError) as exc2:
                    await self._drop()
                    return self._unavailable(_describe(exc2))
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                await self._drop()
                return self._unavailable(_describe(exc))
            self.sent += 1
            ack = parse_ack(unframe(raw).decode("utf-8", "replace"))
            if ack is None:
                await self._drop()
                return self._unavailable("the answer is not an HL7 ACK")
            if ack.control_id != message.control_id:
                await self._drop()
                return self._unavailable(f"ACK names message {ack.control_id[:40]!r}, "
                                         f"not {message.control_id!r}")
            self._up()
            if ack.code in ACCEPTED:
                return Delivery(Outcome.ACCEPTED, ack.code, ack.text)
            if ack.code in REJECTED:
                return Delivery(Outcome.REJECTED, ack.code, ack.text)
            assert ack.code in ERROR
            return Delivery(Outcome.APP_ERROR, ack.code, ack.text)

    async def _exchange(self, block: bytes) -> bytes:
        reader, writer = await self._connection()
        if reader.at_eof():
            raise _Closed("closed by the receiver")
        try:
            writer.write(block)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Closed(type(exc).__name__) from exc
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                first = await reader.read(1)
                if not first:
                    raise _Closed("EOF")
                rest = await reader.readuntil(END)
        except ConnectionResetError as exc:
            raise _Closed(type(exc).__name__) from exc
        except TimeoutError:
            raise TimeoutError(f"no ACK within {self.ack_timeout_s:g} s") from None
        return first + rest

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None:
            return self._reader, self._writer
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               limit=MAX_ACK_BYTES)
        except TimeoutError:
            raise TimeoutError(f"connect timed out after {self.connect_timeout_s:g} s") from None
        self._reader, self._writer = reader, writer
        self.connects += 1
        if self.connects == 1 or self._down is not None:
            log.info("HL7 MLLP: connected to %s", self.address)
        return reader, writer

    def _unavailable(self, why: str) -> Delivery:
        if self._down is None:
            log.warning("HL7 MLLP: receiver %s unavailable (%s); retrying with backoff",
                        self.address, why)
        self._down = why
        return Delivery(Outcome.UNAVAILABLE, None, why[:500])

    def _up(self) -> None:
        if self._down is not None:
            log.info("HL7 MLLP: receiver %s answers again", self.address)
            self._down = None

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.LimitOverrunError):
        return f"answer longer than {MAX_ACK_BYTES} bytes"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed in the middle of the ACK"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class MllpPool:
    """:class:`ingest.hl7.transport.Transport` over up to ``size`` MLLP connections to one
    receiver: each send takes an idle connection, so ``size`` messages (of different patients:
    the outbox keeps one per patient in flight) are exchanged at once."""

    def __init__(self, host: str, port: int, *, size: int, ack_timeout_s: float = 10.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.host, self.port = host, port
        self._clients = [MllpClient(host, port, ack_timeout_s=ack_timeout_s,
                                    connect_timeout_s=connect_timeout_s) for _ in range(size)]
        self._idle: asyncio.Queue[MllpClient] = asyncio.Queue()
        for c in self._clients:
            self._idle.put_nowait(c)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connects(self) -> int:
        return sum(c.connects for c in self._clients)

    async def send(self, message: Hl7Message) -> Delivery:
        client = await self._idle.get()
        try:
            return await client.send(message)
        finally:
            self._idle.put_nowait(client)

    async def close(self) -> None:
        for c in self._clients:
            await c.close()

"""Sharing one simulated radio between processes: HCI over TCP into the gateway's link.

bumble 0.0.236 has no link relay between processes (``LocalLink`` lives in one process); what
it does offer is HCI transports (``tcp-client``, ``tcp-server``, H4 framing) and controllers
that join a ``LocalLink``. So:

* :class:`LinkServer` (in the process that owns the :class:`BumbleLink`, e.g. ``vitalgate
  gateway run --simulate 0 --simulate-link 127.0.0.1:7010``) listens on TCP; every accepted
  connection gets its own bumble ``Controller`` on the link, wired to that socket as its HCI
  host. Advertising, connections, ATT and GATT between that controller and the others are the
  link's in-process delivery, as for local devices.
* :class:`RemoteRadio` (in another process) opens ``tcp-client`` transports to that port and
  runs a real bumble ``Host`` + ``Device`` on each: a :class:`VirtualHealthDevice` (or anything
  built on a bumble Device) runs there exactly as on a local link.

One TCP connection = one controller = one device. When the socket closes, the controller leaves
the link (its advertising stops; a connection the gateway held to it is not torn down by the
link: the gateway's session sees silence — a limit of bumble's LocalLink).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Final

from bumble import hci
from bumble.controller import Controller
from bumble.device import Device
from bumble.host import Host
from bumble.transport import open_transport
from bumble.transport.common import PacketParser, StreamPacketSink, Transport

from simulators.bleak_bumble import BumbleLink
from simulators.bleak_bumble.link import _LinkController  # the link's controller (cancel fix)

logger = logging.getLogger(__name__)

#: ``HOST:PORT`` of a link server (IPv4 / name; port 1..65535).
ENDPOINT_RE: Final = re.compile(r"(?P<host>[A-Za-z0-9.\-]{1,253}):(?P<port>[0-9]{1,5})")
#: at most this many remote controllers on one link (each is a device of another process).
MAX_REMOTE: Final = 64
#: the longest (real) wait for a device's stack to power off when it leaves the link.
STOP_TIMEOUT_S: Final = 2.0


def parse_endpoint(text: str) -> tuple[str, int]:
    m = ENDPOINT_RE.fullmatch(text.strip())
    if m is None or not 0 <= int(m["port"]) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return m["host"], int(m["port"])


class _ControllerProtocol(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.controller: Controller | None = None
        self.parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        if len(self.server.controllers) >= MAX_REMOTE:
            self.server.refused += 1
            logger.warning("link server: refusing a remote device: %d already", MAX_REMOTE)
            transport.close()
            return
        self.server.accepted += 1
        controller = _LinkController(f"remote-{self.server.accepted}", link=self.server.link.radio)
        controller.host = StreamPacketSink(transport)
        self.controller = controller
        self.parser = PacketParser(controller)
        self.server.controllers.add(controller)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            try:
                self.parser.feed_data(data)
            except Exception as exc:  # garbage on the socket: counted, the link goes on
                self.server.bad_packets += 1
                logger.debug("link server: bad HCI bytes: %r", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        controller = self.controller
        if controller is None:
            return
        self.server.controllers.discard(controller)
        controller.host = None
        if controller in self.server.link.radio.controllers:
            self.server.link.radio.remove_controller(controller)
        self.controller = None


@dataclass
class LinkServer:
    """TCP endpoint of ``link``: one remote HCI host per connection (``async with``)."""

    link: BumbleLink
    host: str = "127.0.0.1"
    port: int = 0
    accepted: int = 0
    refused: int = 0
    bad_packets: int = 0
    controllers: set[Controller] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> LinkServer:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ControllerProtocol(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("simulated radio shared on %s:%d (HCI over TCP)", self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
        for controller in list(self.controllers):
            if controller in self.link.radio.controllers:
                self.link.radio.remove_controller(controller)
        self.controllers.clear()


class RemoteRadio:
    """A :class:`simulators.devices.base.Radio` whose devices' controllers live on another
    process's link (a :class:`LinkServer` at ``endpoint``)."""

    def __init__(self, endpoint: str) -> None:
        self.host, self.port = parse_endpoint(endpoint)
        self._transports: dict[int, Transport] = {}

    async def add_device(self, name: str, address: str) -> Device:
        transport = await open_transport(f"tcp-client:{self.host}:{self.port}")
        host = Host(transport.source, transport.sink)
        device = Device(name=name, address=hci.Address(address), host=host)
        await device.power_on()
        self._transports[id(device)] = transport
        return device

    def lost(self) -> bool:
        """True once a device's link server closed its socket (the gateway went away)."""
        return any(t.source.terminated.done() for t in self._transports.values())

    async def wait_lost(self) -> None:
        """Return when a device's socket to the link server closes."""
        waits = [asyncio.ensure_future(asyncio.shield(t.source.terminated))
                 for t in self._transports.values()]
        if not waits:
            await asyncio.Future()  # nothing attached: wait for cancellation
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def remove_device(self, device: Device) -> None:
        transport = self._transports.pop(id(device), None)
        if transport is not None and not transport.source.terminated.done():
            # a bounded goodbye: HCI commands to a dead socket wait for bumble's 10 s timeout
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await device.power_off()
        if transport is not None:
            await transport.close()


__all__ = ["LinkServer", "RemoteRadio", "parse_endpoint"]

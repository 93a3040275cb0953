"""One simulated radio: a bumble ``LocalLink`` with a central Device and any number of peripherals.

Every controller on the link is a real bumble ``Controller`` and every stack a real bumble
``Host`` + ``Device`` (HCI, L2CAP, ATT, GATT), so what the gateway's bleak code drives through
:mod:`simulators.bleak_bumble` is the same protocol machinery a radio would carry; only the air
is replaced by in-process delivery.

The link's central is shared by every scanner and client bound to it (like one adapter, hci0):
see :mod:`simulators.bleak_bumble.central`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from bumble import hci
from bumble.controller import Controller
from bumble.device import Advertisement, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from simulators.bleak_bumble.central import SharedCentral
from simulators.bleak_bumble.client import BumbleClientBackend
from simulators.bleak_bumble.scanner import BumbleScannerBackend

logger = logging.getLogger(__name__)

# The central's own address: a random static address (two top bits set), fixed so logs are stable.
CENTRAL_ADDRESS: Final = "C0:DE:00:00:00:01"
# ATT MTU the central asks for right after connecting; 247 is what Android and BlueZ ask for
# with LE data length extension, and what the E86 app expects.
DEFAULT_REQUEST_MTU: Final = 247


class _LinkController(Controller):
    """bumble's Controller with a working LE Create Connection Cancel.

    The stock controller answers the cancel command but keeps the pending connection, so a
    connect to a peripheral that is not advertising never fails and the next connect is refused.
    Per the Core spec (Vol 4, Part E, 7.8.13) a cancel ends the pending attempt with an LE
    Connection Complete event carrying status Unknown Connection Identifier (0x02).
    """

    #: LE connections this controller accepts at once (None: bumble's own, unlimited); beyond
    #: it LE Create Connection is refused with Connection Limit Exceeded (0x09), as a real
    #: controller with no free connection slot answers (Core Vol 4, Part E, 7.8.12 / Vol 1, F).
    connection_limit: int | None = None

    def on_hci_le_create_connection_command(self, command: Any) -> Any:
        if self.connection_limit is not None and len(self.le_connections) >= self.connection_limit:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.CONNECTION_LIMIT_EXCEEDED_ERROR, command.op_code)
            return None
        return super().on_hci_le_create_connection_command(command)

    def on_hci_le_create_connection_cancel_command(self, _command: Any) -> Any:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        result = hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # The command complete goes out first; the connection complete follows it.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return result


def make_device(link: LocalLink, name: str, address: str,
                connection_limit: int | None = None) -> tuple[Controller, Device]:
    """A bumble Device with its own controller attached to ``link`` (not powered on yet)."""
    controller = _LinkController(name, link=link)
    controller.connection_limit = connection_limit
    host = Host(controller, AsyncPipeSink(controller))
    return controller, Device(name=name, address=hci.Address(address), host=host)


class BumbleLink:
    """Async context manager owning a LocalLink, its central Device and the bleak backends.

    ``link.scanner_backend`` / ``link.client_backend`` are bleak backend classes bound to this
    link: pass them as ``backend=`` to ``BleakScanner`` / ``BleakClient`` (or to
    ``establish_connection(BleakClient, ..., backend=link.client_backend)``).
    Peripherals attach with :meth:`add_device`.
    """

    def __init__(self, *, request_mtu: int = DEFAULT_REQUEST_MTU, adapters: int = 1,
                 connection_limit: int | None = None) -> None:
        """``adapters`` centrals (hci0, hci1 …) on the one radio, each refusing connections
        beyond ``connection_limit`` the way a controller out of slots does."""
        if not 1 <= adapters <= 4:
            raise ValueError(f"adapters must be 1..4, got {adapters}")
        self.request_mtu = request_mtu
        self.adapter_count = adapters
        self.connection_limit = connection_limit
        #: adapter name → its central (``hci0`` also scans)
        self.centrals: dict[str, SharedCentral] = {}
        self._radio: LocalLink | None = None
        self._central: SharedCentral | None = None
        self._devices: dict[int, tuple[Controller, Device]] = {}
        self.scanner_backend: type[BumbleScannerBackend]
        self.client_backend: type[BumbleClientBackend]

    # -- life cycle -------------------------------------------------------------------------
    async def __aenter__(self) -> BumbleLink:
        self._radio = LocalLink()  # type: ignore[no-untyped-call]
        for i in range(self.adapter_count):
            address = CENTRAL_ADDRESS[:-2] + f"{i + 1:02X}"
            _, device = make_device(self._radio, f"vitalgate-central-{i}", address,
                                    self.connection_limit)
            await device.power_on()
            self.centrals[f"hci{i}"] = SharedCentral(device, self.request_mtu)
        self._central = shared = self.centrals["hci0"]
        # Classes bound to this link's central; bleak instantiates backends itself, so the
        # central travels as a class attribute (a client picks its adapter by ``adapter=``).
        self.scanner_backend = type("BumbleScanner", (BumbleScannerBackend,), {"shared": shared})
        self.client_backend = type("BumbleClient", (BumbleClientBackend,),
                                   {"shared": shared, "centrals": dict(self.centrals)})
        return self

    async def __aexit__(self, *exc: object) -> None:
        for device in [*(d for _, d in self._devices.values()),
                       *(c.device for c in self.centrals.values())]:
            for connection in list(device.connections.values()):
                try:
                    await connection.disconnect()
                except Exception:
                    logger.debug("disconnect at link close failed", exc_info=True)
            await device.power_off()
        self._devices.clear()

    # -- parts ------------------------------------------------------------------------------
    @property
    def radio(self) -> LocalLink:
        if self._radio is None:
            raise RuntimeError("BumbleLink is not started: use 'async with BumbleLink()'")
        return self._radio

    @property
    def central(self) -> Device:
        if self._central is None:
            raise RuntimeError("BumbleLink is not started: use 'async with BumbleLink()'")
        return self._central.device

    async def add_device(self, name: str, address: str) -> Device:
        """Attach a new peripheral stack (controller + host + Device) and power it on."""
        controller, device = make_device(self.radio, name, address)
        await device.power_on()
        self._devices[id(device)] = (controller, device)
        return device

    async def remove_device(self, device: Device) -> None:
        """Power a peripheral off and take its controller off the link."""
        await device.power_off()
        entry = self._devices.pop(id(device), None)
        if entry is not None and entry[0] in self.radio.controllers:
            self.radio.remove_controller(entry[0])


__all__ = ["CENTRAL_ADDRESS", "DEFAULT_REQUEST_MTU", "Advertisement", "BumbleLink", "make_device"]

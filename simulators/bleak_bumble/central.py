"""The link's central, shared by every scanner and client bound to it (like one adapter, hci0).

Scanning is reference counted (the first scanner starts it, the last one stops it), and
connection set-up is serialised because a controller can have only one pending LE connection
at a time. The bleak backends (:mod:`.scanner`, :mod:`.client`) use only this;
:class:`simulators.bleak_bumble.link.BumbleLink` owns the radio and binds backends to one.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from bumble.device import Device

# Scan window/interval for the central, in ms: continuous scanning (window == interval).
SCAN_INTERVAL_MS: Final = 60.0


class SharedCentral:
    """The central ``device`` of a link and the services its backends share."""

    def __init__(self, device: Device, request_mtu: int) -> None:
        self.device = device
        #: ATT MTU a client asks for right after connecting.
        self.request_mtu = request_mtu
        self._scan_users = 0
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        #: what the gateway's backend asked of this adapter (the BlueZ equivalents, counted)
        self.forgets = 0
        self.power_cycles = 0
        #: a stalled scanner: advertisements stop reaching listeners until a power cycle (the
        #: "discovery went deaf" state of real controllers, which a scan restart does not cure)
        self.deaf = False
        self._listeners: list[Any] = []

    async def acquire_scan(self) -> None:
        async with self._scan_lock:
            self._scan_users += 1
            if self._scan_users == 1:
                await self.device.start_scanning(
                    active=True,
                    scan_interval=SCAN_INTERVAL_MS,
                    scan_window=SCAN_INTERVAL_MS,
                    filter_duplicates=False,
                )

    async def release_scan(self) -> None:
        async with self._scan_lock:
            if self._scan_users == 0:
                return
            self._scan_users -= 1
            if self._scan_users == 0 and self.device.powered_on:
                await self.device.stop_scanning()

    def on_advertisement(self, listener: Any) -> None:
        def heard(adv: Any) -> None:
            if not self.deaf:
                listener(adv)

        self._listeners.append((listener, heard))
        self.device.on(Device.EVENT_ADVERTISEMENT, heard)

    def remove_advertisement_listener(self, listener: Any) -> None:
        for entry in [e for e in self._listeners if e[0] is listener]:
            self._listeners.remove(entry)
            self.device.remove_listener(Device.EVENT_ADVERTISEMENT, entry[1])

    def forget(self, address: str) -> bool:
        """BlueZ's RemoveDevice: this central caches nothing per peer, so it is only counted."""
        self.forgets += 1
        return True

    async def power_cycle(self) -> None:
        """Adapter off and on again (a real HCI reset of the bumble stack); scanning resumes."""
        self.power_cycles += 1
        async with self._scan_lock:
            await self.device.power_off()
            await self.device.power_on()
            self.deaf = False
            if self._scan_users > 0:
                await self.device.start_scanning(
                    active=True, scan_interval=SCAN_INTERVAL_MS, scan_window=SCAN_INTERVAL_MS,
                    filter_duplicates=False,
                )

    @property
    def connect_lock(self) -> asyncio.Lock:
        return self._connect_lock

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
        self.device.on(Device.EVENT_ADVERTISEMENT, listener)

    def remove_advertisement_listener(self, listener: Any) -> None:
        self.device.remove_listener(Device.EVENT_ADVERTISEMENT, listener)

    @property
    def connect_lock(self) -> asyncio.Lock:
        return self._connect_lock

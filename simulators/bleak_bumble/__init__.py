"""A bleak backend on the bumble BLE stack: the gateway's own bleak code against virtual watches.

``async with BumbleLink() as link:`` gives one simulated radio with a central; pass
``backend=link.scanner_backend`` to ``BleakScanner`` and ``backend=link.client_backend`` to
``BleakClient`` (or ``establish_connection(BleakClient, device, name, backend=...)``).
Peripherals (``simulators.watch.VirtualE86``) attach to the same link.
See docs/simulators-ble.md.
"""

from simulators.bleak_bumble.client import BumbleClientBackend
from simulators.bleak_bumble.link import BumbleLink
from simulators.bleak_bumble.scanner import BumblePeer, BumbleScannerBackend, advertisement_data

__all__ = [
    "BumbleClientBackend",
    "BumbleLink",
    "BumblePeer",
    "BumbleScannerBackend",
    "advertisement_data",
]

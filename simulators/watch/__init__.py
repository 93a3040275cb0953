"""Virtual E86 watches: bumble GATT peripherals that speak the E86 protocol (see docs/simulators-ble.md)."""

from simulators.watch.e86 import VirtualE86, WatchStats, advertised_name, static_address
from simulators.watch.encode import WatchSample
from simulators.watch.sources import EcgSource, VitalsSource, default_ecg, default_vitals

__all__ = [
    "EcgSource",
    "VirtualE86",
    "VitalsSource",
    "WatchSample",
    "WatchStats",
    "advertised_name",
    "default_ecg",
    "default_vitals",
    "static_address",
]

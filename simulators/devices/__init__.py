"""Virtual standard Bluetooth health devices (heart-rate strap, pulse oximeter, blood-pressure
cuff, thermometer): bumble GATT peripherals speaking the SIG profiles (docs/simulators-ble.md)."""

from simulators.devices.base import DeviceStats, Radio, Sent, VirtualHealthDevice
from simulators.devices.kinds import (
    KINDS,
    VirtualBloodPressureCuff,
    VirtualHeartRateStrap,
    VirtualPulseOximeter,
    VirtualThermometer,
)

__all__ = [
    "KINDS",
    "DeviceStats",
    "Radio",
    "Sent",
    "VirtualBloodPressureCuff",
    "VirtualHealthDevice",
    "VirtualHeartRateStrap",
    "VirtualPulseOximeter",
    "VirtualThermometer",
]

"""Bluetooth SIG GATT wire formats (standard library only, like ``e86``): the health
measurements, IEEE 11073 numbers, Current Time and RACP, in :mod:`gatt.health`. Imported by
the gateway (decoding) and the simulators (encoding the virtual devices' values)."""

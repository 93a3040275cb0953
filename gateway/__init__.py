"""The Raspberry Pi gateway: E86 watches over BLE (bleak) to MQTT, with store-and-forward."""

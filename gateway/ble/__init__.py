"""The BLE side of the gateway: backend choice, retry policy, per-watch sessions, the manager."""

"""What a simulators.mqtt_out.Subscriber received, read back with the contract: the messages
up to a count, and the readings and statuses in them."""

from __future__ import annotations

import queue
from collections.abc import Callable

from simulators.mqtt_out import Received, Subscriber
from vitalgate.contract import DeviceStatus, GatewayStatus, Kind, Reading, decode, decode_readings


def one(_: Received) -> int:
    return 1


def n_readings(message: Received) -> int:
    return len(decode_readings(message.payload).readings)


def collect(
    sub: Subscriber, until: int, weight: Callable[[Received], int] = one, limit_s: float = 20.0
) -> list[Received]:
    """Messages from ``sub`` until their total weight reaches ``until`` (or none came for a while)."""
    got: list[Received] = []
    total = 0
    while total < until:
        try:
            got.append(sub.queue.get(timeout=limit_s))
        except queue.Empty:
            break
        total += weight(got[-1])
    return got


def readings_of(messages: list[Received]) -> list[Reading]:
    """The readings of every message, in order; each batch decodes without an error."""
    out = []
    for m in messages:
        batch = decode_readings(m.payload)
        assert batch.errors == []
        out.extend(batch.readings)
    return out


def gateway_status_of(message: Received) -> GatewayStatus:
    status = decode(Kind.GATEWAY_STATUS, message.payload)
    assert isinstance(status, GatewayStatus), status
    return status


def device_status_of(message: Received) -> DeviceStatus:
    status = decode(Kind.DEVICE_STATUS, message.payload)
    assert isinstance(status, DeviceStatus), status
    return status

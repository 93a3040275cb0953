"""A paho subscriber that collects what gateways publish, validated with the contract.

A test tool (tests/support: not installed): used by the gateway tests and benchmark.
Persistent session (clean_session=False, QoS 1) so a broker restart loses nothing for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vitalgate.backoff import Backoff
from vitalgate.config import BrokerAddress
from vitalgate.contract import (
    DEFAULT_PREFIX,
    ContractError,
    EcgChunk,
    Kind,
    Reading,
    Topics,
    decode,
    decode_readings,
)
from vitalgate.mqtt_session import MqttError, MqttOptions, connect_blocking, make_client


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    kind: Kind
    message: Any
    at: float  # time.time() on arrival
    retained: bool


class Probe:
    def __init__(self, host: str, port: int, prefix: str = DEFAULT_PREFIX, client_id: str = "vitalgate-probe") -> None:
        self.topics = Topics(prefix)
        self.received: list[Received] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # a persistent session; paho reconnects every second (a test restarts its broker)
        self._options = MqttOptions(BrokerAddress(host, port, tls=False), client_id, clean=False,
                                    reconnect=Backoff(initial_s=1.0, factor=1.0, max_s=1.0, jitter=0.0))
        self._client = make_client(self._options)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None) -> None:
        c.subscribe(f"{self.topics.prefix}/#", qos=1)
        self._subscribed.set()

    def _on_message(self, c: Client, u: Any, msg: MQTTMessage) -> None:
        now = time.time()
        try:
            topic = self.topics.parse(msg.topic)
            if topic.kind is Kind.READING:
                batch = decode_readings(bytes(msg.payload))
                if batch.errors:
                    raise batch.errors[0]
                items: list[Any] = list(batch.readings)
            else:
                items = [decode(topic.kind, bytes(msg.payload))]
        except ContractError as exc:
            with self._lock:
                self.errors.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.received.extend(Received(msg.topic, topic.kind, m, now, bool(msg.retain)) for m in items)

    def start(self, timeout: float = 10.0) -> Probe:
        try:
            connect_blocking(self._client, self._options, self._subscribed, keepalive_s=10, timeout_s=timeout)
        except MqttError as exc:
            raise TimeoutError(f"probe did not connect: {exc}") from None
        time.sleep(0.2)  # let the SUBACK arrive
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def readings(self, device_id: str | None = None) -> list[Reading]:
        return [r.message for r in self.snapshot()
                if r.kind is Kind.READING and (device_id is None or r.message.device_id == device_id)]

    def ecg(self, device_id: str | None = None) -> list[EcgChunk]:
        return [r.message for r in self.snapshot()
                if r.kind is Kind.ECG and (device_id is None or r.message.device_id == device_id)]

    def latest(self, kind: Kind, **match: Any) -> Any:
        for r in reversed(self.snapshot()):
            if r.kind is kind and all(getattr(r.message, k, None) == v for k, v in match.items()):
                return r.message
        return None

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds; a generous deadline only guards against hangs."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


def unique_seqs(readings: list[Reading]) -> list[int]:
    """Sequence numbers seen, duplicates (QoS 1 redelivery) made harmless, sorted."""
    return sorted({r.seq for r in readings})

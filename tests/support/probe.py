"""A paho subscriber that collects what gateways publish, validated with the contract.

A test tool (tests/support: not installed): used by the gateway tests and benchmark.
Persistent session (clean_session=False, QoS 1) so a broker restart loses nothing for it; an
:class:`vitalgate.mqtt_session.MqttSession` served by a thread of its own (the tests call it
from plain code).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from vitalgate.mqtt_session import Message, MqttError, MqttOptions
from vitalgate.mqtt_thread import SessionThread


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
        # a persistent session; paho reconnects every second (a test restarts its broker)
        self._options = MqttOptions(BrokerAddress(host, port, tls=False), client_id, clean=False,
                                    reconnect=Backoff(initial_s=1.0, factor=1.0, max_s=1.0, jitter=0.0))
        self._session: SessionThread | None = None

    def _on_message(self, msg: Message) -> None:
        now = time.time()
        try:
            topic = self.topics.parse(msg.topic)
            if topic.kind is Kind.READING:
                batch = decode_readings(msg.payload)
                if batch.errors:
                    raise batch.errors[0]
                items: list[Any] = list(batch.readings)
            else:
                items = [decode(topic.kind, msg.payload)]
        except ContractError as exc:
            with self._lock:
                self.errors.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.received.extend(Received(msg.topic, topic.kind, m, now, msg.retain) for m in items)

    def start(self, timeout: float = 10.0) -> Probe:
        """Connect and return once the broker acknowledged the subscription."""
        self._session = SessionThread(self._options, subscriptions=[f"{self.topics.prefix}/#"],
                                      keepalive_s=10, connect_timeout_s=timeout,
                                      on_message=self._on_message)
        try:
            self._session.start()
        except MqttError as exc:
            raise TimeoutError(f"probe did not connect: {exc}") from None
        return self

    def stop(self) -> None:
        if self._session is not None:
            self._session.stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> concurrent.futures.Future[None]:
        """Publish as the probe (a test's command to a gateway); done on the PUBACK."""
        assert self._session is not None, "not started"
        return self._session.publish(topic, payload, qos=qos)

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

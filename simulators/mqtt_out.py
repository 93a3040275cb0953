"""Small MQTT helpers for the simulators: publish like a gateway, or subscribe.

Each is one :class:`vitalgate.mqtt_session.MqttSession` served by a thread of its own
(:class:`~vitalgate.mqtt_thread.SessionThread`): the simulators call them from plain code.
:class:`GatewayPublisher` behaves as a gateway on the wire (vitalgate.contract): retained
gateway status with a retained last will ``{"v":1,"online":false}``, retained device statuses,
readings at QoS 1 — from one client. Each publish's PUBACK future only counts the
acknowledgement; a publisher that gets ``max_unacked`` messages ahead of the broker's PUBACKs
waits (bounded memory).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms
from vitalgate.config import BrokerAddress, redact_url
from vitalgate.contract import (
    DEFAULT_PREFIX,
    QOS,
    DeviceStatus,
    GatewayStatus,
    Reading,
    Topics,
    encode_readings,
)
from vitalgate.mqtt_session import Link, Message, MqttError, MqttOptions, Will
from vitalgate.mqtt_thread import SessionThread

log = logging.getLogger(__name__)

#: PUBACKs the client may wait for at once (paho's default of 20 caps throughput).
MAX_INFLIGHT: Final = 1000
#: messages published but not yet acknowledged before publish() waits.
MAX_UNACKED: Final = 20_000
CONNECT_TIMEOUT_S: Final = 10.0
#: paho's own reconnect schedule (its defaults, 1 s doubling to 2 min, no jitter): a tool's
#: session to a local broker, nothing to spread out.
RECONNECT: Final = Backoff(initial_s=1.0, factor=2.0, max_s=120.0, jitter=0.0)


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (port 1883 by default) → (host, port)."""
    address = BrokerAddress.parse(url)
    if address.tls:
        raise ValueError(f"broker URL {redact_url(url)!r}: the simulators speak plain mqtt://host:port only")
    return address.host, address.port


class _ToolClient:
    """One MQTT session of a simulator tool: a clean 3.1.1 session to ``url``
    (mqtt://[user:password@]host:port; the credentials are used, never shown), in a thread of
    its own; paho reconnects by itself as a simulated gateway would."""

    def __init__(self, url: str, client_id: str, **session: Any) -> None:
        parse_url(url)  # plain mqtt:// only
        self.url = url
        self._session = SessionThread(
            MqttOptions(BrokerAddress.parse(url), client_id, max_inflight=MAX_INFLIGHT,
                        reconnect=RECONNECT),
            connect_timeout_s=CONNECT_TIMEOUT_S, **session)

    def _connect(self) -> None:
        self._session.start()

    def _disconnect(self) -> None:
        self._session.stop()


class GatewayPublisher(_ToolClient):
    """One MQTT connection publishing as gateway ``gateway_id``."""

    def __init__(
        self,
        url: str,
        gateway_id: str,
        prefix: str = DEFAULT_PREFIX,
        version: str = "vitalgate-simulator",
        max_unacked: int = MAX_UNACKED,
    ) -> None:
        topics = Topics(prefix)
        will = Will(topics.gateway_status(gateway_id),
                    GatewayStatus(online=False, gateway_id=gateway_id).to_bytes(), qos=QOS, retain=True)
        super().__init__(url, f"{gateway_id}-sim-{epoch_ms() % 10**9}", will=will,
                         on_link=self._on_link)
        self.gateway_id = gateway_id
        self.topics = topics
        self.version = version
        self.max_unacked = max_unacked
        self.published = 0  # messages handed to the session
        self.readings = 0  # readings inside them
        self.acked = 0
        self._cond = threading.Condition()

    @property
    def _connected(self) -> bool:
        return self._session.connected

    # the session's thread: count or notify, nothing else
    def _on_link(self, link: Link) -> None:
        with self._cond:  # a flush waiting for acks that cannot come now returns at once
            self._cond.notify_all()

    def _on_ack(self, done: concurrent.futures.Future[None]) -> None:
        with self._cond:
            if done.exception() is None:
                self.acked += 1
            self._cond.notify_all()

    def connect(self) -> GatewayPublisher:
        self._connect()
        return self

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        with self._cond:
            while self.published - self.acked >= self.max_unacked:
                if not self._cond.wait(CONNECT_TIMEOUT_S):
                    raise MqttError(f"broker {redact_url(self.url)} stopped acknowledging publishes")
            self.published += 1
        self._session.publish(topic, payload, qos=QOS, retain=retain).add_done_callback(self._on_ack)

    def gateway_status(self, online: bool, devices: int | None = None, ts: int | None = None) -> None:
        status = GatewayStatus(
            online=online, gateway_id=self.gateway_id, version=self.version, devices=devices,
            buffered=0, ts=ts,
        )
        self._publish(self.topics.gateway_status(self.gateway_id), status.to_bytes(), retain=True)

    def device_status(self, status: DeviceStatus) -> None:
        topic = self.topics.device_status(self.gateway_id, status.device_id)
        self._publish(topic, status.to_bytes(), retain=True)

    def send_readings(self, device_id: str, readings: list[Reading]) -> None:
        """One message: a reading, or a JSON array of several."""
        self._publish(self.topics.reading(self.gateway_id, device_id), encode_readings(readings))
        self.readings += len(readings)

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Pre-encoded bytes (benchmark baseline, replay of recorded messages)."""
        self._publish(topic, payload, retain)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the broker acknowledged everything published; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.published:
                left = deadline - time.monotonic()
                if left <= 0 or not self._connected:
                    return False  # out of time, or no broker to acknowledge anything
                self._cond.wait(left)
        return True

    def close(self, offline: bool = True, timeout: float = 30.0) -> None:
        """Publish the offline status (a clean shutdown), wait for acks while connected,
        disconnect. Messages the broker never acknowledged are counted in a WARNING."""
        try:
            if offline and self._connected:
                self.gateway_status(False)
            if not self.flush(timeout):
                log.warning("closing with %d of %d published messages not acknowledged by the "
                            "broker (%s)", self.published - self.acked, self.published,
                            "connection lost" if not self._connected else "timed out")
        finally:
            self._disconnect()


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retained: bool
    rx_ms: int


class Subscriber(_ToolClient):
    """Subscribes to topics at QoS 1 and queues what arrives (bounded; overflow is counted)."""

    def __init__(self, url: str, topics: Iterable[str], maxsize: int = 100_000) -> None:
        self.topics = list(topics)
        super().__init__(url, f"vitalgate-rec-{epoch_ms() % 10**9}", subscriptions=self.topics,
                         on_message=self._on_message)
        self.queue: queue.Queue[Received] = queue.Queue(maxsize)
        self.overflow = 0

    def _on_message(self, msg: Message) -> None:
        item = Received(msg.topic, msg.payload, msg.retain, epoch_ms())
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.overflow += 1

    def connect(self) -> Subscriber:
        """Connect and return once the broker acknowledged the subscriptions."""
        self._connect()
        return self

    def close(self) -> None:
        self._disconnect()

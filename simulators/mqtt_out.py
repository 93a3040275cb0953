"""Small paho-mqtt (2.x) helpers for the simulators: publish like a gateway, or subscribe.

:class:`GatewayPublisher` behaves as a gateway on the wire (vitalgate.contract): retained
gateway status with a retained last will ``{"v":1,"online":false}``, retained device statuses,
readings at QoS 1 — from one client. Paho's callbacks only count acknowledgements; a publisher
that gets ``max_unacked`` messages ahead of the broker's PUBACKs waits (bounded memory).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt

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
from vitalgate.mqtt_session import MqttError, MqttOptions, connect_blocking, make_client

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
    """One paho client of a simulator tool: a clean 3.1.1 session to ``url``
    (mqtt://[user:password@]host:port; the credentials are used, never shown), connected from
    a plain thread; paho reconnects by itself as a simulated gateway would."""

    def __init__(self, url: str, client_id: str) -> None:
        parse_url(url)  # plain mqtt:// only
        self.url = url
        self._connected = threading.Event()
        self._options = MqttOptions(BrokerAddress.parse(url), client_id, max_inflight=MAX_INFLIGHT,
                                    reconnect=RECONNECT)
        self._client = make_client(self._options)

    def _connect(self) -> None:
        connect_blocking(self._client, self._options, self._connected, timeout_s=CONNECT_TIMEOUT_S)

    def _disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


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
        super().__init__(url, f"{gateway_id}-sim-{epoch_ms() % 10**9}")
        self.gateway_id = gateway_id
        self.topics = Topics(prefix)
        self.version = version
        self.max_unacked = max_unacked
        self.published = 0  # messages handed to paho
        self.readings = 0  # readings inside them
        self.acked = 0
        self._cond = threading.Condition()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish  # type: ignore[assignment, unused-ignore]
        self._client.will_set(
            self.topics.gateway_status(gateway_id),
            GatewayStatus(online=False, gateway_id=gateway_id).to_bytes(),
            qos=QOS,
            retain=True,
        )

    # paho callbacks (network thread): set an event or count, nothing else.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any = None, rc: Any = None,
                       props: Any = None) -> None:
        self._connected.clear()
        with self._cond:  # a flush waiting for acks that cannot come now returns at once
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self._cond:
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
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise MqttError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.published += 1

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
                if left <= 0 or not self._connected.is_set():
                    return False  # out of time, or no broker to acknowledge anything
                self._cond.wait(left)
        return True

    def close(self, offline: bool = True, timeout: float = 30.0) -> None:
        """Publish the offline status (a clean shutdown), wait for acks while connected,
        disconnect. Messages the broker never acknowledged are counted in a WARNING."""
        try:
            if offline and self._connected.is_set():
                self.gateway_status(False)
            if not self.flush(timeout):
                log.warning("closing with %d of %d published messages not acknowledged by the "
                            "broker (%s)", self.published - self.acked, self.published,
                            "connection lost" if not self._connected.is_set() else "timed out")
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
        super().__init__(url, f"vitalgate-rec-{epoch_ms() % 10**9}")
        self.topics = list(topics)
        self.queue: queue.Queue[Received] = queue.Queue(maxsize)
        self.overflow = 0
        self._subscribed = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe([(t, QOS) for t in self.topics])
            self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = Received(msg.topic, bytes(msg.payload), bool(msg.retain), epoch_ms())
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.overflow += 1

    def connect(self) -> Subscriber:
        """Connect and return once the broker acknowledged the subscriptions."""
        self._connect()
        if not self._subscribed.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise MqttError(f"no SUBACK from {redact_url(self.url)} within {CONNECT_TIMEOUT_S}s")
        return self

    def close(self) -> None:
        self._disconnect()

"""The shared core of every MQTT client here: one paho-mqtt 2 client built from one options value.

Four clients speak MQTT: the gateway's publisher (:mod:`gateway.publisher`), ingest's consumer
(:mod:`ingest.consumer`), the simulators' publisher and recorder (:mod:`simulators.mqtt_out`)
and the test probe (``tests/support/probe.py``). They differ in what they guarantee (see
docs/architecture.md, "MQTT: one core, two adapters"), not in how a client is made: protocol
level and session kind, TLS, credentials, in-flight window, manual acknowledgement, paho's own
reconnect — all that is :class:`MqttOptions` and :func:`make_client`, here. Each adapter keeps
only its delivery model: the publisher's reconnect loop that re-sends from its disk buffer, the
consumer's persistent session acknowledged after each commit.

Log lines name a broker by :func:`broker_label` (``host:port``), never by its URL: a URL may carry a
password.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from vitalgate.backoff import Backoff
from vitalgate.config import BrokerAddress

MqttProtocol = Literal["3.1.1", "5"]


class MqttError(RuntimeError):
    """A broker that cannot be reached, does not answer or stopped acknowledging."""


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """How to build a client; every field is one decision of the adapter that sets it."""

    #: host, port, TLS or not, credentials (the adapter resolves which credentials win)
    broker: BrokerAddress
    client_id: str
    #: MQTT 3.1.1 by default (Mosquitto 2.0.11's MQTT 5 flow control is off: docs/reliability.md);
    #: "5" lets a broker name why it ends a session and bounds the inflow (Receive Maximum)
    protocol: MqttProtocol = "3.1.1"
    #: False: a persistent session (the broker keeps subscriptions and unacknowledged QoS 1
    #: messages while we are away). With MQTT 5 the choice is made at connect (clean_start).
    clean: bool = True
    #: PUBACKs the client may wait for at once on its own publishes; paho's default is 20
    max_inflight: int = 20
    #: acknowledge inbound messages only when the application says so (after its commit)
    manual_ack: bool = False
    #: paho reconnects by itself on this schedule (it doubles from initial_s to max_s and has
    #: no jitter); None: it does not, the adapter owns reconnecting (and makes a new client)
    reconnect: Backoff | None = None
    #: with TLS: the CA to trust (None: the system's), and a client certificate and key
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


def broker_label(broker: BrokerAddress) -> str:
    """A broker as log lines name it: host and port only (a URL may carry a password)."""
    return f"{broker.host}:{broker.port}"


def make_client(o: MqttOptions) -> Client:
    """A paho client set up by ``o``; the adapter adds its callbacks, last will and connect."""
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=o.client_id,
        clean_session=None if o.v5 else o.clean,
        protocol=MQTTProtocolVersion.MQTTv5 if o.v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=o.reconnect is not None,
        manual_ack=o.manual_ack,
    )
    if o.broker.tls:
        client.tls_set(ca_certs=str(o.ca) if o.ca else None,
                       certfile=str(o.cert) if o.cert else None,
                       keyfile=str(o.key) if o.key else None)
    if o.broker.username:
        client.username_pw_set(o.broker.username, o.broker.password)
    if o.reconnect is not None:
        client.reconnect_delay_set(max(1, round(o.reconnect.initial_s)), max(1, round(o.reconnect.max_s)))
    client.max_inflight_messages_set(o.max_inflight)
    return client


def connect_blocking(client: Client, o: MqttOptions, connected: threading.Event, *,
                     keepalive_s: int = 30, timeout_s: float = 10.0) -> None:
    """Connect from a plain thread (the tools: simulators, probe), start paho's network
    thread and wait until the adapter's ``on_connect`` sets ``connected``; :class:`MqttError`
    naming the broker (host:port) when it cannot be reached or does not answer in time."""
    try:
        client.connect(o.broker.host, o.broker.port, keepalive=keepalive_s)
    except OSError as exc:
        raise MqttError(f"cannot connect to MQTT broker {broker_label(o.broker)}: {exc}") from None
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        raise MqttError(f"no CONNACK from MQTT broker {broker_label(o.broker)} within {timeout_s}s")

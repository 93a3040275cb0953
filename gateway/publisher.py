"""Drains the store-and-forward buffer into the broker with paho-mqtt 2 (QoS 1).

* One paho client per connection: paho runs its network thread (``loop_start``) with its own
  reconnect switched off; when the connection goes, the client is dropped with everything it
  had in flight, and the next connection re-sends from the buffer (nothing lives only in
  paho's memory). Reconnects follow :class:`gateway.backoff.Backoff` (jittered, exponential).
* paho callbacks run in paho's thread and do nothing but hand an event to the asyncio loop
  (``call_soon_threadsafe``) onto a bounded queue; the drain task consumes it.
* At most ``inflight_window`` rows are unacknowledged at a time; a row leaves the buffer only on
  its PUBACK (``on_publish`` with a success reason code) via the message id → row id map.
* Rows that were already in the buffer when a connection came up are published with
  ``replayed: true``.
* Retained gateway status (last will ``{"v":1,"online":false}``), retained device statuses,
  and the ``{prefix}/{gateway_id}/cmd`` subscription, handed out through :meth:`commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.buffer import Buffer, Row, RowKind
from gateway.settings import GatewaySettings
from vitalgate.contract import (
    Command,
    ContractError,
    DeviceStatus,
    GatewayStatus,
    Kind,
    Reading,
    Topics,
    decode,
)

log = logging.getLogger(__name__)

#: reconnect policy to the broker: first retry after ~1 s (a restarted Mosquitto is back within
#: a second or two), doubling to at most 30 s so a returning broker is found within half a
#: minute; ±50 % jitter so a ward's gateways do not reconnect in lockstep.
MQTT_BACKOFF: Final = Backoff(initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.5)
#: how long a CONNACK may take after the TCP/TLS connection is up.
CONNACK_TIMEOUT_S: Final = 10.0
#: how long a clean stop waits for the broker to acknowledge the "offline" status.
STOP_TIMEOUT_S: Final = 3.0
#: commands waiting for the session manager; more than this means nobody is consuming.
COMMAND_QUEUE: Final = 32


class ConnectRefused(ConnectionError):
    """The broker answered CONNACK with a failure (bad credentials, not authorised …)."""


@dataclass
class PublisherCounters:
    published: int = 0
    acked: int = 0
    replayed: int = 0
    ack_failures: int = 0
    connects: int = 0
    connect_failures: int = 0
    commands: int = 0
    commands_rejected: int = 0
    commands_dropped: int = 0
    events_dropped: int = 0


EventName = Literal["connack", "disconnected", "puback", "wake"]


@dataclass(frozen=True, slots=True)
class _Event:
    name: EventName
    mid: int = 0
    failed: bool = False
    detail: str = ""


@dataclass
class _Session:
    client: Client
    events: asyncio.Queue[_Event]
    inflight: dict[int, Row] = field(default_factory=dict)


class Publisher:
    """Publishes the buffer, the gateway status and device statuses; receives commands."""

    def __init__(
        self,
        settings: GatewaySettings,
        buffer: Buffer,
        *,
        version: str = "",
        clock: Callable[[], float] = time.time,
        backoff: Backoff = MQTT_BACKOFF,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.buffer = buffer
        self.topics = Topics(settings.prefix)
        self.version = version
        self.counters = PublisherCounters()
        self._clock = clock
        self._backoff = backoff
        self._rand = rand
        self._window = settings.inflight_window
        self._devices: dict[str, DeviceStatus] = {}
        self._session: _Session | None = None
        self._commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_QUEUE)
        self._wake_pending = False
        self._attempt = 0

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.client.is_connected()

    @property
    def inflight(self) -> int:
        return len(self._session.inflight) if self._session else 0

    def notify(self) -> None:
        """New rows are in the buffer: wake the drain (call from the loop's thread)."""
        s = self._session
        if s is not None and not self._wake_pending:
            self._wake_pending = True
            self._offer(s.events, _Event("wake"))

    def set_device_status(self, status: DeviceStatus) -> None:
        """Remember the device's latest status and publish it (retained) if connected."""
        self._devices[status.device_id] = status
        s = self._session
        if s is not None and s.client.is_connected():
            s.client.publish(
                self.topics.device_status(self.settings.gateway_id, status.device_id),
                status.to_bytes(), qos=1, retain=True,
            )

    async def commands(self) -> AsyncIterator[Command]:
        """Commands from ``{prefix}/{gateway_id}/cmd``, validated, in arrival order."""
        while True:
            yield await self._commands.get()

    def lag_s(self) -> float:
        """Publish lag: now − when the oldest unacknowledged row entered the buffer (0 if empty)."""
        oldest = self.buffer.stats().oldest_added_ms
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest / 1000)

    def gateway_status(self, online: bool = True) -> GatewayStatus:
        stats = self.buffer.stats()
        return GatewayStatus(
            online=online,
            gateway_id=self.settings.gateway_id,
            version=self.version or None,
            devices=sum(1 for d in self._devices.values() if d.connected),
            buffered=stats.rows,
            evicted=stats.evicted,
            ts=int(self._clock() * 1000),
        )

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff — until cancelled; then say offline and leave."""
        broker = self.settings.broker
        while True:
            try:
                await self._run_session()
            except (OSError, ConnectRefused, TimeoutError) as exc:
                self.counters.connect_failures += 1
                delay = self._backoff.delay(self._attempt, self._rand)
                self._attempt += 1
                log.warning("MQTT broker %s:%d: %s; retrying in %.1f s", broker.host, broker.port,
                            exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------ session

    def _make_client(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[_Event]) -> Client:
        st = self.settings
        broker = st.broker
        client = Client(CallbackAPIVersion.VERSION2, client_id=st.client_id, clean_session=True,
                        reconnect_on_failure=False)
        if broker.tls:
            client.tls_set(
                ca_certs=str(st.mqtt_ca) if st.mqtt_ca else None,
                certfile=str(st.mqtt_cert) if st.mqtt_cert else None,
                keyfile=str(st.mqtt_key) if st.mqtt_key else None,
            )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        client.will_set(self.topics.gateway_status(st.gateway_id),
                        GatewayStatus(online=False).to_bytes(), qos=1, retain=True)
        client.max_inflight_messages_set(self._window)

        def on_connect(c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None) -> None:
            loop.call_soon_threadsafe(self._offer, events, _Event("connack", failed=rc.is_failure, detail=str(rc)))

        def on_disconnect(c: Client, u: Any, f: DisconnectFlags, rc: ReasonCode, p: Properties | None) -> None:
            loop.call_soon_threadsafe(self._offer, events, _Event("disconnected", detail=str(rc)))

        def on_publish(c: Client, u: Any, mid: int, rc: ReasonCode, p: Properties) -> None:
            loop.call_soon_threadsafe(self._offer, events, _Event("puback", mid=mid, failed=rc.is_failure,
                                                                   detail=str(rc)))

        def on_message(c: Client, u: Any, msg: MQTTMessage) -> None:
            loop.call_soon_threadsafe(self._on_command, msg.topic, bytes(msg.payload))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        return client

    def _offer(self, queue: asyncio.Queue[_Event], event: _Event) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:  # cannot happen for PUBACKs (bounded by the window); counted
            self.counters.events_dropped += 1

    async def _run_session(self) -> None:
        loop = asyncio.get_running_loop()
        # PUBACKs are bounded by the window; a few more for connack/disconnect/wake
        events: asyncio.Queue[_Event] = asyncio.Queue(2 * self._window + 16)
        client = self._make_client(loop, events)
        broker = self.settings.broker
        await loop.run_in_executor(None, client.connect, broker.host, broker.port, self.settings.mqtt_keepalive_s)
        client.loop_start()
        session = _Session(client, events)
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                first = await events.get()
            if first.name != "connack" or first.failed:
                raise ConnectRefused(f"broker refused the connection: {first.detail}")
            self._session = session
            self._wake_pending = False
            self._attempt = 0
            self.counters.connects += 1
            log.info("connected to MQTT broker %s:%d", broker.host, broker.port)
            client.subscribe(self.topics.cmd(self.settings.gateway_id), qos=1)
            self._publish_statuses(client)
            await self._drain(session)
            log.warning("MQTT connection lost; %d rows stay buffered", len(self.buffer))
        except asyncio.CancelledError:
            if client.is_connected():
                await self._say_offline(client)
            raise
        finally:
            self._session = None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def _publish_statuses(self, client: Client) -> None:
        gid = self.settings.gateway_id
        client.publish(self.topics.gateway_status(gid), self.gateway_status().to_bytes(), qos=1, retain=True)
        for status in self._devices.values():
            client.publish(self.topics.device_status(gid, status.device_id), status.to_bytes(), qos=1, retain=True)

    async def _say_offline(self, client: Client) -> None:
        info = client.publish(self.topics.gateway_status(self.settings.gateway_id),
                              self.gateway_status(online=False).to_bytes(), qos=1, retain=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT_S + 1):
                await asyncio.to_thread(info.wait_for_publish, STOP_TIMEOUT_S)

    async def _drain(self, s: _Session) -> None:
        """Publish rows in id order with at most ``window`` in flight; return when disconnected."""
        gid = self.settings.gateway_id
        replay_upto = self.buffer.max_id()  # rows older than this connection are late
        cursor = 0
        status_every = self.settings.status_interval_s
        next_status = time.monotonic() + status_every
        while True:
            room = self._window - len(s.inflight)
            if room > 0:
                for row in self.buffer.pending(cursor, room):
                    replayed = row.id <= replay_upto
                    topic = (self.topics.reading(gid, row.device_id) if row.kind is RowKind.READING
                             else self.topics.ecg(gid, row.device_id))
                    info = s.client.publish(topic, _payload(row, replayed), qos=1)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return  # the connection is going; the rows stay buffered
                    s.inflight[info.mid] = row
                    cursor = row.id
                    self.counters.published += 1
                    self.counters.replayed += replayed
            try:
                async with asyncio.timeout(max(0.0, next_status - time.monotonic())):
                    event = await s.events.get()
            except TimeoutError:
                event = None
            batch = [] if event is None else [event]
            while not s.events.empty():
                batch.append(s.events.get_nowait())
            acked: list[int] = []
            lost = False
            for ev in batch:
                if ev.name == "puback":
                    if ev.mid not in s.inflight:
                        continue  # a retained status publish
                    row = s.inflight.pop(ev.mid)
                    if ev.failed:
                        self.counters.ack_failures += 1
                        log.warning("broker rejected row %d (%s); it stays buffered", row.id, ev.detail)
                    else:
                        acked.append(row.id)
                elif ev.name == "wake":
                    self._wake_pending = False
                elif ev.name == "disconnected":
                    lost = True
            if acked:
                self.buffer.ack(acked)
                self.counters.acked += len(acked)
            if lost:
                return
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + status_every
                s.client.publish(self.topics.gateway_status(gid), self.gateway_status().to_bytes(),
                                 qos=1, retain=True)

    # ------------------------------------------------------------------ commands

    def _on_command(self, topic: str, payload: bytes) -> None:
        if topic != self.topics.cmd(self.settings.gateway_id):
            return
        try:
            cmd = decode(Kind.CMD, payload)
        except ContractError as exc:
            self.counters.commands_rejected += 1
            log.warning("rejected command: %s", exc)
            return
        assert isinstance(cmd, Command)
        try:
            self._commands.put_nowait(cmd)
            self.counters.commands += 1
        except asyncio.QueueFull:
            self.counters.commands_dropped += 1
            log.warning("command queue full; dropped a %s command", cmd.cmd)


_LIVE: Final = b'"replayed":false'
_LATE: Final = b'"replayed":true'


def _payload(row: Row, replayed: bool) -> bytes:
    """The row's payload, with ``replayed: true`` for a late reading. The buffer holds the
    contract's own compact JSON, where the flag appears exactly once (no other field can
    contain a quote), so a byte substitution is exact; anything else goes through the model."""
    if not replayed or row.kind is not RowKind.READING:
        return row.payload
    if row.payload.count(_LIVE) == 1:
        return row.payload.replace(_LIVE, _LATE)
    return Reading.model_validate_json(row.payload).model_copy(update={"replayed": True}).to_bytes()

"""Drains the store-and-forward buffer into the broker (QoS 1).

* One :class:`vitalgate.mqtt_session.MqttSession` per connection, a clean session without
  paho's reconnect: when the connection goes, the session ends with everything it had in
  flight, and the next one re-sends from the buffer (nothing lives only in paho's memory).
  Reconnects follow :class:`vitalgate.backoff.Backoff` (jittered, exponential).
* Each publish's PUBACK future, the session's end and ``notify`` hand an event onto a bounded
  queue; the drain task consumes it.
* At most ``inflight_window`` rows are unacknowledged at a time; a row leaves the buffer only on
  its PUBACK (its future done without a failure reason code) via the publish → row id map. An
  acknowledgement the buffer cannot record (a full disk) is kept in memory and retried; such a
  row is not sent again meanwhile. No buffer error ends :meth:`Publisher.run`.
* Every end of a connection backs off, a clean disconnect included, by the rules of
  :mod:`gateway.mqtt_retry`; a client-id takeover (MQTT 5 "Session taken over", or repeated
  short sessions) is one WARNING per episode, counted, and backs off with wide jitter.
* ``republish`` commands (:meth:`Publisher.republish`): the requested readings still in the
  buffer are published again, ``replayed: true``; what is no longer there is counted and logged.
* Rows that were already in the buffer when a connection came up are published with
  ``replayed: true``.
* Retained gateway status (last will ``{"v":1,"online":false}``), retained device statuses,
  and the ``{prefix}/{gateway_id}/cmd`` subscription, handed out through :meth:`commands`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.buffer import Buffer, BufferError, Row, RowKind
from gateway.mqtt_retry import (
    MQTT_RETRY_POLICY,
    SESSION_TAKEN_OVER,
    SHORT_SESSION_S,
    SHORT_SESSIONS_FOR_TAKEOVER,
    STABLE_SESSION_S,
    MqttRetryRule,
    Outcome,
)
from gateway.settings import GatewaySettings
from vitalgate.backoff import Backoff
from vitalgate.clock import SYSTEM, Clock, epoch_ms
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
from vitalgate.mqtt_session import (
    MqttError,
    MqttOptions,
    MqttRefused,
    MqttSession,
    Will,
    broker_label,
)

log = logging.getLogger(__name__)

#: reconnect policy to an unreachable broker (the rest is in :mod:`gateway.mqtt_retry`).
MQTT_BACKOFF: Final = MQTT_RETRY_POLICY["unreachable"].backoff
#: how long a CONNACK may take after the TCP/TLS connection is up.
CONNACK_TIMEOUT_S: Final = 10.0
#: how long a clean stop waits for the broker to acknowledge the "offline" status.
STOP_TIMEOUT_S: Final = 3.0
#: commands waiting for the session manager; more than this means nobody is consuming.
COMMAND_QUEUE: Final = 32
#: republished rows waiting for room in the in-flight window: two full ``republish`` ranges;
#: a request beyond it is refused (counted, logged) and ingest asks again while the gap stays.
REPUBLISH_QUEUE: Final = 20_000
#: how often PUBACKs the buffer could not record (full disk) are tried again while connected.
ACK_RETRY_S: Final = 1.0


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
    #: every way a connection ended, counted (clean disconnects included)
    disconnects: int = 0
    #: connections the broker ended because another client took our client id
    takeovers: int = 0
    #: PUBACKs the buffer could not record yet (disk full); retried, the rows are not resent
    acks_unrecorded: int = 0
    #: republish: readings requested, found and published again, not in the buffer any more,
    #: and refused because the republish queue was full
    republish_requested: int = 0
    republished: int = 0
    republish_missing: int = 0
    republish_refused: int = 0


EventName = Literal["disconnected", "puback", "wake"]


@dataclass(frozen=True, slots=True)
class _Event:
    name: EventName
    mid: int = 0
    failed: bool = False
    detail: str = ""
    code: int | None = None


@dataclass
class _Session:
    mqtt: MqttSession
    events: asyncio.Queue[_Event]
    #: publish number (of this session) → the row it carries, until its PUBACK
    inflight: dict[int, Row] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=itertools.count)
    #: when the CONNACK came (monotonic) and the disconnect that ended the session
    up_since: float | None = None
    ended: _Event | None = None


class Publisher:
    """Publishes the buffer, the gateway status and device statuses; receives commands."""

    def __init__(
        self,
        settings: GatewaySettings,
        buffer: Buffer,
        *,
        version: str = "",
        clock: Clock = SYSTEM,
        backoff: Backoff | None = None,
        policy: dict[Outcome, MqttRetryRule] = MQTT_RETRY_POLICY,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``backoff``, if given, replaces every rule's backoff (tests use a fast one). ``clock``
        times sessions, status intervals and backoff sleeps, and stamps statuses: the network's
        time, real even when the gateway simulates watches faster."""
        self.settings = settings
        self.buffer = buffer
        self.topics = Topics(settings.prefix)
        self.version = version
        self.counters = PublisherCounters()
        self._clock = clock
        self._policy = policy
        self._backoff_override = backoff
        self._rand = rand
        self._window = settings.inflight_window
        self._devices: dict[str, DeviceStatus] = {}
        self._session: _Session | None = None
        self._commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_QUEUE)
        self._wake_pending = False
        #: attempts that grow each outcome's backoff: failed connects (reset by a CONNACK),
        #: lost sessions (reset by one that lasted SHORT_SESSION_S), takeovers (reset when the
        #: episode ends: a session that lasted STABLE_SESSION_S)
        self._attempts: dict[Outcome, int] = dict.fromkeys(policy, 0)
        self._short_sessions = 0
        self._takeover_episode = 0  # takeovers in the current episode (0: none going on)
        self._storage_failing = False
        #: row ids the broker acknowledged that the buffer could not record yet (disk full)
        self._unrecorded: set[int] = set()
        self._republish: collections.deque[Row] = collections.deque()

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.mqtt.connected

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
        if s is not None and s.mqtt.connected:
            _status_publish(s.mqtt, self.topics.device_status(self.settings.gateway_id, status.device_id),
                            status.to_bytes())

    async def commands(self) -> AsyncIterator[Command]:
        """Commands from ``{prefix}/{gateway_id}/cmd``, validated, in arrival order."""
        while True:
            yield await self._commands.get()

    def lag_s(self) -> float:
        """Publish lag: now − when the oldest unacknowledged row entered the buffer (0 if empty)."""
        oldest = self.buffer.stats().oldest_added_ms
        return 0.0 if oldest is None else max(0.0, self._clock.wall() - oldest / 1000)

    def gateway_status(self, online: bool = True) -> GatewayStatus:
        stats = self.buffer.stats()
        return GatewayStatus(
            online=online,
            gateway_id=self.settings.gateway_id,
            version=self.version or None,
            devices=sum(1 for d in self._devices.values() if d.connected),
            buffered=stats.rows,
            evicted=stats.evicted,
            ts=epoch_ms(self._clock),
        )

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff — until cancelled; then say offline and leave.
        Every end of a session backs off (:mod:`gateway.mqtt_retry`); nothing but cancellation
        ends this loop."""
        broker = self.settings.broker
        while True:
            quiet = False
            outcome: Outcome
            try:
                outcome, detail = await self._run_session()
                quiet = outcome == "takeover" and self._takeover_episode > 1
                self._storage_failing = False
            except ConnectRefused as exc:
                outcome, detail = "refused", str(exc)
                self.counters.connect_failures += 1
            except (OSError, TimeoutError, MqttError) as exc:
                outcome, detail = "unreachable", str(exc) or type(exc).__name__
                self.counters.connect_failures += 1
            except BufferError as exc:  # the buffer says why (its state); once per episode here
                outcome, detail = "storage", str(exc)
                quiet = self._storage_failing
                self._storage_failing = True
            rule = self._policy[outcome]
            backoff = self._backoff_override or rule.backoff
            delay = backoff.delay(self._attempts[outcome], self._rand)
            self._attempts[outcome] += 1
            (log.debug if quiet else log.warning)(
                "MQTT broker %s: %s (%s); retrying in %.1f s", broker_label(broker), detail,
                outcome, delay)
            await self._clock.sleep(delay)

    def _session_ended(self, s: _Session) -> tuple[Outcome, str]:
        """Classify how an established session ended, and track takeover episodes."""
        self.counters.disconnects += 1
        now = self._clock.monotonic()
        lasted = now - (s.up_since or now)
        code = s.ended.code if s.ended is not None else None
        detail = s.ended.detail if s.ended is not None else "publish failed"
        if lasted >= SHORT_SESSION_S:
            self._attempts["lost"] = 0
        if lasted >= STABLE_SESSION_S:
            self._attempts["takeover"] = 0
            self._short_sessions = 0
            if self._takeover_episode:
                log.info("MQTT client id %s: no takeover for %.0f s; the episode is over (%d takeovers)",
                         self.settings.client_id, lasted, self._takeover_episode)
                self._takeover_episode = 0
        self._short_sessions = self._short_sessions + 1 if lasted < SHORT_SESSION_S else 0
        # within an episode, any session that ends before it was stable is the same fight
        taken = (code == SESSION_TAKEN_OVER or self._short_sessions >= SHORT_SESSIONS_FOR_TAKEOVER
                 or (self._takeover_episode > 0 and lasted < STABLE_SESSION_S))
        if not taken:
            return "lost", f"connection lost after {lasted:.1f} s ({detail}); {len(self.buffer)} rows stay buffered"
        self.counters.takeovers += 1
        self._takeover_episode += 1
        if self._takeover_episode == 1:
            log.warning(
                "MQTT client id %s is taken over by another client (%s; is gateway_id %s running on "
                "another machine too?): backing off with jitter while this lasts; further takeovers "
                "are counted in status (mqtt.takeovers), not logged",
                self.settings.client_id,
                "broker: session taken over" if code == SESSION_TAKEN_OVER
                else f"{self._short_sessions} sessions in a row ended within {SHORT_SESSION_S:.0f} s",
                self.settings.gateway_id)
        return "takeover", f"session taken over after {lasted:.1f} s ({self._takeover_episode} in this episode)"

    # ------------------------------------------------------------------ session

    def _make_session(self) -> MqttSession:
        st = self.settings
        # a clean session each time: the buffer, not the broker, holds what is not acknowledged;
        # no paho reconnect: a lost connection ends the session (run() backs off between them)
        return MqttSession(
            MqttOptions(st.broker, st.client_id, protocol=st.mqtt_protocol, clean=True,
                        max_inflight=self._window, ca=st.mqtt_ca, cert=st.mqtt_cert, key=st.mqtt_key),
            subscriptions=[self.topics.cmd(st.gateway_id)], inbound_max=COMMAND_QUEUE,
            will=Will(self.topics.gateway_status(st.gateway_id), GatewayStatus(online=False).to_bytes()),
            keepalive_s=st.mqtt_keepalive_s, connect_timeout_s=CONNACK_TIMEOUT_S)

    def _offer(self, queue: asyncio.Queue[_Event], event: _Event) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:  # cannot happen for PUBACKs (bounded by the window); counted
            self.counters.events_dropped += 1

    def _send(self, s: _Session, topic: str, row: Row, payload: bytes) -> int | None:
        """Publish a row; its PUBACK (or the broker's refusal) comes back as an event naming
        the number returned. None when the session is over (the row stays buffered)."""
        fut = s.mqtt.publish(topic, payload, qos=1)
        if fut.done() and fut.exception() is not None:
            return None
        number = next(s.numbers)
        s.inflight[number] = row
        fut.add_done_callback(functools.partial(self._acked, s.events, number))
        return number

    def _acked(self, events: asyncio.Queue[_Event], number: int, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is None:
            self._offer(events, _Event("puback", mid=number))
        elif isinstance(exc, MqttRefused):
            self._offer(events, _Event("puback", mid=number, failed=True, detail=str(exc), code=exc.code))
        # else the session ended first: the row stays buffered, the end is its own event

    async def _watch(self, s: _Session) -> None:
        """Hand the session's end to the drain, and its inbound messages to the commands."""

        async def commands() -> None:
            async for message in s.mqtt.messages():
                self._on_command(message.topic, message.payload)

        reader = asyncio.create_task(commands())
        try:
            end = await s.mqtt.wait_ended()
            self._offer(s.events, _Event("disconnected", detail=end.detail, code=end.code))
        finally:
            reader.cancel()

    async def _run_session(self) -> tuple[Outcome, str]:
        # PUBACKs are bounded by the window; a few more for disconnect/wake
        events: asyncio.Queue[_Event] = asyncio.Queue(2 * self._window + 16)
        mqtt = self._make_session()
        broker = self.settings.broker
        try:
            await mqtt.__aenter__()
        except MqttRefused as exc:
            raise ConnectRefused(str(exc)) from None
        session = _Session(mqtt, events)
        watch = asyncio.create_task(self._watch(session))
        try:
            self._session = session
            session.up_since = self._clock.monotonic()
            for outcome in ("unreachable", "refused", "storage"):
                self._attempts[outcome] = 0
            self._wake_pending = False
            self.counters.connects += 1
            (log.debug if self._takeover_episode else log.info)(
                "connected to MQTT broker %s", broker_label(broker))
            self._publish_statuses(mqtt)
            await self._drain(session)
            return self._session_ended(session)
        except asyncio.CancelledError:
            if mqtt.connected:
                await self._say_offline(mqtt)
            raise
        finally:
            self._session = None
            watch.cancel()
            await mqtt.close()
            await asyncio.wait([watch], timeout=1.0)

    def _publish_statuses(self, mqtt: MqttSession) -> None:
        gid = self.settings.gateway_id
        _status_publish(mqtt, self.topics.gateway_status(gid), self.gateway_status().to_bytes())
        for status in self._devices.values():
            _status_publish(mqtt, self.topics.device_status(gid, status.device_id), status.to_bytes())

    async def _say_offline(self, mqtt: MqttSession) -> None:
        acked = mqtt.publish(self.topics.gateway_status(self.settings.gateway_id),
                             self.gateway_status(online=False).to_bytes(), qos=1, retain=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await acked

    async def _drain(self, s: _Session) -> None:
        """Publish rows in id order with at most ``window`` in flight (republished rows first);
        return when disconnected (``s.ended`` says how)."""
        gid = self.settings.gateway_id
        replay_upto = self.buffer.max_id()  # rows older than this connection are late
        cursor = 0
        status_every = self.settings.status_interval_s
        next_status = self._clock.monotonic() + status_every
        again: set[int] = set()  # publish numbers of republished rows
        while True:
            room = self._window - len(s.inflight)
            while room > 0 and self._republish:
                row = self._republish.popleft()
                number = self._send(s, self.topics.reading(gid, row.device_id), row, _payload(row, True))
                if number is None:
                    self._republish.appendleft(row)
                    return
                again.add(number)
                room -= 1
            if room > 0:
                for row in self.buffer.pending(cursor, room):
                    cursor = row.id
                    if row.id in self._unrecorded:
                        continue  # the broker has it; only the buffer does not know yet
                    replayed = row.id <= replay_upto
                    topic = (self.topics.reading(gid, row.device_id) if row.kind is RowKind.READING
                             else self.topics.ecg(gid, row.device_id))
                    if self._send(s, topic, row, _payload(row, replayed)) is None:
                        return  # the connection is going; the rows stay buffered
                    self.counters.published += 1
                    self.counters.replayed += replayed
            wait = max(0.0, next_status - self._clock.monotonic())
            if self._unrecorded:
                wait = min(wait, ACK_RETRY_S)
            try:
                async with asyncio.timeout(wait):
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
                        continue
                    row = s.inflight.pop(ev.mid)
                    republished = ev.mid in again
                    again.discard(ev.mid)
                    if ev.failed:
                        self.counters.ack_failures += 1
                        log.warning("broker rejected row %d (%s); it stays buffered", row.id, ev.detail)
                    elif republished:
                        self.counters.republished += 1
                        acked.append(row.id)  # a no-op if it was acknowledged before
                    else:
                        acked.append(row.id)
                        self.counters.acked += 1
                elif ev.name == "wake":
                    self._wake_pending = False
                elif ev.name == "disconnected":
                    s.ended = ev
                    lost = True
            self._record_acks(acked)
            if lost:
                return
            if self._clock.monotonic() >= next_status:
                next_status = self._clock.monotonic() + status_every
                _status_publish(s.mqtt, self.topics.gateway_status(gid), self.gateway_status().to_bytes())

    def _record_acks(self, acked: list[int]) -> None:
        """Tell the buffer what the broker has. If it cannot write (disk full), the ids wait here
        (and those rows are not sent again) until a later attempt succeeds."""
        if not acked and not self._unrecorded:
            return
        ids = self._unrecorded.union(acked)
        try:
            self.buffer.ack(ids)
        except BufferError as exc:
            if not self._unrecorded:
                log.warning("cannot record %d PUBACKs in the buffer (%s); retrying every %.0f s",
                            len(ids), exc, ACK_RETRY_S)
            self._unrecorded = ids
        else:
            if self._unrecorded:
                log.info("recorded %d PUBACKs the buffer could not take before", len(self._unrecorded))
            self._unrecorded = set()
        self.counters.acks_unrecorded = len(self._unrecorded)

    # ------------------------------------------------------------------ republish

    def republish(self, cmd: Command) -> None:
        """Queue this device's readings of ``cmd.stream`` in ``from_seq..to_seq`` that are still
        in the buffer for publishing again (``replayed: true``); what is not there any more is
        counted and logged (ingest keeps it as a gap)."""
        assert cmd.stream is not None and cmd.from_seq is not None and cmd.to_seq is not None
        wanted = cmd.to_seq - cmd.from_seq + 1
        self.counters.republish_requested += wanted
        try:
            rows = self.buffer.readings_range(cmd.device_id, cmd.stream, cmd.from_seq, cmd.to_seq)
        except BufferError as exc:
            self.counters.republish_missing += wanted
            log.warning("republish %s stream %s seq %d..%d: cannot read the buffer: %s", cmd.device_id,
                        cmd.stream, cmd.from_seq, cmd.to_seq, exc)
            return
        unique: dict[int, Row] = {}
        for r in rows:
            unique.setdefault(r.seq, r)
        if len(self._republish) + len(unique) > REPUBLISH_QUEUE:
            self.counters.republish_refused += wanted
            log.warning("republish %s stream %s seq %d..%d refused: %d rows already queued", cmd.device_id,
                        cmd.stream, cmd.from_seq, cmd.to_seq, len(self._republish))
            return
        self._republish.extend(unique.values())
        missing = wanted - len(unique)
        self.counters.republish_missing += missing
        this = "this buffer's" if cmd.stream == self.buffer.stream else "another (older) buffer's"
        (log.warning if missing else log.info)(
            "republish %s stream %s (%s) seq %d..%d: %d of %d readings found%s", cmd.device_id, cmd.stream,
            this, cmd.from_seq, cmd.to_seq, wanted - missing, wanted,
            f"; {missing} are no longer in the buffer" if missing else "")
        self.notify()

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


def _status_publish(mqtt: MqttSession, topic: str, payload: bytes) -> None:
    """A retained status at QoS 1; nobody waits for its PUBACK (a lost one is sent again with
    the next connection's statuses)."""
    mqtt.publish(topic, payload, qos=1, retain=True).add_done_callback(_ignored)


def _ignored(fut: asyncio.Future[None]) -> None:
    fut.exception()  # retrieved: a status whose session ended is not an error


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

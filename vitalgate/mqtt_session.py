"""Every MQTT client here: one paho-mqtt 2 client built from one options value, and one
asyncio session around it.

Four clients speak MQTT: the gateway's publisher (:mod:`gateway.publisher`), ingest's consumer
(:mod:`ingest.consumer`), the simulators' publisher and recorder (:mod:`simulators.mqtt_out`)
and the test probe (``tests/support/probe.py``). How a client is made (protocol level and
session kind, TLS, credentials, in-flight window, manual acknowledgement, who reconnects) is
:class:`MqttOptions` and :func:`make_client`; how it is used is :class:`MqttSession`, in the
shape of aiomqtt 2.x plus what aiomqtt lacks (manual acknowledgement, PUBACK futures)::

    async with MqttSession(options, subscriptions=[...], inbound_max=100) as session:
        async for message in session.messages():   # a bounded queue filled by paho's thread
            ...commit...
            session.ack(message)                     # manual ack, after the commit
        await session.publish(topic, payload)        # returns on the PUBACK

The reconnect model is data (:attr:`MqttOptions.reconnect`): with a schedule paho reconnects
the session by itself and the session lives until it is closed (ingest's persistent session);
without, the first disconnect ends the session and :attr:`MqttSession.ended` says how, so
the caller's own retry rules decide what next (the gateway publisher, :mod:`gateway.mqtt_retry`).
Synchronous tools run a session in a thread of its own
(:class:`vitalgate.mqtt_thread.SessionThread`).

Log lines name a broker by :func:`broker_label` (``host:port``), never by its URL: a URL may carry a
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, error_string
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from vitalgate.backoff import Backoff
from vitalgate.config import BrokerAddress

MqttProtocol = Literal["3.1.1", "5"]
T = TypeVar("T")

#: while the inbound queue is full, paho's thread waits in ``on_message`` (it reads nothing
#: more from the socket, so the broker keeps the rest) and looks this often (s) whether the
#: session is closing.
BACKPRESSURE_POLL_S: Final = 0.2
#: connections of every session of this process are numbered from one sequence, so that an
#: acknowledgement never reaches a connection (or a session) other than the message's own
_CONNECTIONS = itertools.count(1)


class MqttError(RuntimeError):
    """A broker that cannot be reached, does not answer or stopped acknowledging."""


class MqttRefused(MqttError):
    """The broker answered with a failure reason code: a CONNACK (bad credentials, not
    authorised …) or, MQTT 5, a PUBACK (the message was not accepted); ``code`` is its value."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


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
    #: no jitter) and a session lives until it is closed; None: it does not, the first
    #: disconnect ends the session and the adapter owns reconnecting (with a new session)
    reconnect: Backoff | None = None
    #: with TLS: the CA to trust (None: the system's), and a client certificate and key
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: MQTT 5 only: how long the broker keeps a persistent session after we left (s), and
    #: how many unacknowledged messages it may send us at once (Receive Maximum)
    session_expiry_s: int | None = None
    receive_maximum: int | None = None

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


def broker_label(broker: BrokerAddress) -> str:
    """A broker as log lines name it: host and port only (a URL may carry a password)."""
    return f"{broker.host}:{broker.port}"


def make_client(o: MqttOptions) -> Client:
    """A paho client set up by ``o``; :class:`MqttSession` adds callbacks and connects it."""
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


async def in_own_thread(fn: Callable[[], T], *, name: str) -> T:
    """``fn()`` in a thread of its own. Not the loop's default executor: at shutdown its few
    workers (cpu count + 4) can all be busy with store calls of tasks just cancelled, and an
    MQTT connect or disconnect would queue behind them. An exception reaches the caller."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(value)
        else:
            done.set_exception(exc)

    def body() -> None:
        value: Any = None
        outcome: BaseException | None = None
        try:
            value = fn()
        except BaseException as exc:  # handed to the awaiting task, never lost in the thread
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, value, outcome)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await done


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes when the connection ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound message as paho delivered it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: the broker's DUP flag: it delivered this message before
    dup: bool
    mid: int
    #: the connection it came on (numbered across the process): an acknowledgement never
    #: crosses a reconnect
    generation: int


class Delivery(Protocol):
    """What :meth:`MqttSession.ack` needs of a message (a :class:`Message`, or the
    adapter's own record of one)."""

    @property
    def mid(self) -> int:
        """The packet id the broker gave it."""

    @property
    def qos(self) -> int:
        """0 (nothing to acknowledge), 1 or 2."""

    @property
    def generation(self) -> int:
        """The connection it came on (:attr:`Message.generation`)."""


@dataclass(frozen=True, slots=True)
class Link:
    """A change of the connection, handed to ``on_link`` in the event loop's thread:
    ``up`` (CONNACK success), ``down`` (the connection ended), ``unreachable`` (paho's own
    reconnect could not open a connection; it tries again)."""

    event: Literal["up", "down", "unreachable"]
    detail: str = ""
    #: the reason code's value (CONNACK or DISCONNECT), when there was one
    code: int | None = None
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a session ended."""

    #: the DISCONNECT reason code's value (MQTT 5: the broker's, e.g. 0x8E session taken
    #: over; otherwise paho's), None when no disconnect was seen
    code: int | None
    detail: str
    #: ended by :meth:`MqttSession.close` (a clean stop), not by the broker or the network
    by_us: bool


class MqttSession:
    """One MQTT session over one paho client; see the module's docstring.

    paho's callbacks run in paho's network thread and only hand over to the event loop
    (``call_soon_threadsafe``); the one that waits is ``on_message`` while the inbound queue
    has no room (backpressure, counted in :attr:`backpressure_waits`)."""

    def __init__(self, options: MqttOptions, *, subscriptions: Sequence[str] = (),
                 inbound_max: int = 1000, will: Will | None = None, keepalive_s: int = 30,
                 connect_timeout_s: float = 10.0, on_link: Callable[[Link], None] | None = None,
                 on_wait: Callable[[], None] | None = None) -> None:
        """``on_link`` hears every connection change (loop thread); ``on_wait`` each time
        paho's thread starts waiting for inbound room (paho's thread: count, nothing more)."""
        self.options = options
        self.label = broker_label(options.broker)
        self._subscriptions = list(subscriptions)
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._on_link = on_link
        self._on_wait = on_wait
        self._client = make_client(options)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        #: bounds the inbound queue: paho's thread takes a slot per message (waiting while
        #: none is free), every receive gives one back; the queue itself never refuses
        self._slots = threading.Semaphore(inbound_max)
        self._inbound: asyncio.Queue[Message | None] = asyncio.Queue()
        self._closing = threading.Event()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[SessionEnd] | None = None
        self._closed = False
        #: the current connection (paho's thread numbers it on each CONNACK); 0: none yet
        self.generation = 0
        #: successful connections (1 = the first; more = paho's reconnects)
        self.connects = 0
        self.connected = False
        #: times paho's thread had to wait for inbound room (backpressure engaged)
        self.backpressure_waits = 0
        #: messages paho delivered while the session was closing, not handed over (with
        #: manual ack the broker redelivers them to the next session; without, they are lost
        #: to this client: counted, never silent)
        self.dropped_at_close = 0

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> MqttSession:
        loop = self._loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._subscribed = loop.create_future()
        self._ended = loop.create_future()
        c = self._client
        c.on_connect = self._paho_connect
        c.on_connect_fail = self._paho_connect_fail
        c.on_disconnect = self._paho_disconnect
        c.on_publish = self._paho_publish
        c.on_subscribe = self._paho_subscribe
        c.on_message = self._paho_message
        o = self.options
        kwargs: dict[str, Any] = {}
        if o.v5:
            kwargs["clean_start"] = o.clean
            if o.session_expiry_s is not None or o.receive_maximum is not None:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if o.session_expiry_s is not None:
                    props.SessionExpiryInterval = o.session_expiry_s
                if o.receive_maximum is not None:
                    props.ReceiveMaximum = o.receive_maximum
                kwargs["properties"] = props
        def connect() -> None:
            # paho's thread starts here too, not from the event loop: it reads the CONNACK and
            # subscribes even while the loop is busy (a caller blocking it right after start)
            c.connect(o.broker.host, o.broker.port, self._keepalive_s, **kwargs)
            c.loop_start()

        connecting = asyncio.ensure_future(in_own_thread(connect, name=f"mqtt-connect-{o.client_id}"))
        try:
            await asyncio.shield(connecting)
        except (OSError, ValueError) as exc:
            self._closed = True
            c._reset_sockets(sockpair_only=True)
            raise MqttError(f"cannot connect to MQTT broker {self.label}: {exc}") from None
        except asyncio.CancelledError:
            # the connect goes on in its thread: stop what it started whenever it is done
            self._closed = True
            self._closing.set()

            def abandoned(fut: asyncio.Future[Any]) -> None:
                if not fut.cancelled():
                    fut.exception()  # retrieved: nobody waits for this connect any more
                threading.Thread(target=self._stop_client, name=f"mqtt-stop-{o.client_id}",
                                 daemon=True).start()

            connecting.add_done_callback(abandoned)
            raise
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._connack
                if self._subscriptions:
                    await self._subscribed
        except TimeoutError:
            await self.close()
            raise MqttError(f"no CONNACK or SUBACK from MQTT broker {self.label} within "
                            f"{self._connect_timeout_s}s") from None
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect (in a thread of its own; paho's thread waiting for inbound room lets
        go), fail the PUBACK futures still open and end :meth:`messages`."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        await in_own_thread(self._stop_client, name=f"mqtt-stop-{self.options.client_id}")
        self._finish(SessionEnd(None, "closed", by_us=True))

    def _stop_client(self) -> None:
        c = self._client
        c.disconnect()
        c.loop_stop()
        # paho 2.x's loop_start() makes a wake-up socket pair loop_stop() leaves open (and
        # the socket of a connect whose thread never started stays open too)
        c._reset_sockets()

    @property
    def ended(self) -> SessionEnd | None:
        """How the session ended; None while it lasts."""
        e = self._ended
        return e.result() if e is not None and e.done() else None

    async def wait_ended(self) -> SessionEnd:
        assert self._ended is not None, "not entered"
        return await asyncio.shield(self._ended)

    def _finish(self, end: SessionEnd) -> None:
        """The session is over (loop thread): once."""
        if self._ended is None or self._ended.done():
            return
        self._ended.set_result(end)
        for fut in (self._connack, self._subscribed):
            if fut is not None and not fut.done():
                fut.set_exception(MqttError(f"MQTT broker {self.label} ended the session: "
                                            f"{end.detail}"))
                fut.exception()  # retrieved: whoever awaits it sees it, nobody else is told
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(MqttError(f"the session with {self.label} ended before the "
                                            f"PUBACK ({end.detail})"))
        self._inbound.put_nowait(None)  # the end mark: after what is already queued

    # ------------------------------------------------------------------ inbound

    async def receive(self) -> Message:
        """The next inbound message; :class:`MqttError` once the session has ended and
        everything queued before its end was received."""
        item = await self._inbound.get()
        return self._taken(item)

    def receive_nowait(self) -> Message | None:
        """The next inbound message if one is queued, else None (the end raises as above)."""
        try:
            item = self._inbound.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._taken(item)

    def _taken(self, item: Message | None) -> Message:
        if item is None:
            self._inbound.put_nowait(None)  # every later receive sees the end too
            end = self.ended
            raise MqttError(f"the session with {self.label} ended"
                            f"{f' ({end.detail})' if end else ''}")
        self._slots.release()
        return item

    async def messages(self) -> AsyncIterator[Message]:
        """Inbound messages until the session ends."""
        while True:
            try:
                message = await self.receive()
            except MqttError:
                return
            yield message

    @property
    def queued(self) -> int:
        """Inbound messages waiting to be received."""
        return max(0, self._inbound.qsize() - (1 if self.ended else 0))

    def ack(self, message: Delivery) -> bool:
        """Acknowledge ``message`` (manual ack; QoS 0 has nothing to acknowledge). Only on
        the connection it came on: after a reconnect the broker redelivers it anyway. True
        when an acknowledgement was sent."""
        if message.qos == 0 or not self.options.manual_ack or message.generation != self.generation:
            return False
        return self._client.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    # ------------------------------------------------------------------ outbound

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> asyncio.Future[None]:
        """Hand a message to paho; the future (await it) is done when the broker acknowledged
        it (QoS 0: when it was written) and fails with :class:`MqttError` when the broker
        refuses it or the session ends first. With paho's reconnect a message published
        while disconnected waits in paho for the next connection."""
        assert self._loop is not None, "not entered"
        fut: asyncio.Future[None] = self._loop.create_future()
        if self.ended is not None or self._closed:
            fut.set_exception(MqttError(f"publish to {topic}: the session with {self.label} "
                                        "has ended"))
            return fut
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        queued = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.options.reconnect is not None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            fut.set_exception(MqttError(f"publish to {topic} failed: {error_string(info.rc)}"))
            return fut
        # on_publish settles it later in the loop's thread (call_soon_threadsafe): no race
        self._pending[info.mid] = fut
        return fut

    @property
    def unacknowledged(self) -> int:
        """Own publishes still waiting for their PUBACK."""
        return len(self._pending)

    # ------------------------------------------------------------------ paho's thread

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, c: Client, u: Any, flags: ConnectFlags, rc: ReasonCode,
                      p: Properties | None) -> None:
        if rc.is_failure:
            self._call(self._refused, rc.value, str(rc))
            return
        self.generation = next(_CONNECTIONS)  # before any message of this connection arrives
        if self._subscriptions:
            if self.options.v5:
                c.subscribe([(t, SubscribeOptions(qos=1)) for t in self._subscriptions])
            else:
                c.subscribe([(t, 1) for t in self._subscriptions])
        self._call(self._up, Link("up", str(rc), rc.value, bool(flags.session_present)))

    def _paho_connect_fail(self, c: Client, u: Any) -> None:
        self._call(self._link, Link("unreachable", "no connection"))

    def _paho_disconnect(self, c: Client, u: Any, flags: DisconnectFlags, rc: ReasonCode,
                         p: Properties | None) -> None:
        self._call(self._down, rc.value, str(rc))

    def _paho_publish(self, c: Client, u: Any, mid: int, rc: ReasonCode, p: Properties) -> None:
        self._call(self._settle, mid, rc.value if rc.is_failure else None, str(rc))

    def _paho_subscribe(self, c: Client, u: Any, mid: int, rcs: Any, p: Properties | None) -> None:
        self._call(self._suback)

    def _paho_message(self, c: Client, u: Any, msg: MQTTMessage) -> None:
        """Hand a message over, waiting while the queue is full: every message paho
        delivered is taken, and while paho's thread waits it reads nothing more from the
        broker, which keeps the rest (backpressure instead of drops)."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._closing.is_set():
            self.dropped_at_close += 1
            return
        item = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup),
                       msg.mid, self.generation)
        if not self._slots.acquire(blocking=False):
            self.backpressure_waits += 1
            if self._on_wait is not None:
                self._on_wait()
            while not self._slots.acquire(timeout=BACKPRESSURE_POLL_S):
                if self._closing.is_set() or loop.is_closed():
                    self.dropped_at_close += 1
                    return
        try:
            loop.call_soon_threadsafe(self._inbound.put_nowait, item)
        except RuntimeError:  # the loop closed meanwhile
            self._slots.release()
            self.dropped_at_close += 1

    # ------------------------------------------------------------------ loop thread

    def _link(self, link: Link) -> None:
        if self._on_link is not None:
            self._on_link(link)

    def _up(self, link: Link) -> None:
        self.connected = True
        self.connects += 1
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)
        if link.session_present:
            # the broker kept the subscriptions; its queued messages may come before the
            # SUBACK, and paho's thread can be waiting for room behind them: do not wait for it
            self._suback()
        self._link(link)

    def _refused(self, code: int, detail: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttRefused(
                f"MQTT broker {self.label} refused the connection: {detail}", code))
        else:
            self._link(Link("down", f"refused: {detail}", code))

    @property
    def subscribed(self) -> bool:
        """Connected and the subscriptions acknowledged (or kept by the broker's session): a
        message published from now on reaches this session."""
        return bool(self.connected and self._subscribed is not None and self._subscribed.done()
                    and not self._subscribed.cancelled() and self._subscribed.exception() is None)

    def _suback(self) -> None:
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)

    def _down(self, code: int, detail: str) -> None:
        was = self.connected
        self.connected = False
        if was:
            self._link(Link("down", detail, code))
        if self.options.reconnect is None or self._closing.is_set():
            self._finish(SessionEnd(code, detail, by_us=self._closing.is_set()))

    def _settle(self, mid: int, failure: int | None, detail: str) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return
        if failure is not None:
            fut.set_exception(MqttRefused(f"MQTT broker {self.label} refused message {mid}: "
                                          f"{detail}", failure))
        else:
            fut.set_result(None)

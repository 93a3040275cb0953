"""The MQTT consumer: at-least-once from the broker, exactly-once into the store.

One :class:`vitalgate.mqtt_session.MqttSession` (paho-mqtt's thread fills its bounded inbound
queue, waiting for room when it is full). :meth:`Consumer.run` drains the queue in batches, validates each message with
:mod:`vitalgate.contract`, commits the whole batch in ONE SQLite transaction (group commit) and
only then acknowledges the batch's messages to the broker (manual ack, QoS 1). A crash before
the commit leaves the messages unacknowledged in the broker's persistent session (fixed client
id, ``clean_start=False``), which redelivers them; the store's identities make a redelivery
harmless.

Invalid messages are committed to the dead-letter table (then acknowledged too), counted per
reason and logged at most once per reason per minute; valid items next to them are kept.

No message can stop ingestion (poison-message isolation):

* a batch whose commit fails is committed again in one transaction, message by message under
  SAVEPOINTs, and a failing message item by item (a reading array reading by reading); an
  item that fails alone becomes a ``store_error`` dead letter (its detail names the exception
  type, never the payload) and is acknowledged, and the good items beside it are kept. When
  even its dead letter cannot be written the store itself is failing: the commit raises and
  nothing is acknowledged (the broker keeps it all).
* a deadlock or serialisation failure with another instance's commit (PostgreSQL) is the
  transactions' timing, never an item's fault: the whole transaction is retried
  (:data:`CONFLICT_RETRIES`, counted in ``commit_conflicts``), never dead-lettered; still
  failing, the commit raises as a failing store does.
* the crash-loop detector: a message delivered again (MQTT DUP flag, or seen in a batch of
  this process that never committed) is counted in ``deliveries``, committed BEFORE it is
  processed; at ``redelivery_max`` uncommitted redeliveries it is dead-lettered
  (``redelivery_loop``) instead of processed, so a message that kills the consumer or the
  process is stopped after a bounded number of tries, retained or not.
* readings, ECG chunks and device statuses stamped (event time) later than their arrival
  (processing time, the injected clock) plus ``max_future_skew_s`` are ``future`` dead letters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ingest import store
from ingest.db import (
    Conn,
    Database,
    DatabaseError,
    IntegrityError,
    OperationalError,
    dead_letters,
    interrupted,
)
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms
from vitalgate.contract import (
    QOS,
    ContractError,
    DeviceStatus,
    EcgChunk,
    GatewayStatus,
    Kind,
    Topics,
    decode,
    decode_readings,
)
from vitalgate.mqtt_session import (
    Link,
    Message,
    MqttError,
    MqttOptions,
    MqttRefused,
    MqttSession,
    broker_label,
)

log = logging.getLogger(__name__)

#: a reason is logged at most once per this many ms (the counters count every one).
LOG_EVERY_MS: Final = 60_000
#: stop collecting a batch when nothing arrived for this long (s): under light load a message
#: is committed within ~2 ms; under load a batch fills up to ``batch_max`` or ``batch_window_ms``.
IDLE_GAP_S: Final = 0.002
#: reconnect backoff: paho reconnects by itself (the persistent session stays with the broker),
#: doubling from 1 s to 10 s without jitter (paho's own schedule, which this only bounds): a
#: restarted Mosquitto is found within 10 s, and one ingest per broker has nobody to fall into
#: lockstep with.
RECONNECT: Final = Backoff(initial_s=1.0, factor=2.0, max_s=10.0, jitter=0.0)
#: at most this many unacknowledged messages in flight from the broker (MQTT 5 Receive Maximum).
RECEIVE_MAXIMUM: Final = 1000
#: committed batches that may wait for scoring while the next batch commits.
POST_QUEUE: Final = 4
#: keys of messages taken but not yet committed, at most (only QoS 0 ones can linger).
UNCOMMITTED_MAX: Final = 100_000
#: redelivery counts of messages not seen again for this long are dropped (ms).
DELIVERIES_KEPT_MS: Final = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as the session delivered it, stamped on arrival."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: int
    generation: int = 0  #: which connection it came on (acks never cross a reconnect)
    dup: bool = False  #: the broker's DUP flag: it delivered this message before

    @property
    def key(self) -> tuple[str, str]:
        """The message's identity for the crash-loop detector: topic and payload digest."""
        return self.topic, dead_letters.digest(self.payload)


#: the default skew (ms) a message's event time may be ahead of processing time.
DEFAULT_FUTURE_MS: Final = 300_000


@dataclass(frozen=True, slots=True)
class _DeviceKind:
    """A one-device message other than readings: its contract type, the field that holds its
    event time, and the store item it becomes (gateway id, message, received_at, topic, payload)."""

    type: type[DeviceStatus | EcgChunk]
    event_time: str
    item: Callable[[str, Any, int, str, bytes], store.Item]


#: the one-device kinds besides readings: each is checked against its topic's device id and
#: the future horizon the same way.
_DEVICE_KINDS: Final[dict[Kind, _DeviceKind]] = {
    Kind.DEVICE_STATUS: _DeviceKind(DeviceStatus, "last_seen", store.DeviceStatusIn),
    Kind.ECG: _DeviceKind(EcgChunk, "ts", store.EcgChunkIn),
}


def classify(msg: Inbound, topics: Topics, *, max_future_ms: int = DEFAULT_FUTURE_MS
             ) -> list[store.Item]:
    """Decode one message into what the store writes: valid items and dead letters.

    Event time (a reading's or chunk's ``ts``, a status's ``last_seen``) later than processing
    time (``msg.received_at``) plus ``max_future_ms`` is a ``future`` dead letter. Details
    never depend on the arrival time, so that the same junk delivered again (a retained
    message at each restart) is recognised as a repeat."""

    def dead(exc: ContractError) -> store.DeadLetter:
        return store.DeadLetter(msg.topic, msg.payload, exc.reason, exc.detail, msg.received_at)

    horizon = msg.received_at + max_future_ms

    def not_future(ts: int | None, what: str) -> None:
        if ts is not None and ts > horizon:
            raise ContractError("future", f"{what} {ts} is later than its arrival plus the "
                                          f"{max_future_ms} ms allowed")

    try:
        topic = topics.parse(msg.topic)
        if topic.kind is Kind.READING:
            assert topic.gateway_id is not None and topic.device_id is not None
            batch = decode_readings(msg.payload)
            out: list[store.Item] = [dead(e) for e in batch.errors]
            good = []
            for i, r in enumerate(batch.readings):
                if r.device_id != topic.device_id:
                    out.append(dead(ContractError(
                        "topic", f"reading {i}: device_id {r.device_id!r} is not the topic's "
                                 f"{topic.device_id!r}")))
                elif r.ts > horizon:
                    out.append(dead(ContractError(
                        "future", f"reading {i}: ts {r.ts} is later than its arrival plus the "
                                  f"{max_future_ms} ms allowed")))
                else:
                    good.append(r)
            if good:
                out.append(store.ReadingsIn(topic.gateway_id, topic.device_id, good, msg.received_at,
                                            msg.topic, msg.payload))
            return out
        device_kind = _DEVICE_KINDS.get(topic.kind)
        if device_kind is not None:
            assert topic.gateway_id is not None
            message = decode(topic.kind, msg.payload)
            assert isinstance(message, device_kind.type)
            _same_device(message.device_id, topic.device_id)
            not_future(getattr(message, device_kind.event_time), device_kind.event_time)
            return [device_kind.item(topic.gateway_id, message, msg.received_at, msg.topic,
                                     msg.payload)]
        if topic.kind is Kind.GATEWAY_STATUS:
            assert topic.gateway_id is not None
            gw = decode(Kind.GATEWAY_STATUS, msg.payload)
            assert isinstance(gw, GatewayStatus)
            if gw.gateway_id is not None and gw.gateway_id != topic.gateway_id:
                raise ContractError("topic", f"gateway_id {gw.gateway_id!r} is not the topic's "
                                             f"{topic.gateway_id!r}")
            return [store.GatewayStatusIn(topic.gateway_id, gw, msg.received_at)]
        return []  # ews / cmd: not ours to consume (a wildcard overlap), nothing to store
    except ContractError as exc:
        return [dead(exc)]


#: a batch whose commit deadlocked with another instance's (or failed serialisation) is
#: committed again whole this many times at most: such a failure is the two transactions'
#: timing, not the batch's content, so it is never isolated into dead letters. Still failing
#: after them, the commit raises: the service's store-failure path pauses consuming and the
#: broker keeps the messages (redelivered, committed later).
CONFLICT_RETRIES: Final = 8
#: the wait before each retry: from 20 ms, doubling to 1 s, spread ±50 % so the two
#: transactions that crossed do not meet again in the same instant (8 retries: ~2.5 s in
#: all, a few hundred of the other instance's commits)
CONFLICT_BACKOFF: Final = Backoff(initial_s=0.02, factor=2.0, max_s=1.0, jitter=0.5)


def _transient_conflict(exc: BaseException) -> bool:
    """A deadlock (40P01) or serialisation failure (40001) of PostgreSQL."""
    return getattr(exc, "sqlstate", None) in ("40P01", "40001")


def _not_the_items(exc: BaseException) -> bool:
    """A failure that isolating items cannot cure: a conflict with another instance's commit,
    or the store closing under the transaction (:func:`ingest.db.interrupted`)."""
    return _transient_conflict(exc) or interrupted(exc)


def _same_device(payload_id: str, topic_id: str | None) -> None:
    if payload_id != topic_id:
        raise ContractError("topic", f"device_id {payload_id!r} is not the topic's {topic_id!r}")


def kind_of(topic: str, topics: Topics) -> str:
    try:
        return topics.parse(topic).kind.value
    except ContractError:
        return "invalid"


class ReasonLog:
    """Logs each reject reason at most once per ``every_ms`` (counters count every one)."""

    def __init__(self, clock: Callable[[], int], every_ms: int = LOG_EVERY_MS) -> None:
        self._clock = clock
        self._every = every_ms
        self._last: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    def reject(self, letter: store.DeadLetter) -> None:
        now = self._clock()
        last = self._last.get(letter.reason)
        if last is not None and now - last < self._every:
            self._suppressed[letter.reason] = self._suppressed.get(letter.reason, 0) + 1
            return
        self._last[letter.reason] = now
        more = self._suppressed.pop(letter.reason, 0)
        # topic and detail name what is wrong; no payload (it may carry patient data)
        log.warning("dead letter (%s) on %s: %s%s", letter.reason, letter.topic,
                    letter.detail[:300], f" (+{more} more since last logged)" if more else "")


AfterCommit = Callable[[store.CommitResult], Awaitable[None]]


class Consumer:
    """Owns the MQTT session; :meth:`run` consumes until cancelled."""

    def __init__(
        self,
        settings: IngestSettings,
        db: Database,
        metrics: IngestMetrics,
        *,
        after_commit: AfterCommit | None = None,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self._db = db
        self._metrics = metrics
        self._after_commit = after_commit
        #: called inside each commit's transaction with what it stored (issue 13: the feed's
        #: NOTIFY to the patients' owners, delivered exactly at commit); None on SQLite
        self.in_commit: Callable[[Conn, store.CommitResult], None] | None = None
        self._clock = clock
        self._reasons = ReasonLog(clock)
        #: the session of the running :meth:`run` (None between runs)
        self._session: MqttSession | None = None
        #: committed batches waiting for the after-commit stage (bounded: backpressure)
        self._post: asyncio.Queue[store.CommitResult] = asyncio.Queue(POST_QUEUE)
        self.connected = False
        self.newest_received = 0  #: arrival time of the newest committed message (epoch ms)
        self.committed_batches = 0
        #: times paho's thread had to wait for queue room (backpressure engaged)
        self.backpressure_waits = 0
        #: successful connections (1 = the first; more = reconnects)
        self.connects = 0
        #: own publishes that could not be sent (no session) or were never acknowledged
        self.publishes_lost = 0
        #: (topic, digest) of messages taken in a batch that has not committed yet
        self._uncommitted: set[tuple[str, str]] = set()
        self._future_ms = int(settings.max_future_skew_s * 1000)
        self._dead_limits = dead_letters.Limits(
            payload_bytes=settings.dead_letter_payload_bytes,
            max_rows=settings.dead_letters_max_rows, max_bytes=settings.dead_letters_max_bytes)
        self._ecg_limits = store.EcgLimits(max_chunks=settings.ecg_max_chunks,
                                           max_samples=settings.ecg_max_samples)

    # ----------------------------------------------------------------------------- MQTT side

    def _options(self) -> MqttOptions:
        s = self.settings
        # a persistent session acknowledged by hand after each commit; paho reconnects by
        # itself. Explicit settings beat the credentials in mqtt_url (as the gateway does)
        broker = dataclasses.replace(
            s.broker, tls=s.mqtt_tls, username=s.mqtt_username or s.broker.username,
            password=s.mqtt_password if s.mqtt_password is not None else s.broker.password)
        return MqttOptions(broker, s.client_id, protocol=s.mqtt_protocol, clean=False,
                           max_inflight=100, manual_ack=True, reconnect=RECONNECT, ca=s.mqtt_ca,
                           session_expiry_s=s.mqtt_session_expiry_s, receive_maximum=RECEIVE_MAXIMUM)

    # process issue: say at WARNING (once per outage) why ingest cannot reach its broker
    _connect_failures = 0

    def _unreachable(self, why: str) -> None:
        self._connect_failures += 1
        (log.warning if self._connect_failures == 1 else log.debug)(
            "MQTT broker %s not reachable (attempt %d: %s); retrying every %.0f-%.0f s in the "
            "background", broker_label(self.settings.broker), self._connect_failures, why,
            RECONNECT.initial_s, RECONNECT.max_s)

    def subscriptions(self) -> list[str]:
        subs = self.topics.gateway_subscriptions()
        group = self.settings.shared_group
        return [f"$share/{group}/{t}" for t in subs] if group else subs

    def _on_link(self, link: Link) -> None:
        """A connection of the session came up or went (the loop's thread)."""
        if link.event == "up":
            self.connects += 1
            self.connected = True
            self._metrics.mqtt_connected.set(1)
            self._connect_failures = 0
            # host:port only: mqtt_url may carry a password
            log.info("MQTT connected to %s (session present: %s)",
                     broker_label(self.settings.broker), link.session_present)
        elif link.event == "down":
            self.connected = False
            self._metrics.mqtt_connected.set(0)
            log.info("MQTT disconnected (%s); reconnecting in the background", link.detail)
        else:
            self._unreachable(link.detail)

    def _on_wait(self) -> None:
        """paho's thread starts waiting for queue room (backpressure): count it."""
        self.backpressure_waits += 1
        self._metrics.queue_full.inc()

    async def _connect(self) -> MqttSession:
        """The session, connected and subscribed. Until the broker first answers, the
        attempts back off here on paho's schedule; afterwards paho reconnects by itself."""
        s = self.settings
        attempt = 0
        while True:
            session = MqttSession(self._options(), subscriptions=self.subscriptions(),
                                  inbound_max=s.queue_max, keepalive_s=s.mqtt_keepalive_s,
                                  on_link=self._on_link, on_wait=self._on_wait)
            self._session = session  # a publish meanwhile waits in paho for the CONNACK
            try:
                return await session.__aenter__()
            except MqttRefused as exc:
                log.warning("MQTT connection refused: %s", exc)
            except MqttError as exc:
                self._unreachable(str(exc))
            finally:
                if session.ended is not None or not session.connects:
                    self._session = None
            await asyncio.sleep(RECONNECT.delay(attempt))
            attempt += 1

    def _disconnected(self) -> None:
        self._session = None
        self.connected = False
        self._metrics.mqtt_connected.set(0)

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish QoS 1 (paho keeps it while the session reconnects); without a session it
        is counted in ``publishes_lost`` and logged at DEBUG."""
        session = self._session
        if session is None:
            self.publishes_lost += 1
            log.debug("no MQTT session: %s not published", topic)
            return
        session.publish(topic, payload, qos=QOS, retain=retain).add_done_callback(self._published)

    def _published(self, done: asyncio.Future[None]) -> None:
        exc = done.exception()
        if exc is not None:
            self.publishes_lost += 1
            log.debug("publish not acknowledged: %s", exc)

    # ---------------------------------------------------------------------------- async side

    async def run(self) -> None:
        """Connect and consume until cancelled; then disconnect (in a thread of its own; a
        network thread waiting for queue room lets go, and what was not acknowledged is
        redelivered to the next session).

        Two stages: collect → commit → ack, and (in order, overlapping the next commit) the
        after-commit work (EWS scoring and publishing)."""
        session = await self._connect()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ingest_loop(session))
                tg.create_task(self._post_loop())
        finally:
            self._disconnected()
            await session.close()

    async def _ingest_loop(self, session: MqttSession) -> None:
        while True:
            batch = await self._collect(session)
            result = await self.commit(batch)
            await self._post.put(result)

    async def _post_loop(self) -> None:
        while True:
            result = await self._post.get()
            if self._after_commit is not None:
                await self._after_commit(result)

    async def _collect(self, session: MqttSession) -> list[Inbound]:
        loop = asyncio.get_running_loop()
        batch = [self._inbound(await session.receive())]
        deadline = loop.time() + self.settings.batch_window_ms / 1000
        while len(batch) < self.settings.batch_max:
            ready = session.receive_nowait()
            if ready is not None:
                batch.append(self._inbound(ready))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                message = await asyncio.wait_for(session.receive(), min(remaining, IDLE_GAP_S))
            except TimeoutError:
                break
            batch.append(self._inbound(message))
        return batch

    def _inbound(self, m: Message) -> Inbound:
        return Inbound(m.topic, m.payload, m.mid, m.qos, self._clock(), m.generation, m.dup)

    async def process(self, batch: Sequence[Inbound]) -> store.CommitResult:
        """Validate, commit, acknowledge, then the after-commit work (one stage after another)."""
        result = await self.commit(batch)
        if self._after_commit is not None:
            await self._after_commit(result)
        return result

    async def commit(self, batch: Sequence[Inbound]) -> store.CommitResult:
        """Validate, commit, then acknowledge the batch's messages. A failing commit is
        retried message by message, item by item (see the module's docstring)."""
        keys = [msg.key for msg in batch]
        suspects = {k for msg, k in zip(batch, keys, strict=True)
                    if msg.qos > 0 and (msg.dup or k in self._uncommitted)}
        if len(self._uncommitted) > UNCOMMITTED_MAX:
            self._uncommitted.clear()  # only QoS 0 leftovers can pile up here
        self._uncommitted.update(keys)
        looped: set[tuple[str, str]] = set()
        if suspects:
            now = self._clock()

            def record(conn: Conn) -> dict[tuple[str, str], int]:
                dead_letters.prune_deliveries(conn, now - DELIVERIES_KEPT_MS)
                return dead_letters.record_deliveries(conn, suspects, now)

            counts = await self._db.write(record)
            looped = {k for k, n in counts.items() if n >= self.settings.redelivery_max}
        parts: list[tuple[Inbound, list[store.Item]]] = []
        try:
            result = await self._write_retrying(
                lambda conn: self._commit(conn, batch, looped, suspects, parts), parts)
        except Exception as exc:  # one bad item must not fail its batch: isolate it
            if _not_the_items(exc):
                raise  # the timing of transactions (CONFLICT_RETRIES) or a closing store
            self._metrics.isolated_batches.inc()
            log.warning("commit of a batch of %d messages failed (%s); committing it message by "
                        "message", len(batch), type(exc).__name__)
            if len(parts) != len(batch):
                parts.clear()
            result = await self._write_retrying(
                lambda conn: self._commit_isolated(conn, batch, looped, suspects, parts), parts)
        self._uncommitted.difference_update(keys)
        session = self._session
        if session is not None:  # only on the connection a message came on (see ack)
            for msg in batch:
                session.ack(msg)
        self._account(batch, result)
        return result

    async def _write_retrying(self, fn: Callable[[Conn], store.CommitResult],
                              parts: list[tuple[Inbound, list[store.Item]]]
                              ) -> store.CommitResult:
        """``fn`` in one write transaction, again (whole, as it was) after a deadlock or a
        serialisation failure with another instance's commit (issue 13), up to
        :data:`CONFLICT_RETRIES` times."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                return await self._db.write(fn)
            except Exception as exc:
                if not _transient_conflict(exc) or attempt == CONFLICT_RETRIES:
                    raise
                self._metrics.commit_conflicts.inc()
                parts.clear()
                await asyncio.sleep(CONFLICT_BACKOFF.delay(attempt))
        raise AssertionError("unreachable")

    def _items_of(self, msg: Inbound, looped: set[tuple[str, str]]) -> list[store.Item]:
        """What one message becomes."""
        if looped and msg.key in looped:
            return [store.DeadLetter(
                msg.topic, msg.payload, "redelivery_loop",
                f"delivered again {self.settings.redelivery_max} times without ever being "
                "committed (the consumer failed on it each time): not processed again",
                msg.received_at)]
        try:
            items = classify(msg, self.topics, max_future_ms=self._future_ms)
        except Exception as exc:  # a decoder bug must not loop the consumer either
            items = [store.DeadLetter(msg.topic, msg.payload, "internal",
                                      f"decoding raised {type(exc).__name__}", msg.received_at)]
        return items

    def _store(self, conn: Conn, items: Sequence[store.Item]) -> store.CommitResult:
        s = self.settings
        result = store.commit_batch(conn, items, now=self._clock(), holder=s.device_holder,
                                    dead_limits=self._dead_limits, ecg_limits=self._ecg_limits,
                                    late_after_ms=int(s.late_after_s * 1000), ward_of=s.ward_of,
                                    max_age_ms=s.reading_window_ms[0])
        if self.in_commit is not None:
            self.in_commit(conn, result)
        return result

    def _commit(self, conn: Conn, batch: Sequence[Inbound],
                looped: set[tuple[str, str]], suspects: set[tuple[str, str]],
                parts: list[tuple[Inbound, list[store.Item]]]) -> store.CommitResult:
        parts.extend((msg, self._items_of(msg, looped)) for msg in batch)
        result = self._store(conn, [item for _, items in parts for item in items])
        if suspects:
            dead_letters.forget_deliveries(conn, suspects)
        return result

    def _commit_isolated(self, conn: Conn, batch: Sequence[Inbound],
                         looped: set[tuple[str, str]], suspects: set[tuple[str, str]],
                         parts: list[tuple[Inbound, list[store.Item]]]) -> store.CommitResult:
        """The batch again in one transaction: each message under a SAVEPOINT; a failing
        message item by item; an item failing alone becomes a ``store_error`` dead letter.
        If that dead letter cannot be written either, the store is failing: raise."""
        if not parts:
            parts.extend((msg, self._items_of(msg, looped)) for msg in batch)
        out = store.CommitResult()
        for msg, items in parts:
            part, exc = self._attempt(conn, items)
            if exc is not None and _not_the_items(exc):
                raise exc  # not the message's fault: the whole transaction again (or stop)
            if part is not None:
                out.merge(part)
                continue
            for item in _split(items):
                one, exc = self._attempt(conn, [item])
                if exc is not None and _not_the_items(exc):
                    raise exc  # not the item's fault: the whole transaction again (or stop)
                if one is None:
                    detail = f"the store refused {_what(item)}: {_exc_detail(exc)}"
                    one = self._store(conn, [store.DeadLetter(msg.topic, msg.payload,
                                                              "store_error", detail,
                                                              msg.received_at)])
                out.merge(one)
        if suspects:
            dead_letters.forget_deliveries(conn, suspects)
        return out

    def _attempt(self, conn: Conn, items: Sequence[store.Item]
                 ) -> tuple[store.CommitResult | None, BaseException | None]:
        try:
            with conn.savepoint():  # an error rolls back only this part (PostgreSQL too)
                return self._store(conn, items), None
        except Exception as exc:
            return None, exc

    def _account(self, batch: Sequence[Inbound], result: store.CommitResult) -> None:
        m = self._metrics
        for msg in batch:
            m.messages.inc(kind=kind_of(msg.topic, self.topics))
        for r in _first_vitals(result.readings):
            m.readings.inc(source=r)
        if result.duplicates:
            m.duplicates.inc(result.duplicates)
        for letter in result.dead:
            m.rejects.inc(reason=letter.reason)
            if letter.reason == "redelivery_loop":  # once per message: it is committed now
                log.warning("message on %s was delivered %d more times without being committed: "
                            "dead-lettered (redelivery_loop)", letter.topic,
                            self.settings.redelivery_max)
            else:
                self._reasons.reject(letter)
        if result.dead:
            m.dead_letters.inc(len(result.dead) - result.dead_repeats)
        if result.dead_repeats:
            m.dead_letter_repeats.inc(result.dead_repeats)
        if result.dead_evicted:
            m.dead_letters_evicted.inc(result.dead_evicted)
        if result.dead_stats is not None:
            m.dead_letter_rows.set(result.dead_stats.rows)
            m.dead_letter_bytes.set(result.dead_stats.bytes)
        if result.ecg_discarded:
            m.ecg_chunks_discarded.inc(result.ecg_discarded)
        m.batch_size.observe(len(batch))
        oldest = min(msg.received_at for msg in batch)
        m.commit_ms.observe(max(0, self._clock() - oldest))
        self.newest_received = max(self.newest_received, result.newest_received)
        self.committed_batches += 1

    @property
    def subscribed(self) -> bool:
        """Connected with its subscriptions in place: what is published from now on reaches it
        (``connected`` alone is the CONNACK, a moment before the SUBACK)."""
        session = self._session
        return session is not None and session.subscribed

    @property
    def queue_depth(self) -> int:
        return self._session.queued if self._session is not None else 0


def _split(items: Sequence[store.Item]) -> list[store.Item]:
    """Items one by one, a reading array reading by reading."""
    out: list[store.Item] = []
    for item in items:
        if isinstance(item, store.ReadingsIn) and len(item.readings) > 1:
            out.extend(dataclasses.replace(item, readings=[r]) for r in item.readings)
        else:
            out.append(item)
    return out


def _what(item: store.Item) -> str:
    if isinstance(item, store.ReadingsIn):
        return f"reading seq {item.readings[0].seq}" if len(item.readings) == 1 else "readings"
    if isinstance(item, store.EcgChunkIn):
        return f"ECG chunk {item.chunk.seq} of {item.chunk.recording!r}"
    if isinstance(item, store.DeviceStatusIn):
        return "the device status"
    if isinstance(item, store.GatewayStatusIn):
        return "the gateway status"
    return f"the {item.reason} dead letter"


def _exc_detail(exc: BaseException | None) -> str:
    """The exception's type, and the first line of its message when it comes from the store
    (SQLite's and PostgreSQL's first lines name columns and constraints; PostgreSQL's DETAIL
    line, which may quote values, is left out); never the payload."""
    if exc is None:
        return "unknown error"
    # the driver-neutral class for the store's errors (sqlite3's and psycopg's differ)
    name = ("IntegrityError" if isinstance(exc, IntegrityError) else "OperationalError"
            if isinstance(exc, OperationalError) else type(exc).__name__)
    if isinstance(exc, (*DatabaseError, OverflowError)):
        lines = str(exc).strip().splitlines()
        return f"{name} ({(lines[0] if lines else '')[:200]})"
    return name


def _first_vitals(rows: Iterable[store.StoredReading]) -> list[str]:
    """One source label per committed reading (rows are per vital; count a reading once)."""
    seen: set[tuple[str, int | None, int]] = set()
    out = []
    for r in rows:
        key = (r.device_id, r.seq, r.ts)
        if key not in seen:
            seen.add(key)
            out.append(r.source)
    return out


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()

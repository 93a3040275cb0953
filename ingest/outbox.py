"""The durable outbox: every message reaches its channel's upstream, in order per patient,
nothing lost across restarts, whichever instance delivers it.

A producer writes a row with :func:`ingest.db.outbox.enqueue` inside its own store transaction
(the EWS engine beside each history row: channel ``cexup``), then calls :meth:`Outbox.notify`.
:class:`Outbox` runs one worker per registered channel; a worker claims due rows (a lease:
instance id + expiry, see :mod:`ingest.db.outbox`), hands each to the channel's
:class:`Transport`, and records the :class:`Outcome`. A channel registers with::

    outbox.register("fhir", MyTransport(...), retry=RetryPolicy(...))  # before run()

where ``MyTransport.send(row) -> Outcome`` is async (optionally an async context manager, entered
for the worker's lifetime). States (``ingest.db.outbox.State``):

``pending``   waiting for (re)delivery, or in flight under a lease;
``delivered`` the upstream took it;
``failed``    the upstream refused it for good (for Cexup a 4xx other than 408/429): not retried,
              the next row of the patient proceeds; visible in :meth:`Outbox.failed`;
``local``     no upstream is configured: recorded for the local API only, never sent.

Order: only the oldest pending row of each patient of a channel is ever in flight, on every
instance together, so a patient's later message never overtakes an earlier undelivered one;
at most ``RetryPolicy.concurrency`` patients are in flight per worker. Delivery is
at-least-once: a crash after the upstream accepted a row but before it was marked delivered
sends it again, after the restart (same instance id) or when its lease expires (any other).

The Cexup EWS POST is :class:`CexupTransport` (``POST {upstream}/ews``, header ``x-api-key``,
the Cexup body verbatim), registered by ``Outbox(..., upstream_url=...)`` as channel ``cexup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Generic, Protocol, Self, TypeVar

import aiohttp

from ingest.db import Conn, Database, Dialect, Location
from ingest.db import outbox as table
from ingest.db.outbox import Row, State, enqueue
from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms

log = logging.getLogger(__name__)

#: the channel of the Cexup EWS POST (the previous release's only one).
CEXUP: Final = "cexup"


#: how a delivery retries: first retry after 1 s (long enough for a restarting upstream's
#: listener, short enough that a single dropped connection costs a clinician nothing
#: noticeable); doubling, 1, 2, 4, 8, ... s; never more than 60 s between attempts (an EWS
#: escalation must reach the platform within about a minute of its recovery, so the jitter
#: only shortens: ``shorten_only``); up to 20 % shorter at random, so many services do not
#: retry in lockstep.
DELIVERY_BACKOFF: Final = Backoff(initial_s=1.0, factor=2.0, max_s=60.0, jitter=0.2,
                                  shorten_only=True)


@dataclass(frozen=True)
class RetryPolicy:
    """How a channel delivers: its retry delays (a :class:`vitalgate.backoff.Backoff`, the one
    retry-delay type) and the bounds of one attempt."""

    #: the delay before retry ``n`` (1-based) is ``backoff.delay(n - 1)``
    backoff: Backoff = DELIVERY_BACKOFF
    #: a request taking longer than 10 s is abandoned and retried (the platform answers a
    #: healthy POST in well under a second; 10 s rides out a GC pause or a slow proxy).
    timeout_s: float = 10.0
    #: a Retry-After longer than 1 h is taken as 1 h: a misconfigured proxy must not park
    #: clinical alerts for a day.
    retry_after_cap_s: float = 3600.0
    #: at most this many patients' items in flight at once (one per patient, keeping order).
    concurrency: int = 4
    #: with nothing pending, look at the table every 5 s anyway (rows written by another process).
    idle_poll_s: float = 5.0

    def __post_init__(self) -> None:
        if self.backoff.initial_s <= 0:
            raise ValueError(f"a delivery backoff needs initial_s > 0: {self.backoff}")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise ValueError(f"concurrency >= 1 and timeout_s > 0 required: {self}")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.backoff.delay(attempt - 1, rng.random)


class Verdict(StrEnum):
    """What an attempt's outcome means (the retry table in docs/ews-delivery.md)."""

    DELIVERED = "delivered"
    FAILED = "failed"  # refused for good
    RETRY_ITEM = "retry-item"  # retry this item later; other patients proceed
    RETRY_ALL = "retry-all"  # the upstream is unwell: everyone waits


#: statuses after which the whole upstream is treated as unavailable (every patient waits):
#: rate limiting applies to this client as a whole; 502/503/504 are the proxy or service down.
_UPSTREAM_WIDE: Final = frozenset({429, 502, 503, 504})


def verdict_of(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in _UPSTREAM_WIDE:
        return Verdict.RETRY_ALL
    if status == 408 or status >= 500:
        return Verdict.RETRY_ITEM
    return Verdict.FAILED  # 3xx (not followed for a POST) and the other 4xx


def effective_status(http_status: int, text: str) -> int:
    """The HTTP status, or the envelope's ``code`` when a 2xx body carries a non-2xx code
    (some Cexup services answer HTTP 200 with ``{"code": 400, ...}``). ``code`` may be an int or
    a string ("200")."""
    if not 200 <= http_status < 300:
        return http_status
    try:
        body = json.loads(text) if text else None
    except ValueError:
        return http_status
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(code, bool):
        return http_status
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code.strip())
    if isinstance(code, int) and 100 <= code < 600:
        return code
    return http_status


def retry_after_s(value: str | None, now_ms: int) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_ms / 1000)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: ``verdict`` (delivered, failed for good, retry this row, or
    the whole upstream is unwell), the upstream's ``status`` if any, the ``error`` / reason
    recorded with the row, and the upstream's ``retry_after`` (seconds) if it said one."""

    verdict: Verdict
    status: int | None = None
    error: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls, status: int | None = None) -> Outcome:
        return cls(Verdict.DELIVERED, status)

    @classmethod
    def failed(cls, reason: str, status: int | None = None) -> Outcome:
        return cls(Verdict.FAILED, status, reason)

    @classmethod
    def retry(cls, reason: str, *, status: int | None = None, after_s: float | None = None,
              upstream_wide: bool = False) -> Outcome:
        return cls(Verdict.RETRY_ALL if upstream_wide else Verdict.RETRY_ITEM, status, reason,
                   after_s)


class Transport(Protocol):
    """Delivers one row of a channel. Must not raise for an upstream's failure: say it in the
    Outcome (an exception is recorded as an upstream-wide retry)."""

    async def send(self, row: Row) -> Outcome: ...


class Closeable(Protocol):
    async def close(self) -> None: ...


_Client = TypeVar("_Client", bound=Closeable)


class ClientTransport(Generic[_Client]):
    """Base of a Transport over a client that connects when it is asked to send (the HL7 MLLP
    pool, the FHIR client): nothing to open when the channel's worker starts, and the client
    closed when it ends. A subclass adds ``send``."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


class JsonPostTransport:
    """``POST`` each row's body (JSON) to one URL; the answer's status (``status_of``: the HTTP
    status, or what the body says it is) and its Retry-After decide the Outcome. Connection
    errors and timeouts hold the whole channel (the upstream is unwell, not the row)."""

    def __init__(self, url: str, *, timeout_s: float, headers: dict[str, str] | None = None,
                 status_of: Callable[[int, str], int] = lambda status, _text: status,
                 clock: Callable[[], int] = epoch_ms,
                 session_factory: Callable[[], aiohttp.ClientSession] | None = None) -> None:
        self.url = url
        self._headers = {"content-type": "application/json", "accept": "application/json",
                         **(headers or {})}
        self._status_of = status_of
        self._timeout_s = timeout_s
        self._clock = clock
        self._session_factory = session_factory or self._default_session
        self._session: aiohttp.ClientSession | None = None

    def _default_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        await self._session.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, row: Row) -> Outcome:
        session = self._session
        if session is None:
            raise RuntimeError(f"{type(self).__name__}.send outside its context")
        try:
            async with session.post(self.url, data=row.body.encode(),
                                    headers=self._headers) as resp:
                text = await resp.text(errors="replace")
                status = self._status_of(resp.status, text)
                after = retry_after_s(resp.headers.get("Retry-After"), self._clock())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome(Verdict.RETRY_ALL, None, f"{type(exc).__name__}: {exc}"[:500])
        return Outcome(verdict_of(status), status, text[:2000], after)


class CexupTransport(JsonPostTransport):
    """``POST {upstream_url}/ews`` with the row's body (the Cexup JSON), ``x-api-key``; a 200
    whose body carries an error code counts as that code (:func:`effective_status`)."""

    def __init__(self, upstream_url: str, api_key: str | None, *, timeout_s: float,
                 clock: Callable[[], int] = epoch_ms,
                 session_factory: Callable[[], aiohttp.ClientSession] | None = None) -> None:
        super().__init__(upstream_url.rstrip("/") + "/ews", timeout_s=timeout_s,
                         headers={"x-api-key": api_key} if api_key else None,
                         status_of=effective_status, clock=clock,
                         session_factory=session_factory)


def open_store(location: Location | Path, *, name: str = "ews") -> Database:
    """A Database holding the outbox table (and nothing else): for a channel whose rows are
    not written beside EWS history. The EWS store (:func:`ingest.db.ews.open_store`) holds it too."""
    if isinstance(location, Path):
        location = Location.parse(None, default_path=location)
    return Database(location, setup=table.setup, name=name)


@dataclass
class _Channel:
    """One channel's worker state."""

    name: str
    transport: Transport
    retry: RetryPolicy
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    hold_until: int = 0  #: epoch ms: the whole upstream is unavailable until then
    wide_failures: int = 0  #: consecutive upstream-wide failures (backoff exponent)
    attempts: int = 0  #: attempts since start
    retried: int = 0  #: attempts scheduled for a retry since start
    lost_leases: int = 0  #: outcomes not recorded: the lease had passed to another instance


class Outbox:
    """The store's outbox: one delivery worker per registered channel, until cancelled.

    ``db`` is the store the producers enqueue into (a Path: a SQLite file opened here).
    ``instance_id`` names this instance's leases (distinct per instance on one PostgreSQL);
    ``lease_ms`` is how long a claim holds (default: twice the policy's timeout plus 30 s, so
    a live instance always settles before its lease ends). With ``upstream_url``, channel
    ``cexup`` is registered with :class:`CexupTransport` and ``retry``.
    """

    def __init__(
        self,
        db: Database | Path,
        *,
        upstream_url: str | None = None,
        api_key: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], int] = epoch_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        rng: random.Random | None = None,
        instance_id: str = "local",
        lease_ms: int | None = None,
    ) -> None:
        self._owned = isinstance(db, Path)
        self._db = open_store(db) if isinstance(db, Path) else db
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.instance_id = instance_id
        self._lease_ms = lease_ms
        self._channels: dict[str, _Channel] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        if upstream_url:
            self.register(CEXUP, CexupTransport(upstream_url, api_key, timeout_s=retry.timeout_s,
                                                clock=clock, session_factory=session_factory),
                          retry=retry)

    @property
    def db(self) -> Database:
        return self._db

    @property
    def enabled(self) -> bool:
        """Whether the Cexup channel delivers (an upstream is configured)."""
        return CEXUP in self._channels

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def register(self, channel: str, transport: Transport, *,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        """Deliver ``channel``'s rows with ``transport`` (before :meth:`run`)."""
        if self._running:
            raise RuntimeError("register channels before Outbox.run()")
        if channel in self._channels:
            raise ValueError(f"outbox channel {channel!r} is registered already")
        self._channels[channel] = _Channel(channel, transport, retry)

    def _lease(self, ch: _Channel) -> int:
        return self._lease_ms if self._lease_ms is not None else int(
            (2 * ch.retry.timeout_s + 30) * 1000)

    # ---------------------------------------------------------------- waking

    def notify(self, channel: str | None = None) -> None:
        """New rows were committed (on ``channel``, or any): deliver now. Any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: run() will look at the table when it starts
        targets = [c for c in self._channels.values() if channel is None or c.name == channel]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for ch in targets:
            if running is loop:
                ch.wake.set()
            else:
                loop.call_soon_threadsafe(ch.wake.set)

    # ---------------------------------------------------------------- reporting

    def stats(self, channel: str = CEXUP) -> dict[str, int]:
        """``depth`` (pending), ``delivered``, ``failed``, ``local`` (rows by state), ``attempts``
        and ``retried`` (this instance, since start)."""
        m = self.metrics(channel)
        return {k: m[k] for k in ("depth", "delivered", "failed", "local", "attempts", "retried")}

    def metrics(self, channel: str = CEXUP) -> dict[str, int]:
        """:meth:`stats` and ``in_flight`` (rows leased now, by any instance),
        ``oldest_pending_age_ms`` (processing time since the oldest pending row was enqueued),
        ``lost_leases`` (outcomes not recorded: the row had passed to another instance)."""
        now = self._clock()
        counts = self._db.read_sync(lambda c: table.counts(c, channel, now))
        ch = self._channels.get(channel)
        return {**counts, "attempts": ch.attempts if ch else 0, "retried": ch.retried if ch else 0,
                "lost_leases": ch.lost_leases if ch else 0}

    def all_metrics(self) -> dict[str, dict[str, int]]:
        """:meth:`metrics` of every registered channel (and ``cexup``, always)."""
        return {c: self.metrics(c) for c in dict.fromkeys((CEXUP, *self._channels))}

    def failed(self, limit: int = 100, channel: str = CEXUP) -> list[dict[str, Any]]:
        """The most recent refused items, newest first, with the upstream's status and body."""
        return self._db.read_sync(lambda c: table.failed(c, channel, limit))

    def requeue_failed(self, channel: str = CEXUP) -> int:
        """Make every failed item pending again (after fixing e.g. the API key); returns how many."""
        now = self._clock()
        n = self._db.write_sync(lambda c: table.requeue_failed(c, channel, now))
        self.notify(channel)
        return n

    # ---------------------------------------------------------------- delivery

    async def run(self) -> None:
        """Deliver every channel until cancelled. Without channels, idles (rows stay as written)."""
        self._loop = asyncio.get_running_loop()
        if not self._channels:
            log.info("EWS outbox: no upstream configured, EWS points are kept locally")
            await asyncio.Event().wait()
            return
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                for ch in self._channels.values():
                    tg.create_task(self._work(ch), name=f"outbox-{ch.name}")
        finally:
            self._running = False

    async def _work(self, ch: _Channel) -> None:
        """The channel's worker: delivers until cancelled. A store failure (disk, server gone)
        or a transport that cannot start is logged and retried after ``idle_poll_s``, without
        stopping the other channels."""
        while True:
            try:
                await self._deliver_until_cancelled(ch)
            except Exception:
                log.exception("outbox %s: delivery stopped; again in %.0f s", ch.name,
                              ch.retry.idle_poll_s)
                await self._sleep(ch.retry.idle_poll_s)

    async def _deliver_until_cancelled(self, ch: _Channel) -> None:
        owner = None if self._db.dialect is Dialect.SQLITE else self.instance_id
        # a previous life's claims (SQLite: one process, so every lease is a previous life's)
        await self._db.write(lambda c: table.release(c, ch.name, owner))
        try:
            async with contextlib.AsyncExitStack() as stack:
                if isinstance(ch.transport, contextlib.AbstractAsyncContextManager):
                    await stack.enter_async_context(ch.transport)
                while True:
                    ch.wake.clear()
                    if await self._deliver_due(ch):
                        continue
                    await self._wait(ch, await self._next_delay_s(ch))
        finally:
            # claims not attempted go back at once (not after their lease); shielded from
            # the cancellation that is stopping us
            with contextlib.suppress(Exception):
                await asyncio.shield(self._db.write(
                    lambda c: table.release(c, ch.name, self.instance_id)))

    async def _wait(self, ch: _Channel, delay_s: float | None) -> None:
        if delay_s is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.wake.wait(), ch.retry.idle_poll_s)
            return
        waker = asyncio.ensure_future(ch.wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(delay_s))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)

    async def _next_delay_s(self, ch: _Channel) -> float | None:
        """Seconds until something is due; None when nothing is pending."""
        due = await self._db.read(lambda c: table.next_due(c, ch.name))
        if due is None:
            return None
        return max(0.0, (max(due, ch.hold_until) - self._clock()) / 1000)

    async def _deliver_due(self, ch: _Channel) -> int:
        now = self._clock()
        if now < ch.hold_until:
            return 0
        lease_ms = self._lease(ch)

        def claim(conn: Conn) -> list[Row]:
            return table.claim(conn, ch.name, now=now, limit=ch.retry.concurrency,
                               owner=self.instance_id, lease_ms=lease_ms)

        items = await self._db.write(claim)
        if not items:
            return 0
        outcomes = await asyncio.gather(*(self._attempt(ch, item) for item in items))
        if any(o.verdict is Verdict.DELIVERED for o in outcomes):
            ch.wide_failures = 0
        wide_backoff = 0.0
        if any(o.verdict is Verdict.RETRY_ALL for o in outcomes):
            ch.wide_failures += 1  # once per round, however many items hit the outage
            wide_backoff = ch.retry.delay_s(ch.wide_failures, self._rng)
        # retries are recorded together, after the round (an outage's backoff is the round's)
        settled = [self._settle(ch, item, outcome, wide_backoff)
                   for item, outcome in zip(items, outcomes, strict=True)
                   if outcome.verdict in (Verdict.RETRY_ALL, Verdict.RETRY_ITEM)]
        wide_delay = max((s[0] for s in settled), default=0.0)
        if settled:
            await self._record(ch, [args for _, args in settled])
        if wide_delay > 0:
            ch.hold_until = self._clock() + int(wide_delay * 1000)
        return len(items)

    async def _attempt(self, ch: _Channel, item: Row) -> Outcome:
        """Send one row; a final outcome (delivered, refused) is recorded at once, so that a
        slow item of the round never leaves a delivered one unrecorded (and sent again after
        a crash)."""
        outcome = await self._send(ch, item)
        if outcome.verdict in (Verdict.DELIVERED, Verdict.FAILED):
            await self._record(ch, [self._settle(ch, item, outcome, 0.0)[1]])
        return outcome

    async def _record(self, ch: _Channel, settled: list[dict[str, Any]]) -> None:
        def record(conn: Conn) -> int:
            return sum(not table.settle(conn, owner=self.instance_id, **args) for args in settled)

        lost = await self._db.write(record)
        if lost:
            ch.lost_leases += lost
            log.warning("outbox %s: %d outcomes not recorded: their lease had expired and"
                        " another instance claimed them", ch.name, lost)

    async def _send(self, ch: _Channel, item: Row) -> Outcome:
        ch.attempts += 1
        try:
            # a backstop for a transport that ignores the policy's timeout: the lease must
            # not end while this instance is still waiting
            return await asyncio.wait_for(ch.transport.send(item), 2 * ch.retry.timeout_s)
        except TimeoutError:
            return Outcome(Verdict.RETRY_ALL, None, "TimeoutError: the transport did not answer")
        except Exception as exc:  # a transport's bug must not stop the channel
            log.exception("outbox %s: transport raised on item %d", ch.name, item.id)
            return Outcome(Verdict.RETRY_ALL, None, f"{type(exc).__name__}: {exc}"[:500])

    def _settle(self, ch: _Channel, item: Row, outcome: Outcome,
                wide_backoff: float) -> tuple[float, dict[str, Any]]:
        """The row's new state, and the seconds the whole upstream must be left alone."""
        now = self._clock()
        attempts = item.attempts + 1
        wide = 0.0
        if outcome.verdict is Verdict.DELIVERED:
            state, next_at = State.DELIVERED, 0
        elif outcome.verdict is Verdict.FAILED:
            state, next_at = State.FAILED, 0
            log.warning("outbox %s item %d refused by upstream with status %s", ch.name, item.id,
                        outcome.status)
        else:
            ch.retried += 1
            state = State.PENDING
            if outcome.verdict is Verdict.RETRY_ALL:
                delay = wide_backoff
            else:
                delay = ch.retry.delay_s(attempts, self._rng)
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, ch.retry.retry_after_cap_s)
            if outcome.verdict is Verdict.RETRY_ALL:
                wide = delay
            next_at = now + int(delay * 1000)
            log.info("outbox %s item %d: %s, retry in %.1f s", ch.name, item.id,
                     outcome.status or outcome.error, delay)
        return wide, {"row_id": item.id, "state": state, "attempts": attempts,
                      "next_at": next_at, "now": now, "status": outcome.status,
                      "error": None if state is State.DELIVERED else outcome.error}

    def retention_step(self, cutoff_ms: int, batch: int) -> dict[str, int]:
        """Retention of the outbox (processing time: ``updated_at`` before ``cutoff_ms``), at most
        ``batch`` rows: delivered and local items, and failed ones (refused for good; they were
        counted and listed by the API while the window lasted). A pending item is never
        deleted, however old: it has not been delivered yet."""
        n = self._db.write_sync(lambda c: table.retention_step(c, cutoff_ms, batch))
        return {table.TABLE: n} if n else {}

    def close(self) -> None:
        """Close the store if this outbox opened it (a Path was given)."""
        if self._owned:
            self._db.close()


__all__ = [
    "CEXUP",
    "CexupTransport",
    "JsonPostTransport",
    "Outbox",
    "Outcome",
    "RetryPolicy",
    "Row",
    "State",
    "Transport",
    "Verdict",
    "effective_status",
    "enqueue",
    "retry_after_s",
    "verdict_of",
]

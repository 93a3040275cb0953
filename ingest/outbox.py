"""The durable EWS outbox: every emitted EWS point reaches the Cexup platform, in order per patient.

The engine writes an outbox row in the same SQLite transaction as the history row
(:mod:`ingest.ews_engine`); :class:`Outbox` delivers the rows with ``POST {upstream}/ews``
(header ``x-api-key``, the Cexup body). Rows survive restarts: a new Outbox on the same database
resumes what is pending. States:

``pending``   waiting for (re)delivery;
``delivered`` the platform answered 2xx (and, if the body carries ``code``, a 2xx code);
``failed``    the platform refused the item (a 4xx other than 408/429): not retried, the next
              item of the patient proceeds; visible in :meth:`Outbox.failed`;
``local``     no upstream is configured: recorded for the local API only, never sent.

Order: only the oldest pending row of each patient is ever in flight, so a patient's later point
never overtakes an earlier undelivered one. Delivery is at-least-once: a crash after the platform
accepted an item but before it was marked delivered sends it again after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import aiohttp

from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms

log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ews_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    history_id  INTEGER,
    user_code   TEXT    NOT NULL,
    body        TEXT    NOT NULL,          -- the Cexup JSON body, sent verbatim
    state       TEXT    NOT NULL,          -- pending | delivered | failed | local
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL DEFAULT 0, -- epoch ms: not before
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    status      INTEGER,                   -- last HTTP status (or body code)
    error       TEXT                       -- last error: response body or exception
);
CREATE INDEX IF NOT EXISTS ews_outbox_state ON ews_outbox (state, user_code, id);
"""


class State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    LOCAL = "local"


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on locks."""
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")  # other writers share the file: wait, don't fail
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    conn.executescript(SCHEMA)
    return conn


def enqueue(conn: sqlite3.Connection, *, history_id: int | None, user_code: str, body: dict[str, Any],
            state: State, now: int) -> int:
    """Insert one outbox row inside the caller's transaction; returns its id."""
    cur = conn.execute(
        "INSERT INTO ews_outbox (history_id, user_code, body, state, next_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 0, ?, ?)",
        (history_id, user_code, json.dumps(body, separators=(",", ":")), state.value, now, now),
    )
    return int(cur.lastrowid or 0)


@dataclass(frozen=True)
class RetryPolicy:
    """How delivery retries. Delay before retry ``n`` (1-based) is
    ``min(max_s, base_s * factor ** (n - 1))``, shortened by a random fraction up to ``jitter``.
    """

    #: first retry after 1 s: long enough for a restarting upstream's listener, short enough
    #: that a single dropped connection costs a clinician nothing noticeable.
    base_s: float = 1.0
    #: doubling: 1, 2, 4, 8, ... s — the standard exponential backoff.
    factor: float = 2.0
    #: never wait more than 60 s between attempts: an EWS escalation must reach the platform
    #: within about a minute of the platform's recovery.
    max_s: float = 60.0
    #: up to 20 % shorter at random, so many gateways/services do not retry in lockstep.
    jitter: float = 0.2
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
        if self.base_s <= 0 or self.factor < 1 or self.max_s < self.base_s:
            raise ValueError(f"retry policy needs base_s > 0, factor >= 1, max_s >= base_s: {self}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise ValueError(f"concurrency >= 1 and timeout_s > 0 required: {self}")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return Backoff(self.base_s, self.factor, self.max_s, self.jitter,
                       shorten_only=True).delay(attempt - 1, rng.random)


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
class _Item:
    id: int
    user_code: str
    body: str
    attempts: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    verdict: Verdict
    status: int | None
    error: str
    retry_after: float | None = None


class Outbox:
    """Delivers ``ews_outbox`` rows to ``{upstream_url}/ews`` until cancelled."""

    def __init__(
        self,
        db_path: Path,
        *,
        upstream_url: str | None,
        api_key: str | None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], int] = epoch_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = connect(db_path)
        self._url = upstream_url.rstrip("/") + "/ews" if upstream_url else None
        self._api_key = api_key
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._session_factory = session_factory or self._default_session
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hold_until = 0  # epoch ms: the whole upstream is unavailable until then
        self._wide_failures = 0  # consecutive upstream-wide failures (backoff exponent)
        self._lock = threading.Lock()
        self.attempts = 0  # HTTP attempts since start
        self.retried = 0  # attempts that were scheduled for a retry since start

    def _default_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._retry.timeout_s))

    @property
    def enabled(self) -> bool:
        return self._url is not None

    # ---------------------------------------------------------------- waking

    def notify(self) -> None:
        """New rows were committed: deliver now. Safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: run() will look at the table when it starts
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # ---------------------------------------------------------------- reporting

    def stats(self) -> dict[str, int]:
        """``depth`` (pending), ``delivered``, ``failed``, ``local`` (rows by state), ``attempts``
        and ``retried`` (since start)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM ews_outbox GROUP BY state").fetchall()
        by_state = {str(s): int(n) for s, n in rows}
        return {
            "depth": by_state.get(State.PENDING, 0),
            "delivered": by_state.get(State.DELIVERED, 0),
            "failed": by_state.get(State.FAILED, 0),
            "local": by_state.get(State.LOCAL, 0),
            "attempts": self.attempts,
            "retried": self.retried,
        }

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent refused items, newest first, with the platform's status and body."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, user_code, body, attempts, status, error, created_at, updated_at"
                " FROM ews_outbox WHERE state = ? ORDER BY id DESC LIMIT ?",
                (State.FAILED.value, limit),
            ).fetchall()
        return [
            {"id": r[0], "user_code": r[1], "body": json.loads(r[2]), "attempts": r[3],
             "status": r[4], "error": r[5], "created_at": r[6], "updated_at": r[7]}
            for r in rows
        ]

    def requeue_failed(self) -> int:
        """Make every failed item pending again (after fixing e.g. the API key); returns how many."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE ews_outbox SET state = ?, next_at = 0, updated_at = ? WHERE state = ?",
                (State.PENDING.value, self._clock(), State.FAILED.value),
            )
        self.notify()
        return cur.rowcount

    # ---------------------------------------------------------------- delivery

    async def run(self) -> None:
        """Deliver until cancelled. Without an upstream, idles (rows stay as the engine wrote them)."""
        self._loop = asyncio.get_running_loop()
        if self._url is None:
            log.info("EWS outbox: no upstream configured, EWS points are kept locally")
            await asyncio.Event().wait()
            return
        async with self._session_factory() as session:
            while True:
                self._wake.clear()
                if await self._deliver_due(session):
                    continue
                delay = self._next_delay_s()
                await self._wait(delay)

    async def _wait(self, delay_s: float | None) -> None:
        if delay_s is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._retry.idle_poll_s)
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(delay_s))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)

    def _heads(self, now: int) -> list[_Item]:
        """The oldest pending row of each patient, if due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.id, o.user_code, o.body, o.attempts FROM ews_outbox o JOIN"
                " (SELECT MIN(id) AS id FROM ews_outbox WHERE state = 'pending' GROUP BY user_code) h"
                " ON o.id = h.id WHERE o.next_at <= ? ORDER BY o.id LIMIT ?",
                (now, self._retry.concurrency),
            ).fetchall()
        return [_Item(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    def _next_delay_s(self) -> float | None:
        """Seconds until something is due; None when nothing is pending."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(o.next_at) FROM ews_outbox o JOIN"
                " (SELECT MIN(id) AS id FROM ews_outbox WHERE state = 'pending' GROUP BY user_code) h"
                " ON o.id = h.id"
            ).fetchone()
        if row is None or row[0] is None:
            return None
        due = max(int(row[0]), self._hold_until)
        return max(0.0, (due - self._clock()) / 1000)

    async def _deliver_due(self, session: aiohttp.ClientSession) -> int:
        now = self._clock()
        if now < self._hold_until:
            return 0
        items = self._heads(now)
        if not items:
            return 0
        outcomes = await asyncio.gather(*(self._post(session, item) for item in items))
        if any(o.verdict is Verdict.DELIVERED for o in outcomes):
            self._wide_failures = 0
        wide_backoff = 0.0
        if any(o.verdict is Verdict.RETRY_ALL for o in outcomes):
            self._wide_failures += 1  # once per round, however many items hit the outage
            wide_backoff = self._retry.delay_s(self._wide_failures, self._rng)
        wide_delay = 0.0
        for item, outcome in zip(items, outcomes, strict=True):
            wide_delay = max(wide_delay, self._settle(item, outcome, wide_backoff))
        if wide_delay > 0:
            self._hold_until = self._clock() + int(wide_delay * 1000)
        return len(items)

    async def _post(self, session: aiohttp.ClientSession, item: _Item) -> _Outcome:
        assert self._url is not None
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        self.attempts += 1
        try:
            async with session.post(self._url, data=item.body.encode(), headers=headers) as resp:
                text = await resp.text(errors="replace")
                status = effective_status(resp.status, text)
                after = retry_after_s(resp.headers.get("Retry-After"), self._clock())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Outcome(Verdict.RETRY_ALL, None, f"{type(exc).__name__}: {exc}"[:500])
        return _Outcome(verdict_of(status), status, text[:2000], after)

    def _settle(self, item: _Item, outcome: _Outcome, wide_backoff: float) -> float:
        """Record the outcome; returns the seconds the whole upstream must be left alone (0: none)."""
        now = self._clock()
        attempts = item.attempts + 1
        wide = 0.0
        if outcome.verdict is Verdict.DELIVERED:
            state, next_at = State.DELIVERED, 0
        elif outcome.verdict is Verdict.FAILED:
            state, next_at = State.FAILED, 0
            log.warning("EWS outbox item %d refused by upstream with status %s", item.id, outcome.status)
        else:
            self.retried += 1
            state = State.PENDING
            if outcome.verdict is Verdict.RETRY_ALL:
                delay = wide_backoff
            else:
                delay = self._retry.delay_s(attempts, self._rng)
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, self._retry.retry_after_cap_s)
            if outcome.verdict is Verdict.RETRY_ALL:
                wide = delay
            next_at = now + int(delay * 1000)
            log.info("EWS outbox item %d: %s, retry in %.1f s", item.id,
                     outcome.status or outcome.error, delay)
        with self._lock:
            self._db.execute(
                "UPDATE ews_outbox SET state = ?, attempts = ?, next_at = ?, updated_at = ?,"
                " status = ?, error = ? WHERE id = ?",
                (state.value, attempts, next_at, now, outcome.status,
                 None if state is State.DELIVERED else outcome.error, item.id),
            )
        return wide

    def retention_step(self, cutoff_ms: int, batch: int) -> dict[str, int]:
        """Retention of the outbox (processing time: ``updated_at`` before ``cutoff_ms``), at most
        ``batch`` rows: delivered and local items, and failed ones (refused for good by the
        platform; they were counted and listed by the API while the window lasted). A pending
        item is never deleted, however old: it has not been delivered yet."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM ews_outbox WHERE id IN (SELECT id FROM ews_outbox WHERE state IN"
                " (?, ?, ?) AND updated_at < ? LIMIT ?)",
                (State.DELIVERED.value, State.LOCAL.value, State.FAILED.value, cutoff_ms, batch))
        return {"ews_outbox": cur.rowcount} if cur.rowcount else {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The ingestion service: one aiohttp application that owns every part and task.

Built eagerly (store, metrics, EWS engine, outbox, optional InfluxDB writer, MQTT consumer,
HTTP routes); its ``cleanup_ctx`` starts the background tasks when the app starts and cancels
them when it stops:

* ``consumer``   MQTT → validate → group commit → ack → EWS engine → publish EWS (retained)
* ``ews-tick``   the engine's staleness / held-back changes / heartbeats, every few seconds
* ``outbox``     delivery of EWS points to the Cexup platform
* ``ecg``        analysis of completed ECG recordings (in a worker thread)
* ``retention``  deletes rows older than ``retention_days`` in small batches (on PostgreSQL
                 whole readings partitions first)
* ``partitions`` (PostgreSQL) makes the readings partitions of the accepted event-time window
                 ahead, every ``partition_interval_s``
* ``gaps``       asks gateways to republish sequence gaps; reports the ones that stay

A task that fails is logged, counted (``vitalgate_ingest_errors_total{task}``) and restarted
after a second: one bad moment never stops ingestion. A store that cannot write (disk full,
read-only) is the exception: the consumer then stops (its messages stay unacknowledged in the
broker's session), the failure is logged once with a count and shown by ``/healthz`` as the
store's, and the consumer reconnects only after the store accepts a write probe again, with
a back-off (1 s doubling up to ``store_retry_max_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from aiohttp import web

from ingest import alerts, handover, store
from ingest import feed as feed_mod
from ingest.adopt import Adopter
from ingest.api.alert_routes import ALERTS_KEY
from ingest.api.app import create_app
from ingest.api.appkeys import ENGINE_KEY
from ingest.api.ratelimit import LIMITER_KEY
from ingest.consumer import Consumer
from ingest.dashboard.events import EventHub
from ingest.db import (
    Conn,
    DatabaseError,
    StoreOpenError,
    catchup,
    gaps,
    notify,
    readings,
    schema,
    store_failure,
)
from ingest.db import ews as ews_store
from ingest.db.leases import Round
from ingest.emit_policy import EmitPolicy
from ingest.ews_engine import MAX_ROUNDS, EwsEngine, EwsPoint
from ingest.keys import KeyChecker
from ingest.metrics import IngestMetrics, Sample
from ingest.outbox import Outbox
from ingest.ownership import LeasedOwner, LeasePolicy, SoleOwner, ownership_for, partition_of
from ingest.settings import IngestSettings
from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms
from vitalgate.contract import Command, Topics

log = logging.getLogger(__name__)

#: a failed background task is restarted after this many seconds.
RESTART_DELAY_S: Final = 1.0
#: at shutdown the background tasks, once cancelled, get this long (s) to finish their own
#: clean-up (the consumer's MQTT disconnect, the outbox giving back its claims). A task still
#: running then is named in the log with where it waits, and the shutdown goes on without it:
#: SIGTERM must stop the service within seconds in every state (a service manager's own
#: timeout is 10-90 s), and what such a task had not committed the broker redelivers.
STOP_TASKS_S: Final = 10.0
#: how often a consumer paused by a store that cannot write probes it (``max_s`` is replaced by
#: ``store_retry_max_s``, whose default it is): a lock or a short I/O hiccup clears within a
#: second, so 1 s first; doubling, because a full or read-only disk waits for an operator and
#: each probe is a real write (and each recovery a reconnect that fetches the broker's backlog);
#: no jitter: a probe is one small write, a few instances probing together is no load to spread.
#: The failure count is not reset by a recovery alone: a store that takes a write and fails the
#: next batch again keeps being probed at the long interval instead of flapping once a second.
STORE_PROBE_BACKOFF: Final = Backoff(initial_s=1.0, factor=2.0, max_s=60.0, jitter=0.0)
#: ... but a consumer that then committed for this long (s, monotonic) was healthy: the next
#: failure is a new one and is probed from 1 s again (the gateway's STABLE_SESSION_S rule;
#: :class:`StoreProbes`).
STORE_STABLE_S: Final = 60.0
#: retention deletes at most this many rows per table per transaction, then yields, so a large
#: backlog never holds the write lock for long (ingestion commits in between).
RETENTION_BATCH: Final = 500
#: the ECG worker also looks for unanalysed recordings this often (s), e.g. after a restart.
ECG_POLL_S: Final = 60.0
#: an ECG of good quality contributes its mean heart rate as a reading (source "ecg").
ECG_GOOD: Final = "good"
#: a failure state that persists is logged again (with its count) at most this often (ms).
STORE_LOG_EVERY_MS: Final = 60_000
#: devices whose late readings were logged (once each); beyond this many, counted only.
LATE_LOG_DEVICES: Final = 100_000
#: unrecovered gaps logged one by one per pass; the rest in one summary line.
GAP_LOG_LINES: Final = 20


@dataclass
class StoreProbes:
    """The paused consumer's probe delays, as a rule on times the caller gives (monotonic s;
    no clock inside): the n-th probe since the store was last healthy waits
    ``backoff.delay(n)``, and a consumer that ran ``stable_s`` before it failed was healthy,
    so its failure starts from the first delay again. A shorter run does not reset: a store
    that takes the probe and fails the next batch keeps being probed at the long interval."""

    backoff: Backoff
    stable_s: float = STORE_STABLE_S
    #: probes since the last healthy period
    probes: int = 0

    def failed(self, *, ran_from: float, now: float) -> None:
        """The consumer, (re)started at ``ran_from``, failed at ``now``."""
        if now - ran_from >= self.stable_s:
            self.probes = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next probe (counted as made)."""
        delay = self.backoff.delay(self.probes)
        self.probes += 1
        return delay


class StoreHealth:
    """The store's ability to write: the last write's outcome. Each failure state (its error
    text) is logged once when it starts, then at most every ``STORE_LOG_EVERY_MS`` with the
    count, and once when it ends; never a traceback per attempt."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self.error: str | None = None
        self.since: int | None = None
        self.failures = 0
        self._logged_at = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        now = self._clock()
        self.failures += 1
        if text != self.error:
            log.error("store cannot write (%s): consuming paused, the broker keeps the messages;"
                      " retrying with back-off", text)
            self.error, self.since, self._logged_at = text, now, now
        elif now - self._logged_at >= STORE_LOG_EVERY_MS:
            log.warning("store still cannot write (%s): %d failed attempts since %d",
                        text, self.failures, self.since or now)
            self._logged_at = now

    def succeeded(self) -> None:
        if self.error is not None:
            log.info("store writes again after %d failed attempts (%s)", self.failures, self.error)
            self.error, self.since, self.failures = None, None, 0

    def json(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "since": self.since, "failures": self.failures}


def load_ecg_analyse() -> Callable[..., Any] | None:
    """``ews.ecg.analyse`` if that package is importable (it is built separately)."""
    try:
        module = importlib.import_module("ews.ecg")
    except ImportError:
        return None
    fn = getattr(module, "analyse", None)
    return fn if callable(fn) else None


class IngestService:
    """Every part of the running service; ``app`` is what aiohttp runs."""

    def __init__(self, settings: IngestSettings, *, clock: Callable[[], int] = epoch_ms) -> None:
        self.settings = settings
        self.clock = clock
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.topics = Topics(settings.prefix)
        self.metrics = IngestMetrics()
        self.db = schema.open_store(settings.readings_location,
                                    synchronous=settings.sqlite_synchronous, now=clock(),
                                    window=self.partition_window())
        # the EWS store (history, context, outbox): ews.sqlite3, or the readings' PostgreSQL
        self.ews_db = ews_store.open_store(settings.ews_location)
        self.outbox = Outbox(self.ews_db, upstream_url=settings.upstream_url,
                             api_key=settings.upstream_api_key, clock=clock,
                             instance_id=str(getattr(settings, "instance_id", None) or "local"))
        policy = EmitPolicy(
            immediate_on_risk_rise=settings.ews_immediate_on_rise,
            min_interval_ms=int(settings.ews_min_interval_s * 1000),
            heartbeat_ms=int(settings.ews_heartbeat_s * 1000),
        )
        self.engine = EwsEngine(
            self.ews_db, table_name=settings.ews_table, freshness_ms=settings.freshness_ms,
            median_k=settings.median_k, policy=policy, clock=clock,
            deliver=settings.upstream_url is not None, notify=self.outbox.notify,
            pause_grace_ms=settings.pause_grace_ms,
        )
        #: FHIR R4 out (issue 17, docs/fhir.md): outbox channel "fhir"; off unless fhir_url is set
        self.fhir: Any = None
        if settings.fhir_url:
            from ingest.fhir.delivery import FhirDelivery

            self.fhir = FhirDelivery.attach(
                url=settings.fhir_url, token=settings.fhir_token,
                patient_system=settings.fhir_patient_system, batch=settings.fhir_batch,
                db=self.ews_db, outbox=self.outbox, engine=self.engine, clock=clock,
                store_read=self.db.read, readings_db=self.db)
        # HL7 v2 out (issue 17): channel "hl7" of the outbox, when a receiver is configured
        from ingest.hl7 import delivery as hl7_delivery

        self.hl7 = hl7_delivery.attach(settings, self.outbox, self.engine, clock=clock,
                                       readings_db=self.db)
        self.influx: Any = None
        if settings.influx_enabled:
            from ingest.influx import InfluxWriter

            assert settings.influx_url is not None and settings.influx_bucket is not None
            self.influx = InfluxWriter(settings.influx_url, settings.influx_token,
                                       settings.influx_org, settings.influx_bucket, clock=clock)
        self.consumer = Consumer(settings, self.db, self.metrics,
                                 after_commit=self._after_commit, clock=clock)
        # issue 13: who scores which patient; on PostgreSQL the owner is fed from the commits
        # of every instance (ingest/feed.py) and every emission is fenced by its lease
        self.owner: SoleOwner | LeasedOwner = ownership_for(
            self.db, settings.instance_id, LeasePolicy(lease_ms=int(settings.lease_s * 1000)),
            client_id=settings.client_id)
        self.feed: feed_mod.Feed | None = None
        self.adopter: Adopter | None = None
        if isinstance(self.owner, LeasedOwner):
            self.feed = feed_mod.Feed(self.db, self.owner, self, first_waits=True)
            self.consumer.in_commit = self._announce
            if settings.shared_group:  # a dead member's share of the subscription: adopted
                self.adopter = Adopter(settings.instance_id, settings, self.db,
                                       after_commit=self._after_commit,
                                       in_commit=self._announce, clock=clock)
                self.owner.on_round = self._on_round
            self.engine.fence = self.owner.fence
            for p in self.engine.all_current():  # restored from history: nobody's until leased
                self.engine.release_patient(p.user_code)
        self.checker = KeyChecker(settings.api_key)
        self._ecg_wake = asyncio.Event()
        self.hub = EventHub()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store_ok = True
        self.store_health = StoreHealth(clock)
        self._late_logged: set[str] = set()
        #: gap totals of the last gap pass (for /metrics without a query per scrape)
        self.gap_totals: dict[str, int] = {}
        self.app = create_app(settings=settings, db=self.db, metrics_=self.metrics,
                              checker=self.checker, health=self.health,
                              extra_routes=self._extra_routes())
        self.app[ENGINE_KEY] = self.engine
        # alerts (issue 17): every emitted point goes through their state machine (_publish)
        self.alerts = alerts.from_settings(
            settings, self.ews_db, self.outbox, clock=clock,
            notify=lambda a: self.hub.publish("alert", a),
            publish=lambda topic, payload: self.consumer.publish(topic, payload, retain=True))
        self.app[ALERTS_KEY] = self.alerts
        # points emitted outside observe()/tick() (context changes, POST /ews) are published too
        self.engine.on_emit = self._publish_threadsafe
        self._register_collectors()
        self.app.cleanup_ctx.append(self._lifecycle)

    def _extra_routes(self) -> list[tuple[Callable[[web.Application], None], dict[str, Any]]]:
        from ingest.api import ews_routes
        from ingest.dashboard import routes as dashboard_routes

        return [(self._add_ews_routes, ews_routes.OPENAPI_PATHS),
                (self._add_dashboard_routes, dashboard_routes.OPENAPI_PATHS)]

    def _add_dashboard_routes(self, app: web.Application) -> None:
        from ingest.dashboard import routes as dashboard_routes
        from ingest.dashboard.ward import WardView, ews_reader

        # the EWS history, read-only: on SQLite the EWS file opened mode=ro, on PostgreSQL the
        # same database (settings.ews_location is where the EWS store lives)
        ews_db = ews_reader(self.settings.ews_location)
        app.on_cleanup.append(lambda _app: asyncio.to_thread(ews_db.close))
        app[dashboard_routes.WARD_KEY] = WardView(db=self.db, engine=self.engine, ews_db=ews_db,
                                                  clock=self.clock)
        app[dashboard_routes.HUB_KEY] = self.hub
        dashboard_routes.add_routes(app)

    def _add_ews_routes(self, app: web.Application) -> None:
        from ingest.api import ews_routes

        app[ews_routes.OUTBOX_KEY] = self.outbox
        ews_routes.add_routes(app)

    # --------------------------------------------------------------------------- lifecycle

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        if self.feed is None:
            await self._warm_start()  # PostgreSQL: each partition is warm-started when taken
        tasks = [
            # beside the consumer, not before it: after a long stop the catch-up can read hours
            # of readings, and new ones must not wait for it (the outbox's dedup keys absorb
            # what both enqueue; ingest.export_catchup says why the order does not matter)
            asyncio.create_task(self._supervise("exports-catch-up", self._catch_up_exports),
                                name="exports-catch-up"),
            asyncio.create_task(self._supervise("consumer", self._run_consumer), name="consumer"),
            asyncio.create_task(self._supervise("ews-tick", self._tick_loop), name="ews-tick"),
            asyncio.create_task(self._supervise("outbox", self.outbox.run), name="outbox"),
            asyncio.create_task(self._supervise("ecg", self._ecg_loop), name="ecg"),
            asyncio.create_task(self._supervise("retention", self._retention_loop), name="retention"),
            asyncio.create_task(self._supervise("gaps", self._gap_loop), name="gaps"),
            asyncio.create_task(self._supervise("alerts", self.alerts.run), name="alerts"),
        ]
        if self.feed is not None:
            tasks.append(asyncio.create_task(self._supervise("feed", self.feed.run), name="feed"))
            await self._await_feed_then_own(tasks)
        if self.db.location.url is not None:  # PostgreSQL: partitions ahead of the window
            tasks.append(asyncio.create_task(self._supervise("partitions", self._partition_loop),
                                             name="partitions"))
        try:
            yield
        finally:
            await _cancel_all(tasks, STOP_TASKS_S)
            await self.owner.leave()  # the others take over in one heartbeat, not one lease
            if self.influx is not None:
                await asyncio.to_thread(self.influx.close)
            self.engine.close()
            self.ews_db.close()
            self.db.close()

    async def _on_round(self, rnd: Round) -> None:
        """Each lease round: the adopter decides which dead members' sessions to consume; the
        feed's first wait covers a dead member's queued session (``feed.FIRST_HOLD_MS``)."""
        if self.feed is not None:
            self.feed.members_missing(bool(rnd.expired))
        if self.adopter is not None:
            await self.adopter.round(rnd)

    async def _supervise(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed; restarting in %.0f s", name, RESTART_DELAY_S)
                self.metrics.errors.inc(task=name)
                await asyncio.sleep(RESTART_DELAY_S)

    async def _run_consumer(self) -> None:
        """The consumer; while the store cannot write, paused (disconnected, messages kept by
        the broker) until a write probe succeeds, probing by :data:`STORE_PROBE_BACKOFF`."""
        probes = StoreProbes(
            dataclasses.replace(STORE_PROBE_BACKOFF, max_s=self.settings.store_retry_max_s))
        loop = asyncio.get_running_loop()
        while True:
            resumed = loop.time()
            try:
                await self.consumer.run()
                return
            except Exception as exc:
                err = store_failure(exc)
                if err is None:
                    raise
                self._store_failed(err)
            probes.failed(ran_from=resumed, now=loop.time())
            while True:
                await asyncio.sleep(probes.next_delay())
                if await self.probe_store():
                    break

    def _store_failed(self, exc: BaseException) -> None:
        self.store_health.failed(exc)
        self.metrics.store_failures.inc(error=_error_kind(exc))

    async def probe_store(self) -> bool:
        """One small real write; its outcome is the store's (a batch that still does not fit,
        e.g. under SQLite's max_page_count, fails the next commit and marks it failing again)."""
        now = self.clock()
        try:
            await self.db.write(lambda c: store.write_probe(c, now))
        except DatabaseError as exc:
            self._store_failed(exc)
            return False
        self.store_health.succeeded()
        return True

    async def _warm_start(self) -> None:
        window = self.settings.freshness_ms
        since = self.clock() - window
        warm = await self.db.read(lambda c: store.warm_items(c, since, window))
        if warm.truncated:
            log.warning("warm start: more than %d patient vitals measured or received in the last "
                        "%d s; the rest are scored when their next reading arrives",
                        store.WARM_MAX_ROWS, window // 1000)
        self.alerts.saw(warm.items)
        points = await asyncio.to_thread(self.engine.warm_start, warm.items, warm.arrived)
        self._publish(points)

    async def _catch_up_exports(self) -> None:
        """FHIR/HL7: enqueue the readings committed since their export marks (a crash between
        a commit and its enqueue; ingest.export_catchup)."""
        for channel in (self.fhir, self.hl7):
            if channel is not None:
                await channel.catch_up()

    # ------------------------------------------------------------------------------- flow

    async def _after_commit(self, result: store.CommitResult) -> None:
        self.store_health.succeeded()
        self._account_durability(result)
        rows = result.readings
        if self.influx is not None and rows:
            self.influx.write_readings([(r.device_id, r.user_code, r.gateway_id, r.vital, r.value,
                                         r.ts, r.source) for r in rows])
        if self.fhir is not None and rows:  # before scoring: vitals' rows precede their NEWS2's
            await self.fhir.enqueue_readings(rows)
        if self.hl7 is not None and rows:  # by the committing instance, before scoring
            await self.hl7.readings(rows, self._device_labels)
        if self.feed is None:  # PostgreSQL: the owner is fed by the commit's notification
            await self.observe(rows)
            if rows:
                self.hub.publish("readings", {"count": len(rows)})
        if result.recordings:
            self._ecg_wake.set()

    async def observe(self, rows: Sequence[store.StoredReading]) -> list[EwsPoint]:
        """Feed committed readings to the engine; publish what it emits."""
        kept = [r for r in rows if r.user_code]
        if not kept:
            return []
        items = [(r.user_code or "", r.vital, r.value, r.ts) for r in kept]
        self.alerts.saw(items)
        points = await asyncio.to_thread(self.engine.observe, items,
                                         [r.received_at for r in kept])
        self._publish(points)
        return points

    def _account_durability(self, result: store.CommitResult) -> None:
        m, g = self.metrics, result.gaps
        if g.opened:
            m.gaps_opened.inc(g.opened, unit="gaps")
            m.gaps_opened.inc(g.opened_seqs, unit="seqs")
        if g.filled_seqs:
            m.gaps_filled.inc(g.filled_seqs)
        if g.closed:
            m.gaps_closed.inc(g.closed)
        for flag, n in result.late_counts.items():
            m.late_readings.inc(n, flag=flag)
        for device_id, flags in result.late.items():
            if device_id in self._late_logged or len(self._late_logged) >= LATE_LOG_DEVICES:
                continue
            self._late_logged.add(device_id)
            suspect = bool(flags & store.FLAG_CLOCK_SUSPECT)
            # no values, no user_code: the device id and what is wrong
            log.warning("device %s: readings measured more than %.0f s before they arrived%s;"
                        " stored, flagged and counted (logged once per device)", device_id,
                        self.settings.late_after_s,
                        " although live: its clock or the gateway's is behind" if suspect
                        else " (buffered or history)")

    async def _gap_loop(self) -> None:
        if self.settings.shared_group:
            # a shared-subscription instance gets only a share of each device's messages: its
            # "gaps" are its siblings' messages, not losses (docs/scaling.md); tracked, not acted on
            log.info("shared subscription %r: sequence gaps are tracked but neither requested"
                     " nor reported by this instance", self.settings.shared_group)
            return
        while True:
            await asyncio.sleep(self.settings.gap_interval_s)
            await self.gap_pass()

    async def gap_pass(self) -> tuple[list[gaps.Request], list[gaps.Unrecovered]]:
        """Ask gateways to republish gaps past their grace period (rate-limited), report the
        gaps that outlived their requests, refresh the gap totals."""
        s = self.settings
        now = self.clock()
        grace, retry = int(s.gap_grace_s * 1000), int(s.gap_retry_s * 1000)

        def step(conn: Conn) -> tuple[list[gaps.Request], list[gaps.Unrecovered]]:
            due = gaps.due(conn, now, grace_ms=grace, retry_ms=retry,
                           max_requests=s.gap_max_requests, limit=s.gap_requests_per_pass)
            gaps.mark_requested(conn, due, now)
            lost = gaps.unrecovered(conn, now, grace_ms=grace, retry_ms=retry,
                                    max_requests=s.gap_max_requests)
            return due, lost

        due, lost = await self.db.write(step)
        for r in due:
            cmd = Command(cmd="republish", device_id=r.device_id, stream=r.stream,
                          from_seq=r.from_seq, to_seq=r.to_seq)
            self.consumer.publish(self.topics.cmd(r.gateway_id), cmd.to_bytes(), retain=False)
            self.metrics.republish_requested.inc()
        if due:
            log.info("asked %d gateway(s) to republish %d gap(s), %d seqs",
                     len({r.gateway_id for r in due}), len(due),
                     sum(r.to_seq - r.from_seq + 1 for r in due))
        for u in lost[:GAP_LOG_LINES]:
            log.warning("gap not refilled: device %s stream %s seqs %d..%d (%d readings) after %d"
                        " republish request(s); reported in /api/gaps", u.device_id,
                        u.stream or "(legacy)", u.from_seq, u.to_seq, u.to_seq - u.from_seq + 1,
                        u.requests)
        if len(lost) > GAP_LOG_LINES:
            rest = lost[GAP_LOG_LINES:]
            log.warning("%d more gaps not refilled (%d readings); see /api/gaps", len(rest),
                        sum(u.to_seq - u.from_seq + 1 for u in rest))
        if lost:
            self.metrics.gaps_unrecovered.inc(len(lost), unit="gaps")
            self.metrics.gaps_unrecovered.inc(sum(u.to_seq - u.from_seq + 1 for u in lost),
                                              unit="seqs")
        self.gap_totals = await self.db.read(gaps.totals)
        return due, lost

    def _publish_threadsafe(self, points: list[EwsPoint]) -> None:
        """``engine.on_emit``: may be called from a worker thread; publish on the loop."""
        loop = self._loop
        if loop is None:
            self._publish(points)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._publish(points)
        else:
            loop.call_soon_threadsafe(self._publish, points)

    def _publish(self, points: Iterable[EwsPoint]) -> None:
        points = list(points)
        for p in points:
            self.metrics.ews.inc(result=p.result)
            self.consumer.publish(self.topics.ews(p.user_code), p.to_contract().to_bytes(), retain=True)
            self.metrics.ews_published.inc()
            self._event("ews", {"user_code": p.user_code, "point": p.point, "result": p.result,
                                "risk": p.risk, "produce_at": p.produce_at})
        if self.influx is not None and points:
            self.influx.write_ews(points)
        self.alerts.offer(points)
        if self.fhir is not None and points:  # their FHIR rows were enqueued with their history
            self.fhir.notify()
        if self.hl7 is not None and points:
            self.hl7.points(points)

    async def _device_labels(self, device_ids: set[str]) -> dict[str, Any]:
        from ingest.hl7.channel import device_labels

        return await self.db.read(lambda c: device_labels(c, device_ids))

    # ---------------------------------------------- issue 13: feed and ownership (PostgreSQL)

    def _announce(self, conn: Conn, result: store.CommitResult) -> None:
        """Inside the readings' commit: tell every instance (the owners) what was stored."""
        if result.readings:
            feed_mod.announce(conn, ((r.user_code, r.vital, r.value, r.ts, r.received_at,
                                      r.device_id, r.seq) for r in result.readings),
                              self.owner.partitions)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        """A dashboard event: to this instance's listeners, or through PostgreSQL to every
        instance's (this one's included) when there are several."""
        if self.feed is not None:
            self.feed.publish_event(kind, data)
        else:
            self.hub.publish(kind, data)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """``feed.Scoring``: an event from any instance, to the local listeners."""
        self.hub.publish(kind, data)

    async def score(self, rows: Sequence[feed_mod.Fed]) -> None:
        """``feed.Scoring``: committed readings of patients this instance owns."""
        items = [r.item() for r in rows]
        self.alerts.saw(items)  # overdue tracking follows the owner, like the scores
        # decided as of when each reading was received, however late the feed's order or a
        # takeover hands it over (the storing instance's clock; the engine caps it at now)
        points = await asyncio.to_thread(self.engine.observe, items,
                                         [r.received_at for r in rows])
        self._publish(points)

    async def take(self, parts: frozenset[int]) -> feed_mod.Taken | None:
        """``feed.Scoring``: take over the patients of newly owned partitions from the shared
        store, so the handover neither re-emits an unchanged score nor skips a change: each
        patient's emission state is its last recorded point (EWS history); the readings up to
        that point's time rebuild its scorer window silently (``warm_start_patient``); the
        readings after it are scored in event-time order (``observe``), as the previous owner
        would have scored them, as far as each device's seq has no hole; the rest, and where
        each device's seq goes on, are left to the feed's order (``ingest.handover``)."""
        window = self.settings.freshness_ms
        now = self.clock()
        n = self.owner.partitions
        warm = await self.db.read(lambda c: store.warm_items(c, now - window, window))
        newest: dict[str, int] = {}
        for u, _v, _x, t in warm.items:
            if partition_of(u, n) in parts:
                newest[u] = max(newest.get(u, t), t)
        for p in self.engine.all_current():
            if partition_of(p.user_code, n) in parts:
                newest.setdefault(p.user_code, p.produce_at)
        if not newest:
            return None
        codes = set(newest)
        last = await self.ews_db.read(lambda c: catchup.last_emitted(c, codes))
        since = min(last.get(u, newest[u]) for u in codes) - window
        recent = await self.db.read(lambda c: catchup.recent_readings(c, codes, since))
        if recent.truncated:
            log.warning("takeover of %d partition(s): more than %d recent readings; warm-starting"
                        " from each patient's newest values only", len(parts), catchup.MAX_ROWS)
        rows: dict[str, list[handover.Stored]] = {}
        for r in recent.rows:
            rows.setdefault(r[0], []).append(handover.Stored(*r))
        for item, arrived in zip(warm.items, warm.arrived, strict=True):
            if recent.truncated and item[0] in codes:
                rows.setdefault(item[0], []).append(handover.Stored(*item, arrived, "", None))
        nexts: dict[str, tuple[int, int]] = {}
        deferred: list[feed_mod.Fed] = []

        def take_all() -> list[EwsPoint]:
            out: list[EwsPoint] = []
            replay: list[list[handover.Stored]] = []
            for code in sorted(codes):
                if not self.owner.owns(code):  # given up again meanwhile
                    continue
                mine = rows.get(code, [])
                plan = handover.plan(mine, last.get(code))
                before, after = plan.before, plan.after
                if recent.truncated:
                    before, after = mine, []
                else:
                    part = partition_of(code, n)
                    nexts.update((d, (part, s)) for d, s in plan.nexts.items())
                    deferred.extend(feed_mod.Fed(part, *r) for r in plan.deferred)
                out += self.engine.warm_start_patient(code, [r.item() for r in before],
                                                      [r.received_at for r in before])
                # the rest in chunks of at most MAX_ROUNDS reading times per patient
                times = sorted({r.ts for r in after})
                for k in range(0, len(times), MAX_ROUNDS):
                    cut = set(times[k:k + MAX_ROUNDS])
                    while len(replay) <= k // MAX_ROUNDS:
                        replay.append([])
                    replay[k // MAX_ROUNDS] += [r for r in after if r.ts in cut]
            for chunk in replay:
                # as of when each was received, not the takeover's now: a held change then
                # comes due when it would have under the previous owner (docs/scaling.md)
                out += self.engine.observe([r.item() for r in chunk],
                                           [r.received_at for r in chunk])
            return out

        self._publish(await asyncio.to_thread(take_all))
        return feed_mod.Taken(nexts, deferred)

    async def drop(self, parts: frozenset[int]) -> None:
        """``feed.Scoring``: stop scoring the patients of partitions given up."""
        n = self.owner.partitions
        for p in self.engine.all_current():
            if partition_of(p.user_code, n) in parts:
                self.engine.release_patient(p.user_code)

    async def _await_feed_then_own(self, tasks: list[asyncio.Task[None]]) -> None:
        """LISTEN first (a partition taken before it would miss what commits meanwhile), then
        the first lease round and its warm starts, before the service serves: as on SQLite,
        a started instance answers with its patients' scores, not with stale ones."""
        feed = self._changes()
        bound = 3 * self.settings.lease_s + 30  # a database that does not answer: go on
        try:
            async with asyncio.timeout(bound):
                await feed.connected.wait()
        except TimeoutError:
            log.warning("feed: not listening after %.0f s; taking partitions anyway", bound)
        tasks.append(asyncio.create_task(
            self._supervise("ownership", lambda: self.owner.run(feed)), name="ownership"))
        owner = self.owner
        assert isinstance(owner, LeasedOwner)
        try:
            async with asyncio.timeout(bound):
                while owner.stats.rounds < 1 or feed.taking:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            log.warning("instance %s: no partitions warm-started after %.0f s; serving anyway",
                        self.settings.instance_id, bound)

    def _changes(self) -> feed_mod.Feed:
        assert self.feed is not None
        return self.feed

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ews_tick_s)
            self._publish(await asyncio.to_thread(self.engine.tick))

    def partition_window(self) -> tuple[int, int]:
        """The event times a reading may have now (processing time): from ``now`` minus the
        maximum reading age to ``now`` plus the future skew, and one day more ahead so that the
        next maintenance pass finds tomorrow made already."""
        back, ahead = self.settings.reading_window_ms
        now = self.clock()
        return now - back, now + ahead + readings.DAY_MS

    async def _partition_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.partition_interval_s)
            await self.maintain_partitions()

    async def maintain_partitions(self) -> list[str]:
        """Make the missing readings partitions of the accepted window (PostgreSQL)."""
        first, last = self.partition_window()
        made = await self.db.write(lambda c: readings.ensure_partitions(c, first, last))
        if made:
            log.info("readings partitions made ahead: %s", ", ".join(made))
        return made

    async def _retention_loop(self) -> None:
        while True:
            await self.retention_pass()
            await asyncio.sleep(self.settings.retention_interval_s)

    async def retention_pass(self) -> dict[str, int]:
        """Delete everything older than the retention window, one small transaction at a time."""
        cutoff = self.clock() - int(self.settings.retention_days * 86_400_000)
        accepted = self.partition_window()[0]
        total: dict[str, int] = {}
        while True:
            deleted = await self.db.write(lambda c: store.retention_step(
                c, cutoff, RETENTION_BATCH, accepted_from_ms=accepted))
            for table, n in deleted.items():
                total[table] = total.get(table, 0) + n
                self.metrics.retention_deleted.inc(n, table=table)
            if not deleted:
                break
            await asyncio.sleep(0.01)  # let ingestion commit between batches
        # the EWS database (its own file): history, context and outbox, on processing time
        for step in (self.engine.retention_step, self.outbox.retention_step):
            while True:
                deleted = await asyncio.to_thread(step, cutoff, RETENTION_BATCH)
                for table, n in deleted.items():
                    total[table] = total.get(table, 0) + n
                    self.metrics.retention_deleted.inc(n, table=table)
                if not deleted:
                    break
                await asyncio.sleep(0.01)
        return total

    async def _ecg_loop(self) -> None:
        self._ecg_wake.set()  # recordings left unanalysed by a previous run
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ecg_wake.wait(), ECG_POLL_S)
            self._ecg_wake.clear()
            await self.analyse_pending()

    async def analyse_pending(self) -> int:
        """Analyse completed recordings that have no analysis yet; returns how many."""
        analyse = load_ecg_analyse()
        if analyse is None:
            return 0
        done = 0
        while True:
            pending = await self.db.read(lambda c: store.unanalysed(c, 20))
            if not pending:
                return done
            for rec in pending:
                await self._analyse_one(analyse, rec)
                done += 1

    async def _analyse_one(self, analyse: Callable[..., Any], rec: store.CompletedRecording) -> None:
        counts = await self.db.read(lambda c: store.recording_signal(c, rec.id))
        signal = counts.astype(np.float64) / self.settings.ecg_counts_per_mv
        try:
            summary = await asyncio.to_thread(analyse, signal, rec.fs)
            analysis: dict[str, Any] = dict(summary.to_dict())
            quality = str(summary.quality)
            mean_hr = getattr(summary, "mean_hr_bpm", getattr(summary, "mean_hr", None))
        except ValueError as exc:  # too short, bad fs...: kept as unusable, never retried
            analysis, quality, mean_hr = {"error": str(exc), "quality": "unusable"}, "unusable", None
        hr = float(mean_hr) if quality == ECG_GOOD and mean_hr is not None else None
        now = self.clock()
        reading = await self.db.write(lambda c: store.save_analysis(
            c, rec, analysis, quality=quality, mean_hr=hr, now=now))
        self.metrics.ecg_recordings.inc(quality=quality)
        if reading is not None:
            self.metrics.readings.inc(source=reading.source)
            if self.influx is not None:
                self.influx.write_readings([(reading.device_id, reading.user_code, reading.gateway_id,
                                             reading.vital, reading.value, reading.ts, reading.source)])
            if self.fhir is not None:
                await self.fhir.enqueue_readings([reading])
            if self.hl7 is not None:
                await self.hl7.readings([reading], self._device_labels)
            if self.feed is not None:  # its owner may be another instance
                await self.db.write(lambda c: feed_mod.announce(
                    c, [(reading.user_code, reading.vital, reading.value, reading.ts,
                         reading.received_at, reading.device_id, None)], self.owner.partitions))
            else:
                await self.observe([reading])

    # ---------------------------------------------------------------------------- status

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """The store's health is its last write's outcome (a failed commit or probe) and,
        while idle, a write probe; a store that cannot write is reported as such (not as the
        broker connection the consumer gave up while paused)."""
        if self.consumer.queue_depth == 0:
            await self.probe_store()  # idle (or paused): does the store take a write now?
        try:
            await self.db.read(notify.alive)
            readable = True
        except DatabaseError as exc:
            self._store_failed(exc)
            readable = False
        store_ok = readable and self.store_health.ok
        outbox = self.outbox.stats()
        connected = self.consumer.connected
        mqtt_state: dict[str, Any] = {"connected": connected, "queue": self.consumer.queue_depth,
                                      "connects": self.consumer.connects}
        if not store_ok and not connected:
            mqtt_state["paused"] = "store cannot write"
        body = {
            "status": "ok" if store_ok and connected else ("degraded" if store_ok else "failing"),
            "mqtt": mqtt_state,
            "store": {**self.store_health.json(), "ok": store_ok},
            "gaps": self.gap_totals or None,
            "outbox": {"depth": outbox.get("depth", 0), "enabled": self.outbox.enabled},
            "influx": None if self.influx is None else {"enabled": True},
            # issue 13: this instance among several (patient partitions, feed, fencing)
            "instance": {"id": self.settings.instance_id,
                         "partitions": len(self.owner.owned()),
                         "fenced": self.engine.fenced, "absorbed": self.engine.duplicates,
                         "repeats": self.engine.repeats,
                         "adopted": None if self.adopter is None else {
                             "now": self.adopter.adopted, "adoptions": self.adopter.adoptions,
                             "let_go": self.adopter.let_go},
                         "feed": None if self.feed is None else {
                             **dataclasses.asdict(self.feed.stats),
                             "held": self.feed.reorder.held,
                             "waiting": self.feed.reorder.waiting,
                             "released_by_timeout": self.feed.reorder.released_by_timeout}},
        }
        return store_ok, body

    def _register_collectors(self) -> None:
        r = self.metrics.registry

        def outbox() -> list[Sample]:
            return [("vitalgate_ingest_outbox", {"channel": ch, "stat": k}, float(v))
                    for ch, s in self.outbox.all_metrics().items() for k, v in s.items()]

        def lag() -> list[Sample]:
            newest = self.consumer.newest_received
            return [("vitalgate_ingest_store_lag_ms", {}, float(max(0, self.clock() - newest)) if newest else 0.0)]

        def queue() -> list[Sample]:
            return [("vitalgate_ingest_queue_depth", {}, float(self.consumer.queue_depth))]

        def influx() -> list[Sample]:
            if self.influx is None:
                return []
            stats = self.influx.stats()
            return [("vitalgate_ingest_influx", {"stat": k}, float(v))
                    for k, v in stats.items() if isinstance(v, int | float) and v is not None]

        r.collector("vitalgate_ingest_outbox", "gauge",
                    "outbox per channel: depth (pending), delivered, failed, local rows, in_flight,"
                    " oldest_pending_age_ms; attempts, retried, lost_leases (this instance)",
                    outbox)
        r.collector("vitalgate_ingest_store_lag_ms", "gauge",
                    "now minus the arrival of the newest committed message (ms)", lag)
        r.collector("vitalgate_ingest_queue_depth", "gauge",
                    "messages waiting between paho and the consumer", queue)
        r.collector("vitalgate_ingest_influx", "gauge",
                    "InfluxDB writer: written, dropped, retries, errors, buffered", influx)
        r.collector("vitalgate_ingest_gaps", "gauge",
                    "sequence gaps at the last gap pass: open_gaps, missing, reported_missing, streams",
                    lambda: [("vitalgate_ingest_gaps", {"stat": k}, float(v))
                             for k, v in self.gap_totals.items()])
        r.collector("vitalgate_ingest_store_ok", "gauge",
                    "1 while the store's last write succeeded, 0 while it cannot write",
                    lambda: [("vitalgate_ingest_store_ok", {}, float(self.store_health.ok))])
        r.collector("vitalgate_ingest_mqtt_connects_total", "counter",
                    "successful broker connections of the consumer (1 + reconnects)",
                    lambda: [("vitalgate_ingest_mqtt_connects_total", {},
                              float(self.consumer.connects))])
        r.collector("vitalgate_ingest_http_rate_limited_total", "counter",
                    "HTTP requests answered 429 (rate limit per API key or address)",
                    lambda: [("vitalgate_ingest_http_rate_limited_total", {},
                              float(self.app[LIMITER_KEY].limited))])
        if self.hl7 is not None:
            hl7 = self.hl7
            r.collector("vitalgate_ingest_hl7", "gauge",
                        "HL7 v2 out: messages built, skipped_<reason>, enqueued, duplicates,"
                        " dropped_points, points_waiting; ACK outcomes (ack_<outcome>),"
                        " failed_after_errors (this instance, since start)",
                        lambda: [("vitalgate_ingest_hl7", {"stat": k}, float(v))
                                 for k, v in hl7.stats().items()])
        r.collector("vitalgate_ingest_ews_readings_total", "counter",
                    "vital values the EWS scorer saw, by outcome (accepted, late, duplicate, "
                    "superseded, rejected, ignored, old) and merged_rounds (scoring rounds "
                    "folded into their batch's last)",
                    lambda: [("vitalgate_ingest_ews_readings_total", {"outcome": k}, float(v))
                             for k, v in self.engine.scoring_counts().items()])
        r.collector("vitalgate_ingest_ews_duplicate_emissions_total", "counter",
                    "EWS emissions absorbed: another instance had recorded the patient's point "
                    "first (an ownership handover)",
                    lambda: [("vitalgate_ingest_ews_duplicate_emissions_total", {},
                              float(self.engine.duplicates))])
        r.collector("vitalgate_ingest_alerts_total", "counter",
                    "alert transitions (opened, updated, escalated, acknowledged, resolved), "
                    "scores dropped before the alert task, conflicts, webhook outcomes",
                    self.alerts.samples)
        r.collector("vitalgate_ingest_fhir", "gauge",
                    "FHIR channel (docs/fhir.md): readings, observations, points, rows, "
                    "skipped_no_patient, skipped_unbuildable, derived_unknown, memory_evicted, "
                    "absorbed_rows, render_failures, answers_<verdict>",
                    lambda: [] if self.fhir is None else [
                        ("vitalgate_ingest_fhir", {"stat": k}, float(v))
                        for k, v in self.fhir.stats().items()])


async def _cancel_all(tasks: Sequence[asyncio.Task[None]], bound_s: float) -> None:
    """Cancel ``tasks`` and wait at most ``bound_s`` for them; name any that did not finish."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=bound_s)
    for task in pending:
        frames = task.get_stack(limit=1)
        where = (f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames
                 else "unknown")
        log.warning("background task %s did not stop within %.0f s of its cancellation "
                    "(waiting at %s); shutting down without it", task.get_name(), bound_s, where)


@dataclass
class RunningService:
    """A service listening on ``port`` (tests, benchmarks, the demo); ``await stop()``."""

    service: IngestService
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_service(
    settings: IngestSettings, *, clock: Callable[[], int] = epoch_ms
) -> RunningService:
    """Build and start the service on ``settings.http_host:http_port`` (0 = a free port)."""
    service = IngestService(settings, clock=clock)
    runner = web.AppRunner(service.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return RunningService(service, runner, settings.http_host, port)


def run(settings: IngestSettings) -> None:
    """Run until SIGINT/SIGTERM (``vitalgate ingest``)."""
    try:
        service = IngestService(settings)
    except StoreOpenError as exc:
        log.error("vitalgate ingest cannot start: %s", exc)  # one line, no traceback
        raise SystemExit(1) from None
    log.info("vitalgate ingest: HTTP on %s:%d, MQTT broker %s:%d%s, data in %s", settings.http_host,
             settings.http_port, settings.mqtt_host, settings.mqtt_port,
             " (TLS)" if settings.mqtt_tls else "", settings.data_dir)
    web.run_app(service.app, host=settings.http_host, port=settings.http_port, print=None,
                access_log=None, shutdown_timeout=5.0)


def _error_kind(exc: BaseException) -> str:
    """A short stable label of a store error for the metric (never the full text)."""
    text = str(exc).lower()
    for key, label in (("full", "disk_full"), ("readonly", "read_only"), ("read-only", "read_only"),
                       ("disk i/o", "io"), ("locked", "locked")):
        if key in text:
            return label
    return "other"

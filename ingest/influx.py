"""Mirror readings and EWS points into InfluxDB 2 — without ever slowing the service down.

SQLite is the primary store; InfluxDB is a convenience for Grafana. So :class:`InfluxWriter`
never blocks its caller: ``write_readings`` / ``write_ews`` only append to a bounded buffer, and
one background thread writes batches with influxdb-client's synchronous API, retrying with
backoff. When InfluxDB is slow or dead the buffer fills and further points are dropped — and
counted (``stats()["dropped"]``). A batch that still fails after the retries is dropped and
counted too.

Mapping (line protocol, millisecond precision, device timestamps):

``vitals``  tags ``device_id``, ``user_code``, ``gateway_id``, ``source`` (absent tags omitted);
            one field per vital (``heart_rate``, ``spo2``, ...); readings of one device with the
            same time, patient, gateway and source share one point.
``ews``     tag ``user_code``; fields ``point`` (int), ``result`` (string), ``risk`` (string),
            ``risk_level`` (int 0-3: low, low-medium, medium, high — for graphing), ``partial``
            (bool); time ``produce_at``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from ews.score import RISK_ORDER
from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms

if TYPE_CHECKING:
    from ingest.ews_engine import EwsPoint

log = logging.getLogger(__name__)

#: (device_id, user_code, gateway_id, vital, value, ts_ms, source)
ReadingRow = tuple[str, str | None, str | None, str, float, int, str]


#: a failed write is retried after 0.5 s, doubling, at most 8 s: InfluxDB that is restarting or
#: briefly overloaded answers again within seconds, and the writer thread must move on to the
#: next batch before the buffer fills. No jitter: one writer per service, nobody to fall into
#: lockstep with.
INFLUX_RETRY: Final = Backoff(initial_s=0.5, factor=2.0, max_s=8.0, jitter=0.0)


@dataclass(frozen=True)
class InfluxOptions:
    """Buffering and retry limits of :class:`InfluxWriter`; every constant explained."""

    #: points held while InfluxDB is behind: 100 000 points ≈ 30 min of 50 watches reporting
    #: all vitals every 5 s, a few tens of MB at most; beyond that points are dropped (counted).
    max_buffer: int = 100_000
    #: points per write request: InfluxDB's recommended batch size is 5 000 lines.
    batch_size: int = 5_000
    #: a partial batch is written after 1 s, so Grafana lags the watches by about a second.
    flush_interval_ms: int = 1_000
    #: tries per batch beyond the first; with :data:`INFLUX_RETRY` a batch is given up after
    #: about 0.5 + 1 + 2 = 3.5 s of failures (the buffer keeps later points meanwhile).
    max_retries: int = 3
    retry: Backoff = INFLUX_RETRY
    #: one write request may take 10 s; a hung InfluxDB costs the writer thread, never the caller.
    timeout_ms: int = 10_000
    #: on close, try to flush what is buffered for at most 5 s.
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_buffer < 1 or self.batch_size < 1 or self.max_retries < 0:
            raise ValueError(f"invalid influx options: {self}")


DEFAULT_OPTIONS: Final = InfluxOptions()


_MS: Final[Any] = WritePrecision.MS


def reading_points(rows: Sequence[ReadingRow]) -> list[Point]:
    """``vitals`` points, one per (device, patient, gateway, source, time) with a field per vital."""
    grouped: dict[tuple[str, str | None, str | None, str, int], dict[str, float]] = {}
    for device_id, user_code, gateway_id, vital, value, ts_ms, source in rows:
        grouped.setdefault((device_id, user_code, gateway_id, source, int(ts_ms)), {})[vital] = float(value)
    points = []
    for (device_id, user_code, gateway_id, source, ts_ms), fields in grouped.items():
        p = Point("vitals").tag("device_id", device_id).tag("source", source)  # type: ignore[no-untyped-call]
        if user_code:
            p = p.tag("user_code", user_code)
        if gateway_id:
            p = p.tag("gateway_id", gateway_id)
        for name, value in fields.items():
            p = p.field(name, value)
        points.append(p.time(ts_ms, _MS))
    return points


def ews_points(points: Sequence[EwsPoint]) -> list[Point]:
    out = []
    for e in points:
        p = Point("ews").tag("user_code", e.user_code)  # type: ignore[no-untyped-call]
        p = p.field("point", int(e.point)).field("result", e.result).field("risk", e.risk)
        p = p.field("risk_level", RISK_ORDER.get(e.risk, -1)).field("partial", bool(e.partial))
        out.append(p.time(int(e.produce_at), _MS))
    return out


class InfluxWriter:
    """Non-blocking, bounded, retrying writer of ``vitals`` and ``ews`` points."""

    def __init__(
        self,
        url: str,
        token: str | None,
        org: str | None,
        bucket: str,
        *,
        options: InfluxOptions = DEFAULT_OPTIONS,
        max_buffer: int | None = None,
        flush_interval_ms: int | None = None,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        if max_buffer is not None:
            options = replace(options, max_buffer=max_buffer)
        if flush_interval_ms is not None:
            options = replace(options, flush_interval_ms=flush_interval_ms)
        self._bucket = bucket
        self._org = org or "-"
        self._opt = options
        self._clock = clock
        self._client = InfluxDBClient(url=url, token=token or "", org=self._org,
                                      timeout=options.timeout_ms, retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._buf: deque[Point] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stop_retrying = threading.Event()
        self._counts = dict.fromkeys(("queued", "written", "dropped", "retries", "errors"), 0)
        self._last_error = ""
        self._last_write_at = 0
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callers (never block)

    def write_readings(self, rows: Sequence[ReadingRow]) -> None:
        if rows:
            self._offer(reading_points(rows))

    def write_ews(self, points: Sequence[EwsPoint]) -> None:
        if points:
            self._offer(ews_points(points))

    def _offer(self, points: list[Point]) -> None:
        with self._cond:
            if self._closing:
                self._counts["dropped"] += len(points)
                return
            room = self._opt.max_buffer - len(self._buf)
            take = points[: max(0, room)]
            self._buf.extend(take)
            self._counts["queued"] += len(take)
            dropped = len(points) - len(take)
            if dropped:
                self._counts["dropped"] += dropped
                log.warning("InfluxDB buffer full: dropped %d points", dropped)
            if len(self._buf) >= self._opt.batch_size or dropped:
                self._cond.notify()

    def stats(self) -> dict[str, Any]:
        """``written``, ``dropped``, ``retries``, ``errors`` (batches given up or failed tries),
        ``queued`` (accepted into the buffer), ``buffered`` (waiting now), ``last_error``."""
        with self._cond:
            return {**self._counts, "buffered": len(self._buf), "last_error": self._last_error,
                    "last_write_at": self._last_write_at}

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Ask the thread to write what is buffered now; True if the buffer emptied in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while (self._buf or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._buf and not self._busy

    def close(self) -> None:
        """Flush for at most ``close_timeout_s``, then stop; what is left is dropped (counted)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self._opt.close_timeout_s)
        if self._thread.is_alive():
            self._stop_retrying.set()
            self._thread.join(self._opt.timeout_ms / 1000 + 1)
        with self._cond:
            if self._buf:
                self._counts["dropped"] += len(self._buf)
                self._buf.clear()
        self._client.close()  # type: ignore[no-untyped-call]

    # ---------------------------------------------------------------- the writer thread

    _busy = False
    _flush_requested = False

    def _take_batch(self) -> list[Point] | None:
        """Wait for a full batch, the flush interval or close; None when closed and empty."""
        interval = self._opt.flush_interval_ms / 1000
        with self._cond:
            deadline = time.monotonic() + interval
            while not (self._closing or self._flush_requested) and len(self._buf) < self._opt.batch_size:
                left = deadline - time.monotonic()
                if left <= 0 and self._buf:
                    break
                if left <= 0:
                    deadline = time.monotonic() + interval
                    left = interval
                self._cond.wait(left)
            if not self._buf:
                self._flush_requested = False
                return None if self._closing else []
            n = min(len(self._buf), self._opt.batch_size)
            batch = [self._buf.popleft() for _ in range(n)]
            self._busy = True
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._write(batch)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _write(self, batch: list[Point]) -> None:
        for attempt in range(self._opt.max_retries + 1):
            try:
                self._write_api.write(bucket=self._bucket, org=self._org, record=batch,
                                      write_precision=_MS)
            except Exception as exc:  # urllib3 / ApiException / anything from the client
                with self._cond:
                    self._counts["errors"] += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                last = attempt == self._opt.max_retries
                if last or self._stop_retrying.is_set() or (self._closing and attempt > 0):
                    with self._cond:
                        self._counts["dropped"] += len(batch)
                    log.warning("InfluxDB write failed, %d points dropped: %s", len(batch),
                                self._last_error)
                    return
                with self._cond:
                    self._counts["retries"] += 1
                self._stop_retrying.wait(self._opt.retry.delay(attempt))
                continue
            with self._cond:
                self._counts["written"] += len(batch)
                self._last_write_at = self._clock()
            return

"""A small Prometheus registry (text exposition format 0.0.4), no dependency.

Counters and gauges with labels, histograms with fixed buckets, and "collectors": callables
run at scrape time that return extra samples (e.g. the outbox's own counters).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, dict[str, str], float]


def _fmt_labels(labels: Labels | dict[str, str]) -> str:
    items = labels.items() if isinstance(labels, dict) else labels
    if not items:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}"'
        for k, v in items
    )
    return "{" + body + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        with self._lock:
            items = list(self._values.items())
        return [(self.name, k, v) for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1

    @property
    def count(self) -> int:
        return self._count

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        with self._lock:
            out: list[tuple[str, Labels, float]] = [
                (self.name + "_bucket", (("le", _fmt_value(b)),), float(c))
                for b, c in zip(self.buckets, self._counts, strict=True)
            ]
            out.append((self.name + "_bucket", (("le", "+Inf"),), float(self._count)))
            out.append((self.name + "_sum", (), self._sum))
            out.append((self.name + "_count", (), float(self._count)))
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._collectors: list[tuple[str, str, str, Callable[[], Iterable[Sample]]]] = []

    def counter(self, name: str, help_text: str) -> Counter:
        m = Counter(name, help_text)
        self._metrics.append(m)
        return m

    def gauge(self, name: str, help_text: str) -> Gauge:
        m = Gauge(name, help_text)
        self._metrics.append(m)
        return m

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> Histogram:
        m = Histogram(name, help_text, buckets)
        self._metrics.append(m)
        return m

    def collector(
        self, name: str, kind: str, help_text: str, fn: Callable[[], Iterable[Sample]]
    ) -> None:
        """``fn`` returns ``(sample_name, labels, value)`` for metric family ``name`` at scrape."""
        self._collectors.append((name, kind, help_text, fn))

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for name, labels, value in m.samples():
                lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(value)}")
        for name, kind, help_text, fn in self._collectors:
            try:
                samples = list(fn())
            except Exception:  # a broken collector must not break the scrape
                samples = []
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for sname, label_map, value in samples:
                lines.append(f"{sname}{_fmt_labels(label_map)} {_fmt_value(value)}")
        return "\n".join(lines) + "\n"


class IngestMetrics:
    """The service's metrics; one instance per running service."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.messages = r.counter(
            "vitalgate_ingest_messages_total", "MQTT messages received, by contract kind")
        self.readings = r.counter(
            "vitalgate_ingest_readings_total", "readings committed (new), by source")
        self.duplicates = r.counter(
            "vitalgate_ingest_duplicates_total", "readings already stored (QoS 1 redeliveries)")
        self.rejects = r.counter(
            "vitalgate_ingest_rejects_total", "invalid items dead-lettered, by reason")
        self.dead_letters = r.counter(
            "vitalgate_ingest_dead_letters_total", "rows written to the dead-letter table")
        self.queue_full = r.counter(
            "vitalgate_ingest_queue_full_total",
            "times a delivered message found the queue full: paho's thread waited for room"
            " (backpressure; nothing is dropped, the broker keeps the rest queued)")
        self.batch_size = r.histogram(
            "vitalgate_ingest_batch_messages", "messages per group commit",
            (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.commit_ms = r.histogram(
            "vitalgate_ingest_commit_ms", "time from a batch's first arrival to its commit (ms)",
            (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
        self.ews = r.counter("vitalgate_ingest_ews_points_total", "EWS points produced, by result")
        self.ews_published = r.counter(
            "vitalgate_ingest_ews_published_total", "EWS points published on MQTT")
        self.ecg_recordings = r.counter(
            "vitalgate_ingest_ecg_recordings_total", "ECG recordings completed, by quality")
        self.retention_deleted = r.counter(
            "vitalgate_ingest_retention_deleted_total", "rows deleted by retention, by table")
        self.mqtt_connected = r.gauge(
            "vitalgate_ingest_mqtt_connected", "1 while connected to the broker")
        self.errors = r.counter(
            "vitalgate_ingest_errors_total", "unexpected errors in background tasks, by task")
        # --- poison messages and bounded junk (issue 11)
        self.dead_letter_repeats = r.counter(
            "vitalgate_ingest_dead_letter_repeats_total",
            "dead letters identical to one already kept (counted on its row, not stored again)")
        self.dead_letters_evicted = r.counter(
            "vitalgate_ingest_dead_letters_evicted_total",
            "dead letters evicted (oldest first) to keep the table within its row/byte bounds")
        self.dead_letter_rows = r.gauge(
            "vitalgate_ingest_dead_letter_rows", "rows in the dead-letter table (after the last commit)")
        self.dead_letter_bytes = r.gauge(
            "vitalgate_ingest_dead_letter_bytes", "bytes stored in the dead-letter table")
        self.commit_conflicts = r.counter(
            "vitalgate_ingest_commit_conflicts_total",
            "batch commits retried whole after a deadlock or serialisation failure with another"
            " instance's commit")
        self.isolated_batches = r.counter(
            "vitalgate_ingest_isolated_batches_total",
            "batches whose commit failed and were retried message by message / item by item")
        self.ecg_chunks_discarded = r.counter(
            "vitalgate_ingest_ecg_chunks_discarded_total",
            "partial ECG chunks discarded because their recording exceeded the size cap")
        # --- durability: gaps, late data, store failures (issue 12) ---------------------------
        self.gaps_opened = r.counter(
            "vitalgate_ingest_gaps_opened_total",
            "sequence gaps detected per (device, stream), and the seqs missing in them (unit)")
        self.gaps_filled = r.counter(
            "vitalgate_ingest_gap_seqs_filled_total",
            "seqs that arrived inside an open gap (late, redelivered or republished)")
        self.gaps_closed = r.counter(
            "vitalgate_ingest_gaps_closed_total", "gaps whose every seq arrived")
        self.republish_requested = r.counter(
            "vitalgate_ingest_republish_requested_total",
            "republish commands published to gateways for open gaps")
        self.gaps_unrecovered = r.counter(
            "vitalgate_ingest_gaps_unrecovered_total",
            "gaps reported as not refilled after their requests (or legacy streams), and seqs (unit)")
        self.late_readings = r.counter(
            "vitalgate_ingest_late_readings_total",
            "readings stored whose measurement time is far behind their arrival, by flag")
        self.store_failures = r.counter(
            "vitalgate_ingest_store_failures_total",
            "store writes that failed (disk full, read-only...), by error")

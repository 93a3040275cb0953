"""Sequence gaps per (device, stream): what the broker or a gateway never delivered.

Every reading carries ``(device_id, stream, seq)``; a gateway's buffer numbers each device's
readings 0, 1, 2... in one stream (``stream`` ``''`` is a gateway that gives none: one legacy
stream per device). Ingest records, in the SAME transaction as the readings themselves
(:func:`observe`, called from :func:`ingest.store.commit_batch`; functions take a :class:`ingest.db.Conn`):

* ``seq_streams``: per stream the highest contiguous seq (every seq ``0..contiguous`` arrived),
  the highest seq seen and the gateway that last carried it (where a republish request goes);
* ``seq_gaps``: every missing range ``from_seq..to_seq`` (inclusive) below the highest seq.

A seq that arrives inside a gap shrinks or splits it; a gap whose every seq arrived is deleted
(closed) and counted as filled. A seq counts as *arrived* when a valid reading carrying it was
committed, stored or not: a history record that was a duplicate under another seq still
filled its own seq.

Out-of-order delivery is normal for a moment (two gateways' sessions, a broker restart, a
republish), so a gap is only *requested* (:func:`due`) after a grace period: the service then
publishes a ``republish`` command to the stream's gateway, at most ``MAX_REPUBLISH`` seqs per
command, a few commands per pass, and again after ``retry`` while requests remain. A gap that
outlives its requests (or a legacy-stream gap, which cannot be requested) is *reported*
(:func:`unrecovered`): logged once, counted, and visible in ``GET /api/gaps`` and the metrics
until it closes; it never disappears silently.

A first seq above 0 opens a gap ``0..first-1`` (those readings never reached this store). A
database migrated from before this module seeds each existing device's legacy stream as
contiguous up to its highest stored seq: history before the upgrade is not audited.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from ingest.db import migrate
from ingest.db.engine import Conn
from vitalgate.contract import MAX_REPUBLISH

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS seq_streams (
  device_id TEXT NOT NULL,
  stream TEXT NOT NULL,              -- '' = the device's legacy stream (no stream id given)
  gateway_id TEXT,                   -- the gateway that last carried it
  contiguous BIGINT NOT NULL,        -- every seq 0..contiguous arrived (-1: not seq 0 yet)
  max_seq BIGINT NOT NULL,           -- the highest seq that arrived
  first_at BIGINT NOT NULL,          -- processing time (epoch ms) of its first reading
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (device_id, stream)
){without_rowid};

CREATE TABLE IF NOT EXISTS seq_gaps (
  device_id TEXT NOT NULL,
  stream TEXT NOT NULL,
  from_seq BIGINT NOT NULL,
  to_seq BIGINT NOT NULL,            -- inclusive
  detected_at BIGINT NOT NULL,       -- processing time the gap was first seen
  requests BIGINT NOT NULL DEFAULT 0,
  requested_at BIGINT,               -- last republish request
  reported_at BIGINT,                -- when it was reported as not refilled (logged once)
  PRIMARY KEY (device_id, stream, from_seq)
){without_rowid};
CREATE INDEX IF NOT EXISTS seq_gaps_detected ON seq_gaps (detected_at);
"""

# Sums are floats (:func:`_total`: SQLite's total(), PostgreSQL's SUM cast to DOUBLE
# PRECISION): seqs go up to 2**53, so an integer sum of many gap sizes could overflow 64 bits
# and fail the query; counts stay exact far beyond any real loss.


def _total(conn: Conn, expr: str) -> str:
    """SQL: the float sum of ``expr`` (0.0 over no rows)."""
    if conn.is_postgres:
        return f"CAST(COALESCE(SUM({expr}), 0) AS DOUBLE PRECISION)"
    return f"total({expr})"


def _v1_seed(conn: Conn) -> None:
    """v0 → v1: gap tracking on a store that had readings before it: seed their streams."""
    conn.script(SCHEMA)
    if conn.table_exists("readings"):
        seed_legacy(conn, 0)


MIGRATIONS: Final = (migrate.Migration(1, "gap tracking; legacy streams seeded as contiguous",
                                       _v1_seed),)


def _legacy(conn: Conn) -> int:
    """A store of a release before ``schema_versions``: 1 when it tracked gaps already, 0
    when it has readings but no gap tables (seeded), new otherwise."""
    if conn.table_exists("seq_streams"):
        return 1
    return 0 if conn.table_exists("readings") else MIGRATIONS[-1].version


def setup(conn: Conn, now: int = 0) -> None:
    migrate.apply(conn, "gaps", schema=SCHEMA, migrations=MIGRATIONS, now=now, legacy=_legacy)

#: the most gap rows one API answer lists per device.
LIST_LIMIT: Final = 1000


@dataclass(slots=True)
class Update:
    """What one batch did to the gaps (for metrics)."""

    opened: int = 0  #: new gaps
    opened_seqs: int = 0  #: seqs in them
    filled_seqs: int = 0  #: seqs that arrived inside an open gap
    closed: int = 0  #: gaps whose every seq arrived

    def add(self, other: Update) -> None:
        self.opened += other.opened
        self.opened_seqs += other.opened_seqs
        self.filled_seqs += other.filled_seqs
        self.closed += other.closed


@dataclass(slots=True)
class Arrivals:
    """The seqs of one batch, per (device, stream), with the gateway that carried them."""

    seqs: dict[tuple[str, str], tuple[str, set[int]]] = field(default_factory=dict)

    def add(self, device_id: str, stream: str, gateway_id: str, seq: int) -> None:
        _, got = self.seqs.setdefault((device_id, stream), (gateway_id, set()))
        got.add(seq)
        self.seqs[(device_id, stream)] = (gateway_id, got)


def _subtract(lo: int, hi: int, seqs: list[int]) -> list[tuple[int, int]]:
    """``lo..hi`` without the (sorted) ``seqs``: the remaining ranges."""
    out: list[tuple[int, int]] = []
    start = lo
    i = bisect.bisect_left(seqs, lo)
    while i < len(seqs) and seqs[i] <= hi:
        if seqs[i] > start:
            out.append((start, seqs[i] - 1))
        start = seqs[i] + 1
        i += 1
    if start <= hi:
        out.append((start, hi))
    return out


#: streams whose state one query reads at most (two parameters each).
_STATE_CHUNK: Final = 400


def _states(conn: Conn, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """``(contiguous, max_seq)`` of the streams of ``keys`` that have a row: one query per
    :data:`_STATE_CHUNK` streams, not one per stream."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for i in range(0, len(keys), _STATE_CHUNK):
        part = keys[i:i + _STATE_CHUNK]
        marks = ", ".join("(?, ?)" for _ in part)
        for d, st, c, m in conn.execute(
                "SELECT device_id, stream, contiguous, max_seq FROM seq_streams"
                f" WHERE (device_id, stream) IN (VALUES {marks})",
                [x for k in part for x in k]).fetchall():
            out[(str(d), str(st))] = (int(c), int(m))
    return out


def observe(conn: Conn, arrivals: Arrivals, now: int) -> Update:
    """Record a batch's seqs (inside the caller's transaction): open, shrink, split, close.
    The streams' states are read and written in one statement each per batch (PostgreSQL:
    one ``INSERT … SELECT FROM unnest … ON CONFLICT DO UPDATE``; SQLite: ``executemany``,
    in-process; gap rows, which are rare, one by one)."""
    total = Update()
    states = _states(conn, list(arrivals.seqs))
    upserts: list[tuple[str, str, str, int, int, int, int]] = []
    for (device_id, stream), (gateway_id, got) in sorted(arrivals.seqs.items()):  # lock order
        up, contiguous, max_seq = _observe_stream(
            conn, device_id, stream, sorted(got), now, states.get((device_id, stream), (-1, -1)))
        total.add(up)
        upserts.append((device_id, stream, gateway_id, contiguous, max_seq, now, now))
    if upserts and conn.is_postgres:
        # one statement for the batch's streams (keys unique: one row per stream)
        c = list(zip(*upserts, strict=True))
        conn.pg.execute(
            "INSERT INTO seq_streams (device_id, stream, gateway_id, contiguous, max_seq, first_at,"
            " updated_at) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[],"
            " %b::bigint[], %b::bigint[], %b::bigint[]) ON CONFLICT (device_id, stream) DO UPDATE"
            " SET gateway_id = excluded.gateway_id, contiguous = excluded.contiguous,"
            " max_seq = excluded.max_seq, updated_at = excluded.updated_at",
            [list(x) for x in c], prepare=True)
    elif upserts:
        conn.executemany(
            "INSERT INTO seq_streams (device_id, stream, gateway_id, contiguous, max_seq, first_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, stream) DO UPDATE SET"
            " gateway_id = excluded.gateway_id, contiguous = excluded.contiguous,"
            " max_seq = excluded.max_seq, updated_at = excluded.updated_at", upserts)
    return total


def _observe_stream(conn: Conn, device_id: str, stream: str, seqs: list[int], now: int,
                    state: tuple[int, int]) -> tuple[Update, int, int]:
    """One stream's arrivals against its ``(contiguous, max_seq)``: the gap rows changed, and
    its new ``(contiguous, max_seq)`` (written by the caller)."""
    up = Update()
    key = (device_id, stream)
    contiguous, max_seq = state
    fill = [s for s in seqs if contiguous < s <= max_seq]
    if fill:
        rows = conn.execute(
            "SELECT from_seq, to_seq, detected_at, requests, requested_at, reported_at FROM"
            " seq_gaps WHERE device_id = ? AND stream = ? AND to_seq >= ? AND from_seq <= ?",
            (*key, fill[0], fill[-1])).fetchall()
        for lo, hi, *meta in rows:
            pieces = _subtract(lo, hi, fill)
            if pieces == [(lo, hi)]:
                continue
            up.filled_seqs += (hi - lo + 1) - sum(b - a + 1 for a, b in pieces)
            conn.execute("DELETE FROM seq_gaps WHERE device_id = ? AND stream = ? AND"
                         " from_seq = ?", (*key, lo))
            if not pieces:
                up.closed += 1
            conn.executemany(
                "INSERT INTO seq_gaps (device_id, stream, from_seq, to_seq, detected_at,"
                " requests, requested_at, reported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*key, a, b, *meta) for a, b in pieces])
    prev = max_seq
    for s in seqs:
        if s <= prev:
            continue
        if s > prev + 1:
            conn.execute("INSERT INTO seq_gaps (device_id, stream, from_seq, to_seq, detected_at)"
                         " VALUES (?, ?, ?, ?, ?)", (*key, prev + 1, s - 1, now))
            up.opened += 1
            up.opened_seqs += s - 1 - prev
        prev = s
    if contiguous == max_seq and not up.opened:
        contiguous = prev  # in-order arrivals on a stream without gaps: the common case
    else:
        first = conn.execute("SELECT min(from_seq) FROM seq_gaps WHERE device_id = ? AND"
                             " stream = ?", key).fetchone()[0]
        contiguous = int(first) - 1 if first is not None else prev
    return up, contiguous, prev


def seed_legacy(conn: Conn, now: int) -> int:
    """Migration: every device's stored legacy stream is contiguous up to its highest seq."""
    cur = conn.execute(
        "INSERT INTO seq_streams (device_id, stream, gateway_id, contiguous, max_seq,"
        " first_at, updated_at) SELECT device_id, stream, max(gateway_id), max(seq), max(seq), ?, ?"
        " FROM readings WHERE seq IS NOT NULL GROUP BY device_id, stream"
        " ON CONFLICT (device_id, stream) DO NOTHING", (now, now))
    return cur.rowcount


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class Request:
    """One republish to ask a gateway for (at most ``MAX_REPUBLISH`` seqs)."""

    gateway_id: str
    device_id: str
    stream: str
    from_seq: int
    to_seq: int
    gap_from: int  #: the gap row it belongs to


def due(conn: Conn, now: int, *, grace_ms: int, retry_ms: int, max_requests: int,
        limit: int) -> list[Request]:
    """Gaps old enough to ask for, oldest first, at most ``limit`` (the rate limit per pass)."""
    rows = conn.execute(
        "SELECT s.gateway_id, g.device_id, g.stream, g.from_seq, g.to_seq FROM seq_gaps g"
        " JOIN seq_streams s USING (device_id, stream)"
        " WHERE g.stream != '' AND s.gateway_id IS NOT NULL AND g.requests < ?"
        " AND g.detected_at <= ? AND (g.requested_at IS NULL OR g.requested_at <= ?)"
        " ORDER BY g.detected_at, g.device_id, g.from_seq LIMIT ?",
        (max_requests, now - grace_ms, now - retry_ms, limit)).fetchall()
    return [Request(gw, dev, stream, lo, min(hi, lo + MAX_REPUBLISH - 1), lo)
            for gw, dev, stream, lo, hi in rows]


def mark_requested(conn: Conn, requests: Iterable[Request], now: int) -> None:
    conn.executemany(
        "UPDATE seq_gaps SET requests = requests + 1, requested_at = ? WHERE device_id = ?"
        " AND stream = ? AND from_seq = ?",
        [(now, r.device_id, r.stream, r.gap_from) for r in requests])


@dataclass(frozen=True, slots=True)
class Unrecovered:
    device_id: str
    stream: str
    from_seq: int
    to_seq: int
    requests: int


def unrecovered(conn: Conn, now: int, *, grace_ms: int, retry_ms: int,
                max_requests: int) -> list[Unrecovered]:
    """Gaps that outlived their requests (or cannot be requested), not reported yet: marks
    them reported and returns them (the caller logs and counts them once)."""
    rows = conn.execute(
        "SELECT device_id, stream, from_seq, to_seq, requests FROM seq_gaps"
        " WHERE reported_at IS NULL AND detected_at <= ? AND (stream = '' OR"
        " (requests >= ? AND requested_at <= ?))",
        (now - grace_ms, max_requests, now - retry_ms)).fetchall()
    conn.executemany("UPDATE seq_gaps SET reported_at = ? WHERE device_id = ? AND stream = ?"
                     " AND from_seq = ?", [(now, r[0], r[1], r[2]) for r in rows])
    return [Unrecovered(*r) for r in rows]


# --------------------------------------------------------------------------------- reads


def totals(conn: Conn) -> dict[str, int]:
    """Open gaps, missing seqs in them, of them reported (not refilled), and streams tracked."""
    gaps, missing, reported = conn.execute(
        f"SELECT count(*), {_total(conn, 'to_seq - from_seq + 1')},"
        f" {_total(conn, 'CASE WHEN reported_at IS NOT NULL THEN to_seq - from_seq + 1 END')}"
        " FROM seq_gaps").fetchone()
    streams = conn.execute("SELECT count(*) FROM seq_streams").fetchone()[0]
    return {"open_gaps": int(gaps), "missing": int(missing), "reported_missing": int(reported),
            "streams": int(streams)}


def _stream_json(row: tuple[Any, ...]) -> dict[str, Any]:
    device_id, stream, gateway_id, contiguous, max_seq, gaps, missing = row
    expected = int(max_seq) + 1
    return {"device_id": device_id, "stream": stream or None, "gateway_id": gateway_id,
            "contiguous": contiguous, "max_seq": max_seq, "open_gaps": gaps, "missing": missing,
            "completeness": round((expected - missing) / expected, 6) if expected > 0 else None}


def _stream_sql(conn: Conn) -> str:
    return ("SELECT s.device_id, s.stream, s.gateway_id, s.contiguous, s.max_seq,"
            f" count(g.from_seq), CAST({_total(conn, 'g.to_seq - g.from_seq + 1')} AS BIGINT)"
            " FROM seq_streams s LEFT JOIN seq_gaps g USING (device_id, stream)")


def device_gaps(conn: Conn, device_id: str) -> dict[str, Any] | None:
    """A device's streams and open gaps (oldest first, at most ``LIST_LIMIT``)."""
    streams = conn.execute(f"{_stream_sql(conn)} WHERE s.device_id = ? GROUP BY s.device_id, s.stream"
                           " ORDER BY s.first_at", (device_id,)).fetchall()
    if not streams:
        return None
    rows = conn.execute(
        "SELECT stream, from_seq, to_seq, detected_at, requests, requested_at, reported_at"
        " FROM seq_gaps WHERE device_id = ? ORDER BY stream, from_seq LIMIT ?",
        (device_id, LIST_LIMIT)).fetchall()
    gaps = [{"stream": st or None, "from_seq": lo, "to_seq": hi, "missing": hi - lo + 1,
             "detected_at": det, "requests": n, "requested_at": req, "reported_at": rep,
             "state": "reported" if rep is not None else ("requested" if n else "open")}
            for st, lo, hi, det, n, req, rep in rows]
    out = [_stream_json(r) for r in streams]
    missing = sum(s["missing"] for s in out)
    expected = sum(s["max_seq"] + 1 for s in out)
    return {"device_id": device_id, "streams": out, "gaps": gaps, "missing": missing,
            "completeness": round((expected - missing) / expected, 6) if expected > 0 else None,
            "truncated": len(gaps) == LIST_LIMIT}


def summary(conn: Conn, limit: int) -> dict[str, Any]:
    """Totals and the streams with open gaps (most missing first, at most ``limit``)."""
    rows = conn.execute(
        f"{_stream_sql(conn)} GROUP BY s.device_id, s.stream HAVING count(g.from_seq) > 0"
        " ORDER BY 7 DESC, s.device_id LIMIT ?", (limit,)).fetchall()
    return {**totals(conn), "streams_with_gaps": [_stream_json(r) for r in rows]}


def completeness(conn: Conn) -> dict[str, float]:
    """Per device: the share of its seqs (all streams) that arrived, 0..1."""
    rows = conn.execute(
        f"SELECT s.device_id, {_total(conn, 's.max_seq + 1')}, {_total(conn, 'g.missing')}"
        " FROM seq_streams s LEFT JOIN (SELECT device_id, stream,"
        f" {_total(conn, 'to_seq - from_seq + 1')} AS missing FROM seq_gaps"
        " GROUP BY device_id, stream) g USING (device_id, stream) GROUP BY s.device_id").fetchall()
    return {str(d): round((e - m) / e, 6) for d, e, m in rows if e > 0}

"""What a new owner reads to take over patients (issue 13, :mod:`ingest.feed`): the patients'
recent readings in event-time order and the time of each one's last emitted EWS point.

Both are reads by patient and by event time (``readings_patient``: ``(user_code, vital, ts)``;
``ews_history``'s patient index), never "rows after the last id seen": identity values are
allocated at insert and committed out of order across transactions.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from ingest.db.engine import Conn

#: rows read at most for one takeover (a bound on memory and on the warm start's length);
#: beyond it the takeover falls back to each patient's newest values (``truncated``).
MAX_ROWS: Final = 500_000


@dataclass(frozen=True, slots=True)
class Recent:
    #: (user_code, vital, value, ts, received_at, device_id, seq), by patient then event
    #: time (then device, seq, vital: one order whoever reads it)
    rows: list[tuple[str, str, float, int, int, str, int | None]]
    truncated: bool


def recent_readings(conn: Conn, user_codes: Collection[str], since_ms: int,
                    max_rows: int = MAX_ROWS) -> Recent:
    """The readings of ``user_codes`` measured at or after ``since_ms`` (event time)."""
    if not user_codes:
        return Recent([], False)
    where, params = _in(conn, user_codes)
    rows = conn.execute(
        f"SELECT user_code, vital, value, ts, received_at, device_id, seq FROM readings"
        f" WHERE {where} AND ts >= ? ORDER BY user_code, ts, device_id, seq, vital LIMIT ?",
        (*params, since_ms, max_rows + 1)).fetchall()
    truncated = len(rows) > max_rows
    return Recent([(str(u), str(v), float(x), int(t), int(r), str(d or ""),
                    None if q is None else int(q)) for u, v, x, t, r, d, q in rows[:max_rows]],
                  truncated)


def last_emitted(conn: Conn, user_codes: Collection[str]) -> dict[str, int]:
    """Each patient's newest EWS point scored by vitalgate (its ``produce_at``, event time)."""
    if not user_codes:
        return {}
    where, params = _in(conn, user_codes)
    return {str(u): int(t) for u, t in conn.execute(
        f"SELECT user_code, MAX(produce_at) FROM ews_history WHERE {where}"
        " AND source = 'vitalgate' GROUP BY user_code", params)}


def _in(conn: Conn, user_codes: Collection[str]) -> tuple[str, list[Any]]:
    codes = sorted(user_codes)
    if conn.is_postgres:
        return "user_code = ANY(?)", [codes]
    return f"user_code IN ({', '.join('?' * len(codes))})", list(codes)

"""The ward dashboard's read queries (ingest.dashboard.ward), on both engines.

Readings, devices and ECG recordings come from the readings store; the EWS history from the
EWS store (on SQLite its own file, opened read-only; on PostgreSQL the same database). Series
are downsampled in SQL: bucket averages over ``ts / bucket`` (integer division on both
engines: every operand is BIGINT), grouped by position so that the bucket expression is one.
Rows are ordered explicitly, NULLs included, so both engines hand them over in one order.
"""

from __future__ import annotations

from typing import Any

from ingest.db.engine import Conn

Row = tuple[Any, ...]


def devices_with_patients(conn: Conn) -> list[Row]:
    """``(user_code, device_name, device_mac, gateway_id, battery, connected, last_seen, rssi)``
    of every device bound to a patient, least recently seen first (never seen first), so that
    a patient wearing several devices is shown with the one seen last."""
    return [tuple(r) for r in conn.execute(
        "SELECT user_code, device_name, device_mac, gateway_id, battery, connected, last_seen,"
        " rssi FROM devices WHERE user_code IS NOT NULL ORDER BY last_seen NULLS FIRST, id")]


def patient_device(conn: Conn, user_code: str) -> Row | None:
    """``(device_name, device_mac, gateway_id, battery, connected, last_seen, rssi)`` of the
    patient's device seen last."""
    row = conn.execute(
        "SELECT device_name, device_mac, gateway_id, battery, connected, last_seen, rssi"
        " FROM devices WHERE user_code = ? ORDER BY last_seen DESC NULLS LAST, id DESC LIMIT 1",
        (user_code,)).fetchone()
    return None if row is None else tuple(row)


def latest_values(conn: Conn) -> list[Row]:
    """``(user_code, vital, value, ts)``: each patient's newest value of each vital (when two
    share the newest ``ts``, the one stored last comes last)."""
    return [tuple(r) for r in conn.execute(
        "SELECT r.user_code, r.vital, r.value, r.ts FROM readings r JOIN ("
        " SELECT user_code, vital, max(ts) AS ts FROM readings"
        " WHERE user_code IS NOT NULL GROUP BY user_code, vital) m"
        " ON r.user_code = m.user_code AND r.vital = m.vital AND r.ts = m.ts"
        " ORDER BY r.user_code, r.vital, r.id")]


def patient_latest_values(conn: Conn, user_code: str) -> list[Row]:
    """``(vital, value, ts)``: the patient's newest value of each vital."""
    return [tuple(r) for r in conn.execute(
        "SELECT r.vital, r.value, r.ts FROM readings r JOIN ("
        " SELECT vital, max(ts) AS ts FROM readings WHERE user_code = ? GROUP BY vital) m"
        " ON r.vital = m.vital AND r.ts = m.ts WHERE r.user_code = ? ORDER BY r.vital, r.id",
        (user_code, user_code))]


def sparks(conn: Conn, since: int, bucket: int) -> list[Row]:
    """``(user_code, vital, bucket index, average)`` of every patient since ``since``."""
    return [tuple(r) for r in conn.execute(
        "SELECT user_code, vital, ts / CAST(? AS BIGINT), avg(value) FROM readings"
        " WHERE ts >= ? AND user_code IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        (bucket, since))]


def series(conn: Conn, user_code: str, since: int, bucket: int) -> list[Row]:
    """``(vital, bucket index, average)`` of one patient since ``since``."""
    return [tuple(r) for r in conn.execute(
        "SELECT vital, ts / CAST(? AS BIGINT), avg(value) FROM readings"
        " WHERE user_code = ? AND ts >= ? GROUP BY 1, 2 ORDER BY 1, 2",
        (bucket, user_code, since))]


def ecg_strips(conn: Conn, user_code: str, limit: int) -> list[Row]:
    """``(recording, ts, fs, n_samples, samples, analysis)`` of the patient's newest
    recordings (``samples`` as bytes)."""
    return [(rec, ts, fs, n, bytes(blob), analysis) for rec, ts, fs, n, blob, analysis in
            conn.execute(
                "SELECT recording, ts, fs, n_samples, samples, analysis FROM ecg_recordings"
                " WHERE user_code = ? ORDER BY ts DESC, id DESC LIMIT ?", (user_code, limit))]


def ews_since(conn: Conn, since: int) -> list[Row]:
    """``(user_code, point, result, risk, produce_at)`` of the EWS points emitted since
    ``since``, in emission order."""
    return [tuple(r) for r in conn.execute(
        "SELECT user_code, point, result, risk, produce_at FROM ews_history"
        " WHERE emitted_at >= ? ORDER BY id", (since,))]


def ews_of(conn: Conn, user_code: str, since: int) -> list[Row]:
    """``(point, result, risk, produce_at)`` of one patient's EWS points produced since
    ``since``, oldest first."""
    return [tuple(r) for r in conn.execute(
        "SELECT point, result, risk, produce_at FROM ews_history"
        " WHERE user_code = ? AND produce_at >= ? ORDER BY produce_at, id", (user_code, since))]


"""The medical-record API's read queries (ingest.records: Cexup's record shapes), on both
engines: a patient's readings (blood pressure as one record: systolic joined with the
diastolic of the same stream and seq) and ECG recordings.

Portable forms: a subquery in FROM has an alias (PostgreSQL 15 requires one); the branches of
a UNION give every column one type (a reading's diastolic value and a recording's quality are
two columns, each NULL in the other branch); ORDER BY names a tie-breaker (id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ingest.db.engine import Conn

Row = tuple[Any, ...]

#: a record row: (id, device_id, user_code, vital, value, diastolic, quality, ts, source, recording)
_READING: Final = (
    "SELECT r.id, r.device_id, r.user_code, r.vital, r.value, d.value AS diastolic,"
    " CAST(NULL AS TEXT) AS quality, r.ts, r.source, r.recording"
    " FROM readings r LEFT JOIN readings d ON r.vital = 'systolic_bp'"
    " AND d.device_id = r.device_id AND d.stream = r.stream AND d.seq = r.seq"
    " AND d.vital = 'diastolic_bp'")
_ECG: Final = (
    "SELECT id, device_id, user_code, 'ecg' AS vital, mean_hr AS value,"
    " CAST(NULL AS DOUBLE PRECISION) AS diastolic, quality, ts, 'ecg' AS source, recording"
    " FROM ecg_recordings")
#: a recording row: (id, device_id, recording, user_code, ts, fs, n_samples, analysis,
#: quality, mean_hr, created_at) [, samples]
RECORDING_COLUMNS: Final = ("id, device_id, recording, user_code, ts, fs, n_samples, analysis,"
                            " quality, mean_hr, created_at")


def records(conn: Conn, user_code: str, vitals: Sequence[str], with_ecg: bool, start: int,
            end: int, limit: int, offset: int, newest_first: bool) -> tuple[list[Row], int]:
    """A page of a patient's record rows of ``vitals`` (and ECG recordings, ``with_ecg``) with
    ``start <= ts < end``, by ts then id; and how many there are."""
    parts: list[str] = []
    args: list[Any] = []
    if vitals:
        marks = ",".join("?" * len(vitals))
        parts.append(f"{_READING} WHERE r.user_code = ? AND r.vital IN ({marks})"
                     " AND r.ts >= ? AND r.ts < ?")
        args += [user_code, *vitals, start, end]
    if with_ecg:
        parts.append(f"{_ECG} WHERE user_code = ? AND ts >= ? AND ts < ?")
        args += [user_code, start, end]
    if not parts:
        return [], 0
    union = " UNION ALL ".join(parts)
    total = int(conn.execute(f"SELECT count(*) FROM ({union}) AS u", args).fetchone()[0])
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"SELECT * FROM ({union}) AS u ORDER BY 8 {order}, 1 {order} LIMIT ? OFFSET ?",
        [*args, limit, offset]).fetchall()
    return [tuple(r) for r in rows], total


def latest_reading(conn: Conn, user_code: str, vital: str) -> Row | None:
    """The patient's newest record row of ``vital``."""
    row = conn.execute(f"{_READING} WHERE r.user_code = ? AND r.vital = ?"
                       " ORDER BY r.ts DESC, r.id DESC LIMIT 1", (user_code, vital)).fetchone()
    return None if row is None else tuple(row)


def latest_recording(conn: Conn, user_code: str) -> Row | None:
    row = conn.execute(f"SELECT {RECORDING_COLUMNS} FROM ecg_recordings WHERE user_code = ?"
                       " ORDER BY ts DESC, id DESC LIMIT 1", (user_code,)).fetchone()
    return None if row is None else tuple(row)


def recording(conn: Conn, name: str) -> Row | None:
    """One recording's row with its samples (bytes) last."""
    row = conn.execute(f"SELECT {RECORDING_COLUMNS}, samples FROM ecg_recordings"
                       " WHERE recording = ? ORDER BY id LIMIT 1", (name,)).fetchone()
    return None if row is None else (*tuple(row)[:-1], bytes(row[-1]))


def recordings(conn: Conn, user_code: str, limit: int, offset: int) -> tuple[list[Row], int]:
    """A page of a patient's recordings, newest first; and how many there are."""
    total = int(conn.execute("SELECT count(*) FROM ecg_recordings WHERE user_code = ?",
                             (user_code,)).fetchone()[0])
    rows = conn.execute(
        f"SELECT {RECORDING_COLUMNS} FROM ecg_recordings WHERE user_code = ?"
        " ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?", (user_code, limit, offset)).fetchall()
    return [tuple(r) for r in rows], total

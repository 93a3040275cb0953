"""ECG chunks, recordings and refused recordings, on both engines.

Chunks wait in ``ecg_chunks`` until chunks ``0..n`` and the ``last`` one are present; they are
then reassembled into one ``ecg_recordings`` row whose ``samples`` are int32 little-endian.
A recording refused as too large is remembered in ``ecg_rejected`` so that its later chunks
are dead-lettered, not collected again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ingest.db import migrate
from ingest.db.engine import Conn

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ecg_chunks (
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  seq BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  fs DOUBLE PRECISION NOT NULL,
  samples {blob} NOT NULL,           -- int32 little-endian
  last BIGINT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  received_at BIGINT NOT NULL,
  PRIMARY KEY (device_id, recording, seq)
){without_rowid};
CREATE INDEX IF NOT EXISTS ecg_chunks_received ON ecg_chunks (received_at);

CREATE TABLE IF NOT EXISTS ecg_recordings (
  id {id},
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  user_code TEXT,
  gateway_id TEXT,
  ts BIGINT NOT NULL,                -- first chunk's ts
  fs DOUBLE PRECISION NOT NULL,
  n_samples BIGINT NOT NULL,
  samples {blob} NOT NULL,           -- int32 little-endian, all chunks in seq order
  analysis TEXT,                     -- JSON of ews.ecg's EcgSummary, NULL until analysed
  quality TEXT,
  mean_hr DOUBLE PRECISION,
  created_at BIGINT NOT NULL,
  UNIQUE (device_id, recording)
);
CREATE INDEX IF NOT EXISTS ecg_recordings_patient ON ecg_recordings (user_code, ts);
CREATE INDEX IF NOT EXISTS ecg_recordings_ts ON ecg_recordings (ts);
CREATE INDEX IF NOT EXISTS ecg_recordings_name ON ecg_recordings (recording);

-- recordings refused as too large: their later chunks are dead-lettered, not collected again
CREATE TABLE IF NOT EXISTS ecg_rejected (
  device_id TEXT NOT NULL,
  recording TEXT NOT NULL,
  at BIGINT NOT NULL,
  PRIMARY KEY (device_id, recording)
);
"""

#: the retention expression's index (event or processing time, whichever is later).
_KEPT_INDEX: Final = "CREATE INDEX IF NOT EXISTS ecg_recordings_kept ON ecg_recordings ({kept})"


def setup(conn: Conn, now: int = 0) -> None:
    """No migration yet: the previous release's tables are this schema (SQLite types)."""
    migrate.apply(conn, "ecg", schema=SCHEMA, now=now)
    conn.execute(_KEPT_INDEX.format(kept=conn.greatest("ts", "created_at")))


@dataclass(frozen=True, slots=True)
class ChunkState:
    """What the store knows of a chunk's recording before the chunk is added."""

    assembled: bool
    rejected: bool
    chunks: int  #: chunks stored, other than this seq
    samples: int  #: their samples


def chunk_state(conn: Conn, device_id: str, recording: str, seq: int) -> ChunkState:
    key = (device_id, recording)
    if conn.execute("SELECT 1 FROM ecg_recordings WHERE device_id = ? AND recording = ?",
                    key).fetchone():
        return ChunkState(True, False, 0, 0)
    if conn.execute("SELECT 1 FROM ecg_rejected WHERE device_id = ? AND recording = ?",
                    key).fetchone():
        return ChunkState(False, True, 0, 0)
    have, samples = conn.execute(
        "SELECT count(*), coalesce(sum(length(samples)), 0) / 4 FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ? AND seq <> ?", (*key, seq)).fetchone()
    return ChunkState(False, False, int(have), int(samples))


def reject(conn: Conn, device_id: str, recording: str, now: int) -> None:
    """Discard a recording's partial chunks and refuse its later ones."""
    conn.execute("DELETE FROM ecg_chunks WHERE device_id = ? AND recording = ?",
                 (device_id, recording))
    conn.execute("INSERT INTO ecg_rejected (device_id, recording, at) VALUES (?, ?, ?)"
                 " ON CONFLICT DO NOTHING", (device_id, recording, now))


def insert_chunk(conn: Conn, device_id: str, recording: str, seq: int, ts: int, fs: float,
                 samples: bytes, last: bool, user_code: str | None, gateway_id: str,
                 received_at: int) -> bool:
    """False when that chunk is stored already."""
    cur = conn.execute(
        "INSERT INTO ecg_chunks (device_id, recording, seq, ts, fs, samples, last,"
        " user_code, gateway_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (device_id, recording, seq, ts, fs, samples, int(last), user_code, gateway_id,
         received_at))
    return bool(cur.rowcount)


def assemble(conn: Conn, device_id: str, recording: str, now: int
             ) -> tuple[int, str | None, str | None, int, float] | None:
    """When every chunk ``0..last`` is present: the recording row made from them (chunks
    deleted); returns ``(id, user_code, gateway_id, ts, fs)``, else None."""
    count, top, last_seq = conn.execute(
        "SELECT count(*), max(seq), max(CASE WHEN last <> 0 THEN seq END) FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ?", (device_id, recording),
    ).fetchone()
    if last_seq is None or top != last_seq or count != top + 1:
        return None  # the last chunk or one before it is still missing
    rows = conn.execute(
        "SELECT ts, fs, samples, user_code, gateway_id FROM ecg_chunks"
        " WHERE device_id = ? AND recording = ? ORDER BY seq", (device_id, recording),
    ).fetchall()
    blob = b"".join(bytes(r[2]) for r in rows)
    user_code = next((r[3] for r in reversed(rows) if r[3]), None)
    gateway_id = rows[-1][4]
    rec_id = conn.execute(
        "INSERT INTO ecg_recordings (device_id, recording, user_code, gateway_id, ts, fs,"
        " n_samples, samples, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (device_id, recording, user_code, gateway_id, rows[0][0], rows[0][1], len(blob) // 4,
         blob, now),
    ).fetchone()[0]
    conn.execute("DELETE FROM ecg_chunks WHERE device_id = ? AND recording = ?", (device_id, recording))
    return int(rec_id), user_code, gateway_id, int(rows[0][0]), float(rows[0][1])


def samples_of(conn: Conn, rec_id: int) -> bytes | None:
    row = conn.execute("SELECT samples FROM ecg_recordings WHERE id = ?", (rec_id,)).fetchone()
    return None if row is None else bytes(row[0])


def save_analysis(conn: Conn, rec_id: int, analysis_json: str, quality: str | None,
                  mean_hr: float | None) -> None:
    conn.execute("UPDATE ecg_recordings SET analysis = ?, quality = ?, mean_hr = ? WHERE id = ?",
                 (analysis_json, quality, mean_hr, rec_id))


def unanalysed(conn: Conn, limit: int) -> list[tuple[Any, ...]]:
    """``(id, device_id, recording, user_code, gateway_id, ts, fs)`` of recordings without an
    analysis, oldest first."""
    return [tuple(r) for r in conn.execute(
        "SELECT id, device_id, recording, user_code, gateway_id, ts, fs FROM ecg_recordings"
        " WHERE analysis IS NULL ORDER BY id LIMIT ?", (limit,)).fetchall()]


#: the columns :func:`recording_rows` and friends return (then ``samples`` when asked).
COLUMNS: Final = ("id, device_id, recording, user_code, ts, fs, n_samples, analysis, quality,"
                  " mean_hr, created_at")


def by_name(conn: Conn, recording: str) -> tuple[Any, ...] | None:
    row = conn.execute(f"SELECT {COLUMNS}, samples FROM ecg_recordings WHERE recording = ?"
                       " ORDER BY id LIMIT 1", (recording,)).fetchone()
    return None if row is None else tuple(row)


def of_patient(conn: Conn, user_code: str, page: int, size: int
               ) -> tuple[list[tuple[Any, ...]], int]:
    total = conn.execute("SELECT count(*) FROM ecg_recordings WHERE user_code = ?",
                         (user_code,)).fetchone()[0]
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM ecg_recordings WHERE user_code = ? ORDER BY ts DESC, id DESC"
        " LIMIT ? OFFSET ?", (user_code, size, (page - 1) * size)).fetchall()
    return [tuple(r) for r in rows], int(total)


def latest_of(conn: Conn, user_code: str) -> tuple[Any, ...] | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM ecg_recordings WHERE user_code = ?"
                       " ORDER BY ts DESC, id DESC LIMIT 1", (user_code,)).fetchone()
    return None if row is None else tuple(row)


def expire(conn: Conn, cutoff_ms: int, batch: int) -> dict[str, int]:
    """Retention, at most ``batch`` rows per table: recordings by ``max(ts, created_at)``
    (event and processing time past the cutoff), partial chunks by ``received_at`` and refusals
    by ``at`` (processing time)."""
    kept = conn.greatest("ts", "created_at")
    out = {
        "ecg_recordings": conn.execute(
            f"DELETE FROM ecg_recordings WHERE id IN (SELECT id FROM ecg_recordings WHERE {kept} < ?"
            " LIMIT ?)", (cutoff_ms, batch)).rowcount,
        "ecg_chunks": conn.execute(
            "DELETE FROM ecg_chunks WHERE (device_id, recording, seq) IN (SELECT device_id,"
            " recording, seq FROM ecg_chunks WHERE received_at < ? LIMIT ?)",
            (cutoff_ms, batch)).rowcount,
        "ecg_rejected": conn.execute(
            "DELETE FROM ecg_rejected WHERE (device_id, recording) IN (SELECT device_id,"
            " recording FROM ecg_rejected WHERE at < ? LIMIT ?)", (cutoff_ms, batch)).rowcount,
    }
    return {k: v for k, v in out.items() if v}

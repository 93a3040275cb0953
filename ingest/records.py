"""Medical records in Cexup's shapes (seed 002: record types, BLOOD_PRESSURE as systole and
diastole, ELECTROCARDIOGRAPH), read from the readings store (queries: ingest.db.records).

Functions take an ``ingest.db.Conn`` (or, until the store is a ``Database``, its raw SQLite
connection) inside the caller's read transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ingest.db import records as db
from ingest.db.compat import AnyConn, as_conn
from ingest.store import ECG_TYPE, RECORD_TYPES, VITAL_TYPE
from vitalgate.contract import Source, mac_from_device_id


def _record(row: Sequence[Any]) -> dict[str, Any]:
    rid, device_id, user_code, vital, value, dia, quality, ts, source, recording = row
    if vital == "ecg":
        rtype: str = ECG_TYPE
        val: Any = {"recording": recording, "mean_hr": value, "quality": quality}
        unit = None
    elif vital == "systolic_bp":
        rtype, val, unit = "BLOOD_PRESSURE", {"systole": value, "diastole": dia}, "mmHg"
    else:
        rtype = VITAL_TYPE[vital]
        val, unit = value, RECORD_TYPES[rtype][1]
    return {
        "id": rid, "device_mac": mac_from_device_id(device_id), "member_id": user_code,
        "type": rtype, "value": val, "unit": unit,
        "method": "MANUAL" if source == Source.MANUAL.value else "AUTOMATIC",
        "source": source, "created_at": ts,
    }


def recording_json(row: Sequence[Any], with_samples: bool = False) -> dict[str, Any]:
    (rid, device_id, recording, user_code, ts, fs, n, analysis, quality, mean_hr, created) = row[:11]
    out: dict[str, Any] = {
        "id": rid, "recording": recording, "device_mac": mac_from_device_id(device_id),
        "member_id": user_code, "fs": fs, "n_samples": n,
        "duration_s": round(n / fs, 3) if fs else None, "created_at": ts,
        "received_at": created, "quality": quality, "mean_hr": mean_hr,
        "analysis": json.loads(analysis) if analysis else None,
    }
    if with_samples:
        out["samples"] = np.frombuffer(row[11], dtype="<i4").tolist()
    return out


def records(
    conn: AnyConn, user_code: str, types: Iterable[str], start: int, end: int,
    page: int, size: int, newest_first: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """A patient's records of ``types`` with ``start <= created_at < end``, paged."""
    types = list(types)
    vitals = [RECORD_TYPES[t][0][0] for t in types if t in RECORD_TYPES]
    rows, total = db.records(as_conn(conn), user_code, vitals, ECG_TYPE in types, start, end,
                             size, (page - 1) * size, newest_first)
    return [_record(r) for r in rows], total


def latest(conn: AnyConn, user_code: str) -> dict[str, Any]:
    """Each type's latest record of a patient (``None`` when there is none)."""
    c = as_conn(conn)
    out: dict[str, Any] = {}
    for rtype, (vitals, _) in RECORD_TYPES.items():
        row = db.latest_reading(c, user_code, vitals[0])
        out[rtype] = _record(row) if row else None
    rec = db.latest_recording(c, user_code)
    out[ECG_TYPE] = recording_json(rec) if rec else None
    return out


def get_recording(conn: AnyConn, recording: str) -> dict[str, Any] | None:
    row = db.recording(as_conn(conn), recording)
    return recording_json(row, with_samples=True) if row else None


def list_recordings(
    conn: AnyConn, user_code: str, page: int, size: int
) -> tuple[list[dict[str, Any]], int]:
    rows, total = db.recordings(as_conn(conn), user_code, size, (page - 1) * size)
    return [recording_json(r) for r in rows], total

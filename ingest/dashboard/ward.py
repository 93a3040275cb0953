"""The ward's read model: one tile per patient, and one patient's page, from the stores.

Reads only: the readings/registry database (through the store's read connection), the EWS
history (a read-only ``ingest.db.Database``: on SQLite the EWS file opened read-only, on
PostgreSQL the same database) and the EWS engine's current state. The queries are
ingest.db.ward's. Series are downsampled in SQL (bucket averages) so that a tile costs a few
dozen points however fast the watches report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from ingest.db import Conn, Database, Location, gaps
from ingest.db import ward as db

#: vitals shown on a tile / patient page, in NEWS2 chart order (diastolic only on the page)
TILE_VITALS: Final = ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")
PAGE_VITALS: Final = (*TILE_VITALS, "diastolic_bp")
#: a value older than this no longer counts toward a tile's completeness (NEWS2 freshness)
FRESH_MS: Final = 15 * 60_000
#: a tile's sparkline covers this much history, in at most SPARK_POINTS bucket averages
SPARK_WINDOW_MS: Final = 2 * 3_600_000
SPARK_POINTS: Final = 40
#: a patient page's trend charts: at most this many points per vital
PAGE_POINTS: Final = 300
#: the alert list: risk rises in this window, newest first, at most this many
ALERT_WINDOW_MS: Final = 24 * 3_600_000
ALERT_LIMIT: Final = 50
#: ECG strips on a patient page: the newest recordings, the first seconds of each
ECG_RECORDINGS: Final = 3
ECG_STRIP_S: Final = 10.0
RISK_ORDER: Final = {"low": 0, "low-medium": 1, "medium": 2, "high": 3}


class Engine(Protocol):
    """What the ward needs of ingest.ews_engine.EwsEngine."""

    def current(self, user_code: str) -> Any: ...
    def get_context(self, user_code: str) -> dict[str, Any]: ...


class Reader(Protocol):
    """A store's read side (an ``ingest.db.Database``)."""

    def read_sync(self, fn: Callable[[Conn], Any]) -> Any: ...


def ews_reader(location: Location) -> Database:
    """The EWS history for the ward, read-only (the EWS engine created it already)."""
    if location.path is not None:
        # a read-only SQLite file is opened by URI (file:PATH?mode=ro): a path spelled with a
        # leading '//' (sqlite:////abs/path) would read as a URI authority there
        location = replace(location, path=location.path.resolve())
    return Database(location, readonly=True, name="ews-ward", read_pool=2)


@dataclass
class WardView:
    db: Reader
    engine: Engine
    ews_db: Reader
    clock: Callable[[], int]

    # ------------------------------------------------------------------ ward

    def ward(self) -> dict[str, Any]:
        now = self.clock()
        patients, alerts = self.db.read_sync(lambda c: self._ward_rows(c, now)), self.alerts(now)
        return {"now": now, "patients": patients, "alerts": alerts}

    def _ward_rows(self, conn: Conn, now: int) -> list[dict[str, Any]]:
        devices: dict[str, dict[str, Any]] = {}
        for row in db.devices_with_patients(conn):
            devices[row[0]] = {
                "name": row[1], "mac": row[2], "gateway_id": row[3], "battery": row[4],
                "connected": None if row[5] is None else bool(row[5]), "last_seen": row[6], "rssi": row[7],
            }
        # the share of each device's sequence numbers that arrived (ingest.gaps), 0..1
        seq_complete = gaps.completeness(conn)
        for device in devices.values():
            device["data_completeness"] = seq_complete.get(str(device["mac"]).replace(":", "").lower())
        latest: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for code, vital, value, ts in db.latest_values(conn):
            latest[code][vital] = {"value": value, "ts": ts, "spark": []}
        bucket = max(1, SPARK_WINDOW_MS // SPARK_POINTS)
        for code, vital, b, value in db.sparks(conn, now - SPARK_WINDOW_MS, bucket):
            item = latest.get(code, {}).get(vital)
            if item is not None:
                item["spark"].append([int(b) * bucket + bucket // 2, round(float(value), 2)])
        codes = sorted(set(devices) | set(latest))
        return [self._tile(code, devices.get(code), latest.get(code, {}), now) for code in codes]

    def _tile(
        self, code: str, device: dict[str, Any] | None, vitals: dict[str, dict[str, Any]], now: int
    ) -> dict[str, Any]:
        point = self.engine.current(code)
        fresh = sum(1 for v in TILE_VITALS if v in vitals and now - vitals[v]["ts"] <= FRESH_MS)
        return {
            "user_code": code,
            "gateway_id": (device or {}).get("gateway_id"),
            "device": device,
            "ews": point.to_api() if point is not None else None,
            "vitals": {k: v for k, v in vitals.items() if k in PAGE_VITALS},
            "completeness": fresh / len(TILE_VITALS),
        }

    def alerts(self, now: int) -> list[dict[str, Any]]:
        """Risk rises: each EWS point whose risk is above the patient's previous point's."""

        def query(conn: Conn) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            previous: dict[str, str] = {}
            for code, point, result, risk, produce_at in db.ews_since(conn,
                                                                      now - ALERT_WINDOW_MS):
                before = previous.get(code)
                if RISK_ORDER.get(risk, 0) > RISK_ORDER.get(before or "low", 0):
                    out.append({"user_code": code, "point": point, "result": result, "risk": risk,
                                "from_risk": before, "produce_at": produce_at})
                previous[code] = risk
            return out[::-1][:ALERT_LIMIT]

        result: list[dict[str, Any]] = self.ews_db.read_sync(query)
        return result

    # ------------------------------------------------------------------ patient

    def patient(self, code: str, hours: float) -> dict[str, Any] | None:
        now = self.clock()
        since = now - int(hours * 3_600_000)

        def query(conn: Conn) -> dict[str, Any] | None:
            rows = self._ward_rows_for(conn, code, now)
            if rows is None:
                return None
            bucket = max(1, (now - since) // PAGE_POINTS)
            series: dict[str, list[list[float]]] = defaultdict(list)
            for vital, b, value in db.series(conn, code, since, bucket):
                series[vital].append([int(b) * bucket + bucket // 2, round(float(value), 2)])
            ecg = []
            for rec, ts, fs, n, blob, analysis in db.ecg_strips(conn, code, ECG_RECORDINGS):
                ecg.append(_strip(rec, ts, fs, n, blob, analysis))
            return {"patient": rows, "series": series, "ecg": ecg}

        data: dict[str, Any] | None = self.db.read_sync(query)
        if data is None:
            return None

        def history(conn: Conn) -> list[dict[str, Any]]:
            return [{"point": p, "result": r, "risk": k, "produce_at": t}
                    for p, r, k, t in db.ews_of(conn, code, since)]

        data["ews_history"] = self.ews_db.read_sync(history)
        data["context"] = self.engine.get_context(code)
        data["now"] = now
        return data

    def _ward_rows_for(self, conn: Conn, code: str, now: int) -> dict[str, Any] | None:
        device_row = db.patient_device(conn, code)
        vitals: dict[str, dict[str, Any]] = {}
        for vital, value, ts in db.patient_latest_values(conn, code):
            vitals[vital] = {"value": value, "ts": ts, "spark": []}
        if device_row is None and not vitals and self.engine.current(code) is None:
            return None
        device = None
        if device_row is not None:
            device = {
                "name": device_row[0], "mac": device_row[1], "gateway_id": device_row[2],
                "battery": device_row[3], "connected": None if device_row[4] is None else bool(device_row[4]),
                "last_seen": device_row[5], "rssi": device_row[6],
            }
        return self._tile(code, device, vitals, now)


def _strip(rec: str, ts: int, fs: float, n: int, blob: bytes, analysis: str | None) -> dict[str, Any]:
    """The first ECG_STRIP_S seconds of a recording with the beats detected in them."""
    import numpy as np

    keep = min(n, int(ECG_STRIP_S * fs))
    samples = np.frombuffer(blob, dtype="<i4", count=keep)
    summary = json.loads(analysis) if analysis else None
    beats = []
    if summary:
        beats = [int(b) for b in summary.get("beats", []) if 0 <= int(b) < keep]
        summary = {k: summary.get(k) for k in ("mean_hr_bpm", "quality", "irregular_rhythm",
                                                "sdnn_ms", "rmssd_ms", "usable_fraction", "note")}
        summary["mean_hr"] = summary.pop("mean_hr_bpm")
        summary["irregular"] = summary.pop("irregular_rhythm")
    # thin long strips to ~2,500 points for drawing; beats are mapped onto the thinned axis
    step = max(1, keep // 2500)
    return {
        "recording": rec, "ts": ts, "fs": fs / step, "n_samples": n,
        "samples": samples[::step].astype(int).tolist(),
        "beats": [b // step for b in beats], "summary": summary,
    }

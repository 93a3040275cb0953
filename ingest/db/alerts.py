"""The alert tables (component ``alerts``) on both engines: ``alerts`` and ``alert_audit``.

* ``alerts``: one row per alert, its current state (``ingest.alerts`` decides the states and
  transitions; this module only stores them). ``open_key`` is the patient's user_code while the
  alert is not resolved and NULL after: a UNIQUE column, so the store itself keeps one open
  alert per patient (both engines allow many NULLs in a UNIQUE column).
* ``alert_audit``: every transition (opened, updated, escalated, acknowledged by whom with
  the note, resolved), append-only. Nothing ever updates or deletes a row: triggers refuse
  UPDATE and DELETE on both engines (and TRUNCATE on PostgreSQL), so a rewrite fails its
  transaction instead of changing the record. (A database owner can drop a trigger; that is a
  schema change, visible in the schema, not something the service's SQL can do by accident.)

The tables live in the EWS store (on PostgreSQL the shared database). Retention does not touch
them: the audit trail is part of the clinical record.

Every function takes ``conn`` and runs inside the caller's transaction. Rows are plain dicts
keyed by the column names in :data:`ALERT_COLUMNS` / :data:`AUDIT_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ingest.db.engine import Conn
from ingest.db.migrate import Migration, apply

COMPONENT: Final = "alerts"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS alerts (
  id {id},
  user_code TEXT NOT NULL,
  state TEXT NOT NULL,
  severity TEXT NOT NULL,
  point BIGINT NOT NULL,        -- the score of the last opening/update (the alert's peak)
  risk TEXT NOT NULL,
  result TEXT NOT NULL,
  produce_at BIGINT NOT NULL,   -- event time of that score (its newest vital)
  opened_at BIGINT NOT NULL,    -- processing time, like every *_at below
  updated_at BIGINT NOT NULL,
  due_at BIGINT,                -- respond by (NULL once acknowledged, escalated or resolved)
  escalated_at BIGINT,
  escalations BIGINT NOT NULL,
  acked_by TEXT,
  acked_at BIGINT,
  ack_note TEXT,
  resolved_at BIGINT,
  open_key TEXT UNIQUE          -- user_code until resolved, then NULL: one open alert per patient
);
CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts (state, id);
CREATE INDEX IF NOT EXISTS alerts_by_patient ON alerts (user_code, id);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts (due_at);
CREATE TABLE IF NOT EXISTS alert_audit (
  id {id},
  alert_id BIGINT NOT NULL REFERENCES alerts (id),
  at BIGINT NOT NULL,           -- processing time of the transition
  transition TEXT NOT NULL,
  from_state TEXT,
  to_state TEXT NOT NULL,
  point BIGINT NOT NULL,
  severity TEXT NOT NULL,
  risk TEXT NOT NULL,
  produce_at BIGINT NOT NULL,
  who TEXT,
  note TEXT,
  why TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_audit_by_alert ON alert_audit (alert_id, id);
"""

#: append-only on SQLite: an UPDATE or DELETE of an audit row aborts its statement.
_SQLITE_GUARD: Final = """
CREATE TRIGGER IF NOT EXISTS alert_audit_no_update BEFORE UPDATE ON alert_audit
BEGIN SELECT RAISE(ABORT, 'alert_audit is append-only: audit rows are never rewritten'); END;
CREATE TRIGGER IF NOT EXISTS alert_audit_no_delete BEFORE DELETE ON alert_audit
BEGIN SELECT RAISE(ABORT, 'alert_audit is append-only: audit rows are never deleted'); END;
"""

#: append-only on PostgreSQL: one trigger function refusing UPDATE, DELETE and TRUNCATE.
_POSTGRES_GUARD: Final = """
CREATE OR REPLACE FUNCTION alert_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'alert_audit is append-only: % refused', TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE OR REPLACE TRIGGER alert_audit_no_rewrite BEFORE UPDATE OR DELETE ON alert_audit
  FOR EACH ROW EXECUTE FUNCTION alert_audit_append_only();
CREATE OR REPLACE TRIGGER alert_audit_no_truncate BEFORE TRUNCATE ON alert_audit
  FOR EACH STATEMENT EXECUTE FUNCTION alert_audit_append_only();
"""

#: the first release of these tables: no step yet (SCHEMA creates them).
MIGRATIONS: Final[tuple[Migration, ...]] = ()

ALERT_COLUMNS: Final = (
    "id", "user_code", "state", "severity", "point", "risk", "result", "produce_at",
    "opened_at", "updated_at", "due_at", "escalated_at", "escalations", "acked_by", "acked_at",
    "ack_note", "resolved_at",
)
AUDIT_COLUMNS: Final = (
    "id", "alert_id", "at", "transition", "from_state", "to_state", "point", "severity", "risk",
    "produce_at", "who", "note", "why",
)
_ALERT_SELECT: Final = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"
_WRITABLE: Final = tuple(c for c in ALERT_COLUMNS if c != "id")


def setup(conn: Conn, now: int = 0) -> None:
    """Create or migrate the tables and the append-only guard (``Database(setup=...)``)."""
    apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, now=now)
    conn.script(_POSTGRES_GUARD if conn.is_postgres else _SQLITE_GUARD)


def _alert(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(ALERT_COLUMNS, row, strict=True))


def insert_alert(conn: Conn, alert: Mapping[str, Any]) -> int:
    """A new alert (``id`` ignored); its ``open_key`` is set while it is not resolved. Raises
    IntegrityError if the patient already has an open one."""
    values = [alert[c] for c in _WRITABLE]
    open_key = None if alert["state"] == "resolved" else alert["user_code"]
    row = conn.execute(
        f"INSERT INTO alerts ({', '.join(_WRITABLE)}, open_key)"
        f" VALUES ({', '.join('?' for _ in _WRITABLE)}, ?) RETURNING id",
        (*values, open_key)).fetchone()
    return int(row[0])


def update_alert(conn: Conn, alert: Mapping[str, Any], *, expect_state: str) -> bool:
    """Write ``alert``'s columns if its row is still in ``expect_state`` (another instance or
    request may have moved it meanwhile); False when it was not."""
    sets = ", ".join(f"{c} = ?" for c in _WRITABLE if c != "user_code")
    values = [alert[c] for c in _WRITABLE if c != "user_code"]
    open_key = None if alert["state"] == "resolved" else alert["user_code"]
    cur = conn.execute(f"UPDATE alerts SET {sets}, open_key = ? WHERE id = ? AND state = ?",
                       (*values, open_key, alert["id"], expect_state))
    return cur.rowcount == 1


def append_audit(conn: Conn, entry: Mapping[str, Any]) -> int:
    cols = [c for c in AUDIT_COLUMNS if c != "id"]
    row = conn.execute(
        f"INSERT INTO alert_audit ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        " RETURNING id", [entry[c] for c in cols]).fetchone()
    return int(row[0])


def open_alert(conn: Conn, user_code: str) -> dict[str, Any] | None:
    """The patient's alert that is not resolved, if any."""
    row = conn.execute(f"{_ALERT_SELECT} WHERE open_key = ?", (user_code,)).fetchone()
    return None if row is None else _alert(row)


def get_alert(conn: Conn, alert_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"{_ALERT_SELECT} WHERE id = ?", (alert_id,)).fetchone()
    return None if row is None else _alert(row)


def due(conn: Conn, now: int, states: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """Alerts in ``states`` whose ``due_at`` has passed at ``now`` (oldest deadline first)."""
    marks = ", ".join("?" for _ in states)
    rows = conn.execute(f"{_ALERT_SELECT} WHERE due_at IS NOT NULL AND due_at <= ?"
                        f" AND state IN ({marks}) ORDER BY due_at, id LIMIT ?",
                        (now, *states, limit)).fetchall()
    return [_alert(r) for r in rows]


def list_alerts(conn: Conn, *, states: Sequence[str] = (), user_code: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
    """Alerts filtered by state(s) and patient, newest first."""
    where: list[str] = []
    params: list[Any] = []
    if states:
        where.append(f"state IN ({', '.join('?' for _ in states)})")
        params.extend(states)
    if user_code is not None:
        where.append("user_code = ?")
        params.append(user_code)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(f"{_ALERT_SELECT}{clause} ORDER BY updated_at DESC, id DESC LIMIT ?",
                        (*params, limit)).fetchall()
    return [_alert(r) for r in rows]


def audit_of(conn: Conn, alert_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM alert_audit WHERE alert_id = ?"
                        " ORDER BY id", (alert_id,)).fetchall()
    return [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]

"""The device registry's tables and SQL (``devices``, ``device_moves``), on both engines.

The rules (who may move a device, API vs MQTT user_code, names) are ingest.registry's; this
module only reads and writes rows. Every function runs inside the caller's transaction.

Concurrency (several ingest instances on one PostgreSQL): a device is identified by its MAC
and its name, both unique. Inserts say ``ON CONFLICT DO NOTHING RETURNING id``, so that two
instances registering the same device at once never fail with an error: the second finds the
first's row (PostgreSQL makes its insert wait for the first's commit) and answers a conflict
(API) or takes the row over (MQTT). The first gateway to report a device owns it
(trust on first use): :func:`claim` is one ``INSERT … ON CONFLICT (device_mac) DO UPDATE``
that sets the owner only where there is none, so exactly one gateway wins however many
instances race.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ingest.db.engine import Conn
from ingest.db.migrate import Migration, apply

COMPONENT: Final = "registry"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS devices (
  id {id},
  device_name TEXT NOT NULL UNIQUE,
  device_mac TEXT NOT NULL UNIQUE,
  device_type TEXT NOT NULL,
  device_holder TEXT NOT NULL,
  user_code TEXT,
  user_code_source TEXT,          -- 'status' (from MQTT) | 'api' | NULL
  gateway_id TEXT,
  model TEXT,
  last_seen BIGINT,
  battery BIGINT,
  connected BIGINT,               -- 0 | 1 | NULL (no status yet)
  rssi BIGINT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_holder ON devices (device_holder, user_code);
CREATE INDEX IF NOT EXISTS devices_user_code ON devices (user_code);

-- every change of a device's gateway (API moves, roaming)
CREATE TABLE IF NOT EXISTS device_moves (
  id {id},
  device_id BIGINT NOT NULL,        -- devices.id
  device_mac TEXT NOT NULL,
  from_gateway TEXT,
  to_gateway TEXT,
  moved_at BIGINT NOT NULL,
  key_name TEXT                     -- the API key that moved it, 'roaming:<ward>' for a roam
);
CREATE INDEX IF NOT EXISTS device_moves_device ON device_moves (device_id, moved_at);
"""


def _v1_tables(conn: Conn) -> None:
    """v0 → v1: ``devices`` and ``device_moves`` (the release before versioned migrations had
    them already, with the same columns: SCHEMA creates them on a new database)."""


#: ``registry`` component versions; see ingest.db.migrate.
MIGRATIONS: Final = (Migration(1, "devices and device_moves", _v1_tables),)


def legacy(conn: Conn) -> int:
    """The version of a store made before ``schema_versions``: 1 if it has the registry's
    tables (the previous release's SQLite file), 0 for a new database."""
    return 1 if conn.table_exists("devices") else 0


def migrate(conn: Conn, now: int = 0) -> int:
    """Bring the registry's tables to this release (at open); returns the version it had."""
    return apply(conn, COMPONENT, schema=SCHEMA, migrations=MIGRATIONS, now=now, legacy=legacy)


def setup(conn: Conn, now: int) -> None:
    """The ``registry`` component of the readings store's setup (ingest.db.schema.COMPONENTS)."""
    migrate(conn, now)


COLUMNS: Final = (
    "id", "device_name", "device_mac", "device_type", "device_holder", "user_code",
    "user_code_source", "gateway_id", "model", "last_seen", "battery", "connected", "rssi",
    "created_at", "updated_at",
)
_SELECT: Final = "SELECT " + ", ".join(COLUMNS) + " FROM devices"

Row = tuple[Any, ...]


# ------------------------------------------------------------------------------------ reads


def count(conn: Conn, holder: str | None = None) -> int:
    """How many devices there are (of ``holder``, when given)."""
    if holder is None:
        return int(conn.execute("SELECT count(*) FROM devices").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM devices WHERE device_holder = ?",
                            (holder,)).fetchone()[0])


def page(conn: Conn, limit: int, offset: int, holder: str | None = None) -> list[Row]:
    """Devices in id order (rows in :data:`COLUMNS` order), of ``holder`` when given."""
    if holder is None:
        rows = conn.execute(_SELECT + " ORDER BY id LIMIT ? OFFSET ?", (limit, offset))
    else:
        rows = conn.execute(_SELECT + " WHERE device_holder = ? ORDER BY id LIMIT ? OFFSET ?",
                            (holder, limit, offset))
    return [tuple(r) for r in rows]


def get(conn: Conn, device_id: int) -> Row | None:
    row = conn.execute(_SELECT + " WHERE id = ?", (device_id,)).fetchone()
    return None if row is None else tuple(row)


def by_mac(conn: Conn, mac: str) -> Row | None:
    """``(id, user_code, user_code_source, last_seen, device_name, gateway_id, connected)``."""
    row = conn.execute(
        "SELECT id, user_code, user_code_source, last_seen, device_name, gateway_id, connected"
        " FROM devices WHERE device_mac = ?", (mac,)).fetchone()
    return None if row is None else tuple(row)


#: MACs one SQLite lookup names at most (one parameter each; SQLite allows 32,766).
_MAC_CHUNK: Final = 500


def by_macs(conn: Conn, macs: Sequence[str], *, lock: bool = False) -> dict[str, Row]:
    """:func:`by_mac` of many devices in one round trip (PostgreSQL: ``= ANY`` of an array;
    SQLite: ``IN (…)`` per :data:`_MAC_CHUNK`): ``{mac: row}`` of those registered.

    ``lock`` (PostgreSQL): lock the rows for this transaction, in mac order, before anything
    is written to them. A commit that locks every device row it will write up front, in one
    order, never waits for a device row while holding another one out of that order: two
    instances' commits of the same devices (a status message updates its device before the
    batch's sorted refresh) queue behind each other instead of deadlocking (measured in the
    failover e2e). SQLite has one writer: nothing to lock."""
    out: dict[str, Row] = {}
    if not macs:
        return out
    cols = "id, user_code, user_code_source, last_seen, device_name, gateway_id, connected"
    if conn.is_postgres:
        tail = " ORDER BY device_mac FOR UPDATE" if lock else ""
        rows = conn.pg.execute(f"SELECT device_mac, {cols} FROM devices"
                               f" WHERE device_mac = ANY(%b::text[]){tail}", (list(macs),),
                               prepare=True).fetchall()
    else:
        rows = []
        for i in range(0, len(macs), _MAC_CHUNK):
            part = list(macs[i:i + _MAC_CHUNK])
            rows += conn.execute(f"SELECT device_mac, {cols} FROM devices WHERE device_mac IN"
                                 f" ({', '.join('?' * len(part))})", part).fetchall()
    for r in rows:
        out[str(r[0])] = tuple(r[1:])
    return out


def holder_of(conn: Conn, device_id: int) -> str | None:
    """The device's ``device_holder`` (None: no such device)."""
    row = conn.execute("SELECT device_holder FROM devices WHERE id = ?", (device_id,)).fetchone()
    return None if row is None else str(row[0])


def holding(conn: Conn, column: str, value: str, exclude_id: int | None) -> int | None:
    """The id of a device (other than ``exclude_id``) whose ``column`` (device_name or
    device_mac) is ``value``."""
    if column not in ("device_name", "device_mac"):
        raise ValueError(f"not a unique device column: {column!r}")
    row = conn.execute(
        f"SELECT id FROM devices WHERE {column} = ? AND (CAST(? AS BIGINT) IS NULL OR id <> ?)",
        (value, exclude_id, exclude_id)).fetchone()
    return None if row is None else int(row[0])


def name_taken(conn: Conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM devices WHERE device_name = ?", (name,)).fetchone() is not None


def patients_of(conn: Conn, holder: str) -> set[str]:
    """The user_codes bound to ``holder``'s devices."""
    return {str(r[0]) for r in conn.execute(
        "SELECT DISTINCT user_code FROM devices WHERE device_holder = ? AND user_code IS NOT NULL",
        (holder,))}


def holder_has_patient(conn: Conn, holder: str, user_code: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM devices WHERE device_holder = ? AND user_code = ? LIMIT 1",
        (holder, user_code)).fetchone() is not None


def moves(conn: Conn, device_id: int) -> list[Row]:
    """``(from_gateway, to_gateway, moved_at, key_name)`` of a device, oldest first."""
    return [tuple(r) for r in conn.execute(
        "SELECT from_gateway, to_gateway, moved_at, key_name FROM device_moves WHERE device_id = ?"
        " ORDER BY moved_at, id", (device_id,))]


# ----------------------------------------------------------------------------------- writes


def insert(conn: Conn, *, name: str, mac: str, device_type: str, holder: str,
           user_code: str | None, user_code_source: str | None, gateway_id: str | None,
           now: int, model: str | None = None, last_seen: int | None = None,
           battery: int | None = None, connected: int | None = None,
           rssi: int | None = None) -> int | None:
    """A new device's id; None when its name or MAC was registered meanwhile (by this
    transaction or by another instance's, which this one waited for)."""
    row = conn.execute(
        "INSERT INTO devices (device_name, device_mac, device_type, device_holder, user_code,"
        " user_code_source, gateway_id, model, last_seen, battery, connected, rssi, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (name, mac, device_type, holder, user_code, user_code_source, gateway_id, model,
         last_seen, battery, connected, rssi, now, now)).fetchone()
    return None if row is None else int(row[0])


def claim(conn: Conn, *, mac: str, name: str, holder: str, gateway_id: str, now: int) -> str:
    """Trust on first use: the gateway that owns device ``mac`` once ``gateway_id`` has claimed
    it. A device not registered yet is registered (as ``name``, which the caller found free) to
    ``gateway_id``; one without a gateway gets it; one with a gateway keeps it. Of several
    instances claiming at once exactly one wins, and every one of them is told the winner:
    the insert is ``ON CONFLICT (device_mac) DO UPDATE`` keeping an owner already there, the
    update only sets an owner where there is none (PostgreSQL re-checks that condition on the
    row a concurrent claim committed)."""
    found = by_mac(conn, mac)
    if found is None:
        row = conn.execute(
            "INSERT INTO devices (device_name, device_mac, device_type, device_holder, gateway_id,"
            " created_at, updated_at) VALUES (?, ?, 'CONSUMER', ?, ?, ?, ?)"
            " ON CONFLICT (device_mac) DO UPDATE SET"
            " gateway_id = COALESCE(devices.gateway_id, excluded.gateway_id)"
            " RETURNING gateway_id",
            (name, mac, holder, gateway_id, now, now)).fetchone()
        return str(row[0])
    if found[5] is not None:
        return str(found[5])
    conn.execute("UPDATE devices SET gateway_id = ?, updated_at = ? WHERE id = ?"
                 " AND gateway_id IS NULL", (gateway_id, now, found[0]))
    owner = conn.execute("SELECT gateway_id FROM devices WHERE id = ?", (found[0],)).fetchone()
    return gateway_id if owner is None or owner[0] is None else str(owner[0])


def update(conn: Conn, device_id: int, *, name: str, mac: str, device_type: str, holder: str,
           user_code: str | None, user_code_source: str | None, gateway_id: str | None,
           now: int) -> None:
    conn.execute(
        "UPDATE devices SET device_name = ?, device_mac = ?, device_type = ?, device_holder = ?,"
        " user_code = ?, user_code_source = ?, gateway_id = ?, updated_at = ? WHERE id = ?",
        (name, mac, device_type, holder, user_code, user_code_source, gateway_id, now, device_id))


def rename(conn: Conn, device_id: int, name: str) -> None:
    """Give device ``device_id`` the name ``name`` unless another device holds it (then it
    keeps its own)."""
    conn.execute("UPDATE devices SET device_name = ? WHERE id = ? AND NOT EXISTS"
                 " (SELECT 1 FROM devices d WHERE d.device_name = ?)", (name, device_id, name))


def refresh(conn: Conn, device_id: int, *, user_code: str | None, user_code_source: str | None,
            gateway_id: str | None, last_seen: int | None, now: int) -> None:
    """A device seen on MQTT without a status: its patient, owner (if it had none), last seen."""
    conn.execute(
        "UPDATE devices SET user_code = ?, user_code_source = ?,"
        " gateway_id = COALESCE(gateway_id, ?), last_seen = ?, updated_at = ? WHERE id = ?",
        (user_code, user_code_source, gateway_id, last_seen, now, device_id))


class Refresh(NamedTuple):
    """One device's :func:`refresh` (a device seen on MQTT without a status)."""

    device_id: int
    user_code: str | None
    user_code_source: str | None
    gateway_id: str | None
    last_seen: int | None


def refresh_many(conn: Conn, rows: Sequence[Refresh], now: int) -> None:
    """:func:`refresh` of many devices in one round trip (PostgreSQL: one ``UPDATE … FROM
    unnest(…)``; SQLite: ``executemany``, in-process)."""
    if not rows:
        return
    if conn.is_postgres:
        c = list(zip(*rows, strict=True))
        # the rows were read at the start of the batch: another instance may have committed
        # since. An API assignment made meanwhile is kept (MQTT never overrides one), and
        # last_seen never goes back.
        conn.pg.execute(
            "UPDATE devices d SET"
            " user_code = CASE WHEN d.user_code_source = 'api' AND u.src IS DISTINCT FROM 'api'"
            " THEN d.user_code ELSE u.user_code END,"
            " user_code_source = CASE WHEN d.user_code_source = 'api'"
            " AND u.src IS DISTINCT FROM 'api' THEN d.user_code_source ELSE u.src END,"
            " gateway_id = COALESCE(d.gateway_id, u.gateway_id),"
            " last_seen = GREATEST(d.last_seen, u.last_seen),"
            " updated_at = %b FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[],"
            " %b::bigint[]) AS u(id, user_code, src, gateway_id, last_seen) WHERE d.id = u.id",
            (now, *(list(x) for x in c)), prepare=True)
        return
    conn.executemany(
        "UPDATE devices SET"
        " user_code = CASE WHEN user_code_source = 'api' AND ?1 IS DISTINCT FROM 'api'"
        " THEN user_code ELSE ?2 END,"
        " user_code_source = CASE WHEN user_code_source = 'api' AND ?1 IS DISTINCT FROM 'api'"
        " THEN user_code_source ELSE ?1 END,"
        " gateway_id = COALESCE(gateway_id, ?3),"
        " last_seen = CASE WHEN last_seen IS NULL OR ?4 > last_seen THEN ?4 ELSE last_seen END,"
        " updated_at = ?5 WHERE id = ?6",
        [(r.user_code_source, r.user_code, r.gateway_id, r.last_seen, now, r.device_id)
         for r in rows])


def refresh_status(conn: Conn, device_id: int, *, user_code: str | None,
                   user_code_source: str | None, gateway_id: str | None, last_seen: int | None,
                   battery: int | None, connected: int, rssi: int | None, model: str | None,
                   now: int) -> None:
    """A device's status message: also its battery, connection, signal and model."""
    conn.execute(
        "UPDATE devices SET user_code = ?, user_code_source = ?,"
        " gateway_id = COALESCE(gateway_id, ?), last_seen = ?, battery = COALESCE(?, battery),"
        " connected = ?, rssi = COALESCE(?, rssi), model = COALESCE(?, model), updated_at = ?"
        " WHERE id = ?",
        (user_code, user_code_source, gateway_id, last_seen, battery, connected, rssi, model, now,
         device_id))


def set_gateway(conn: Conn, device_id: int, gateway_id: str | None, now: int) -> None:
    conn.execute("UPDATE devices SET gateway_id = ?, updated_at = ? WHERE id = ?",
                 (gateway_id, now, device_id))


def record_move(conn: Conn, device_id: int, mac: str, from_gateway: str | None,
                to_gateway: str | None, now: int, key_name: str | None) -> None:
    conn.execute(
        "INSERT INTO device_moves (device_id, device_mac, from_gateway, to_gateway, moved_at,"
        " key_name) VALUES (?, ?, ?, ?, ?, ?)",
        (device_id, mac, from_gateway, to_gateway, now, key_name))


def delete(conn: Conn, device_id: int) -> bool:
    return conn.execute("DELETE FROM devices WHERE id = ?", (device_id,)).rowcount > 0


def labels(conn: Conn, macs: Any) -> list[tuple[str, str | None, str | None]]:
    """(device_mac, device_name, model) of the registered devices among ``macs``."""
    macs = tuple(macs)
    if not macs:
        return []
    marks = ",".join("?" * len(macs))
    return [(str(m), n, d) for m, n, d in conn.execute(
        f"SELECT device_mac, device_name, model FROM devices WHERE device_mac IN ({marks})",
        macs).fetchall()]

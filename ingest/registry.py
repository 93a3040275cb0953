"""The device registry in Cexup's shape (seed 002 "Device API") plus vitalgate's extensions.

A device is a watch, identified by its MAC (upper-case colon form, unique) and a unique name.
Devices are registered through the REST API or automatically when first seen on MQTT. Which
patient wears a device (``user_code``) comes from the gateway (device status, readings) unless
it was assigned through the API: an API assignment wins until it is cleared (``null``); MQTT
never overrides it (``user_code_source = 'api'``).

A device belongs to one gateway (``gateway_id``): the first that registered it, or the one the
API assigned. Messages about it from another gateway's topics are refused (``foreign_device``
dead letters, see ``store.commit_batch``): the broker's ACL only limits a topic's gateway
segment, so without this one gateway could re-home another's devices and patients. A device
moves through the API (``PUT /api/device/{id}`` with ``gateway_id``) or, between the gateways
of one ward (setting ``roaming_groups``), by **roaming**: a gateway of the owner's group may take
a device over once the owner itself has reported it disconnected (its last device status says
``connected: false``). Every move is recorded in ``device_moves`` (``key_name`` ``roaming:<ward>``
for a roam). See docs/security.md, "Who owns a device".

Functions here take an open ``sqlite3.Connection`` and run inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

from vitalgate.contract import (
    GATEWAY_ID_RE,
    USER_CODE_RE,
    DeviceStatus,
    mac_from_device_id,
    normalise_mac,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS devices (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device_name TEXT NOT NULL UNIQUE,
  device_mac TEXT NOT NULL UNIQUE,
  device_type TEXT NOT NULL,
  device_holder TEXT NOT NULL,
  user_code TEXT,
  user_code_source TEXT,          -- 'status' (from MQTT) | 'api' | NULL
  gateway_id TEXT,
  model TEXT,
  last_seen INTEGER,
  battery INTEGER,
  connected INTEGER,
  rssi INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

-- every change of a device's gateway made through the API
CREATE TABLE IF NOT EXISTS device_moves (
  id INTEGER PRIMARY KEY,
  device_id INTEGER NOT NULL,       -- devices.id
  device_mac TEXT NOT NULL,
  from_gateway TEXT,
  to_gateway TEXT,
  moved_at INTEGER NOT NULL,
  key_name TEXT                     -- the API key that moved it, when known
);
CREATE INDEX IF NOT EXISTS device_moves_device ON device_moves (device_id, moved_at);
"""

COLUMNS: Final = (
    "id", "device_name", "device_mac", "device_type", "device_holder", "user_code",
    "user_code_source", "gateway_id", "model", "last_seen", "battery", "connected", "rssi",
    "created_at", "updated_at",
)
_SELECT: Final = "SELECT " + ", ".join(COLUMNS) + " FROM devices"


class DeviceType(StrEnum):
    CONSUMER = "CONSUMER"
    CORPORATE = "CORPORATE"


class RegistryError(Exception):
    """``status`` is the HTTP status it maps to (404 unknown, 409 conflict, 422 invalid)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


def _check_mac(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string like D0:61:AE:D4:58:94")
    try:
        return normalise_mac(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a MAC address like D0:61:AE:D4:58:94") from None


def _check_type(v: Any) -> Any:
    if isinstance(v, str) and v.upper() in DeviceType.__members__:
        return v.upper()
    raise ValueError(f"must be CONSUMER or CORPORATE (any case), got {v!r}")


Mac = Annotated[str, BeforeValidator(_check_mac)]
Type = Annotated[DeviceType, BeforeValidator(_check_type)]
UserCode = Annotated[str, StringConstraints(pattern=USER_CODE_RE.pattern)]
GatewayId = Annotated[str, StringConstraints(pattern=GATEWAY_ID_RE.pattern)]


class DeviceIn(BaseModel):
    """A device as the API accepts it. ``device_type`` in any case; ``device_mac`` in any
    common spelling (stored upper-case with colons). ``user_code`` (a vitalgate extension)
    assigns the patient who wears it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_name: Name
    device_mac: Mac
    device_type: Type = DeviceType.CONSUMER
    device_holder: Name = "unknown"
    user_code: UserCode | None = None
    #: the gateway the device belongs to (absent: the first gateway to report it)
    gateway_id: GatewayId | None = None


class DevicePatch(BaseModel):
    """PUT body: the same fields, each optional (absent = unchanged; ``user_code: null``
    clears an API assignment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_name: Name | None = None
    device_mac: Mac | None = None
    device_type: Type | None = None
    device_holder: Name | None = None
    user_code: UserCode | None = None
    #: move the device to this gateway (recorded in ``device_moves``); ``null`` detaches it,
    #: so that the next gateway to report it owns it
    gateway_id: GatewayId | None = None


def row_to_json(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, tuple(row), strict=True))
    d["connected"] = None if d["connected"] is None else bool(d["connected"])
    return d


def _conflict(conn: sqlite3.Connection, name: str, mac: str, exclude_id: int | None) -> str | None:
    for column, value in (("device_name", name), ("device_mac", mac)):
        row = conn.execute(
            f"SELECT id FROM devices WHERE {column} = ? AND id IS NOT ?", (value, exclude_id)
        ).fetchone()
        if row is not None:
            return f"{column} {value!r} is already registered (device id {row[0]})"
    return None


def list_devices(conn: sqlite3.Connection, page: int, size: int) -> tuple[list[dict[str, Any]], int]:
    total = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
    rows = conn.execute(_SELECT + " ORDER BY id LIMIT ? OFFSET ?", (size, (page - 1) * size))
    return [row_to_json(r) for r in rows], int(total)


def get_device(conn: sqlite3.Connection, device_id: int) -> dict[str, Any]:
    row = conn.execute(_SELECT + " WHERE id = ?", (device_id,)).fetchone()
    if row is None:
        raise RegistryError(404, f"device {device_id} not found")
    return row_to_json(row)


def create_devices(conn: sqlite3.Connection, items: list[DeviceIn], now: int) -> list[dict[str, Any]]:
    """Insert all or nothing (the caller's transaction rolls back on RegistryError)."""
    seen_names: dict[str, int] = {}
    seen_macs: dict[str, int] = {}
    for i, item in enumerate(items):
        for seen, value, column in ((seen_names, item.device_name, "device_name"),
                                    (seen_macs, item.device_mac, "device_mac")):
            if value in seen:
                raise RegistryError(409, f"item {i}: {column} {value!r} repeats item {seen[value]}")
            seen[value] = i
    out = []
    for i, item in enumerate(items):
        clash = _conflict(conn, item.device_name, item.device_mac, None)
        if clash:
            raise RegistryError(409, f"item {i}: {clash}" if len(items) > 1 else clash)
        cur = conn.execute(
            "INSERT INTO devices (device_name, device_mac, device_type, device_holder, user_code,"
            " user_code_source, gateway_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item.device_name, item.device_mac, item.device_type.value, item.device_holder,
             item.user_code, "api" if item.user_code else None, item.gateway_id, now, now),
        )
        out.append(get_device(conn, int(cur.lastrowid or 0)))
    return out


def update_device(
    conn: sqlite3.Connection, device_id: int, patch: DevicePatch, now: int, *,
    key_name: str | None = None,
) -> dict[str, Any]:
    """Apply ``patch``; a change of ``gateway_id`` is recorded in ``device_moves`` with the
    name of the API key that made it (``key_name``), when the caller knows it."""
    current = get_device(conn, device_id)
    fields = patch.model_fields_set
    name = patch.device_name if patch.device_name is not None else current["device_name"]
    mac = patch.device_mac if patch.device_mac is not None else current["device_mac"]
    clash = _conflict(conn, name, mac, device_id)
    if clash:
        raise RegistryError(409, clash)
    dtype = patch.device_type.value if patch.device_type is not None else current["device_type"]
    holder = patch.device_holder if patch.device_holder is not None else current["device_holder"]
    user_code, source = current["user_code"], current["user_code_source"]
    if "user_code" in fields:  # an explicit null clears the API assignment
        user_code = patch.user_code
        source = "api" if patch.user_code is not None else None
    gateway_id = current["gateway_id"]
    if "gateway_id" in fields and patch.gateway_id != gateway_id:
        conn.execute(
            "INSERT INTO device_moves (device_id, device_mac, from_gateway, to_gateway, moved_at,"
            " key_name) VALUES (?, ?, ?, ?, ?, ?)",
            (device_id, mac, gateway_id, patch.gateway_id, now, key_name))
        gateway_id = patch.gateway_id
    conn.execute(
        "UPDATE devices SET device_name=?, device_mac=?, device_type=?, device_holder=?,"
        " user_code=?, user_code_source=?, gateway_id=?, updated_at=? WHERE id=?",
        (name, mac, dtype, holder, user_code, source, gateway_id, now, device_id),
    )
    return get_device(conn, device_id)


def device_moves(conn: sqlite3.Connection, device_id: int) -> list[dict[str, Any]]:
    """A device's moves between gateways, oldest first."""
    rows = conn.execute(
        "SELECT from_gateway, to_gateway, moved_at, key_name FROM device_moves WHERE device_id = ?"
        " ORDER BY moved_at, id", (device_id,)).fetchall()
    return [{"from_gateway": f, "to_gateway": t, "moved_at": at, "key_name": k}
            for f, t, at, k in rows]


def owner_of(conn: sqlite3.Connection, device_id: str) -> str | None:
    """The gateway a device (contract device id) belongs to; None when it is not registered
    or belongs to none yet (the next gateway to report it claims it)."""
    row = conn.execute("SELECT gateway_id FROM devices WHERE device_mac = ?",
                       (mac_from_device_id(device_id),)).fetchone()
    return None if row is None else row[0]



def released_by_owner(conn: sqlite3.Connection, device_id: str) -> bool:
    """Has the owning gateway reported the device disconnected (its newest stored status)?"""
    row = conn.execute("SELECT connected FROM devices WHERE device_mac = ?",
                       (mac_from_device_id(device_id),)).fetchone()
    return row is not None and row[0] == 0


def roam(conn: sqlite3.Connection, device_id: str, from_gateway: str, to_gateway: str,
         ward: str, now: int) -> None:
    """Move a device to ``to_gateway`` of the same ward (the caller checked the rule)."""
    mac = mac_from_device_id(device_id)
    row = conn.execute("SELECT id FROM devices WHERE device_mac = ?", (mac,)).fetchone()
    if row is None:
        return
    conn.execute(
        "INSERT INTO device_moves (device_id, device_mac, from_gateway, to_gateway, moved_at,"
        " key_name) VALUES (?, ?, ?, ?, ?, ?)",
        (row[0], mac, from_gateway, to_gateway, now, f"roaming:{ward}"))
    conn.execute("UPDATE devices SET gateway_id = ?, updated_at = ? WHERE id = ?",
                 (to_gateway, now, row[0]))


def delete_device(conn: sqlite3.Connection, device_id: int) -> dict[str, Any]:
    current = get_device(conn, device_id)
    conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
    return current


def default_name(device_id: str) -> str:
    """What the watch advertises: ``E86`` and the last four hex digits of its MAC."""
    return f"E86 {device_id[-4:].upper()}"


def _name_from_status(conn: sqlite3.Connection, dev_id: int, device_id: str, current: str,
                      status: DeviceStatus | None) -> None:
    """A status naming a device replaces the placeholder name its readings registered it under
    (readings and statuses may be committed in either order); a name given through the API, or
    an earlier status's, is kept."""
    if status is None or not status.name or not status.name.strip():
        return
    if current not in (default_name(device_id), f"{default_name(device_id)} ({device_id})"):
        return
    name = status.name.strip()[:128]
    if name != current and conn.execute("SELECT 1 FROM devices WHERE device_name = ?",
                                        (name,)).fetchone() is None:
        conn.execute("UPDATE devices SET device_name = ? WHERE id = ?", (name, dev_id))


def seen_on_mqtt(
    conn: sqlite3.Connection,
    device_id: str,
    *,
    gateway_id: str | None,
    now: int,
    holder: str,
    last_seen: int | None = None,
    status: DeviceStatus | None = None,
    user_code: str | None = None,
) -> tuple[str | None, str | None]:
    """Register or refresh a device seen on MQTT; returns its ``(user_code, user_code_source)``.

    ``user_code`` (from a status message or readings) is taken unless the device's patient was
    assigned through the API.
    """
    mac = mac_from_device_id(device_id)
    if status is not None and status.user_code is not None:
        user_code = status.user_code
    row = conn.execute(
        "SELECT id, user_code, user_code_source, last_seen, device_name FROM devices"
        " WHERE device_mac = ?", (mac,)
    ).fetchone()
    if row is None:
        name = (status.name.strip() if status and status.name and status.name.strip() else None)
        name = name[:128] if name else default_name(device_id)
        taken = conn.execute("SELECT 1 FROM devices WHERE device_name = ?", (name,)).fetchone()
        if taken:
            name = f"{default_name(device_id)} ({device_id})"
        conn.execute(
            "INSERT INTO devices (device_name, device_mac, device_type, device_holder, user_code,"
            " user_code_source, gateway_id, model, last_seen, battery, connected, rssi,"
            " created_at, updated_at) VALUES (?, ?, 'CONSUMER', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, mac, holder, user_code, "status" if user_code else None, gateway_id,
             status.model if status else None, last_seen,
             status.battery if status else None,
             None if status is None else int(status.connected),
             status.rssi if status else None, now, now),
        )
        return user_code, ("status" if user_code else None)
    dev_id, cur_code, cur_source, cur_seen, cur_name = row
    _name_from_status(conn, dev_id, device_id, str(cur_name), status)
    if cur_source != "api" and user_code is not None:
        cur_code, cur_source = user_code, "status"
    seen = max(x for x in (cur_seen, last_seen, 0) if x is not None) or None
    if status is None:
        conn.execute(
            "UPDATE devices SET user_code=?, user_code_source=?, gateway_id=coalesce(gateway_id, ?),"
            " last_seen=?, updated_at=? WHERE id=?",
            (cur_code, cur_source, gateway_id, seen, now, dev_id),
        )
    else:
        conn.execute(
            "UPDATE devices SET user_code=?, user_code_source=?, gateway_id=coalesce(gateway_id, ?),"
            " last_seen=?, battery=coalesce(?, battery), connected=?, rssi=coalesce(?, rssi),"
            " model=coalesce(?, model), updated_at=? WHERE id=?",
            (cur_code, cur_source, gateway_id, seen, status.battery, int(status.connected),
             status.rssi, status.model, now, dev_id),
        )
    return cur_code, cur_source

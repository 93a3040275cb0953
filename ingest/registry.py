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

The tables and their SQL are ingest.db.registry's; functions here take an ``ingest.db.Conn``
and run inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

from ingest.db import Conn, IntegrityError
from ingest.db import registry as db
from vitalgate.contract import (
    GATEWAY_ID_RE,
    USER_CODE_RE,
    DeviceStatus,
    mac_from_device_id,
    normalise_mac,
)

#: a device's fields in the API, in the table's order (ingest.db.registry owns the tables)
COLUMNS: Final = db.COLUMNS


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


def row_to_json(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, tuple(row), strict=True))
    d["connected"] = None if d["connected"] is None else bool(d["connected"])
    return d


def _conflict(conn: Conn, name: str, mac: str, exclude_id: int | None) -> str | None:
    for column, value in (("device_name", name), ("device_mac", mac)):
        other = db.holding(conn, column, value, exclude_id)
        if other is not None:
            return f"{column} {value!r} is already registered (device id {other})"
    return None


def list_devices(conn: Conn, page: int, size: int,
                 holder: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """A page of devices in id order and how many there are (``holder``'s only, when given)."""
    total = db.count(conn, holder)
    return [row_to_json(r) for r in db.page(conn, size, (page - 1) * size, holder)], total


def get_device(conn: Conn, device_id: int) -> dict[str, Any]:
    row = db.get(conn, device_id)
    if row is None:
        raise RegistryError(404, f"device {device_id} not found")
    return row_to_json(row)


def create_devices(conn: Conn, items: list[DeviceIn], now: int) -> list[dict[str, Any]]:
    """Insert all or nothing (the caller's transaction rolls back on RegistryError). A device
    registered meanwhile by another instance is a conflict like one registered before."""
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
        new_id = None
        clash = _conflict(conn, item.device_name, item.device_mac, None)
        if clash is None:
            new_id = db.insert(
                conn, name=item.device_name, mac=item.device_mac, device_type=item.device_type.value,
                holder=item.device_holder, user_code=item.user_code,
                user_code_source="api" if item.user_code else None, gateway_id=item.gateway_id,
                now=now)
            if new_id is None:  # registered by a concurrent transaction since the check
                clash = _conflict(conn, item.device_name, item.device_mac, None) or (
                    f"device_name {item.device_name!r} or device_mac {item.device_mac!r} is "
                    "already registered")
        if clash is not None or new_id is None:
            raise RegistryError(409, f"item {i}: {clash}" if len(items) > 1 else str(clash))
        out.append(get_device(conn, new_id))
    return out


def update_device(
    conn: Conn, device_id: int, patch: DevicePatch, now: int, *,
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
        db.record_move(conn, device_id, mac, gateway_id, patch.gateway_id, now, key_name)
        gateway_id = patch.gateway_id
    try:
        with conn.savepoint():
            db.update(conn, device_id, name=name, mac=mac, device_type=dtype, holder=holder,
                      user_code=user_code, user_code_source=source, gateway_id=gateway_id,
                      now=now)
    except IntegrityError:  # a concurrent transaction took the name or MAC since the check
        raise RegistryError(409, _conflict(conn, name, mac, device_id) or
                            f"device_name {name!r} or device_mac {mac!r} is already registered"
                            ) from None
    return get_device(conn, device_id)


def device_moves(conn: Conn, device_id: int) -> list[dict[str, Any]]:
    """A device's moves between gateways, oldest first."""
    return [{"from_gateway": f, "to_gateway": t, "moved_at": at, "key_name": k}
            for f, t, at, k in db.moves(conn, device_id)]


def owner_of(conn: Conn, device_id: str) -> str | None:
    """The gateway a device (contract device id) belongs to; None when it is not registered
    or belongs to none yet (the next gateway to report it claims it)."""
    row = db.by_mac(conn, mac_from_device_id(device_id))
    return None if row is None else row[5]


def claim(conn: Conn, device_id: str, gateway_id: str, *, now: int, holder: str) -> str:
    """The gateway owning a device (contract device id) once ``gateway_id`` claimed it: the
    first gateway to report a device owns it (registered then under its placeholder name,
    which a status naming it replaces). Atomic across instances (ingest.db.registry.claim)."""
    name = default_name(device_id)
    if db.name_taken(conn, name):
        name = f"{default_name(device_id)} ({device_id})"
    return db.claim(conn, mac=mac_from_device_id(device_id), name=name, holder=holder,
                    gateway_id=gateway_id, now=now)


def released_by_owner(conn: Conn, device_id: str) -> bool:
    """Has the owning gateway reported the device disconnected (its newest stored status)?"""
    row = db.by_mac(conn, mac_from_device_id(device_id))
    return row is not None and row[6] == 0


def roam(conn: Conn, device_id: str, from_gateway: str, to_gateway: str,
         ward: str, now: int) -> None:
    """Move a device to ``to_gateway`` of the same ward (the caller checked the rule)."""
    mac = mac_from_device_id(device_id)
    row = db.by_mac(conn, mac)
    if row is None:
        return
    db.record_move(conn, int(row[0]), mac, from_gateway, to_gateway, now, f"roaming:{ward}")
    db.set_gateway(conn, int(row[0]), to_gateway, now)


def lookup(conn: Conn, device_ids: Iterable[str], *, lock: bool = False) -> dict[str, db.Row]:
    """The registry rows (:func:`ingest.db.registry.by_mac`'s shape) of many devices (contract
    device ids), in one round trip: ``{device_id: row}`` of those registered. ``lock``: see
    :func:`ingest.db.registry.by_macs`."""
    ids = list(dict.fromkeys(device_ids))
    macs = {mac_from_device_id(d): d for d in ids}
    return {macs[mac]: row for mac, row in db.by_macs(conn, list(macs), lock=lock).items()}


def seen_many(
    conn: Conn, seen: Mapping[str, tuple[str | None, int | None, str | None]], *, now: int,
    holder: str, rows: Mapping[str, db.Row] | None = None,
) -> dict[str, tuple[str | None, str | None]]:
    """:func:`seen_on_mqtt` without a status for many devices (``{device_id: (gateway_id,
    last_seen, user_code)}``): the same rules, one lookup and one update per batch instead of
    two round trips per device. ``rows``: the devices' current rows when the caller has them
    (:func:`lookup` in this transaction, nothing written to them since); a device without one
    (not registered: rare, the batch's claims registered it) takes :func:`seen_on_mqtt`."""
    if rows is None:
        rows = lookup(conn, seen)
    out: dict[str, tuple[str | None, str | None]] = {}
    updates: list[db.Refresh] = []
    for device_id, (gateway_id, last_seen, user_code) in seen.items():
        row = rows.get(device_id)
        if row is None:
            out[device_id] = seen_on_mqtt(conn, device_id, gateway_id=gateway_id, now=now,
                                          holder=holder, last_seen=last_seen,
                                          user_code=user_code)
            continue
        dev_id, cur_code, cur_source, cur_seen = row[:4]
        if cur_source != "api" and user_code is not None:
            cur_code, cur_source = user_code, "status"
        last = max(x for x in (cur_seen, last_seen, 0) if x is not None) or None
        updates.append(db.Refresh(int(dev_id), cur_code, cur_source, gateway_id, last))
        out[device_id] = (cur_code, cur_source)
    db.refresh_many(conn, updates, now)
    return out


def delete_device(conn: Conn, device_id: int) -> dict[str, Any]:
    current = get_device(conn, device_id)
    db.delete(conn, device_id)
    return current


def default_name(device_id: str) -> str:
    """What the watch advertises: ``E86`` and the last four hex digits of its MAC."""
    return f"E86 {device_id[-4:].upper()}"


def _name_from_status(conn: Conn, dev_id: int, device_id: str, current: str,
                      status: DeviceStatus | None) -> None:
    """A status naming a device replaces the placeholder name its readings registered it under
    (readings and statuses may be committed in either order); a name given through the API, or
    an earlier status's, is kept."""
    if status is None or not status.name or not status.name.strip():
        return
    if current not in (default_name(device_id), f"{default_name(device_id)} ({device_id})"):
        return
    name = status.name.strip()[:128]
    if name != current:
        db.rename(conn, dev_id, name)


def seen_on_mqtt(
    conn: Conn,
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
    assigned through the API. A device registered meanwhile by another instance is refreshed
    instead of registered twice.
    """
    mac = mac_from_device_id(device_id)
    if status is not None and status.user_code is not None:
        user_code = status.user_code
    row = db.by_mac(conn, mac)
    if row is None:
        name = (status.name.strip() if status and status.name and status.name.strip() else None)
        name = name[:128] if name else default_name(device_id)
        if db.name_taken(conn, name):
            name = f"{default_name(device_id)} ({device_id})"
        new_id = db.insert(
            conn, name=name, mac=mac, device_type="CONSUMER", holder=holder, user_code=user_code,
            user_code_source="status" if user_code else None, gateway_id=gateway_id, now=now,
            model=status.model if status else None, last_seen=last_seen,
            battery=status.battery if status else None,
            connected=None if status is None else int(status.connected),
            rssi=status.rssi if status else None)
        if new_id is not None:
            return user_code, ("status" if user_code else None)
        row = db.by_mac(conn, mac)  # registered by a concurrent transaction: refresh it
        if row is None:  # the name was taken concurrently, not the MAC: the fallback name
            new_id = db.insert(
                conn, name=f"{default_name(device_id)} ({device_id})", mac=mac,
                device_type="CONSUMER", holder=holder, user_code=user_code,
                user_code_source="status" if user_code else None, gateway_id=gateway_id,
                now=now, model=status.model if status else None, last_seen=last_seen,
                battery=status.battery if status else None,
                connected=None if status is None else int(status.connected),
                rssi=status.rssi if status else None)
            row = db.by_mac(conn, mac)
            if new_id is not None or row is None:
                return user_code, ("status" if user_code else None)
    dev_id, cur_code, cur_source, cur_seen, cur_name = row[:5]
    _name_from_status(conn, dev_id, device_id, str(cur_name), status)
    if cur_source != "api" and user_code is not None:
        cur_code, cur_source = user_code, "status"
    seen = max(x for x in (cur_seen, last_seen, 0) if x is not None) or None
    if status is None:
        db.refresh(conn, dev_id, user_code=cur_code, user_code_source=cur_source,
                   gateway_id=gateway_id, last_seen=seen, now=now)
    else:
        db.refresh_status(conn, dev_id, user_code=cur_code, user_code_source=cur_source,
                          gateway_id=gateway_id, last_seen=seen, battery=status.battery,
                          connected=int(status.connected), rssi=status.rssi, model=status.model,
                          now=now)
    return cur_code, cur_source

"""What a key limited to a ``device_holder`` (a hospital) may see.

Its devices are the registry's devices whose ``device_holder`` equals the key's holder; its
patients are the user_codes bound to those devices. Anything else answers 404, the same answer
as for a patient or device that does not exist, so a key cannot learn what other holders have.
A key without a holder sees everything its scopes allow.
"""

from __future__ import annotations

from aiohttp import web

from ingest.api.appkeys import DB_KEY
from ingest.api.auth import principal_of
from ingest.api.envelope import ApiError
from ingest.db import Conn
from ingest.db import registry as db


def holder_of(request: web.Request) -> str | None:
    return principal_of(request).holder


async def visible_patients(request: web.Request) -> set[str] | None:
    """The user_codes the request's key may see; None: every patient."""
    holder = holder_of(request)
    if holder is None:
        return None
    return set(await request.app[DB_KEY].read(lambda c: db.patients_of(c, holder)))


async def require_patient(request: web.Request, user_code: str) -> None:
    """404 unless the request's key may see ``user_code``."""
    holder = holder_of(request)
    if holder is None:
        return

    def bound(conn: Conn) -> bool:
        return db.holder_has_patient(conn, holder, user_code)

    if not await request.app[DB_KEY].read(bound):
        raise ApiError(404, f"no patient with user_code {user_code!r}")


def check_device(conn: Conn, holder: str | None, device_id: int) -> None:
    """404 unless ``holder`` (None: any) may see device ``device_id``; call it inside the
    transaction that then changes the device, so that the check and the change are one."""
    if holder is None:
        return
    if db.holder_of(conn, device_id) != holder:
        raise ApiError(404, f"device {device_id} not found")


async def require_device(request: web.Request, device_id: int) -> None:
    """404 unless the request's key may see device ``device_id``."""
    holder = holder_of(request)
    if holder is not None:
        await request.app[DB_KEY].read(lambda c: check_device(c, holder, device_id))


def require_own_holder(request: web.Request, device_holder: str | None, where: str = "") -> None:
    """403 when a holder-limited key would give a device to another holder."""
    holder = holder_of(request)
    if holder is not None and device_holder is not None and device_holder != holder:
        raise ApiError(403, f"{where}device_holder: this key may only manage devices of "
                            f"{holder!r}, got {device_holder!r}")

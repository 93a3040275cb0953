"""ingest/db's registry and keys on both engines: migrations, the queries behind the device
API and the keys, an upgrade from the previous release's SQLite store, and what several
instances on one PostgreSQL bring (two Database objects on one database)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ingest import keys, registry
from ingest.db import Conn, Database, Dialect, Location
from ingest.db import keys as db_keys
from ingest.db import registry as db_registry
from ingest.db.migrate import current
from ingest.keys import CACHE_S, KeyChecker
from vitalgate.contract import DeviceStatus

T = TypeVar("T")

DEV = "d061aed45894"  # a contract device id; its MAC is D0:61:AE:D4:58:94
MAC = "D0:61:AE:D4:58:94"
COLS = {name: i for i, name in enumerate(db_registry.COLUMNS)}


def setup(conn: Conn) -> None:
    db_registry.migrate(conn)
    db_keys.migrate(conn)


def open_db(url: str, tmp_path: Path) -> Database:
    return Database(Location.parse(url, default_path=tmp_path / "unused.sqlite3"), setup=setup,
                    name="test")


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> Iterator[Database]:
    d = open_db(database_url, tmp_path)
    try:
        yield d
    finally:
        d.close()


# --------------------------------------------------------------------------- one instance


def test_migrations_are_recorded_and_run_once(db: Database) -> None:
    assert db.read_sync(lambda c: current(c, "registry")) == db_registry.MIGRATIONS[-1].version
    assert db.read_sync(lambda c: current(c, "keys")) == db_keys.MIGRATIONS[-1].version
    assert db.write_sync(db_registry.migrate) == 1 and db.write_sync(db_keys.migrate) == 1
    cols = db.read_sync(lambda c: c.columns("devices"))
    assert set(db_registry.COLUMNS) <= cols
    assert {"scopes", "holder"} <= db.read_sync(lambda c: c.columns("api_keys"))


def test_device_crud_and_conflicts(db: Database) -> None:
    item = registry.DeviceIn(device_name="E86 A", device_mac="d0-61-ae-d4-58-94",
                             device_holder="RS A", user_code="PA")
    made = db.write_sync(lambda c: registry.create_devices(c, [item], 10))
    dev_id = made[0]["id"]
    assert isinstance(dev_id, int) and made[0]["device_mac"] == MAC
    assert made[0]["user_code_source"] == "api" and made[0]["connected"] is None
    with pytest.raises(registry.RegistryError) as err:
        db.write_sync(lambda c: registry.create_devices(c, [item], 11))
    assert err.value.status == 409 and f"device id {dev_id}" in err.value.message
    # all or nothing: the second item clashes, the first is not kept
    fresh = registry.DeviceIn(device_name="E86 B", device_mac="D0:61:AE:D4:00:01")
    with pytest.raises(registry.RegistryError):
        db.write_sync(lambda c: registry.create_devices(c, [fresh, item], 12))
    items, total = db.read_sync(lambda c: registry.list_devices(c, 1, 10))
    assert total == 1 and [d["device_name"] for d in items] == ["E86 A"]
    # holder pages and holder queries
    other = registry.DeviceIn(device_name="E86 C", device_mac="D0:61:AE:D4:00:02",
                              device_holder="RS B", user_code="PB")
    db.write_sync(lambda c: registry.create_devices(c, [other], 13))
    items, total = db.read_sync(lambda c: registry.list_devices(c, 1, 10, "RS B"))
    assert total == 1 and items[0]["user_code"] == "PB"
    assert db.read_sync(lambda c: db_registry.patients_of(c, "RS A")) == {"PA"}
    assert db.read_sync(lambda c: db_registry.holder_has_patient(c, "RS A", "PB")) is False
    assert db.read_sync(lambda c: db_registry.holder_of(c, dev_id)) == "RS A"
    # a move is recorded with the key that made it; a rename onto another's name is refused
    patch = registry.DevicePatch(gateway_id="gw-2", user_code=None)
    moved = db.write_sync(lambda c: registry.update_device(c, dev_id, patch, 20, key_name="ops"))
    assert moved["gateway_id"] == "gw-2" and moved["user_code"] is None
    assert db.read_sync(lambda c: registry.device_moves(c, dev_id)) == [
        {"from_gateway": None, "to_gateway": "gw-2", "moved_at": 20, "key_name": "ops"}]
    with pytest.raises(registry.RegistryError) as err:
        db.write_sync(lambda c: registry.update_device(
            c, dev_id, registry.DevicePatch(device_name="E86 C"), 21))
    assert err.value.status == 409
    assert db.write_sync(lambda c: registry.delete_device(c, dev_id))["id"] == dev_id
    with pytest.raises(registry.RegistryError) as err:
        db.read_sync(lambda c: registry.get_device(c, dev_id))
    assert err.value.status == 404


def test_seen_on_mqtt_registers_refreshes_and_roams(db: Database) -> None:
    status = DeviceStatus(device_id=DEV, connected=False, battery=80, name="Watch 1",
                          user_code="PA")
    got = db.write_sync(lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-a", now=1,
                                                        holder="RS A", last_seen=5, status=status))
    assert got == ("PA", "status")
    got = db.write_sync(lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-b", now=2,
                                                        holder="RS A", last_seen=3))
    assert got == ("PA", "status")
    row = db.read_sync(lambda c: db_registry.by_mac(c, MAC))
    assert row is not None and row[3] == 5 and row[4] == "Watch 1" and row[5] == "gw-a"
    assert db.read_sync(lambda c: registry.owner_of(c, DEV)) == "gw-a"
    assert db.read_sync(lambda c: registry.released_by_owner(c, DEV)) is True
    db.write_sync(lambda c: registry.roam(c, DEV, "gw-a", "gw-b", "ward-1", 9))
    assert db.read_sync(lambda c: registry.owner_of(c, DEV)) == "gw-b"
    dev_id = int(row[0])
    assert db.read_sync(lambda c: registry.device_moves(c, dev_id))[0]["key_name"] == "roaming:ward-1"
    # trust on first use: the owner stays, a new device goes to its first claimant
    assert db.write_sync(lambda c: registry.claim(c, DEV, "gw-x", now=10, holder="RS A")) == "gw-b"
    other = "d061aed40001"
    assert db.write_sync(lambda c: registry.claim(c, other, "gw-x", now=10, holder="RS A")) == "gw-x"


def test_keys_create_find_revoke_retire(db: Database) -> None:
    key = db.write_sync(lambda c: keys.create(c, "ward-a", 1, ["read", "clinical"], "RS A"))
    found = db.read_sync(lambda c: keys.find(c, key))
    assert found is not None and found.scopes == {"read", "clinical"} and found.holder == "RS A"
    with pytest.raises(keys.ApiKeyError, match="already exists"):
        db.write_sync(lambda c: keys.create(c, "ward-a", 2))
    assert db.read_sync(lambda c: keys.find(c, key + "x")) is None
    assert db.write_sync(lambda c: keys.revoke(c, "ward-a", 3)) is True
    assert db.write_sync(lambda c: keys.revoke(c, "ward-a", 4)) is False
    assert db.read_sync(lambda c: keys.find(c, key)) is None
    again = db.write_sync(lambda c: keys.create(c, "ward-a", 5, ["admin"]))  # a revoked name
    assert db.read_sync(lambda c: keys.find(c, again)) is not None
    listed = db.read_sync(keys.list_keys)
    assert [(k.name, k.revoked_at, k.scopes) for k in listed] == [("ward-a", None, ("admin",))]
    db.write_sync(lambda c: keys.retire_bootstrap(c, 7))
    db.write_sync(lambda c: keys.retire_bootstrap(c, 8))  # the first retirement's time stays
    assert db.read_sync(keys.bootstrap_retired_at) == 7
    db.write_sync(lambda c: keys.retire_bootstrap(c, 9, undo=True))
    assert db.read_sync(keys.bootstrap_retired_at) is None


# ------------------------------------------------------------- upgrade from the last release

#: the previous release's store, as its DDL made it (registry and keys among its tables): the
#: one verbatim copy the upgrade tests share (tests/ingest/db/fixtures).
PREVIOUS_RELEASE_DDL = Path(__file__).parent / "fixtures" / "store_345d82a.sql"
OLD_KEY = "vg_made-by-the-previous-release"


def _previous_release_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(PREVIOUS_RELEASE_DDL.read_text())
    conn.execute("PRAGMA user_version = 1")  # as that release left it
    conn.execute(
        "INSERT INTO devices (device_name, device_mac, device_type, device_holder, user_code,"
        " user_code_source, gateway_id, connected, created_at, updated_at)"
        " VALUES ('E86 5894', ?, 'CONSUMER', 'RS A', 'PA', 'api', 'gw-a', 1, 1, 1)", (MAC,))
    conn.execute("INSERT INTO device_moves (device_id, device_mac, from_gateway, to_gateway,"
                 " moved_at, key_name) VALUES (1, ?, NULL, 'gw-a', 2, 'ops')", (MAC,))
    salt = b"0123456789abcdef"
    conn.execute("INSERT INTO api_keys VALUES ('ward-a', ?, ?, 3, NULL, 'read', 'RS A')",
                 (salt, keys._digest(salt, OLD_KEY)))
    conn.execute("INSERT INTO api_key_state VALUES ('bootstrap_retired_at', 4)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("opener", ["database", "store"])
def test_sqlite_store_of_the_previous_release_keeps_devices_and_keys(
        tmp_path: Path, opener: str) -> None:
    path = tmp_path / "ingest.sqlite3"
    _previous_release_store(path)
    d: Any
    if opener == "database":
        d = Database(Location(Dialect.SQLITE, path=path), setup=setup, name="upgrade")
    else:  # how the service opens it today
        from ingest import store
        d = store.Database(path, synchronous="NORMAL")
    try:
        device = d.read_sync(lambda c: registry.get_device(c, 1))
        assert (device["device_mac"], device["user_code"], device["gateway_id"],
                device["connected"]) == (MAC, "PA", "gw-a", True)
        assert d.read_sync(lambda c: registry.device_moves(c, 1))[0]["key_name"] == "ops"
        found = d.read_sync(lambda c: keys.find(c, OLD_KEY))
        assert found is not None and found.scopes == {"read"} and found.holder == "RS A"
        assert d.read_sync(keys.bootstrap_retired_at) == 4
        assert d.read_sync(lambda c: current(c, "registry")) == 1
        assert d.read_sync(lambda c: current(c, "keys")) == 1
        # the old AUTOINCREMENT table takes new devices with RETURNING id
        new = registry.DeviceIn(device_name="E86 0001", device_mac="D0:61:AE:D4:00:01")
        assert d.write_sync(lambda c: registry.create_devices(c, [new], 5))[0]["id"] == 2
    finally:
        d.close()


# ------------------------------------------------------------- several instances, one PostgreSQL


@pytest.fixture
def two(postgres_db: str, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    a, b = open_db(postgres_db, tmp_path), open_db(postgres_db, tmp_path)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _waiting_on_a_lock(db: Database) -> bool:
    return bool(db.read_sync(lambda c: c.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'").fetchone()[0]))


def race(first: Database, second: Database, fn_first: Callable[[Conn], Any],
         fn_second: Callable[[Conn], T]) -> tuple[Any, T | BaseException]:
    """``fn_first`` runs in a transaction of ``first`` that stays open until ``fn_second``, on
    ``second``, is waiting on a row it wrote; then it commits and ``fn_second`` goes on. The
    interleaving the tests need, without sleeping on a guess."""
    done = threading.Event()
    holding = threading.Event()
    out: dict[str, Any] = {}

    def first_tx(c: Conn) -> Any:
        result = fn_first(c)
        holding.set()
        assert done.wait(30), "the second transaction never waited on the first"
        return result

    def run_first() -> None:
        out["first"] = first.write_sync(first_tx)

    def run_second() -> None:
        try:
            out["second"] = second.write_sync(fn_second)
        except BaseException as exc:
            out["second"] = exc

    t1 = threading.Thread(target=run_first)
    t1.start()
    assert holding.wait(30)
    t2 = threading.Thread(target=run_second)
    t2.start()
    for _ in range(3000):  # until the second waits on the first's row lock (or has finished)
        if _waiting_on_a_lock(first) or not t2.is_alive():
            break
        threading.Event().wait(0.01)
    waited = _waiting_on_a_lock(first)
    done.set()
    t1.join(30)
    t2.join(30)
    assert waited, "the second transaction did not wait on the first one's row"
    return out["first"], out["second"]


def test_two_instances_registering_one_device_get_one_row_and_a_conflict(
        two: tuple[Database, Database]) -> None:
    a, b = two
    item = registry.DeviceIn(device_name="E86 5894", device_mac=MAC)
    made, clash = race(a, b, lambda c: registry.create_devices(c, [item], 1),
                       lambda c: registry.create_devices(c, [item], 1))
    assert made[0]["device_mac"] == MAC
    assert isinstance(clash, registry.RegistryError) and clash.status == 409
    assert f"device id {made[0]['id']}" in clash.message
    assert b.read_sync(lambda c: db_registry.count(c)) == 1


def test_two_instances_seeing_a_new_device_on_mqtt_register_it_once(
        two: tuple[Database, Database]) -> None:
    a, b = two
    first, second = race(
        a, b,
        lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-a", now=1, holder="RS", last_seen=5,
                                        user_code="PA"),
        lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-a", now=2, holder="RS", last_seen=9,
                                        user_code="PA"))
    assert first == ("PA", "status") and second == ("PA", "status")
    rows = a.read_sync(lambda c: db_registry.page(c, 10, 0))
    assert len(rows) == 1 and rows[0][COLS["last_seen"]] == 9


def test_first_use_ownership_is_claimed_once_across_instances(
        two: tuple[Database, Database]) -> None:
    a, b = two
    # a device nobody registered: both claim it at once, both are told the one winner
    won, told = race(a, b, lambda c: registry.claim(c, DEV, "gw-a", now=1, holder="RS"),
                     lambda c: registry.claim(c, DEV, "gw-b", now=1, holder="RS"))
    assert won == "gw-a" and told == "gw-a"
    # a registered device without a gateway (detached through the API): the same
    other = "d061aed40001"
    item = registry.DeviceIn(device_name="E86 0001", device_mac="D0:61:AE:D4:00:01")
    a.write_sync(lambda c: registry.create_devices(c, [item], 2))
    won, told = race(b, a, lambda c: registry.claim(c, other, "gw-b", now=3, holder="RS"),
                     lambda c: registry.claim(c, other, "gw-a", now=3, holder="RS"))
    assert won == "gw-b" and told == "gw-b"
    assert a.read_sync(lambda c: registry.owner_of(c, other)) == "gw-b"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _verify(checker: KeyChecker, d: Database, key: str) -> keys.Principal | None:
    """What ingest.api.auth.authenticate does for a table key."""
    principal = checker.cached(key)
    if principal is None:
        principal = d.read_sync(lambda c: keys.find(c, key))
        if principal is not None:
            checker.remember(key, principal)
    return principal


def test_a_revocation_on_one_instance_holds_on_another_within_the_cache_bound(
        two: tuple[Database, Database]) -> None:
    a, b = two
    clock = Clock()
    checker_b = KeyChecker("vg_settings_key", clock=clock)
    key = a.write_sync(lambda c: keys.create(c, "ward-a", 1, ["read"]))
    assert _verify(checker_b, b, key) is not None  # instance b has it cached now
    a.write_sync(lambda c: keys.revoke(c, "ward-a", 2))
    assert _verify(checker_b, b, key) is not None  # remembered: at most CACHE_S more
    clock.now += CACHE_S
    assert _verify(checker_b, b, key) is None  # b reads the shared table again: revoked
    # the bootstrap key's retirement on one instance, the same way on the other
    assert checker_b.check_env("vg_settings_key") and checker_b.bootstrap_state() is None
    checker_b.remember_bootstrap(b.read_sync(keys.bootstrap_retired_at) is not None)
    a.write_sync(lambda c: keys.retire_bootstrap(c, 3))
    assert checker_b.bootstrap_state() is False
    clock.now += CACHE_S
    assert checker_b.bootstrap_state() is None
    assert b.read_sync(keys.bootstrap_retired_at) == 3


def test_two_instances_creating_one_key_name_make_one_key(two: tuple[Database, Database]) -> None:
    a, b = two
    made, clash = race(a, b, lambda c: keys.create(c, "ward-a", 1, ["read"]),
                       lambda c: keys.create(c, "ward-a", 1, ["admin"]))
    assert isinstance(made, str) and isinstance(clash, keys.ApiKeyError)
    found = b.read_sync(lambda c: keys.find(c, made))
    assert found is not None and found.scopes == {"read"}


def test_a_batch_refresh_keeps_an_assignment_made_after_its_read(db: Database) -> None:
    """refresh_many writes rows read at the start of a batch; an API assignment committed in
    between (by another instance, on PostgreSQL) must survive it, and last_seen never goes
    back (the same rule on both engines)."""
    db.write_sync(lambda c: registry.seen_on_mqtt(c, DEV, gateway_id="gw-a", now=1,
                                                  holder="RS A", last_seen=50))
    row = db.read_sync(lambda c: db_registry.by_mac(c, MAC))
    assert row is not None
    dev_id = int(row[0])
    stale = db_registry.Refresh(dev_id, "FROM_MQTT", "status", "gw-a", 40)
    db.write_sync(lambda c: c.execute(
        "UPDATE devices SET user_code = 'NURSE_SET', user_code_source = 'api' WHERE id = ?",
        (dev_id,)))
    db.write_sync(lambda c: db_registry.refresh_many(c, [stale], now=2))
    code, source, seen = db.read_sync(lambda c: c.execute(
        "SELECT user_code, user_code_source, last_seen FROM devices WHERE id = ?",
        (dev_id,)).fetchone())
    assert (code, source, seen) == ("NURSE_SET", "api", 50)

"""Ownership of patient partitions in PostgreSQL: instances, leases, epochs, the lease log.

PostgreSQL only (on SQLite one process owns every partition and there is no table). Every
time here is the **database's clock** (``clock_timestamp()`` in milliseconds): a lease is
live while ``expires_at > clock_timestamp()``, so two instances whose own clocks disagree
still agree on who owns what (there is one clock, the server's).

Tables:

* ``ingest_instances``: one row per live instance, its heartbeat, the expiry of its
  membership and its MQTT client id; the live rows decide every instance's fair share, the
  expired ones are the sessions a survivor adopts (under the recorded client id);
* ``partition_leases``: one row per partition (``PARTITIONS`` of them), its owner, its epoch
  (incremented at every acquisition, so each ownership period has its own number) and the
  lease's expiry;
* ``partition_lease_log``: one row per (partition, epoch): who held it, from when to when, and
  the database time of the first and last EWS emission fenced under it. This is the record
  the failover proof reads ("never two instances scoring the same patient").

Fencing: :func:`fence` runs inside the transaction that writes EWS emissions. It locks the
partitions' lease rows ``FOR SHARE`` while checking ``owner``, ``epoch`` and expiry, so a
takeover (``FOR UPDATE SKIP LOCKED``) cannot happen until that transaction has committed: an
ex-owner paused past its lease finds its epoch gone and writes nothing, and an emission
committed under epoch ``e`` always precedes the acquisition of ``e + 1``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import psycopg

from ingest.db.engine import Conn, Database, DatabaseError, Dialect
from ingest.db.migrate import Migration, apply

#: the SQL expression of the database's clock in epoch milliseconds.
DB_NOW_MS: Final = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ingest_instances (
  instance_id  TEXT PRIMARY KEY,
  started_at   BIGINT NOT NULL,
  heartbeat_at BIGINT NOT NULL,
  expires_at   BIGINT NOT NULL,
  client_id    TEXT            -- its MQTT client id (NULL: a row of a release before v1)
);
CREATE TABLE IF NOT EXISTS partition_leases (
  part       BIGINT PRIMARY KEY,
  owner      TEXT,
  epoch      BIGINT NOT NULL DEFAULT 0,
  expires_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS partition_lease_log (
  part          BIGINT NOT NULL,
  epoch         BIGINT NOT NULL,
  owner         TEXT   NOT NULL,
  acquired_at   BIGINT NOT NULL,
  ended_at      BIGINT,          -- released, or the lease's expiry when the next owner took it
  end_reason    TEXT,            -- released | expired | restarted
  first_emit_at BIGINT,
  last_emit_at  BIGINT,
  emissions     BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (part, epoch)
);
CREATE INDEX IF NOT EXISTS partition_lease_log_owner ON partition_lease_log (owner, acquired_at);
"""



def _v1_client_id(conn: Conn) -> None:
    """v0 → v1: ``ingest_instances`` records each member's MQTT client id, so a member whose
    client id was set by hand (``VITALGATE_MQTT_CLIENT_ID``) can be adopted under it. The rows
    already there keep NULL (the adopter then derives the id from the instance id, as before)
    until their instance's next heartbeat writes it."""
    have = conn.columns("ingest_instances")
    if have and "client_id" not in have:  # a new database: SCHEMA makes the column
        conn.execute("ALTER TABLE ingest_instances ADD COLUMN client_id TEXT")


#: ``leases`` component versions; see ingest.db.migrate.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "ingest_instances.client_id: the MQTT client id a dead member's session is"
                 " adopted under", _v1_client_id),
)

#: lease-log rows older than this are deleted by :func:`prune_log` (ms): a week of history
#: answers "who scored this patient when" for any incident review; beyond it only counts.
LOG_KEEP_MS: Final = 7 * 86_400_000


T = TypeVar("T")


class Session:
    """Transactions on a dedicated connection of ``db`` (never waiting behind the pool or the
    writer lock: a heartbeat must not be late because ingestion is busy). A connection that
    failed is dropped and a new one opened on the next transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: psycopg.Connection[Any] | None = None
        self._cm: contextlib.AbstractContextManager[psycopg.Connection[Any]] | None = None

    def tx(self, fn: Callable[[Conn], T]) -> T:
        if self._conn is None or self._conn.closed:
            self.close()
            cm = self._db.dedicated()
            self._conn = cm.__enter__()
            self._cm = cm
        pg = self._conn
        try:
            with pg.transaction():
                return fn(Conn(pg, Dialect.POSTGRES))
        except DatabaseError:
            self.close()
            raise

    def close(self) -> None:
        cm, self._cm, self._conn = self._cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)


class PartitionCountMismatch(RuntimeError):
    """The database was set up with another number of partitions: every instance must hash
    patients the same way, so the count can only change with every instance stopped."""


@dataclass(frozen=True, slots=True)
class Held:
    """A partition this instance holds under ``epoch``."""

    part: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Round:
    """The outcome of one heartbeat round."""

    now_ms: int                      #: the database's clock at the round
    live: tuple[str, ...]            #: live instances, sorted
    quota: int                       #: this instance's fair share
    held: Mapping[int, int]          #: partition → epoch held after the round
    acquired: tuple[Held, ...]       #: newly taken this round
    released: tuple[int, ...]        #: given back this round (others need them)
    lost: tuple[int, ...]            #: believed held, but the lease was gone (expired/taken)
    #: members whose membership expired (dead, not stopped cleanly) and are still on record
    #: (ten leases): the instances whose broker sessions a survivor may adopt (ingest.adopt)
    expired: tuple[str, ...] = ()
    #: the MQTT client id each of ``expired`` recorded (absent: none recorded, a row written
    #: by a release before the column)
    expired_client_ids: Mapping[str, str] = field(default_factory=dict)


def setup(conn: Conn, partitions: int) -> None:
    """Schema, then the ``partitions`` lease rows (idempotent; several instances may run it
    at once: the migration's advisory lock serialises them)."""
    if not conn.is_postgres:
        raise RuntimeError("leases live in PostgreSQL; on SQLite one process owns everything")
    # legacy 0: a leases table never recorded in schema_versions is taken as v0 (the step only
    # adds what is missing, so on a new database it does nothing and SCHEMA makes the tables)
    apply(conn, "leases", schema=SCHEMA, migrations=MIGRATIONS, legacy=lambda _c: 0)
    have = int(conn.execute("SELECT COUNT(*) FROM partition_leases").fetchone()[0])
    if have not in (0, partitions):
        raise PartitionCountMismatch(
            f"partition_leases holds {have} partitions, this vitalgate uses {partitions}")
    if have == 0:
        conn.executemany("INSERT INTO partition_leases (part) VALUES (?) ON CONFLICT DO NOTHING",
                         [(p,) for p in range(partitions)])


def db_now(conn: Conn) -> int:
    return int(conn.execute(f"SELECT {DB_NOW_MS}").fetchone()[0])


def fair_share(live: Iterable[str], me: str, partitions: int) -> int:
    """How many partitions ``me`` should hold among the ``live`` instances: ``partitions``
    split as evenly as possible, the remainder to the first instances by id. Every instance
    computes the same split from the same table, so the quotas sum to ``partitions``."""
    members = sorted(set(live) | {me})
    base, extra = divmod(partitions, len(members))
    return base + (1 if members.index(me) < extra else 0)


def forget_own(conn: Conn, me: str) -> list[int]:
    """At start: leases a previous process under the same instance id held are released at
    once (that process is gone and its scorer state with it; a new epoch and a warm start
    follow). Returns the partitions."""
    rows = conn.execute(
        "UPDATE partition_leases SET owner = NULL, expires_at = 0 WHERE owner = ?"
        " RETURNING part, epoch", (me,)).fetchall()
    _end_log(conn, [(int(p), int(e)) for p, e in rows], "restarted")
    return sorted(int(p) for p, _ in rows)


def heartbeat(conn: Conn, me: str, *, lease_ms: int, held: Mapping[int, int],
              partitions: int, started_at: int, client_id: str | None = None) -> Round:
    """One round, in one transaction: renew membership and the leases still held, give back
    what exceeds the fair share, take free partitions up to it. ``held`` is what this
    instance believes it holds (partition → epoch); ``client_id`` its MQTT client id, recorded
    in its membership for whoever adopts its session should it die (None: it has none)."""
    now = db_now(conn)
    expires = now + lease_ms
    conn.execute(
        "INSERT INTO ingest_instances (instance_id, started_at, heartbeat_at, expires_at,"
        " client_id) VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET"
        " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,"
        " client_id = excluded.client_id",
        (me, started_at, now, expires, client_id))
    # a member gone for ten leases is forgotten (its partitions expired long ago)
    conn.execute("DELETE FROM ingest_instances WHERE expires_at < ?", (now - 10 * lease_ms,))
    live = tuple(str(r[0]) for r in conn.execute(
        "SELECT instance_id FROM ingest_instances WHERE expires_at > ? ORDER BY instance_id",
        (now,)))
    dead = conn.execute(
        "SELECT instance_id, client_id FROM ingest_instances WHERE expires_at <= ?"
        " ORDER BY instance_id", (now,)).fetchall()
    expired = tuple(str(i) for i, _ in dead)
    expired_client_ids = {str(i): str(c) for i, c in dead if c is not None}
    quota = fair_share(live, me, partitions)

    renewed: dict[int, int] = {}
    if held:
        # only under the epoch we hold and only while still live: a lease that expired is
        # not silently extended (someone may have taken it, or will; we re-acquire instead)
        parts = sorted(held)
        for p, e in conn.execute(
                "UPDATE partition_leases SET expires_at = ? WHERE owner = ? AND part = ANY(?)"
                " AND expires_at > ? RETURNING part, epoch", (expires, me, parts, now)):
            if held.get(int(p)) == int(e):
                renewed[int(p)] = int(e)
    lost = tuple(sorted(set(held) - set(renewed)))

    released: list[int] = []
    if len(renewed) > quota:
        # give back the highest-numbered: deterministic, and a joiner takes them next round
        released = sorted(renewed)[quota:]
        conn.execute("UPDATE partition_leases SET owner = NULL, expires_at = 0"
                     " WHERE owner = ? AND part = ANY(?)", (me, released))
        _end_log(conn, [(p, renewed.pop(p)) for p in released], "released", at=now)

    acquired: list[Held] = []
    want = quota - len(renewed)
    if want > 0:
        # free: never owned, released, or expired. SKIP LOCKED: a row another instance is
        # taking, or an ex-owner's emission is fencing on, is left for a later round.
        rows = conn.execute(
            "WITH free AS (SELECT part, owner, epoch, expires_at FROM partition_leases"
            "  WHERE owner IS NULL OR expires_at <= ? ORDER BY part LIMIT ?"
            "  FOR UPDATE SKIP LOCKED),"
            " taken AS (UPDATE partition_leases l SET owner = ?, epoch = l.epoch + 1,"
            "  expires_at = ? FROM free WHERE l.part = free.part"
            "  RETURNING l.part, l.epoch, free.owner AS prev_owner, free.expires_at AS prev_exp)"
            " SELECT part, epoch, prev_owner, prev_exp FROM taken ORDER BY part",
            (now, want, me, expires)).fetchall()
        for p, e, prev_owner, prev_exp in rows:
            part, epoch = int(p), int(e)
            if prev_owner is not None:  # the previous epoch ended when its lease expired
                _end_log(conn, [(part, epoch - 1)], "expired", at=int(prev_exp))
            conn.execute(
                "INSERT INTO partition_lease_log (part, epoch, owner, acquired_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (part, epoch, me, now))
            renewed[part] = epoch
            acquired.append(Held(part, epoch))
    return Round(now, live, quota, dict(renewed), tuple(acquired), tuple(released), lost,
                 expired, expired_client_ids)


def leave(conn: Conn, me: str) -> list[int]:
    """A clean stop: give every partition back and leave the membership at once, so the
    others take over in their next round instead of after the lease."""
    now = db_now(conn)
    rows = conn.execute("UPDATE partition_leases SET owner = NULL, expires_at = 0"
                        " WHERE owner = ? RETURNING part, epoch", (me,)).fetchall()
    _end_log(conn, [(int(p), int(e)) for p, e in rows], "released", at=now)
    conn.execute("DELETE FROM ingest_instances WHERE instance_id = ?", (me,))
    return sorted(int(p) for p, _ in rows)


def fence(conn: Conn, me: str, held: Mapping[int, int]) -> set[int]:
    """Inside an emission's transaction: the partitions of ``held`` (partition → epoch) this
    instance still holds under that epoch with a live lease. Their lease rows stay locked
    (``FOR SHARE``) until the transaction ends, so no takeover can slip in before it commits;
    each one's emission record in the lease log is updated (first/last emission, count)."""
    if not held:
        return set()
    parts = sorted(held)
    rows = conn.execute(
        f"SELECT part, epoch FROM partition_leases WHERE part = ANY(?) AND owner = ?"
        f" AND expires_at > {DB_NOW_MS} FOR SHARE", (parts, me)).fetchall()
    ok = sorted(int(p) for p, e in rows if held.get(int(p)) == int(e))
    if ok:
        conn.execute(
            f"UPDATE partition_lease_log SET first_emit_at = COALESCE(first_emit_at, {DB_NOW_MS}),"
            f" last_emit_at = {DB_NOW_MS}, emissions = emissions + 1"
            f" WHERE owner = ? AND (part, epoch) IN (SELECT * FROM unnest(?::bigint[], ?::bigint[]))",
            (me, ok, [held[p] for p in ok]))
    return set(ok)


def _end_log(conn: Conn, ended: Collection[tuple[int, int]], reason: str,
             at: int | None = None) -> None:
    if not ended:
        return
    when = str(int(at)) if at is not None else DB_NOW_MS
    conn.execute(
        f"UPDATE partition_lease_log SET ended_at = {when}, end_reason = ?"
        f" WHERE ended_at IS NULL AND (part, epoch) IN"
        f" (SELECT * FROM unnest(?::bigint[], ?::bigint[]))",
        (reason, [p for p, _ in ended], [e for _, e in ended]))


@dataclass(frozen=True, slots=True)
class Interval:
    """One ownership period of a partition (database time, ms)."""

    part: int
    epoch: int
    owner: str
    acquired_at: int
    ended_at: int | None
    end_reason: str | None
    first_emit_at: int | None
    last_emit_at: int | None
    emissions: int


def intervals(conn: Conn, since_ms: int = 0) -> list[Interval]:
    """The lease log from ``since_ms`` on, by partition and epoch."""
    return [Interval(int(r[0]), int(r[1]), str(r[2]), int(r[3]),
                     None if r[4] is None else int(r[4]), r[5],
                     None if r[6] is None else int(r[6]), None if r[7] is None else int(r[7]),
                     int(r[8]))
            for r in conn.execute(
                "SELECT part, epoch, owner, acquired_at, ended_at, end_reason, first_emit_at,"
                " last_emit_at, emissions FROM partition_lease_log WHERE acquired_at >= ?"
                " ORDER BY part, epoch", (since_ms,))]


def overlaps(log: Iterable[Interval]) -> list[tuple[Interval, Interval]]:
    """Pairs of consecutive epochs of one partition whose emission periods are not strictly
    ordered: the earlier epoch emitted at or after the later one was acquired, or the later
    one emitted before the earlier one ended (two instances scoring the same patients)."""
    by_part: dict[int, list[Interval]] = {}
    for i in log:
        by_part.setdefault(i.part, []).append(i)
    bad: list[tuple[Interval, Interval]] = []
    for rows in by_part.values():
        rows.sort(key=lambda i: i.epoch)
        for a, b in itertools.pairwise(rows):
            emitted_late = a.last_emit_at is not None and a.last_emit_at >= b.acquired_at
            never_ended = a.ended_at is None or a.ended_at > b.acquired_at
            if emitted_late or never_ended:
                bad.append((a, b))
    return bad


def prune_log(conn: Conn, cutoff_ms: int, batch: int) -> int:
    """Delete ended lease-log rows that ended before ``cutoff_ms`` (at most ``batch``)."""
    cur = conn.execute(
        "DELETE FROM partition_lease_log WHERE (part, epoch) IN (SELECT part, epoch FROM"
        " partition_lease_log WHERE ended_at IS NOT NULL AND ended_at < ? LIMIT ?)",
        (cutoff_ms, batch))
    return int(cur.rowcount)

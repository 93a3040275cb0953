"""Which instance scores which patient: patient partitions leased in PostgreSQL.

Each patient (``user_code``) falls in one of :data:`PARTITIONS` partitions by a hash every
process computes the same way (CRC-32 of its UTF-8 bytes, never Python's per-process salted
``hash()``). Each partition is scored by the one instance holding its lease
(:mod:`ingest.db.leases`); the instances split the partitions evenly and rebalance as they
come and go. The rules, each with its reason (:class:`LeasePolicy`):

* a lease lasts ``lease_ms`` (default 10 s) of the **database's** clock: a dead instance's
  patients are scored again by a survivor within about one lease plus one heartbeat;
* heartbeats every ``lease_ms / 3``: two may fail (a slow statement, a reconnect) before the
  lease expires;
* an instance that has not completed a heartbeat for ``lease_ms - margin`` (measured on its own
  monotonic clock from the start of the last successful one) stops scoring everything at once:
  by then its leases may have expired on the database's clock. Fencing (every emission
  checks the epoch in its own transaction) makes even a paused ex-owner harmless; stopping
  early keeps it from computing scores it could not write;
* each live instance takes its fair share (``partitions / live``, remainder to the first by id),
  an instance over its share gives the excess back (a joiner takes it in its next round), and
  a dead instance's partitions are free once its lease has expired;
* a clean stop gives every partition back at once (survivors take over in one heartbeat).

On SQLite there is one process: :class:`SoleOwner` owns every partition, with no table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from ingest.db import leases
from ingest.db.engine import Conn, Database, DatabaseError, Dialect

log = logging.getLogger(__name__)

T = TypeVar("T")

#: patient partitions: far more than instances will ever run (the fair share is 1/64
#: granular: 3 instances hold 22/21/21), few enough for one heartbeat statement, a compact
#: feed notification and a quick warm start per partition. Changing it needs every instance
#: stopped (:class:`ingest.db.leases.PartitionCountMismatch` otherwise).
PARTITIONS: Final = 64


def partition_of(user_code: str, partitions: int = PARTITIONS) -> int:
    """The partition (0..partitions-1) of a patient: the same in every process and release."""
    return zlib.crc32(user_code.encode()) % partitions


@dataclass(frozen=True)
class LeasePolicy:
    """How leases are held; every constant with its reason."""

    #: a lease's length on the database's clock (ms): the bound on how long a dead instance's
    #: patients go unscored (plus one heartbeat and the warm start).
    lease_ms: int = 10_000
    #: partitions (see :data:`PARTITIONS`).
    partitions: int = PARTITIONS
    #: the local safety margin (ms) before the lease's end at which an instance that could not
    #: heartbeat stops scoring: covers the heartbeat's own round trip and a scheduling delay.
    margin_ms: int = 1_000
    #: a failed heartbeat (database gone) is retried after this long (ms), never faster than
    #: the heartbeat itself.
    retry_ms: int = 1_000

    def __post_init__(self) -> None:
        if self.lease_ms < 300:
            raise ValueError("lease_ms must be at least 300 ms (three heartbeats of 100 ms)")
        if not 1 <= self.partitions <= 4096:
            raise ValueError("partitions must be in 1..4096")

    @property
    def heartbeat_ms(self) -> int:
        """Every lease/3: two heartbeats may fail before the lease expires."""
        return max(100, self.lease_ms // 3)

    @property
    def local_deadline_ms(self) -> int:
        """After this long without a successful heartbeat, stop scoring (see the module)."""
        return max(self.heartbeat_ms, self.lease_ms - self.margin_ms)


class Changes(Protocol):
    """What the owner does when partitions come and go (the feed: warm start / forget)."""

    async def acquired(self, parts: frozenset[int]) -> None: ...
    async def released(self, parts: frozenset[int]) -> None: ...


class Ownership(Protocol):
    """The instance's view of what it owns, and the fence its emissions go through."""

    instance_id: str
    partitions: int

    def owns(self, user_code: str) -> bool: ...
    def owns_partition(self, part: int) -> bool: ...
    def owned(self) -> frozenset[int]: ...
    def fence(self, conn: Conn, user_codes: Collection[str]) -> set[str]: ...
    async def run(self, changes: Changes) -> None: ...
    async def leave(self) -> None: ...


class SoleOwner:
    """One process (SQLite): every partition, always; the fence lets everything through."""

    def __init__(self, instance_id: str, partitions: int = PARTITIONS) -> None:
        self.instance_id = instance_id
        self.partitions = partitions

    def owns(self, user_code: str) -> bool:
        return True

    def owns_partition(self, part: int) -> bool:
        return True

    def owned(self) -> frozenset[int]:
        return frozenset(range(self.partitions))

    def fence(self, conn: Conn, user_codes: Collection[str]) -> set[str]:
        return set(user_codes)

    async def run(self, changes: Changes) -> None:
        await changes.acquired(self.owned())
        await asyncio.Event().wait()  # owns everything until cancelled

    async def leave(self) -> None:
        return None


@dataclass
class OwnershipStats:
    rounds: int = 0
    failures: int = 0
    acquired: int = 0
    released: int = 0
    lost: int = 0
    #: times the local deadline passed without a heartbeat (everything dropped)
    expired_locally: int = 0
    last_round: leases.Round | None = None


class LeasedOwner:
    """Partitions leased in PostgreSQL, held by heartbeats on a dedicated connection."""

    def __init__(self, db: Database, instance_id: str, policy: LeasePolicy | None = None,
                 *, monotonic: Callable[[], float] = time.monotonic,
                 client_id: str | None = None) -> None:
        if db.dialect is not Dialect.POSTGRES:
            raise ValueError("leased ownership needs PostgreSQL")
        self.db = db
        self.instance_id = instance_id
        #: this instance's MQTT client id, recorded in its membership at every heartbeat: a
        #: survivor adopts its session under it if it dies (ingest.adopt)
        self.client_id = client_id
        self.policy = policy or LeasePolicy()
        self.partitions = self.policy.partitions
        self._monotonic = monotonic
        #: partition → epoch this instance holds (replaced whole, read from any thread)
        self._held: Mapping[int, int] = {}
        self._session = leases.Session(db)
        #: heartbeats run on a thread of their own: the default executor is shared with every
        #: store read and write, and a heartbeat queued behind them could miss the lease
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lease")
        self._started_at = int(time.time() * 1000)
        self.stats = OwnershipStats()
        #: called after every successful round (``ingest.adopt.Adopter.round``: which dead
        #: instances' broker sessions this instance consumes)
        self.on_round: Callable[[leases.Round], Awaitable[None]] | None = None
        self.db.write_sync(lambda c: leases.setup(c, self.partitions))

    # -- the local view (any thread) ---------------------------------------------------

    def owns(self, user_code: str) -> bool:
        return partition_of(user_code, self.partitions) in self._held

    def owns_partition(self, part: int) -> bool:
        return part in self._held

    def owned(self) -> frozenset[int]:
        return frozenset(self._held)

    def epochs(self) -> Mapping[int, int]:
        return dict(self._held)

    def fence(self, conn: Conn, user_codes: Collection[str]) -> set[str]:
        """Inside the emission's transaction: the patients whose partition this instance
        still holds under the epoch it scored them with (see :func:`leases.fence`)."""
        held = self._held
        wanted = {partition_of(u, self.partitions) for u in user_codes}
        mine = {p: held[p] for p in wanted if p in held}
        ok = leases.fence(conn, self.instance_id, mine)
        return {u for u in user_codes if partition_of(u, self.partitions) in ok}

    # -- the heartbeat task --------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def round_sync(self) -> leases.Round:
        held = dict(self._held)
        return self._session.tx(lambda c: leases.heartbeat(
            c, self.instance_id, lease_ms=self.policy.lease_ms, held=held,
            partitions=self.partitions, started_at=self._started_at, client_id=self.client_id))

    async def run(self, changes: Changes) -> None:
        """Heartbeat until cancelled; tell ``changes`` what was acquired and released."""
        gone = await self._call(self._session.tx, lambda c: leases.forget_own(c, self.instance_id))
        if gone:
            log.info("instance %s: released %d partition(s) a previous process under this id"
                     " held", self.instance_id, len(gone))
        last_ok = self._monotonic()
        try:
            while True:
                started = self._monotonic()
                try:
                    rnd = await self._call(self.round_sync)
                except DatabaseError as exc:
                    self.stats.failures += 1
                    log.warning("instance %s: lease heartbeat failed (%s); retrying",
                                self.instance_id, type(exc).__name__)
                    if self._held and self._monotonic() - last_ok >= \
                            self.policy.local_deadline_ms / 1000:
                        self.stats.expired_locally += 1
                        dropped = frozenset(self._held)
                        self._held = {}
                        log.warning("instance %s: no heartbeat for %.1f s: stopped scoring %d"
                                    " partition(s)", self.instance_id,
                                    self._monotonic() - last_ok, len(dropped))
                        await changes.released(dropped)
                    await asyncio.sleep(min(self.policy.retry_ms, self.policy.heartbeat_ms)
                                        / 1000)
                    continue
                last_ok = started
                await self._apply(rnd, changes)
                await asyncio.sleep(self.policy.heartbeat_ms / 1000)
        finally:
            self._session.close()

    async def _apply(self, rnd: leases.Round, changes: Changes) -> None:
        s = self.stats
        s.rounds += 1
        s.last_round = rnd
        gone = frozenset(rnd.released) | frozenset(rnd.lost)
        new = frozenset(h.part for h in rnd.acquired)
        self._held = dict(rnd.held)
        if rnd.lost:
            s.lost += len(rnd.lost)
            log.warning("instance %s: lost %d partition(s) (lease expired before renewal)",
                        self.instance_id, len(rnd.lost))
        if gone:
            s.released += len(rnd.released)
            await changes.released(gone)
        if new:
            s.acquired += len(new)
            await changes.acquired(new)
        if gone or new:
            log.info("instance %s: %d live instance(s), holding %d of %d partitions"
                     " (+%d -%d)", self.instance_id, len(rnd.live), len(rnd.held),
                     self.partitions, len(new), len(gone))
        if self.on_round is not None:
            await self.on_round(rnd)

    async def leave(self) -> None:
        """Give everything back now (clean stop)."""
        self._held = {}
        try:
            parts = await self._call(self._session.tx, lambda c: leases.leave(c, self.instance_id))
        except DatabaseError as exc:
            log.warning("instance %s: could not give partitions back (%s): they expire with"
                        " the lease", self.instance_id, type(exc).__name__)
            return
        finally:
            self._session.close()
        log.info("instance %s: gave back %d partition(s)", self.instance_id, len(parts))


def ownership_for(db: Database, instance_id: str, policy: LeasePolicy | None = None,
                  *, client_id: str | None = None) -> SoleOwner | LeasedOwner:
    """Leases on PostgreSQL (``client_id``: the instance's MQTT client id, recorded in its
    membership); everything on SQLite (one process)."""
    if db.dialect is Dialect.POSTGRES:
        return LeasedOwner(db, instance_id, policy, client_id=client_id)
    return SoleOwner(instance_id, (policy or LeasePolicy()).partitions)

"""Session adoption (issue 13): a survivor drains a dead instance's MQTT session.

With a shared subscription the broker keeps dispatching a member's share of the messages to
its persistent session while the member is offline (Mosquitto 2.0, docs/scaling.md): while an
instance is dead a third of every patient's readings would wait in its session until it
restarts, late for the scorer. So when an instance's membership expires (it died, it did not
stop cleanly: ``ingest.db.leases.Round.expired``), one survivor, the first live instance by
id (every instance computes the same one, so two survivors do not fight over the session),
connects with the dead instance's MQTT client id, resumes its persistent session and consumes
it like its own (commit, then acknowledge; the store's identities absorb a redelivery, the
feed's NOTIFY reaches the owners). The client id is the one the instance recorded in its
membership (``ingest_instances.client_id``, written at every heartbeat: a hand-set
``VITALGATE_MQTT_CLIENT_ID`` included); a row without one (written by a release before the
column) falls back to the derived ``vitalgate-ingest-<instance_id>`` (:func:`client_id_of`).

No ping-pong: the adopter never reconnects. When the instance returns, its connection takes
the client id over (the broker closes the adopter's); the adopter lets go and waits
:data:`RETRY_ROUNDS` lease rounds, by which time the returned instance is live again and is not
adopted. Any other loss of the adopted connection (a broker restart) also lets go; if the
instance is still dead after the wait, its session is adopted again. A process that has just
started adopts nothing for as many rounds (whoever expired may be restarting along with it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from ingest import store
from ingest.consumer import Consumer
from ingest.db import Conn, Database
from ingest.db.leases import Round
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from vitalgate.clock import epoch_ms
from vitalgate.mqtt_session import Link, MqttOptions

log = logging.getLogger(__name__)

#: after an adopted connection is lost, the instance is not adopted again for this many lease
#: rounds (6 × lease/3 = 20 s by default): the loss is usually the instance's return (its
#: connection takes the client id over), and a restarted instance is live in the leases only
#: after its first heartbeat (measured up to 13 s after its MQTT connect on a loaded machine);
#: adopting before that would take the session back from it. If it is still dead (the broker
#: restarted) the session is adopted again after the wait.
RETRY_ROUNDS: Final = 6


def client_id_of(instance_id: str) -> str:
    """The MQTT client id an instance derives from its id (``IngestSettings.client_id``): the
    one adopted for a member that recorded none."""
    return f"vitalgate-ingest-{instance_id}"


def client_id_for(rnd: Round, instance_id: str) -> str:
    """The client id of ``instance_id``'s session: recorded in its membership, else derived."""
    return rnd.expired_client_ids.get(instance_id) or client_id_of(instance_id)


class Adopted(Consumer):
    """A dead instance's session: consumed until the connection is lost, never reconnected."""

    def __init__(self, instance_id: str, client_id: str, settings: IngestSettings,
                 db: Database, *,
                 after_commit: Callable[[store.CommitResult], Awaitable[None]] | None,
                 in_commit: Callable[[Conn, store.CommitResult], None] | None,
                 clock: Callable[[], int]) -> None:
        mine = settings.model_copy(update={"mqtt_client_id": client_id})
        #: metrics of its own: the instance's gauges (mqtt_connected) stay about its own session
        self.metrics = IngestMetrics()
        super().__init__(mine, db, self.metrics, after_commit=after_commit, clock=clock)
        self.in_commit = in_commit
        self.instance_id = instance_id
        self.client_id = client_id
        self.lost = asyncio.Event()
        #: called on the event loop when the connection is lost (the adopter ends the task)
        self.on_lost: Callable[[], object] | None = None

    def _options(self) -> MqttOptions:
        # the dead instance's persistent session, but never reconnected by paho: a lost
        # connection is usually the instance's return taking its client id over
        return dataclasses.replace(super()._options(), reconnect=None)

    def _on_link(self, link: Link) -> None:
        if link.event != "down":
            super()._on_link(link)
            return
        self.connected = False
        log.info("adopted session of %s lost (%s): letting go, not reconnecting",
                 self.instance_id, link.detail)
        self._lost()

    def _lost(self) -> None:
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost()


class Adopter:
    """Decides, on every lease round, which dead instances' sessions this instance consumes."""

    def __init__(self, instance_id: str, settings: IngestSettings, db: Database, *,
                 after_commit: Callable[[store.CommitResult], Awaitable[None]] | None = None,
                 in_commit: Callable[[Conn, store.CommitResult], None] | None = None,
                 clock: Callable[[], int] = epoch_ms) -> None:
        self.instance_id = instance_id
        self._settings = settings
        self._db = db
        self._after_commit = after_commit
        self._in_commit = in_commit
        self._clock = clock
        self._running: dict[str, tuple[Adopted, asyncio.Task[None]]] = {}
        #: instance → lease rounds to wait before adopting it again
        self._let_go: dict[str, int] = {}
        #: a process just started adopts nothing for its first rounds: instances that expired
        #: while it was down may be restarting with it (connected to the broker, not yet live
        #: in the leases); adopting one would take its session back from it (measured: one
        #: such bounce when two killed instances restarted together)
        self._warmup = RETRY_ROUNDS
        self.adoptions = 0  #: sessions adopted since start
        self.let_go = 0  #: adoptions ended (the instance returned, or the connection was lost)

    @property
    def adopted(self) -> list[str]:
        return sorted(self._running)

    @property
    def sessions(self) -> dict[str, Adopted]:
        """The sessions consumed now, by instance."""
        return {x: consumer for x, (consumer, _) in self._running.items()}

    def wanted(self, rnd: Round) -> set[str]:
        """The dead instances this one should adopt after ``rnd``. Never one recorded under
        this instance's own client id (misconfigured replicas sharing one): connecting with it
        would take this instance's own session over."""
        if not rnd.live or rnd.live[0] != self.instance_id:
            return set()
        own = self._settings.client_id
        return {x for x in rnd.expired if x != self.instance_id and x not in self._let_go
                and client_id_for(rnd, x) != own}

    async def round(self, rnd: Round) -> None:
        if self._warmup > 0:
            self._warmup -= 1
            return
        for x in list(self._let_go):
            self._let_go[x] -= 1
            if self._let_go[x] <= 0 or x in rnd.live:
                del self._let_go[x]  # adoptable again when (still, or once more) dead
        for x, (consumer, task) in list(self._running.items()):
            if consumer.lost.is_set() or task.done():
                await self._end(x)
        want = self.wanted(rnd)
        for x in set(self._running) - want:
            await self._end(x)
        for x in sorted(want - set(self._running)):
            self._start(x, client_id_for(rnd, x))

    def _start(self, instance: str, client_id: str) -> None:
        consumer = Adopted(instance, client_id, self._settings, self._db,
                           after_commit=self._after_commit, in_commit=self._in_commit,
                           clock=self._clock)
        task = asyncio.create_task(self._consume(consumer), name=f"adopted-{instance}")
        self._running[instance] = (consumer, task)
        self.adoptions += 1
        log.warning("instance %s: adopting the MQTT session of %s (client id %s; membership"
                    " expired)", self.instance_id, instance, client_id)

    @staticmethod
    async def _consume(consumer: Adopted) -> None:
        """Consume until cancelled, which losing the connection does (``Adopted.on_lost``)."""
        me = asyncio.current_task()
        assert me is not None
        consumer.on_lost = me.cancel
        await consumer.run()

    async def _end(self, instance: str) -> None:
        _, task = self._running.pop(instance)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._let_go[instance] = RETRY_ROUNDS  # see RETRY_ROUNDS (a returned one is live by then)
        self.let_go += 1
        log.info("instance %s: let go of the MQTT session of %s", self.instance_id, instance)

    async def close(self) -> None:
        for x in list(self._running):
            await self._end(x)

"""The gateway process: buffer + publisher + BLE session manager + status, in one TaskGroup.

``Gateway(settings, backend).run()`` runs until cancelled; cancelling it (SIGTERM/SIGINT in
the CLI) stops every task, publishes the retained "offline" status and closes the buffer.
The backend decides where the watches are (BlueZ, or the simulators' bumble link for
``--simulate``, built at the composition root); the gateway only knows ``BleBackend``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway.ble.backend import BleBackend
from gateway.ble.manager import SessionManager
from gateway.buffer import Buffer, BufferError, BufferStats, Measurement, set_aside_files
from gateway.clock_sync import SyncedClock, SystemSync
from gateway.lock import DataDirLock
from gateway.publisher import Publisher
from gateway.settings import GatewaySettings
from gateway.status import serve_status, state_file_loop, write_state
from vitalgate import __version__
from vitalgate.backoff import Backoff
from vitalgate.clock import epoch_ms
from vitalgate.contract import EcgChunk, Reading

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class BufferSink:
    """What sessions write to: the buffer, then a nudge to the publisher. A buffer that cannot
    write raises (:class:`gateway.buffer.BufferError`): the session then leaves the readings on
    the watch (history) instead of believing them stored."""

    def __init__(self, buffer: Buffer, publisher: Publisher,
                 on_recovered: Callable[[], None] = lambda: None) -> None:
        self.buffer = buffer
        self.publisher = publisher
        self.on_recovered = on_recovered
        self._failing = False

    def add_readings(self, items: Sequence[Measurement]) -> list[Reading]:
        out = self._write(lambda: self.buffer.add_readings(items))
        self.publisher.notify()
        return out

    def add_ecg(self, chunk: EcgChunk) -> None:
        self._write(lambda: self.buffer.add_ecg(chunk))
        self.publisher.notify()

    def _write(self, write: Callable[[], _T]) -> _T:
        try:
            out = write()
        except BufferError:
            self._failing = True
            raise
        if self._failing:  # the first good write after failures: what waited on the watches
            self._failing = False
            self.on_recovered()
        return out


class Gateway:
    def __init__(self, settings: GatewaySettings, backend: BleBackend, *, clock: SyncedClock | None = None,
                 mqtt_backoff: Backoff | None = None) -> None:
        """Locks the data directory (:class:`gateway.lock.DataDirLocked` if another gateway has
        it), then opens the buffer (a damaged one is set aside and a fresh one started)."""
        self.settings = settings
        self.clock = clock or SyncedClock(source=SystemSync(
            assume_synchronised=settings.clock_assume_synchronised))
        self.lock = DataDirLock(settings.data_dir).acquire()
        try:
            self.buffer = Buffer.open_or_reset(
                settings.buffer_path, max_rows=settings.buffer_max_rows, max_bytes=settings.buffer_max_bytes,
                synchronous=settings.buffer_synchronous, keep_acked_rows=settings.buffer_keep_acked_rows,
                keep_acked_s=settings.buffer_keep_acked_s)
        except BaseException:
            self.lock.release()
            raise
        log.info("buffer %s: stream %s, %d rows waiting", self.buffer.path, self.buffer.stream, len(self.buffer))
        self.publisher = Publisher(settings, self.buffer, version=__version__, backoff=mqtt_backoff)
        self.manager = SessionManager(settings, backend,
                                      BufferSink(self.buffer, self.publisher, on_recovered=self._storage_recovered),
                                      on_status=self.publisher.set_device_status, clock=self.clock)
        self.status_port: int | None = None
        self.started_ms = epoch_ms()

    def _storage_recovered(self) -> None:
        """The buffer writes again: sync every watch's history now (what it measured while the
        disk was full waited there) instead of at the next ``history_sync_min``."""
        log.info("buffer writable again: syncing the watches' history now")
        for w in self.manager.watches.values():
            if w.session is not None:
                w.session.request_sync()

    def snapshot(self) -> dict[str, Any]:
        try:
            stats = self.buffer.stats()
            lag_s = self.publisher.lag_s()
        except BufferError as exc:  # the file cannot even be read: say so, keep serving status
            stats = BufferStats(rows=len(self.buffer), bytes=0, readings=0, ecg=0, evicted_readings=0,
                                evicted_ecg=0, added=0, acked=0, oldest_added_ms=None)
            lag_s = -1.0
            self.buffer.last_error = str(exc)
        pub = self.publisher
        broker = self.settings.broker
        return {
            "gateway_id": self.settings.gateway_id,
            "version": __version__,
            "running": True,
            "ts": epoch_ms(),
            "started_ms": self.started_ms,
            "mqtt": {
                "broker": f"{broker.host}:{broker.port}",
                "connected": pub.connected,
                "inflight": pub.inflight,
                **vars(pub.counters),
            },
            "buffer": {
                "path": str(self.buffer.path),
                "rows": stats.rows,
                "bytes": stats.bytes,
                "readings": stats.readings,
                "ecg": stats.ecg,
                "evicted": stats.evicted,
                "evicted_readings": stats.evicted_readings,
                "evicted_ecg": stats.evicted_ecg,
                "lag_s": lag_s,
                **self._buffer_health(stats.kept, stats.kept_bytes, stats.salvaged),
            },
            "ble": self.manager.snapshot(),
        }

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run(), name="mqtt publisher")
                tg.create_task(self.manager.run(), name="ble manager")
                tg.create_task(self._commands(), name="commands")
                if self.settings.status_port >= 0:
                    tg.create_task(serve_status(self.snapshot, self.settings.status_port, bound=self._bound),
                                   name="status http")
                tg.create_task(state_file_loop(self.snapshot, self.settings.state_path), name="state file")
        finally:
            final = self.snapshot()
            final["running"] = False
            try:
                write_state(self.settings.state_path, final)
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.settings.state_path, exc)
            self.buffer.close()
            self.lock.release()

    def _bound(self, port: int) -> None:
        self.status_port = port

    async def _commands(self) -> None:
        async for cmd in self.publisher.commands():
            match cmd.cmd:
                case "republish":  # from the buffer: the watch has nothing to do with it
                    self.publisher.republish(cmd)
                case "sync" | "ecg":
                    await self.manager.handle(cmd)

    def _buffer_health(self, kept: int, kept_bytes: int, salvaged: int) -> dict[str, Any]:
        """The buffer's storage state (``ok`` / ``disk_full`` / ``write_error``), its stream
        identity, the damaged files set aside and what was salvaged from them."""
        b = self.buffer
        aside = set_aside_files(b.path)
        return {
            "state": b.state,
            "last_error": b.last_error,
            "state_since_ms": b.state_since_ms,
            "write_failures": b.write_failures,
            "stream": b.stream,
            "kept": kept,
            "kept_bytes": kept_bytes,
            "salvaged": salvaged,
            "corrupt_set_aside": len(aside),
            "set_aside_files": [p.name for p in aside[-5:]],
        }


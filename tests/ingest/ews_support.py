"""Opening the EWS store on either engine in tests (the ``database_url`` fixture's engine):
SQLite ``ews.sqlite3`` beside the readings file, or the same PostgreSQL database; reading it,
and waiting for an outbox in it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.db import Conn, Database
from ingest.db import ews as ews_store

#: ``store()`` of the ``store`` fixture (tests/ingest/conftest.py): a new Database on the store
Open = Callable[[], Database]


@contextmanager
def opener(database_url: str, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """``open()`` gives a new Database on the test's EWS store (a second call: another
    process's view of the same store); all are closed at the end."""
    opened: list[Database] = []

    def open_() -> Database:
        db = ews_store.open_store(database_url, tmp_path)
        opened.append(db)
        return db

    try:
        yield open_
    finally:
        for db in opened:
            db.close()


def query(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query, as tuples."""
    def run(c: Conn) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in c.execute(sql, params).fetchall()]
    return db.read_sync(run)


async def until(cond: Callable[[], bool], what: str, steps: int = 4000, every_s: float = 0.002) -> None:
    """Wait for ``cond`` (checked every ``every_s``, at most ``steps`` times), else fail naming ``what``."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"gave up waiting for {what}")


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel an outbox's run task and wait until it has ended."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

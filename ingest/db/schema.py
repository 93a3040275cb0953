"""The readings store's setup: every component's migrations and schema, in order, at open.

``Database(location, setup=setup)`` runs :func:`setup` once in one write transaction: each
component in :data:`COMPONENTS` brings its tables to its version (``schema_versions``; a SQLite
store of a release before it is read by the component's legacy reader, e.g. ``PRAGMA
user_version``), then (PostgreSQL) the readings partitions of the accepted window are made.

Add a component by appending ``(name, setup_fn)`` to :data:`COMPONENTS` (order matters: a
component's migration may read the tables of those before it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ingest.db import dead_letters, ecg, gaps, keys, readings, registry
from ingest.db.engine import Conn, Database, Location

#: every component of the readings store, in the order they are set up.
COMPONENTS: Final[tuple[tuple[str, Callable[[Conn, int], None]], ...]] = (
    ("readings", readings.setup),          # readings, gateways, store_probe (h13a)
    ("ecg", ecg.setup),                    # ecg_chunks, ecg_recordings, ecg_rejected (h13a)
    ("dead_letters", dead_letters.setup),  # dead_letters, dead_letter_stats, deliveries (h13a)
    ("gaps", gaps.setup),                  # seq_streams, seq_gaps (h13a; seeds from readings)
    ("registry", registry.setup),          # devices, device_moves (h13d)
    ("keys", keys.setup),                  # api_keys, api_key_state (h13d)
)


def make_setup(*, now: int = 0, window: tuple[int, int] | None = None) -> Callable[[Conn], None]:
    """The setup function of the readings store; ``window`` (event-time ms, first..last):
    the readings partitions to make ahead on PostgreSQL."""

    def setup(conn: Conn) -> None:
        for _name, fn in COMPONENTS:
            fn(conn, now)
        if window is not None:
            readings.ensure_partitions(conn, *window)

    return setup


#: the setup with no partitions made ahead (tools, tests that make their own).
setup: Final = make_setup()


def open_store(location: Location, *, synchronous: str = "FULL", now: int = 0,
               window: tuple[int, int] | None = None, readonly: bool = False) -> Database:
    """The readings store at ``location``, set up (migrations, and partitions over ``window``)."""
    return Database(location, setup=make_setup(now=now, window=window), synchronous=synchronous,
                    name="ingest", readonly=readonly)

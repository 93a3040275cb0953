"""Fixtures of the ingest tests.

The store's engine: a module that runs on both SQLite and PostgreSQL says so with
``pytestmark = pytest.mark.usefixtures("ingest_engine")``; its tests then run once per engine
(the parametrised ``database_url`` fixture of tests/conftest.py; ``-k sqlite`` /
``-k postgres`` picks one), and every service made by ``settings_for`` and every store opened by
``open_store`` (tests/support/ingest_service.py) uses that engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import ingest_service
from tests.support.ingest_service import publisher
from vitalgate.broker import Mosquitto


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Any]:
    """A paho client publishing to the test's broker (QoS 1 waits for the PUBACK)."""
    client = publisher(mosquitto.host, mosquitto.port)
    yield client
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def ingest_engine(database_url: str) -> Iterator[str | None]:
    """This test's store engine: None for SQLite (the data dir's file, as in production), the
    PostgreSQL URL of a fresh database otherwise."""
    url = None if database_url.startswith("sqlite:") else database_url
    token = ingest_service.ENGINE.set(url)
    try:
        yield url
    finally:
        ingest_service.ENGINE.reset(token)

"""Fixtures of the ingest tests.

The store's engine: a module that runs on both SQLite and PostgreSQL says so with
``pytestmark = pytest.mark.usefixtures("ingest_engine")``; its tests then run once per engine
(the parametrised ``database_url`` fixture of tests/conftest.py; ``-k sqlite`` /
``-k postgres`` picks one), and every service made by ``settings_for`` and every store opened by
``open_store`` (tests/support/ingest_service.py) uses that engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ingest.ews_support import Open, opener
from tests.support import ingest_service
from tests.support.ingest_service import publishing
from vitalgate.broker import Mosquitto


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Any]:
    """A paho client publishing to the test's broker (QoS 1 waits for the PUBACK)."""
    with publishing(mosquitto.host, mosquitto.port) as client:
        yield client


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


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Open]:
    """``store()``: a new Database on the test's EWS store, on the test's engine (a second call:
    another process's view of the same store); all are closed at the end."""
    with opener(database_url, tmp_path) as open_:
        yield open_

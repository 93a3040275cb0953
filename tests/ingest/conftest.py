"""Fixtures of the ingest tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.ingest_service import publisher
from vitalgate.broker import Mosquitto


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Any]:
    """A paho client publishing to the test's broker (QoS 1 waits for the PUBACK)."""
    client = publisher(mosquitto.host, mosquitto.port)
    yield client
    client.disconnect()
    client.loop_stop()

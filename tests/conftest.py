"""Fixtures shared by every test: real parts only (a private Mosquitto, temporary dirs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vitalgate.broker import Mosquitto

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, private to the test (stop()/start() keep the port)."""
    broker = Mosquitto(workdir=tmp_path / "mosquitto")
    broker.workdir.mkdir()  # type: ignore[union-attr]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real PhysioNet recordings (see its README)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}: clone beside ../shared")
    return path

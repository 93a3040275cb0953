"""Fixtures shared by every test: real parts only (a private Mosquitto, temporary dirs)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vitalgate.broker import Mosquitto
from vitalgate.postgres import PostgresServer

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


# ---- PostgreSQL (vitalgate/postgres.py): one private server per session, one database per test


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 on a free loopback port for the whole session (fsync off: throwaway).
    Its work dir is under /tmp, not tmp_path: when the tests run as root the server runs as
    the unprivileged 'postgres' user, which cannot enter pytest's 0700 root-owned tmp dirs."""
    workdir = Path(tempfile.mkdtemp(prefix="vitalgate-test-postgres-"))
    workdir.chmod(0o755)
    server = PostgresServer(workdir=workdir, fsync=False)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; yields its URL and drops it after."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)


# ---- the ingest store on both engines (ingest/db): one parametrised fixture


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ingest store's URL, once per engine: ``sqlite:///<tmp>/ingest.sqlite3`` or a fresh
    PostgreSQL database on the session's private server. Tests taking it run on both engines
    (``-k sqlite`` / ``-k postgres`` picks one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ingest.sqlite3'}"
    return str(request.getfixturevalue("postgres_db"))

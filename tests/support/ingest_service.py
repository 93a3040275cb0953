"""Test tools for the ingest service (tests and benchmarks): run the service, publish like a gateway."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from ingest.db import Conn, Database, Location, schema
from ingest.service import RunningService, start_service
from ingest.settings import IngestSettings
from vitalgate.backoff import Backoff
from vitalgate.config import BrokerAddress, load_settings
from vitalgate.contract import QOS, Reading, Topics, Vitals
from vitalgate.mqtt_session import MqttOptions, make_client

TEST_KEY = "test-key-0123456789abcdef"

#: the store's engine for :func:`settings_for`: None = SQLite in the data dir; a PostgreSQL URL
#: when a test runs on PostgreSQL (set per test by the ``ingest_engine`` fixture of
#: tests/ingest/conftest.py, from the parametrised ``database_url`` fixture).
ENGINE: ContextVar[str | None] = ContextVar("ingest_engine", default=None)


def settings_for(data_dir: Path, mqtt_url: str, **overrides: Any) -> IngestSettings:
    """Test settings; the store is the current test's engine (:data:`ENGINE`) unless
    ``database_url`` is given."""
    values: dict[str, Any] = {
        "data_dir": data_dir, "mqtt_url": mqtt_url, "http_host": "127.0.0.1", "http_port": 0,
        "api_key": TEST_KEY, "mqtt_client_id": f"ingest-{data_dir.name}",
        "sqlite_synchronous": "NORMAL", "database_url": ENGINE.get(),
        # a week of history: on PostgreSQL the partitions of the accepted window are made at
        # start (one per day, ~30 ms each): 9 rather than the default's 92
        "max_reading_age_days": 7,
    }
    values.update(overrides)
    return load_settings(IngestSettings, None, **values)


@contextlib.asynccontextmanager
async def running(settings: IngestSettings, **kwargs: Any) -> AsyncIterator[RunningService]:
    svc = await start_service(settings, **kwargs)
    try:
        yield svc
    finally:
        await svc.stop()


@contextlib.asynccontextmanager
async def connected(settings: IngestSettings, **kwargs: Any) -> AsyncIterator[RunningService]:
    """:func:`running`, entered once the service's consumer is connected to the broker and
    subscribed (a message published then reaches it)."""
    async with running(settings, **kwargs) as svc:
        await eventually(lambda: svc.service.consumer.subscribed)
        yield svc


@contextlib.asynccontextmanager
async def connected_to(data_dir: Path, mqtt_url: str, *, clock: Callable[[], int] | None = None,
                       **overrides: Any) -> AsyncIterator[RunningService]:
    """:func:`connected` on ``settings_for(data_dir, mqtt_url, **overrides)``; ``clock``: the
    service's clock (ms), if not the wall clock."""
    kwargs = {} if clock is None else {"clock": clock}
    async with connected(settings_for(data_dir, mqtt_url, **overrides), **kwargs) as svc:
        yield svc


class Api:
    """A small JSON client for the service's REST API."""

    def __init__(self, base_url: str, key: str | None = TEST_KEY) -> None:
        self.base_url = base_url
        self.key = key
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any]:
        assert self._session is not None
        hdrs = {"x-api-key": self.key} if self.key else {}
        hdrs.update(headers or {})
        async with self._session.request(method, self.base_url + path, json=json, data=data,
                                         headers=hdrs, params=params or None) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **params)


def publisher(url_host: str, port: int, client_id: str = "", *,
              protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311) -> mqtt.Client:
    """A connected paho client with its loop running (QoS 1 publishing like a gateway)."""
    client = make_client(MqttOptions(
        BrokerAddress(url_host, port, tls=False), client_id,
        protocol="5" if protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1", max_inflight=1000,
        reconnect=Backoff(initial_s=1.0, factor=2.0, max_s=120.0, jitter=0.0)))  # paho's defaults
    client.connect(url_host, port)
    client.loop_start()
    return client


@contextlib.contextmanager
def publishing(url_host: str, port: int, client_id: str = "") -> Iterator[mqtt.Client]:
    """:func:`publisher` for the length of a block: disconnected and its loop stopped after it,
    however the block ends."""
    client = publisher(url_host, port, client_id)
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_once(url_host: str, port: int, items: Iterable[tuple[str, bytes]],
                 client_id: str = "") -> None:
    """Connect a publisher, :func:`publish_all` ``items`` (every PUBACK awaited), disconnect."""
    with publishing(url_host, port, client_id) as client:
        publish_all(client, items)


def reading(device_id: str, seq: int, ts: int, user_code: str | None = "PATIENT1",
            **vitals: float) -> Reading:
    return Reading(device_id=device_id, seq=seq, ts=ts, user_code=user_code,
                   vitals=Vitals(**(vitals or {"heart_rate": 72.0})))


def publish_all(client: mqtt.Client, items: Iterable[tuple[str, bytes]], timeout: float = 20.0) -> None:
    """Publish QoS 1 and wait until the broker acknowledged every message."""
    infos = [client.publish(topic, payload, qos=QOS) for topic, payload in items]
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))


async def eventually(check: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def topics(prefix: str | None = None) -> Topics:
    return Topics(prefix) if prefix else Topics()



def store_location(data_dir: Path) -> Location:
    """Where a service made by :func:`settings_for` keeps its readings store (this test's
    engine)."""
    return Location.parse(ENGINE.get(), default_path=data_dir / "ingest.sqlite3")


def open_store(data_dir: Path, **kwargs: Any) -> Database:
    """The readings store a service made by :func:`settings_for` uses (this test's engine),
    opened beside it (tests read what it committed)."""
    return schema.open_store(store_location(data_dir), synchronous="NORMAL", **kwargs)


def refuse_inserts(conn: Conn, table: str, when: str, name: str) -> None:
    """Make the store refuse inserts into ``table`` of rows where ``when`` (SQL on ``NEW``)
    holds, with an integrity error, on either engine: a real store refusal for the poison
    tests (a SQLite trigger; a PostgreSQL trigger function)."""
    if not conn.is_postgres:
        conn.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN {when}"
                     " BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
        return
    conn.script(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF {when} THEN RAISE EXCEPTION 'refused by the test trigger'"
        " USING ERRCODE = 'integrity_constraint_violation'; END IF; RETURN NEW; END $$;"
        f" CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}();")

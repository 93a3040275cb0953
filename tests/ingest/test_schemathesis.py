"""Schemathesis against the service's own OpenAPI document: no operation answers 5xx.

The service runs as a subprocess (``python -m vitalgate ingest``) beside a private Mosquitto;
cases are generated from the same document the service serves at /openapi.json.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ingest.api import ews_routes
from ingest.api.app import openapi_document
from ingest.dashboard import routes as dashboard_routes
from ingest.testing import TEST_KEY
from vitalgate.broker import Mosquitto, free_port, wait_port

DOC = openapi_document([ews_routes.OPENAPI_PATHS, dashboard_routes.OPENAPI_PATHS])
schema = schemathesis.openapi.from_dict(DOC)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    broker = Mosquitto(workdir=workdir / "mosquitto")
    broker.workdir.mkdir()  # type: ignore[union-attr]
    broker.start()
    port = free_port()
    env = dict(os.environ, VITALGATE_DATA_DIR=str(workdir / "data"), VITALGATE_MQTT_URL=broker.url,
               VITALGATE_HTTP_HOST="127.0.0.1", VITALGATE_HTTP_PORT=str(port),
               VITALGATE_API_KEY=TEST_KEY, VITALGATE_SQLITE_SYNCHRONOUS="NORMAL")
    env.pop("VITALGATE_CONFIG", None)
    log = (workdir / "ingest.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        broker.stop()


def test_served_document_is_the_tested_one(base_url: str) -> None:
    import json

    with urllib.request.urlopen(base_url + "/openapi.json") as resp:
        served = json.load(resp)
    assert served == json.loads(json.dumps(DOC))


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors(case: schemathesis.Case, base_url: str) -> None:  # type: ignore[type-arg]
    response = case.call(base_url=base_url, headers={"x-api-key": TEST_KEY}, timeout=10)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"

"""Schemathesis against the service's own OpenAPI document, with a key of each scope: no
operation answers 5xx, every keyed operation answers 401 without a valid key and 403 to a
valid key that lacks its scope (ingest.api.auth.ROUTE_SCOPES), and what the admin key gets
conforms to the document (status, content type, schema).

The service runs as a subprocess (``python -m vitalgate ingest``) beside a private Mosquitto;
cases are generated from the same document the service serves at /openapi.json. Bounded:
10 examples per operation, each sent with no key, a wrong key and the four scoped keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest.api import ews_routes
from ingest.api.app import openapi_document
from ingest.api.auth import ADMIN, PUBLIC, required_scope
from ingest.dashboard import routes as dashboard_routes
from tests.support.ingest_service import TEST_KEY
from tests.support.processes import stop
from vitalgate.broker import Mosquitto, free_port, wait_port

DOC = openapi_document([ews_routes.OPENAPI_PATHS, dashboard_routes.OPENAPI_PATHS])
schema = schemathesis.openapi.from_dict(DOC)


SCOPES = ("read", "clinical", "platform", "admin")
#: name → key, made with ``vitalgate keys create`` before the service starts
KEYS: dict[str, str] = {}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    broker = Mosquitto(workdir=workdir / "mosquitto")
    broker.workdir.mkdir()  # type: ignore[union-attr]
    broker.start()
    port = free_port()
    env = dict(os.environ, VITALGATE_DATA_DIR=str(workdir / "data"), VITALGATE_MQTT_URL=broker.url,
               VITALGATE_HTTP_HOST="127.0.0.1", VITALGATE_HTTP_PORT=str(port),
               VITALGATE_API_KEY=TEST_KEY, VITALGATE_SQLITE_SYNCHRONOUS="NORMAL",
               VITALGATE_HTTP_RATE_PER_S="0")  # six requests per case: no 429s
    env.pop("VITALGATE_CONFIG", None)
    for scope in SCOPES:
        made = subprocess.run([sys.executable, "-m", "vitalgate", "keys", "create", f"st-{scope}",
                               "--scope", scope], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        KEYS[scope] = made.stdout.strip()
    log = (workdir / "ingest.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vitalgate", "ingest"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, 10)
        log.close()
        broker.stop()


def test_served_document_is_the_tested_one(base_url: str) -> None:
    import json

    with urllib.request.urlopen(base_url + "/openapi.json") as resp:
        served = json.load(resp)
    assert served == json.loads(json.dumps(DOC))


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_scopes_refused(case: schemathesis.Case, base_url: str) -> None:  # type: ignore[type-arg]
    where = f"{case.method} {case.formatted_path}"
    if case.method.upper() != case.operation.method.upper():  # schemathesis tries other methods
        for scope in SCOPES:
            response = case.call(base_url=base_url, headers={"x-api-key": KEYS[scope]}, timeout=10)
            assert response.status_code < 500, f"{where} ({scope}): {response.text[:300]}"
        return
    need = required_scope(case.method, case.path)
    if need != PUBLIC:
        for bad in (None, "vg_not-a-key"):
            headers = {"x-api-key": bad} if bad else {}
            response = case.call(base_url=base_url, headers=headers, timeout=10)
            assert response.status_code == 401, f"{where} without a valid key: {response.status_code}"
    for scope in SCOPES:
        response = case.call(base_url=base_url, headers={"x-api-key": KEYS[scope]}, timeout=10)
        assert response.status_code < 500, f"{where} ({scope}): {response.text[:300]}"
        if need not in (PUBLIC, scope) and scope != ADMIN:
            assert response.status_code == 403, f"{where}: scope {scope} got {response.status_code}"
        else:
            assert response.status_code not in (401, 403), f"{where} ({scope}): {response.text[:300]}"
        if scope == ADMIN:
            case.validate_response(response, checks=[status_code_conformance,
                                                     content_type_conformance,
                                                     response_schema_conformance])

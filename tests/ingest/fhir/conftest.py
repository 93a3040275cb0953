"""Fixtures of the FHIR tests: a real FHIR server (Medplum's router, tests/support/fhir.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fhir import FhirServer


@pytest.fixture
def fhir_server(tmp_path: Path) -> Iterator[FhirServer]:
    """A FHIR server on a free port, journal in the test's directory; stopped at teardown
    (whatever state the test left it in)."""
    server = FhirServer(tmp_path / "fhir")
    server.start()
    try:
        yield server
    finally:
        server.stop()

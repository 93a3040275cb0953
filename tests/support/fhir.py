"""A real FHIR R4 server for the tests: Medplum's FHIR router and in-memory repository behind
the small Node.js adapter in ``tests/support/fhir_server/`` (see its ``server.mjs``).

``FhirServer`` starts ``node server.mjs`` on a free loopback port with a journal file (so a
stop and a start keep what it stored), waits until ``GET /metadata`` answers, and stops it on
``stop()``, from ``__exit__`` and at exit. On Linux the child also gets a parent-death signal
(``PR_SET_PDEATHSIG``, SIGTERM): a SIGKILLed pytest leaves no server behind. Start servers from
the main thread (the signal follows the thread that started the child).

The packages come from ``npm ci --prefix tests/support/fhir_server`` (``.ci/run`` does it);
nothing is downloaded at test time.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

from vitalgate.broker import free_port, parent_death_signal

SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"
_RUNNING: set[FhirServer] = set()


class FhirServerError(RuntimeError):
    pass


def node_binary() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise FhirServerError("node is not installed (bash .ci/run installs it)")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        raise FhirServerError(f"the test FHIR server's packages are missing: run "
                              f"`npm ci --prefix {SERVER_DIR}` (bash .ci/run does)")
    return node


class FhirServer:
    """One test FHIR server; ``url`` stays the same across ``stop()`` / ``start()``."""

    def __init__(self, workdir: Path, *, token: str | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.journal = workdir / "fhir-store.ndjson"
        self.log_path = workdir / "fhir-server.log"
        self.token = token
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __hash__(self) -> int:
        return id(self)

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [node_binary(), str(SERVER_DIR / "server.mjs"), "--port", str(self.port),
               "--data", str(self.journal)]
        env = {k: v for k, v in os.environ.items() if k != "VITALGATE_TEST_FHIR_TOKEN"}
        if self.token:
            env["VITALGATE_TEST_FHIR_TOKEN"] = self.token
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=SERVER_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=parent_death_signal(signal.SIGTERM), start_new_session=True)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FhirServerError(f"the FHIR server exited with {self.proc.returncode}: "
                                      f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/metadata", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise FhirServerError(f"the FHIR server did not answer within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (the adapter exits at once), then SIGKILL to its process group."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: a server that dies without closing anything."""
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- what it holds

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/fhir+json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + "/" + path.lstrip("/"), data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status), json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"null")

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        status, bundle = self.request("GET", f"{resource_type}?{urlencode(params)}")
        if status != 200:
            raise FhirServerError(f"search {resource_type} {params}: {status} {bundle}")
        return [e["resource"] for e in bundle.get("entry", [])]

    def count(self, resource_type: str, **params: str) -> int:
        status, bundle = self.request("GET", f"{resource_type}?{urlencode({**params, '_count': '0'})}")
        if status != 200:
            raise FhirServerError(f"count {resource_type} {params}: {status} {bundle}")
        return int(bundle["total"])

    def fail_next(self, status: int, count: int = 1) -> None:
        """The next ``count`` FHIR requests are answered with ``status`` (a failing server)."""
        self.request("POST", "$test/fail", {"status": status, "count": count})

    def stats(self) -> dict[str, int]:
        return dict(self.request("GET", "$test/stats")[1])


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()

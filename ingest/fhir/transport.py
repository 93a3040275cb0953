"""Delivery of units to a FHIR server: one transaction Bundle per POST, answers classified.

``FhirTransport`` POSTs a transaction Bundle to the server's base URL (``VITALGATE_FHIR_URL``)
with an optional bearer token (``VITALGATE_FHIR_TOKEN``: sent in the Authorization header, never
logged, never in an error text). What an answer means (the same table as the Cexup delivery,
:func:`ingest.outbox.verdict_of`):

* 2xx with a ``transaction-response`` Bundle of one entry per entry sent, each ``response.status``
  2xx: delivered (``201`` created, ``200`` an identical resource was already there: a resend
  absorbed by conditional create). A 2xx whose body is not such a Bundle, or carries a 5xx entry,
  is retried (conditional creates make the resend harmless); a 4xx entry fails the units;
* 408 and 429 (with ``Retry-After`` honoured), 5xx, a refused connection, a reset, a timeout:
  retried;
* any other 4xx (a resource the server's validator refuses, a wrong token): failed for good.

A transaction is all or nothing, so one unit the server refuses would fail the units batched with
it: :meth:`FhirTransport.send` then sends those units one by one, so only the bad one fails
("one bad item never fails its batch").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import SecretStr

from ingest.fhir.bundle import DEFAULT_BATCH, pack, transaction
from ingest.fhir.resources import Json, Unit
from ingest.outbox import Verdict, retry_after_s
from ingest.outbox import verdict_of as classify

log = logging.getLogger(__name__)

#: the largest answer read from the server (a transaction-response echoes every resource: a
#: Bundle of 8 Observations is ~20 KiB; 16 MiB is far beyond any honest answer).
MAX_RESPONSE_BYTES: Final = 16 * 2**20
#: characters of a refusal's text kept in ``Attempt.detail`` (an OperationOutcome's first issues).
MAX_DETAIL_CHARS: Final = 300
#: a POST taking longer is abandoned and retried: a healthy server commits a small transaction
#: in well under a second; 30 s rides out a slow validator, a GC pause or a proxy.
DEFAULT_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """What became of one unit in one delivery attempt."""

    verdict: Verdict
    status: int | None  #: HTTP status (None: no answer)
    detail: str = ""
    retry_after_s: float | None = None
    created: int = 0  #: entries the server created (201)
    existing: int = 0  #: entries it already had (200: absorbed resends, known Patients/Devices)


class Transport(Protocol):
    """A channel's sender: delivers units, tells what became of each (aligned with ``units``)."""

    async def send(self, units: Sequence[Unit]) -> list[Attempt]: ...


def redact_url(url: str) -> str:
    """The URL without user info (for logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _outcome_text(body: Any) -> str:
    """The first issues of an OperationOutcome (or the text), bounded."""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = []
        for issue in body.get("issue", [])[:3]:
            if isinstance(issue, dict):
                details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
                text = str((details or {}).get("text") or issue.get("diagnostics") or issue.get("code"))
                where = issue.get("expression") or issue.get("location")
                texts.append(f"{text} ({', '.join(map(str, where))})" if where else text)
        return "; ".join(texts)[:MAX_DETAIL_CHARS]
    return (body if isinstance(body, str) else json.dumps(body))[:MAX_DETAIL_CHARS]


def judge(status: int, body: Any, sent: int, retry_after: float | None = None) -> Attempt:
    """Classify one answer to a transaction of ``sent`` entries."""
    verdict = classify(status)
    if verdict is not Verdict.DELIVERED:
        return Attempt(verdict, status, _outcome_text(body), retry_after)
    if not (isinstance(body, dict) and body.get("resourceType") == "Bundle"
            and body.get("type") == "transaction-response"
            and isinstance(body.get("entry"), list) and len(body["entry"]) == sent):
        return Attempt(Verdict.RETRY_ITEM, status,
                       f"a {status} answer that is not a transaction-response of {sent} entries")
    created = existing = 0
    for i, entry in enumerate(body["entry"]):
        raw = entry.get("response", {}).get("status") if isinstance(entry, dict) else None
        code = str(raw or "").strip().split(" ")[0]
        if not code.isdigit():
            return Attempt(Verdict.RETRY_ITEM, status, f"entry {i} has no response status")
        entry_status = int(code)
        if entry_status == 201:
            created += 1
        elif 200 <= entry_status < 300:
            existing += 1
        else:
            entry_verdict = classify(entry_status)
            text = _outcome_text(entry.get("response", {}).get("outcome"))
            return Attempt(entry_verdict, entry_status, f"entry {i}: {entry_status} {text}")
    return Attempt(Verdict.DELIVERED, status, "", None, created, existing)


class FhirTransport:
    """POSTs units as transaction Bundles of at most ``max_entries`` entries to ``base_url``."""

    def __init__(self, base_url: str, *, token: SecretStr | None = None,
                 max_entries: int = DEFAULT_BATCH, timeout_s: float = DEFAULT_TIMEOUT_S,
                 session: aiohttp.ClientSession | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"FHIR URL must be http(s)://host[:port]/base, got {redact_url(base_url)!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.max_entries = max_entries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None
        #: every bundle POSTed and how it ended, for the metrics (verdict → count)
        self.counts: dict[str, int] = {}
        log.info("FHIR delivery to %s (transaction Bundles of at most %d entries%s)",
                 redact_url(self.base_url), max_entries, ", bearer token" if token else "")

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
        if self._token is not None and self._token.get_secret_value():
            headers["authorization"] = f"Bearer {self._token.get_secret_value()}"
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._own_session = True
        return self._session

    async def post(self, bundle: Json) -> Attempt:
        """One POST of one transaction Bundle."""
        sent = len(bundle["entry"])
        data = json.dumps(bundle, separators=(",", ":")).encode()
        try:
            async with self._get_session().post(self.base_url, data=data, headers=self._headers(),
                                                timeout=self.timeout) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):  # to EOF, bounded
                    size += len(chunk)
                    chunks.append(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        break
                raw = b"".join(chunks)
                status = resp.status
                after = retry_after_s(resp.headers.get("Retry-After"), time.time_ns() // 10**6)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            attempt = Attempt(Verdict.RETRY_ITEM, None, f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS])
            self._count(attempt)
            return attempt
        if len(raw) > MAX_RESPONSE_BYTES:
            attempt = Attempt(Verdict.RETRY_ITEM, status, f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        else:
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw[:MAX_DETAIL_CHARS].decode("utf-8", "replace")
            attempt = judge(status, body, sent, after)
        self._count(attempt)
        return attempt

    def _count(self, attempt: Attempt) -> None:
        self.counts[attempt.verdict.value] = self.counts.get(attempt.verdict.value, 0) + 1

    async def send(self, units: Sequence[Unit]) -> list[Attempt]:
        """Deliver ``units`` (in their order) in as few Bundles as ``max_entries`` allows; a
        Bundle refused for good is split and its units sent alone, so only a bad unit fails."""
        out: list[Attempt] = []
        batches = pack(units, self.max_entries)
        for n, batch in enumerate(batches):
            attempt = await self.post(transaction(batch))
            if attempt.verdict is Verdict.FAILED and len(batch) > 1:
                for unit in batch:
                    out.append(await self.post(transaction([unit])))
                continue
            out += [attempt] * len(batch)
            if attempt.verdict in (Verdict.RETRY_ITEM, Verdict.RETRY_ALL):
                # the server is unwell: the later units wait too (and keep their order behind
                # this one); none of them was sent
                out += [attempt] * sum(len(b) for b in batches[n + 1:])
                break
        return out

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
        await asyncio.sleep(0)

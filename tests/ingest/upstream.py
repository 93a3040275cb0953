"""A local stand-in for the Cexup platform's EWS endpoint, on a real loopback port.

``Upstream`` serves ``POST /ews`` (checks ``x-api-key``, records every request) and
``GET /ews/{user_code}`` (the last accepted body). It can be told to answer with a status
(503, 500, 429 with Retry-After, 408, 400, ...) for the next N requests or until told otherwise,
to be slow, or to be down (its port closed, then reopened on the same port).

    async with Upstream() as up:
        outbox = Outbox(db, upstream_url=up.url, api_key=up.api_key)
        up.fail(503, times=3)        # the next 3 POSTs get 503
        up.go_down(); ...; await up.come_up()
        assert [b["point"] for b in up.accepted_for("AMSe5Sn8Gkxj7")] == [...]
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vitalgate.broker import free_port


@dataclass(frozen=True)
class Request:
    """One POST /ews as received."""

    body: Any  # parsed JSON (or the raw text when not JSON)
    api_key: str | None
    status: int  # what the stub answered


@dataclass
class _Plan:
    status: int
    times: int | None  # None: until cleared
    retry_after: str | None = None
    body: Any = None


@dataclass
class Upstream:
    api_key: str = "test-key"
    #: answer success with code as the string "200" (as some seed pages show) instead of 200.
    code_as_string: bool = False
    requests: list[Request] = field(default_factory=list)
    accepted: list[Any] = field(default_factory=list)
    delay_s: float = 0.0
    port: int = 0
    _plans: deque[_Plan] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- control

    def fail(self, status: int, *, times: int | None = 1, retry_after: str | None = None,
             body: Any = None) -> None:
        """The next ``times`` POSTs (None: all, until :meth:`heal`) are answered with ``status``."""
        self._plans.append(_Plan(status, times, retry_after, body))

    def heal(self) -> None:
        self._plans.clear()

    def accepted_for(self, user_code: str) -> list[Any]:
        return [b for b in self.accepted if isinstance(b, dict) and b.get("user_code") == user_code]

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/ews", self._post)
        app.router.add_get("/ews/{user_code}", self._get)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        if self.port == 0:
            self.port = free_port()
        await self.come_up()
        return self

    async def come_up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def go_down(self) -> None:
        """Close the port: clients get connection refused."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        await self.go_down()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Upstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- handlers

    def _respond(self, status: int, message: str, data: Any = None,
                 headers: dict[str, str] | None = None) -> web.Response:
        code: int | str = str(status) if self.code_as_string else status
        body = {"code": code, "success": 200 <= status < 300, "message": message}
        if data is not None:
            body["data"] = data
        return web.json_response(body, status=status, headers=headers)

    async def _post(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        key = request.headers.get("x-api-key")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if key != self.api_key:
            self.requests.append(Request(body, key, 401))
            return self._respond(401, "invalid x-api-key")
        if self._plans:
            plan = self._plans[0]
            if plan.times is not None:
                plan.times -= 1
                if plan.times <= 0:
                    self._plans.popleft()
            self.requests.append(Request(body, key, plan.status))
            if 200 <= plan.status < 300 and plan.body is None:
                self.accepted.append(body)
            headers = {"Retry-After": plan.retry_after} if plan.retry_after else None
            if plan.body is not None:
                return web.json_response(plan.body, status=plan.status, headers=headers)
            return self._respond(plan.status, f"stub answers {plan.status}", headers=headers)
        self.requests.append(Request(body, key, 200))
        self.accepted.append(body)
        return self._respond(200, "Ok", data=body)

    async def _get(self, request: web.Request) -> web.Response:
        mine = self.accepted_for(request.match_info["user_code"])
        if not mine:
            return self._respond(404, "no EWS for this patient")
        return self._respond(200, "Ok", data=mine[-1])


@dataclass
class FakeTime:
    """An injected clock (epoch ms) and a sleep that advances it instead of waiting, so retries
    over a "minute" of outage take milliseconds of real time. ``sleeps`` records every request."""

    now: int = 1_700_000_000_000
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += int(ms)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += int(seconds * 1000)
        await asyncio.sleep(0.001)  # let the loop (and the test) run

"""A local BotSession app implementing ``docs/botsession.md`` on 127.0.0.1, with scripted replies and faults.

It checks auth the way a contract-version-2 app must (bearer token, and the ``v2`` of ``X-Luna-Signature``: an
HMAC over ``"<t>.<METHOD>.<path>." + raw body`` within a 300 s window) with its own code, not Luna's, so a signing
bug cannot cancel itself out; ``accept_v1=True`` makes it a version-1 app that checks ``v1`` (``"<t>." + body``)
only. A ``spoken`` call must carry a known ``reason``. Every request is recorded. Replies are queued with
``fake.script(Reply(...))``; an unscripted request gets ``DEFAULT_REPLY``.

``serve`` (start an aiohttp app on a free loopback port) is shared with the other HTTP fakes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

# Faults: ``rate_limit`` 429 + Retry-After · ``http_500`` · ``slow_first_byte`` no headers until the client gives
# up · ``stall`` the first delta then nothing · ``malformed`` an event whose data is not JSON · ``error_event``
# the first delta then an ``error`` event.
Fault = Literal["rate_limit", "http_500", "slow_first_byte", "stall", "malformed", "error_event"]
REPLAY_WINDOW_S = 300
SPOKEN_REASONS = {"done", "interrupted", "merged", "failed", "stale"}


@dataclass
class Reply:
    """One scripted answer: the deltas streamed, the usage reported, or a fault instead."""

    deltas: Sequence[str] = ()
    input_tokens: int = 42
    output_tokens: int = 7
    fault: Fault | None = None
    retry_after: str = "7"
    delay_s: float = 0.005  # between events, so deltas really arrive one by one
    # If set, the last delta (and ``done``) is sent only once the test sets this event.
    hold_last: asyncio.Event | None = None


DEFAULT_REPLY = Reply(deltas=("Hello", " there."))


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 at a free port; yields ``http://127.0.0.1:<port>``.

    Handlers are cancelled when their client disconnects, so a fault that waits forever ends with its test.
    """
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def sse(event: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


@dataclass
class FakeBotSession:
    token: str | None = None
    hmac_secret: str | None = None
    accept_v1: bool = False  # behave as an app on contract version 1 (body-only signature)
    spoken_status: int = 204
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    spoken: list[Recorded] = field(default_factory=list)
    auth_failures: list[str] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)  # a client closed a stream before ``done``
    _script: deque[Reply] = field(default_factory=deque)

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/luna/reply", self._reply)
        app.router.add_post("/luna/reply/spoken", self._spoken)
        return app

    def _auth_problem(self, request: web.Request, body: bytes) -> str | None:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return "bad_token"
        if self.hmac_secret is not None:
            parts = dict(p.split("=", 1) for p in request.headers.get("X-Luna-Signature", "").split(",") if "=" in p)
            scheme = "v1" if self.accept_v1 else "v2"
            ts, mac = parts.get("t", ""), parts.get(scheme, "")
            if not ts or not mac:
                return "missing_signature"
            if not ts.isdigit() or abs(time.time() - int(ts)) > REPLAY_WINDOW_S:
                return "stale_signature"
            signed = f"{ts}." if self.accept_v1 else f"{ts}.{request.method}.{request.path_qs}."
            want = hmac.new(self.hmac_secret.encode(), signed.encode() + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, mac):
                return "bad_signature"
        return None

    async def _accept(self, request: web.Request, into: list[Recorded]) -> web.Response | None:
        body = await request.read()
        into.append(Recorded(request.path, dict(request.headers), body))
        if problem := self._auth_problem(request, body):
            self.auth_failures.append(problem)
            return web.json_response({"error": {"code": problem, "message": "authentication failed"}}, status=401)
        return None

    async def _spoken(self, request: web.Request) -> web.StreamResponse:
        if refused := await self._accept(request, self.spoken):
            return refused
        body = self.spoken[-1].json
        if not self.accept_v1 and body.get("reason") not in SPOKEN_REASONS:
            return web.json_response({"error": {"code": "bad_reason", "message": "unknown reason"}}, status=400)
        return web.Response(status=self.spoken_status)

    def closing_calls(self) -> dict[str, list[tuple[str, str]]]:
        """(spoken_text, reason) of every spoken call, by turn: the contract wants exactly one per turn."""
        out: dict[str, list[tuple[str, str]]] = {}
        for r in self.spoken:
            out.setdefault(r.json["turn_id"], []).append((r.json["spoken_text"], r.json.get("reason")))
        return out

    async def _reply(self, request: web.Request) -> web.StreamResponse:
        if refused := await self._accept(request, self.requests):
            return refused
        reply = self._script.popleft() if self._script else DEFAULT_REPLY
        if reply.fault == "rate_limit":
            body = {"error": {"code": "rate_limited", "message": "slow down"}}
            return web.json_response(body, status=429, headers={"Retry-After": reply.retry_after})
        if reply.fault == "http_500":
            return web.json_response({"error": {"code": "internal", "message": "model crashed"}}, status=500)
        if reply.fault == "slow_first_byte":
            await asyncio.Event().wait()  # until the client disconnects
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            await self._stream(resp, reply)
        except asyncio.CancelledError:
            self.hung_up.set()
            raise
        return resp

    async def _stream(self, resp: web.StreamResponse, reply: Reply) -> None:
        deltas = list(reply.deltas)
        if reply.fault == "malformed":
            await resp.write(b"event: delta\ndata: {not json\n\n")
            return
        for i, text in enumerate(deltas):
            if i == len(deltas) - 1 and reply.hold_last is not None:
                await reply.hold_last.wait()
            await resp.write(sse("delta", {"text": text}))
            await asyncio.sleep(reply.delay_s)
            if reply.fault == "stall":
                await asyncio.Event().wait()
            if reply.fault == "error_event":
                await resp.write(sse("error", {"code": "model_overloaded", "message": "try later"}))
                return
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
        await resp.write(sse("done", {"usage": usage}))


@asynccontextmanager
async def fake_botsession(
    token: str | None = None, hmac_secret: str | None = None, *, accept_v1: bool = False
) -> AsyncIterator[FakeBotSession]:
    """A running fake; ``fake.url`` is the reply endpoint (``/spoken`` is under it)."""
    fake = FakeBotSession(token=token, hmac_secret=hmac_secret, accept_v1=accept_v1)
    async with serve(fake.app()) as base:
        fake.url = f"{base}/luna/reply"
        yield fake

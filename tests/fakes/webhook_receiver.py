"""A local webhook receiver on 127.0.0.1, as the app would write one: it verifies ``X-Luna-Signature`` over the
raw body (its own code, not Luna's, so a signing bug cannot cancel itself out), refuses stale timestamps and bad
signatures with 401, drops ids it already handled, and answers 500 on the attempts the test scripts to fail."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WINDOW_S = 300


@dataclass
class Receiver:
    secret: bytes
    # (attempt number from 1, event) -> the status to answer instead of accepting it
    fail: Callable[[int, dict[str, Any]], int | None] = lambda attempt, event: None
    attempts: int = 0
    refused: list[str] = field(default_factory=list)  # why a request was refused (401)
    events: list[dict[str, Any]] = field(default_factory=list)  # accepted, each id once, in arrival order
    duplicates: int = 0
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        return app

    def _signed(self, header: str, path: str, body: bytes) -> str | None:
        """Why the signature is refused, or None (``v2``: timestamp, method, path with query, raw body)."""
        try:
            parts = dict(part.split("=", 1) for part in header.split(","))
            t, v2 = parts["t"], parts["v2"]
        except (KeyError, ValueError):
            return "malformed signature header"
        if abs(time.time() - int(t)) > WINDOW_S:
            return "stale timestamp"
        expected = hmac.new(self.secret, f"{t}.POST.{path}.".encode() + body, hashlib.sha256).hexdigest()
        return None if hmac.compare_digest(expected, v2) else "bad signature"

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        why = self._signed(request.headers.get("X-Luna-Signature", ""), request.raw_path, body)
        if why is not None:
            self.refused.append(why)
            return web.json_response({"error": why}, status=401)
        event = json.loads(body)
        assert request.headers["X-Luna-Webhook-Id"] == event["id"]
        status = self.fail(self.attempts, event)
        if status is not None:
            return web.json_response({"error": "scripted failure"}, status=status, headers={"Retry-After": "0"})
        async with self._arrived:
            if any(e["id"] == event["id"] for e in self.events):
                self.duplicates += 1
            else:
                self.events.append(event)
            self._arrived.notify_all()
        return web.Response(status=204)

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], limit_s: float = 20) -> None:
        async with asyncio.timeout(limit_s), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.events))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

"""The dispatcher's report endpoint reads bodies with the API's strict reader: whole, bounded, not too deep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import free_port
from luna_voice.api.errors import AppRunner, json_errors
from luna_voice.scale.internal import FLEET, MAX_REPORT, internal_routes


class Reports:
    """Stands in for the fleet (not under test): keeps what the route handed it."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def report(self, stay_id: str, secret: str, status: dict[str, Any]) -> bool:
        self.got.append(status)
        return True


@pytest.fixture
async def dispatcher() -> AsyncIterator[tuple[str, Reports]]:
    reports = Reports()
    app = web.Application(middlewares=[json_errors])
    app[FLEET] = reports  # type: ignore[assignment]
    app.add_routes(internal_routes)
    runner = AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/internal/stays/s1/report", reports
    await runner.cleanup()


async def _slowly(data: bytes, size: int = 1024, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    """A chunked body; with ``pause_s`` a slow sender (a bot machine on a busy link), not synchronisation."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
        if pause_s:
            await asyncio.sleep(pause_s)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"[" * 30_000 + b"]" * 30_000, 400, "invalid_json"),  # json.loads overflowed the stack: a 500
        (b'{"pad": "' + b"x" * (MAX_REPORT + 10) + b'"}', 413, "body_too_large"),  # chunked: no length to check
    ],
)
async def test_bad_reports_get_a_clear_error(dispatcher, body, status, code):
    url, reports = dispatcher
    headers = {"Authorization": "Bearer s", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(url, data=_slowly(body, 64 * 1024), headers=headers) as resp:
        assert resp.status == status and (await resp.json())["error"]["code"] == code
    assert reports.got == []


async def test_a_report_sent_in_small_chunks_arrives_whole(dispatcher):
    url, reports = dispatcher
    status = b'{"state": "joined", "turns": [' + b",".join([b'{"id": "t1", "text": "hello"}'] * 2000) + b"]}"
    headers = {"Authorization": "Bearer s", "Content-Type": "application/json"}
    body = _slowly(status, 8 * 1024, pause_s=0.01)
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    assert len(reports.got[0]["turns"]) == 2000

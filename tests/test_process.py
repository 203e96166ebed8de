"""The service as a process: it prints the demo URL, and SIGTERM makes every bot leave and Chromium exit with
no orphan process left behind."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from conftest import free_port
from proctools import alive, descendants, start_serve
from roomtools import until

pytestmark = pytest.mark.browser


async def test_sigterm_makes_bots_leave_and_chromium_exit(tmp_path):
    port = free_port()
    proc = await start_serve(port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(up, 30, "the service to be ready")
            async with http.post(f"{url}/rooms/proc/luna") as resp:
                assert resp.status == 201

            async def joined() -> bool:
                async with http.get(f"{url}/rooms/proc/luna") as resp:
                    return (await resp.json())["state"] == "joined"

            await until(joined, 30, "Luna to join")
        browser_pids = descendants(proc.pid)
        assert browser_pids, "Chromium should run under the service"
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()  # type: ignore[union-attr]
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "/demo/rooms/demo" in output
    assert "sub_code=shutdown" in output and "state=ended" in output
    assert [p for p in browser_pids if alive(p)] == []

"""The fault suite: a real Chromium for Luna and for the people, then the things that go wrong in production —
a renderer killed, the browser killed, SIGTERM with everything connected, and summon/dismiss churn.

Run alone with ``./dev test -m faults``, which also runs the page-level faults that need no browser (a late signal
from an old page, junk from the page, summon during dismiss, streams that end), marked in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import aiohttp
import numpy as np
import pytest
from playwright.async_api import BrowserContext

from conftest import CHROMIUM, free_port
from luna_voice.bots.host import ChromiumHost
from proctools import alive, chromium_browsers, descendants, open_fds, renderers, start_serve
from roomtools import active_seconds, human_page, speech_file, until

pytestmark = [pytest.mark.browser, pytest.mark.faults]


async def luna_service(start_service, **settings):  # type: ignore[no-untyped-def]
    """The service, and the pid of Luna's own Chromium (launched at start-up, before any person's browser)."""
    before = chromium_browsers()
    svc = await start_service(**settings)
    (browser,) = chromium_browsers() - before
    return svc, browser


async def status(svc, room: str) -> dict:  # type: ignore[no-untyped-def]
    return (await svc.call("GET", f"/rooms/{room}/luna"))[1]


async def joined(svc, room: str, rejoins: int = 0) -> dict:  # type: ignore[no-untyped-def]
    async def check():
        body = await status(svc, room)
        assert body["state"] not in ("ended", "failed"), body
        return body if body["state"] == "joined" and len(body["rejoins"]) == rejoins else None

    return await until(check, 45, f"Luna joined in {room} after {rejoins} rejoins")


async def ready(svc) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.call("GET", "/readyz"))[0] == 200


async def test_a_killed_renderer_is_rejoined_and_luna_is_heard_again(start_service, launch_human, tmp_path):
    svc, browser = await luna_service(start_service)
    assert (await svc.call("POST", "/rooms/crash/luna", json={"backend": "local", "policy": "always"}))[0] == 201
    await joined(svc, "crash")
    await human_page(launch_human, svc.url, "crash", "Ann", None)  # someone stays in the room throughout
    for pid in renderers(browser):
        os.kill(pid, signal.SIGKILL)

    body = await joined(svc, "crash", rejoins=1)
    assert body["sub_code"] is None and body["reason"] is None
    assert body["rejoins"][0]["cause"] and body["rejoins"][0]["at"] > time.time() - 120

    said = "Hello Luna, what is the weather like today?"
    bob = await human_page(launch_human, svc.url, "crash", "Bob", speech_file(tmp_path, said, lead_silence_s=4.0))
    await bob.evaluate("lunaDemo.startRecording()")

    async def answered():
        turns = [t for t in (await status(svc, "crash"))["turns"] if t["state"] == "done"]
        return turns[0] if turns else None

    turn = await until(answered, 90, "Luna to hear Bob and answer through her new page", step=0.5)
    assert turn["speaker"]["name"] == "Bob"
    async with svc.http.get(svc.url + "/metrics") as resp:
        assert "luna_bot_rejoins_total 1.0" in await resp.text()
    rec = await bob.evaluate("lunaDemo.stopRecording()")
    heard = np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16)
    assert active_seconds(heard, rec["sampleRate"]) >= 0.5
    assert (await status(svc, "crash"))["state"] == "joined"


async def test_a_killed_browser_is_relaunched_and_every_bot_rejoins(start_service):
    svc, browser = await luna_service(start_service)
    for room in ("k1", "k2"):
        assert (await svc.call("POST", f"/rooms/{room}/luna", json={"backend": "local"}))[0] == 201
    for room in ("k1", "k2"):
        await joined(svc, room)
    os.kill(browser, signal.SIGKILL)
    for room in ("k1", "k2"):
        body = await joined(svc, room, rejoins=1)
        assert body["sub_code"] is None
        assert body["rejoins"][0]["cause"]
    assert await ready(svc)
    assert not alive(browser) and chromium_browsers() - {browser}


async def test_readiness_recovers_after_a_browser_crash_with_no_bot(start_service):
    svc, browser = await luna_service(start_service)
    assert await ready(svc)
    os.kill(browser, signal.SIGKILL)

    async def relaunched() -> bool:
        return bool(chromium_browsers() - {browser}) and not alive(browser) and await ready(svc)

    await until(relaunched, 30, "a new browser and /readyz to recover without a summon")


async def test_a_page_that_fails_to_open_leaves_no_browser_context():
    contexts: list[BrowserContext] = []
    closed: list[BrowserContext] = []

    async def record(context: BrowserContext, _url: str) -> None:
        contexts.append(context)
        context.on("close", lambda c: closed.append(c))

    host = ChromiumHost(CHROMIUM, prepare_context=record)
    try:
        with pytest.raises(Exception, match="ERR_CONNECTION_REFUSED"):
            await host.open(f"http://127.0.0.1:{free_port()}/bot/bot.html", on_crash=lambda: None)
        assert len(contexts) == 1 and closed == contexts
    finally:
        await host.close()


async def test_thirty_summon_dismiss_cycles_stay_bounded(start_service):
    svc, browser = await luna_service(start_service, ended_retention_count=5)

    async def cycle(i: int) -> None:
        room = f"cycle-{i}"
        assert (await svc.call("POST", f"/rooms/{room}/luna", json={"backend": "local"}))[0] == 201
        await joined(svc, room)
        assert (await svc.call("DELETE", f"/rooms/{room}/luna"))[1]["state"] == "ended"

    await cycle(-1)  # warm: models loaded, the browser's helper processes up
    fds, chromium = open_fds(), len(descendants(browser))
    for i in range(30):
        await cycle(i)
    rooms = (await svc.call("GET", "/rooms"))[1]["rooms"]
    assert len(rooms) <= 5
    assert open_fds() <= fds + 10, (fds, open_fds())
    # A closed context's processes exit on their own schedule: wait (bounded) for the count to settle; a leak
    # of one process per cycle would be 30 over and never settle.

    async def settled() -> bool:
        return len(descendants(browser)) <= chromium + 2

    await until(settled, 15, "Chromium's processes to settle")
    assert not [r for r in rooms if r["state"] not in ("ended", "failed")]


async def test_sigterm_with_open_streams_and_people_exits_in_time(tmp_path, launch_human):
    port = free_port()
    proc = await start_serve(port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    output = b""
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> dict | None:
                try:
                    async with http.get(url + path) as resp:
                        return await resp.json() if resp.status == 200 else None
                except aiohttp.ClientError:
                    return None

            await until(lambda: get("/readyz"), 30, "the service to be ready")
            async with http.post(f"{url}/rooms/term/luna") as resp:
                assert resp.status == 201

            async def luna_joined() -> bool:
                body = await get("/rooms/term/luna")
                return body is not None and body["state"] == "joined"

            await until(luna_joined, 30, "Luna to join")
            people = [await human_page(launch_human, url, "term", name, None) for name in ("Ann", "Bob")]
            streams = [await http.get(f"{url}/rooms/term/luna/events{q}") for q in ("", "?follow=room")]
            browser_pids = descendants(proc.pid)
            assert browser_pids, "Chromium should run under the service"

            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            reader = asyncio.create_task(proc.stdout.read())  # type: ignore[union-attr]
            try:
                assert await asyncio.wait_for(proc.wait(), 20) == 0
            finally:
                took = time.monotonic() - sent
                if proc.returncode is None:
                    proc.kill()
                output = await asyncio.wait_for(reader, 10)
                print(output.decode()[-6000:])
            lasts = []
            for stream in streams:
                events = [json.loads(line[6:]) async for line in stream.content if line.startswith(b"data: ")]
                lasts.append(events[-1])
            for page in people:
                assert "service stopping" in (await page.text_content("#status") or "")  # people are told why
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert took < 15, f"SIGTERM took {took:.1f} s"
    assert lasts[0]["type"] == "status" and lasts[0]["status"]["sub_code"] == "shutdown"
    assert (lasts[1]["type"], lasts[1]["reason"]) == ("closed", "service stopping")
    assert b"sub_code=shutdown" in output
    assert [p for p in browser_pids if alive(p)] == []

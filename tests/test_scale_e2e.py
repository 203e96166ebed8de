"""Scale-out end to end: the dispatcher (LUNA_BOT_HOST=fly) + the fake Fly, whose machines run the real
``luna-voice bot``, + a person's page in a local room.

Luna, in the spawned bot process, hears the person and answers; killing that process is ``failed/crashed`` within
seconds and the stay restarts on a fresh machine; a restarted dispatcher still answers GET and DELETE. The cap's
503 is checked with stand-in bot machines (``tests/fakes/bot_machine.py``), which need no browser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from fakes.bot_machine import SAID as STAND_IN_SAID
from fakes.fly_machines import FakeFlyMachines, free_port
from luna_voice.api.port import LunaService
from luna_voice.config import Settings
from luna_voice.providers.base import PIPELINE_RATE
from luna_voice.scale.service import DispatcherService
from luna_voice.scale.settings import FlySettings
from roomtools import active_seconds, human_page, luna_quiet_at, speech_file, until
from speech import words_match

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.fly.io/luna-voice:deployment-e2e"
PROVIDER_SECRET = "botsession-secret-that-must-not-leak"
STAND_IN = (sys.executable, "-m", "tests.fakes.bot_machine")
SAID = "Hello there, what is the weather like today?"


@dataclass
class Dispatcher:
    url: str
    service: DispatcherService
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.service.stop()
        await self.runner.cleanup()


StartDispatcher = Callable[..., Awaitable[Dispatcher]]


@pytest.fixture
async def fly(tmp_path: Path) -> AsyncIterator[FakeFlyMachines]:
    image_env = {  # the image's ENV and the bots app's secrets, offline engines
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "LUNA_LOCAL_ICE": "loopback",
        "LUNA_STT_PROVIDER": "whisper",
        "LUNA_LLM_PROVIDER": "demo",
        "LUNA_TTS_PROVIDER": "offline",
    }
    fake = FakeFlyMachines(
        images={IMAGE: ["luna-voice", "serve"]},
        base_env=image_env,
        secrets_env={"LUNA_BOTSESSION_TOKEN": PROVIDER_SECRET},
        log_dir=tmp_path,
    )
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def start_dispatcher(fly: FakeFlyMachines) -> AsyncIterator[StartDispatcher]:
    port = free_port()
    running: list[Dispatcher] = []

    async def start(
        bot_cmd: tuple[str, ...] | None = None, api_token: str | None = None, **fly_overrides: Any
    ) -> Dispatcher:
        settings = Settings(
            _env_file=None,
            host="127.0.0.1",
            port=port,
            local_ice="loopback",
            default_backend="local",
            api_token=api_token,
        )
        fly_settings = FlySettings(
            _env_file=None, **fly.dispatcher_settings(port, IMAGE, **{"pool_size": 1, **fly_overrides})
        )
        service = DispatcherService(settings, fly_settings, address=fly.address, bot_cmd=bot_cmd)
        runner = web.AppRunner(service.app(), shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        running.append(Dispatcher(f"http://127.0.0.1:{port}", service, runner))
        return running[-1]

    yield start
    for d in running:
        await d.stop()


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


@pytest.mark.browser
async def test_luna_on_her_own_machine_hears_answers_survives_a_crash_and_a_dispatcher_restart(
    fly, start_dispatcher, start_service, launch_human, tmp_path
):
    # The local room's hub runs apart from the dispatcher (as an RTK meeting does), so it outlives its restart.
    room = await start_service()
    d = await start_dispatcher(bot_cmd=("luna-voice", "bot"), local_room_url=room.url)
    async with aiohttp.ClientSession() as http:
        status, body, _ = await call(http, "POST", f"{d.url}/rooms/e2e/luna", json={"backend": "local"})
        assert status == 201, body
        first_bot = body["bot_id"]

        async def state(want: str) -> dict[str, Any] | None:
            _, b, _ = await call(http, "GET", f"{d.url}/rooms/e2e/luna")
            return b if b["state"] == want else None

        joined = await until(lambda: state("joined"), 60, "Luna to join from her machine")
        machine = joined["machine"]["id"]
        assert fly.calls["start"] == 1  # the warm machine, not a new one

        page = await human_page(launch_human, room.url, "e2e", "Alice", speech_file(tmp_path, SAID, lead_silence_s=4.0))
        await page.evaluate("lunaDemo.startRecording()")

        async def answered() -> dict[str, Any] | None:
            """Alice's words heard (over one or more turns, as a loaded machine may split them) and answered."""
            _, b, _ = await call(http, "GET", f"{d.url}/rooms/e2e/luna")
            turns = [t for t in b.get("turns", []) if t["speaker"]["name"] == "Alice"]
            heard = " ".join(t["heard_text"] or "" for t in turns)
            done = [t for t in turns if t["state"] == "done"]
            return done[-1] if done and words_match(SAID, heard) else None

        turn = await until(answered, 90, "Luna to hear Alice and answer", step=0.5)
        assert "Alice" in turn["reply_text"]
        await luna_quiet_at(page)  # the end of her voice has crossed WebRTC into Alice's page
        rec = await page.evaluate("lunaDemo.stopRecording()")
        heard = np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16)
        assert active_seconds(heard, PIPELINE_RATE) >= 0.5 * turn["reply_audio_s"]

        # Say and the transcript go through the dispatcher to the bot's machine.
        status, said, _ = await call(http, "POST", f"{d.url}/rooms/e2e/luna/say", json={"text": "Welcome, Alice."})
        assert status == 202 and said["say_id"], said
        status, doc, _ = await call(http, "GET", f"{d.url}/rooms/e2e/luna/transcript")
        assert status == 200, doc
        assert any(line["speaker"] == "Alice" and not line["luna"] for line in doc["lines"]), doc
        assert any(line["luna"] and line["kind"] == "reply" for line in doc["lines"]), doc
        async with http.get(f"{d.url}/rooms/e2e/luna/transcript?format=vtt") as resp:
            assert resp.status == 200 and (await resp.text()).startswith("WEBVTT")

        # Events come through the dispatcher, from the bot's machine.
        async with http.get(f"{d.url}/rooms/e2e/luna/events") as resp:
            line = await resp.content.readline()
        first = json.loads(line.removeprefix(b"data: "))
        assert first["type"] == "status" and first["bot_id"] == first_bot

        # Provider keys never show; the Fly token never reaches a bot machine.
        _, status_doc, _ = await call(http, "GET", f"{d.url}/rooms/e2e/luna")
        assert PROVIDER_SECRET not in json.dumps(status_doc)
        proc = fly.machines[machine].proc
        assert proc is not None and fly.token.encode() not in _environ(proc.pid)

        # The bot machine dies: failed/crashed within seconds, then a restart on a fresh machine.
        killed = time.monotonic()
        fly.kill(machine)

        async def restarted() -> dict[str, Any] | None:
            _, b, _ = await call(http, "GET", f"{d.url}/rooms/e2e/luna")
            prev = b.get("restarted_from") or {}
            return b if prev.get("bot_id") == first_bot and prev.get("sub_code") == "crashed" else None

        after = await until(restarted, 10, "the crash to be noticed")
        assert time.monotonic() - killed < 6
        assert after["bot_id"] != first_bot and after["machine"]["id"] != machine
        rejoined = await until(lambda: state("joined"), 60, "the restarted Luna to join")

        # The dispatcher restarts: the live stay is still answered and dismissed.
        await d.stop()
        d2 = await start_dispatcher(bot_cmd=("luna-voice", "bot"), local_room_url=room.url)
        again = await until(lambda: state("joined"), 15, "the new dispatcher to know the stay")
        assert again["bot_id"] == rejoined["bot_id"]
        status, gone, _ = await call(http, "DELETE", f"{d2.url}/rooms/e2e/luna")
        assert status == 200 and gone["state"] == "ended" and gone["sub_code"] == "dismissed", gone
        last_machine = gone["machine"]["id"]
        await until(lambda: _destroyed(fly, last_machine), 15, "the bot machine to be destroyed")
        _, kept, _ = await call(http, "GET", f"{d2.url}/rooms/e2e/luna")
        assert kept["state"] == "ended" and kept["bot_id"] == rejoined["bot_id"]
        status, doc, _ = await call(http, "GET", f"{d2.url}/rooms/e2e/luna/transcript")  # handed over by the bot
        assert status == 200 and doc["bot_id"] == rejoined["bot_id"] and doc["state"] == "ended", doc


@pytest.mark.browser
async def test_with_an_api_token_luna_on_her_machine_joins_the_dispatchers_local_room(fly, start_dispatcher):
    """The dispatcher's hub asks every page for a ticket when LUNA_API_TOKEN is set; Luna's page on a bot machine
    gets hers from the dispatcher with its stay secret (it was refused before: no ticket, join failed)."""
    token = "operator-token-for-this-test"
    d = await start_dispatcher(bot_cmd=("luna-voice", "bot"), api_token=token)
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        status, body, _ = await call(
            http, "POST", f"{d.url}/rooms/locked/luna", json={"backend": "local"}, headers=auth
        )
        assert status == 201, body

        async def settled() -> dict[str, Any] | None:
            _, b, _ = await call(http, "GET", f"{d.url}/rooms/locked/luna", headers=auth)
            return b if b["state"] in ("joined", "failed", "ended") else None

        done = await until(settled, 60, "Luna to join or fail from her machine")
        assert done["state"] == "joined", done
        status, people, _ = await call(http, "GET", f"{d.url}/local/rooms/locked/participants", headers=auth)
        assert status == 200 and [p["kind"] for p in people["participants"]] == ["bot"], people


async def _destroyed(fly: FakeFlyMachines, machine_id: str) -> bool:
    return fly.machines[machine_id].state == "destroyed"


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_past_the_cap_a_summon_is_503_with_retry_after(fly, start_dispatcher):
    d = await start_dispatcher(bot_cmd=STAND_IN, pool_size=0, max_machines=1)
    async with aiohttp.ClientSession() as http:
        status, _, _ = await call(http, "POST", f"{d.url}/rooms/a/luna", json={})
        assert status == 201
        status, body, headers = await call(http, "POST", f"{d.url}/rooms/b/luna", json={})
        assert status == 503 and body["error"]["code"] == "capacity_reached"
        assert int(headers["Retry-After"]) > 0
        status, _, _ = await call(http, "POST", f"{d.url}/rooms/a/luna", json={})
        assert status == 200  # the room's live stay, not a second one


async def test_the_transcript_is_served_after_the_bot_machine_is_gone(fly, start_dispatcher):
    d = await start_dispatcher(bot_cmd=STAND_IN, pool_size=0)
    async with aiohttp.ClientSession() as http:
        status, body, _ = await call(http, "POST", f"{d.url}/rooms/t/luna", json={})
        assert status == 201, body
        await until(lambda: _state(http, d, "t", "joined"), 30, "the stand-in bot to join")
        status, gone, _ = await call(http, "DELETE", f"{d.url}/rooms/t/luna")
        assert status == 200 and gone["state"] == "ended", gone
        machine = gone["machine"]["id"]
        await until(lambda: _destroyed(fly, machine), 15, "its machine to be destroyed")
        status, doc, _ = await call(http, "GET", f"{d.url}/rooms/t/luna/transcript")
        assert status == 200, doc
        assert (doc["room_id"], doc["bot_id"], doc["state"]) == ("t", body["bot_id"], "ended")
        assert [(line["speaker"], line["luna"]) for line in doc["lines"]] == [("Ann", False), ("Luna", True)]
        async with http.get(f"{d.url}/rooms/t/luna/transcript", headers={"Accept": "text/vtt"}) as resp:
            vtt = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/vtt"
        assert vtt.startswith("WEBVTT") and f"<v Ann>{STAND_IN_SAID}" in vtt and "<v Luna>It is noon." in vtt


async def test_follow_room_carries_the_event_stream_over_to_the_rooms_next_stay(fly, start_dispatcher):
    d = await start_dispatcher(bot_cmd=STAND_IN, pool_size=0)
    async with aiohttp.ClientSession() as http:
        _, first, _ = await call(http, "POST", f"{d.url}/rooms/f/luna", json={})
        await until(lambda: _state(http, d, "f", "joined"), 30, "the stand-in bot to join")
        async with http.get(f"{d.url}/rooms/f/luna/events?follow=room") as resp:
            seen: list[dict[str, Any]] = []

            async def status_of(bot_id: str, state: str) -> bool:
                while not any(e["bot_id"] == bot_id and e["status"]["state"] == state for e in seen):
                    line = await resp.content.readline()
                    assert line, "the stream ended"
                    if line.startswith(b"data: "):
                        event = json.loads(line.removeprefix(b"data: "))
                        if event["type"] == "status":
                            seen.append(event)
                return True

            await asyncio.wait_for(status_of(first["bot_id"], "joined"), 15)
            status, _, _ = await call(http, "DELETE", f"{d.url}/rooms/f/luna")
            assert status == 200
            status, second, _ = await call(http, "POST", f"{d.url}/rooms/f/luna", json={})
            assert status == 201 and second["bot_id"] != first["bot_id"]
            await asyncio.wait_for(status_of(second["bot_id"], "joined"), 30)


async def _state(http: aiohttp.ClientSession, d: Dispatcher, room: str, state: str) -> bool:
    _, body, _ = await call(http, "GET", f"{d.url}/rooms/{room}/luna")
    return body.get("state") == state


@pytest.mark.browser
async def test_a_summon_the_bot_refuses_ends_failed_with_its_reason_and_frees_the_machine(fly, start_dispatcher):
    """The bot machine has no RTK credentials: its own summon fails, and its final word reaches the dispatcher."""
    d = await start_dispatcher(bot_cmd=("luna-voice", "bot"), pool_size=0)
    async with aiohttp.ClientSession() as http:
        status, body, _ = await call(http, "POST", f"{d.url}/rooms/m1/luna", json={"backend": "rtk"})
        assert status == 201, body

        async def failed() -> dict[str, Any] | None:
            _, b, _ = await call(http, "GET", f"{d.url}/rooms/m1/luna")
            return b if b["state"] == "failed" else None

        done = await until(failed, 60, "the bot's refusal")
        assert done["sub_code"] == "rtk_not_configured" and "LUNA_RTK" in done["reason"]
        machine = done["machine"]["id"]
        await until(lambda: _destroyed(fly, machine), 15, "its machine to be destroyed")


def test_the_dispatcher_implements_every_call_of_the_api_port() -> None:
    """A call added to LunaService must be added here too, or the dispatcher would answer it with a 500."""
    wanted = {name for name in dir(LunaService) if not name.startswith("_")}
    missing = {name for name in wanted if not callable(getattr(DispatcherService, name, None))} - {"local_rooms"}
    assert not missing and isinstance(DispatcherService.local_rooms, property)

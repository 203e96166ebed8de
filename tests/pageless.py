"""A stand-in for Chromium for API and bridge tests: it records the page URL so a test can play the page itself
over the real bridge socket; ``open_room`` does that for a summoned Luna, and ``event_stream`` follows her SSE."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from luna_voice.bridge import protocol as bp
from roomtools import until


class PagelessHost:
    def __init__(self) -> None:
        self.urls: list[str] = []
        self.ready = True
        self.on_browser_lost = None
        self.crash = lambda: None  # simulates the page crashing once it is open

    async def start(self) -> None:
        pass

    async def open(self, url, *, on_crash):  # type: ignore[no-untyped-def]
        self.urls.append(url)
        self.crash = on_crash

        class Handle:
            async def close(self) -> None:
                pass

        return Handle()

    async def close(self) -> None:
        pass


def page_config(url: str) -> dict[str, Any]:
    """The config Luna's page reads from its URL fragment."""
    frag = url.split("#", 1)[1]
    return json.loads(base64.urlsafe_b64decode(frag + "=" * (-len(frag) % 4)))


def page_hello(cfg: dict[str, Any], **override: Any) -> str:
    """The hello Luna's page sends first on the bridge (what bot.js sends)."""
    from luna_voice.bridge import protocol as bp

    hello = {
        "type": "hello",
        "token": cfg["token"],
        "backend": cfg["backend"],
        "playback_rate": bp.PLAYBACK_RATE,
    }
    return json.dumps({**hello, **override})


class Page:
    """Luna's page without a browser: hello, joined, one person in the room, and playback rendered at once."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.samples = 0
        self.controls: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._render())

    async def _render(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                frame = bp.decode_audio(msg.data)
                self.samples += len(frame.payload) // 2
                last = bp.playback_seqs(frame.seq, frame.payload)[-1]
                await self.ws.send_str(json.dumps({"type": "played", "seq": last, "idle": True}))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.controls.append(json.loads(msg.data))
                if self.controls[-1]["type"] == "leave":
                    await self.ws.send_str(json.dumps({"type": "room_state", "state": "left"}))


async def open_room(start_service, room: str, **settings: Any) -> tuple[Any, Page]:  # type: ignore[no-untyped-def]
    host = PagelessHost()
    svc = await start_service(host=host, **settings)
    status, bot = await svc.call("POST", f"/rooms/{room}/luna", json={"backend": "local"})
    assert status == 201
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "the page to open")
    cfg = page_config(host.urls[0])
    ws = await svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}")
    await ws.send_str(page_hello(cfg))
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await until(lambda: joined(svc, room), 5, "Luna to join")
    return svc, Page(ws)


async def joined(svc, room: str) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.call("GET", f"/rooms/{room}/luna"))[1]["state"] == "joined"


@contextlib.asynccontextmanager
async def event_stream(svc, room: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """The events stream (SSE) as a queue of parsed events."""
    q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def read() -> None:
        async with svc.http.get(f"{svc.url}/rooms/{room}/luna/events") as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: "):
                    q.put_nowait(json.loads(raw[6:]))

    task = asyncio.create_task(read())
    try:
        assert (await asyncio.wait_for(q.get(), 5))["type"] == "status"
        yield q
    finally:
        task.cancel()


async def next_event(q: asyncio.Queue[dict[str, Any]], kind: str, limit: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while (event := await q.get())["type"] != kind:
            pass
    return event

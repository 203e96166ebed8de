"""Shared fixtures: a running service on 127.0.0.1, Playwright, and "human" browsers with a WAV microphone."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Playwright, async_playwright

from luna_voice.api.errors import AppRunner
from luna_voice.bots.host import CHROMIUM_ARGS
from luna_voice.config import Settings
from luna_voice.providers.select import ProviderSet
from luna_voice.service import Service

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    service: Service
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


StartService = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Start the whole service (offline providers unless told otherwise) on a free loopback port."""
    runners: list[tuple[web.AppRunner, Service]] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        providers: ProviderSet | None = None, host: Any = None, audio_tap: Any = None, **overrides: Any
    ) -> Running:
        port = free_port()
        base = {
            "host": "127.0.0.1",
            "port": port,
            "local_ice": "loopback",
            "stt_provider": "whisper",
            "llm_provider": "demo",
            "tts_provider": "offline",
            "greeting": "",  # tests that want it (test_participant_*) turn it on; others count Luna's turns
        }
        settings = Settings(_env_file=None, **{**base, **overrides})
        service = Service(settings, providers=providers, host=host, audio_tap=audio_tap)
        runner = AppRunner(service.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append((runner, service))
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Running(service, f"http://127.0.0.1:{port}", http)

    yield start
    for http in sessions:
        await http.close()
    for runner, service in reversed(runners):
        await service.stop()
        await runner.cleanup()


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as pw:
        yield pw


LaunchHuman = Callable[[Path | None], Awaitable[Browser]]


@pytest.fixture
async def launch_human(playwright: Playwright) -> AsyncIterator[LaunchHuman]:
    """A person's browser: its microphone plays ``wav`` once (Chromium's fake capture device)."""
    browsers: list[Browser] = []

    async def launch(wav: Path | None) -> Browser:
        args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream"]
        if wav is not None:
            args += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop"]
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        browsers.append(browser)
        return browser

    yield launch
    for b in browsers:
        await b.close()

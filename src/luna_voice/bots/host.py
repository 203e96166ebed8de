"""Where bots run: one Playwright Chromium per service process, one browser context per bot.

This is the seam for scaling past one machine: a host opens a bot's page at a URL and can close it; a host that
starts a Fly Machine per room would fit the same two calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from luna_voice.sandbox import chromium_sandbox_flags

log = structlog.get_logger(__name__)

CHROMIUM_ARGS = [
    *chromium_sandbox_flags(),  # sandboxed unless root or no user namespaces (see luna_voice/sandbox.py)
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    # An AudioContext made at page load stays suspended without this; Luna's page has no user to click.
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@dataclass
class BotPage:
    context: BrowserContext
    page: Page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.context.close(), 5.0)


class ChromiumHost:
    def __init__(self, chromium_path: Path) -> None:
        self.chromium_path = chromium_path
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()
        self.on_browser_lost: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    @property
    def open_pages(self) -> int:
        """Bot pages (browser contexts) open now: every ended bot must have closed its own."""
        return len(self._browser.contexts) if self._browser is not None else 0

    async def start(self) -> None:
        async with self._lock:
            if self.ready:
                return
            if not self.chromium_path.exists():
                raise RuntimeError(f"Chromium not found at {self.chromium_path}; set LUNA_CHROMIUM_PATH")
            if self._pw is None:
                self._pw = await async_playwright().start()
            self._browser = await self._pw.chromium.launch(
                executable_path=str(self.chromium_path), headless=True, args=CHROMIUM_ARGS
            )
            self._browser.on("disconnected", self._lost)
            log.info("chromium.started", path=str(self.chromium_path), version=self._browser.version)

    def _lost(self, browser: Browser) -> None:
        if self._browser is not browser:  # closed on purpose
            return
        log.error("chromium.lost")
        self._browser = None
        if self.on_browser_lost is not None:
            self.on_browser_lost()

    async def open(self, url: str, *, on_crash: Callable[[], None]) -> BotPage:
        await self.start()
        assert self._browser is not None
        context = await self._browser.new_context()
        page = await context.new_page()
        page.on("crash", lambda _page: on_crash())
        page.on("console", lambda msg: log.debug("page.console", type=msg.type, text=msg.text[:500]))
        page.on("pageerror", lambda err: log.warning("page.error", error=str(err)[:500]))
        await page.goto(url)
        return BotPage(context, page)

    async def close(self) -> None:
        async with self._lock:
            browser, self._browser = self._browser, None
            if browser is not None:
                with contextlib.suppress(Exception):
                    await browser.close()
            if self._pw is not None:
                with contextlib.suppress(Exception):
                    await self._pw.stop()
                self._pw = None

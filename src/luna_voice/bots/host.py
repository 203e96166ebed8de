"""The host seam: where a bot's page runs, and the URLs it uses to reach this service.

A bot needs only two calls from its host: open Luna's page at a URL (with a callback for a page crash) and close
it. ``ChromiumHost`` runs one Playwright Chromium per process and one browser context per page; a host that
starts a Fly Machine per room fits the same ``PageHost`` protocol. Nothing here assumes loopback: every URL the
page gets is built from a configured base (``PageUrls``), so the page can run on another machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from luna_voice.sandbox import chromium_sandbox_flags

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 3.0  # a context or browser that does not close by then is abandoned (the process exits anyway)
GOTO_TIMEOUT_MS = 20_000

# Playwright's own --disable-features list (playwright-core, chromiumSwitches.ts, as of 1.65). Chromium honours only
# the last --disable-features switch, and ours comes after Playwright's, so without these Playwright's would be lost
# (HTTPS-First upgrades of http:// pages, the media router's discovery, optimisation-hint downloads…). A test
# compares this list with the first --disable-features of a launched browser, so a Playwright upgrade shows.
PLAYWRIGHT_DISABLED_FEATURES = (
    "AvoidUnnecessaryBeforeUnloadCheckSync",
    "DestroyProfileOnBrowserClose",
    "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable",
    "LensOverlay",
    "MediaRouter",
    "PaintHolding",
    "ThirdPartyStoragePartitioning",
    "AvoidCorsURLLoaderRestartOnRedirect",
    "TcpPortRandomizationWin",
    "OptimizationHints",
    "NetworkTimeServiceQuerying",
    "AimEnabled",
    "PreconnectToSearch",
    "msForceBrowserSignIn",
    "msEdgeUpdateLaunchServicesPreferredVersion",
)
DISABLED_FEATURES = (
    *PLAYWRIGHT_DISABLED_FEATURES,
    # The local room keeps 127.0.0.1 ICE candidates; with this feature Chromium hands out mDNS names instead.
    "WebRtcHideLocalIpsWithMdns",
    # Each browser context is a window whose omnibox keeps its dropdown ready as two WebUI pages
    # (chrome://omnibox-popup.top-chrome), in a renderer of the context's own: 40-50 MB PSS per bot for a
    # dropdown nobody opens (bench/README.md, "The cost per bot").
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
    # A spare renderer warmed for the last context's next navigation; every bot opens a fresh context, which
    # cannot use it, so it was ~11 MB held for nothing.
    "SpareRendererForSitePerProcess",
)

CHROMIUM_ARGS = [
    *chromium_sandbox_flags(),  # sandboxed unless root or no user namespaces (see luna_voice/sandbox.py)
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    # The RTK SDK makes AudioContexts of its own (audio middleware, level meters); made at page load they stay
    # suspended without this, and Luna's page has no user to click.
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=" + ",".join(DISABLED_FEATURES),  # the only one Chromium reads: see above
]


class PageHandle(Protocol):
    async def close(self) -> None: ...


class PageHost(Protocol):
    """What a bot needs from wherever its page runs."""

    on_browser_lost: Callable[[], None] | None

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def open(self, url: str, *, on_crash: Callable[[], None]) -> PageHandle: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class PageUrls:
    """URLs of this service as Luna's page sees them, from one base (``LUNA_BOT_BASE_URL``)."""

    base: str  # e.g. http://127.0.0.1:8080 or https://luna.internal:8080

    def http(self, path: str) -> str:
        return self.base.rstrip("/") + path

    def ws(self, path: str) -> str:
        base = self.base.rstrip("/")
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"

    def page(self, config: dict[str, Any]) -> str:
        """Luna's page with its configuration in the fragment (never sent to a server, never in access logs)."""
        config = {**config, "bridgeUrl": self.ws(f"/bridge/{config['botId']}")}
        frag = base64.urlsafe_b64encode(json.dumps(config).encode()).decode().rstrip("=")
        return self.http(f"/bot/bot.html#{frag}")


@dataclass
class BotPage:
    context: BrowserContext
    page: Page

    async def close(self) -> None:
        await _close_context(self.context)


async def _close_context(context: BrowserContext) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(context.close(), CLOSE_TIMEOUT_S)


class ChromiumHost:
    """One Playwright Chromium for the process; relaunched on the next ``start`` after it is lost."""

    def __init__(
        self,
        chromium_path: Path,
        *,
        args: Sequence[str] = CHROMIUM_ARGS,
        prepare_context: Callable[[BrowserContext, str], Awaitable[None]] | None = None,
    ) -> None:
        self.chromium_path = chromium_path
        self.args = list(args)  # the bench's profile launches hosts with other flags to compare their cost
        # Runs on each new context before the page opens (tests install the RTK SDK stub here).
        self.prepare_context = prepare_context
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
                executable_path=str(self.chromium_path), headless=True, args=self.args
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
        browser = self._browser
        if browser is None:
            raise RuntimeError("Chromium exited while the page was opening")
        context = await browser.new_context()
        try:  # a page that fails to open must not leave its context behind
            if self.prepare_context is not None:
                await self.prepare_context(context, url)
            page = await context.new_page()
            page.on("crash", lambda _page: on_crash())
            page.on("console", lambda msg: log.debug("page.console", type=msg.type, text=msg.text[:500]))
            page.on("pageerror", lambda err: log.warning("page.error", error=str(err)[:500]))
            await page.goto(url, timeout=GOTO_TIMEOUT_MS)
        except BaseException:
            await _close_context(context)
            raise
        return BotPage(context, page)

    async def close(self) -> None:
        async with self._lock:
            browser, self._browser = self._browser, None
            if browser is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT_S)
            if self._pw is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pw.stop(), 2.0)
                self._pw = None

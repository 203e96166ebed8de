"""Luna's Chromium: the flags that must stay in force, and what one bot costs in processes.

A bot's memory is mostly processes: Chromium gave each browser context (one per bot) a renderer for its page, and
another for the omnibox dropdown's WebUI pages of the context's window, and kept a spare renderer that no fresh
context can use. Counting processes pins that without timing or measuring anything.
"""

from __future__ import annotations

from typing import Any

import pytest

from luna_voice.bots.host import PLAYWRIGHT_DISABLED_FEATURES
from proctools import chromium_browsers, cmdline, renderers
from roomtools import until

pytestmark = pytest.mark.browser


async def luna_browser(start_service) -> tuple[Any, int]:  # type: ignore[no-untyped-def]
    before = chromium_browsers()
    svc = await start_service()
    (browser,) = chromium_browsers() - before
    return svc, browser


def disabled_features(argv: str) -> list[set[str]]:
    """Each --disable-features switch's features, in command-line order."""
    prefix = "--disable-features="
    return [set(a[len(prefix) :].split(",")) for a in argv.split(" ") if a.startswith(prefix)]


async def test_playwrights_disabled_features_stay_disabled(start_service):
    """Chromium reads only the last --disable-features, and ours follows Playwright's: ours must carry its list
    (a Playwright upgrade that adds to it fails here, as it should: update PLAYWRIGHT_DISABLED_FEATURES)."""
    _, browser = await luna_browser(start_service)
    playwrights, *_, effective = disabled_features(cmdline(browser))
    assert playwrights <= effective, f"Playwright's features Luna's Chromium would run with: {playwrights - effective}"
    assert set(PLAYWRIGHT_DISABLED_FEATURES) == playwrights
    assert "WebRtcHideLocalIpsWithMdns" in effective  # the local room's loopback ICE


async def test_each_bot_costs_one_renderer(start_service):
    """One renderer per bot, holding its page and the bridge's shared worker: no omnibox WebUI renderer per
    context, no spare renderer. Two bots, two renderers."""
    svc, browser = await luna_browser(start_service)
    for n, room in enumerate(("r1", "r2"), start=1):
        status, _ = await svc.call("POST", f"/rooms/{room}/luna", json={"backend": "local", "policy": "never"})
        assert status == 201

        async def joined(room: str = room) -> bool:
            _, bot = await svc.call("GET", f"/rooms/{room}/luna")
            assert bot["state"] not in ("ended", "failed"), bot
            return bot["state"] == "joined"

        await until(joined, 30, f"Luna to join {room}")
        # Chromium starts and ends its processes asynchronously to the page's join: wait for the count.
        await until(lambda n=n: _count(browser, n), 15, f"{n} renderer(s) for {n} bot(s)")


async def _count(browser: int, n: int) -> bool:
    return len(renderers(browser)) == n

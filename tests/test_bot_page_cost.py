"""What Luna's page costs beyond its audio: Playwright must not see the bridge's frames."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page

from luna_voice.bots.host import ChromiumHost
from luna_voice.config import Settings
from roomtools import until

pytestmark = pytest.mark.browser


async def test_the_bridge_socket_is_out_of_playwrights_sight(start_service):
    """Playwright forwards every frame of a page's WebSockets to its client (base64, through its driver): about
    a hundred a second on the bridge, which cost more CPU than Luna's Python. The page keeps the bridge in a
    shared worker, which Playwright does not attach to; the bridge still works (Luna joins through it)."""
    sockets: list[str] = []

    async def watch(context: BrowserContext, _url: str) -> None:
        def on_page(page: Page) -> None:
            page.on("websocket", lambda ws: sockets.append(ws.url))

        context.on("page", on_page)

    svc = await start_service(host=ChromiumHost(Settings(_env_file=None).chromium_path, prepare_context=watch))
    status, _ = await svc.call("POST", "/rooms/cost/luna", json={"backend": "local", "policy": "never"})
    assert status == 201

    async def joined() -> Any:
        _, bot = await svc.call("GET", "/rooms/cost/luna")
        return bot["state"] == "joined"

    await until(joined, 30, "Luna to join through her bridge")
    assert sockets, "the page's local-room signalling socket should be visible: the watch works"
    assert not [url for url in sockets if "/bridge/" in url], sockets

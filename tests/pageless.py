"""A stand-in for Chromium for API and bridge tests: it records the page URL so a test can play the page itself
over the real bridge socket."""

from __future__ import annotations

import base64
import json
from typing import Any


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
        "audio_context": "running",
        "capture_rate": bp.CAPTURE_RATE,
        "playback_rate": bp.PLAYBACK_RATE,
    }
    return json.dumps({**hello, **override})

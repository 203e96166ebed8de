"""What Luna's page costs: Playwright must not see the bridge's frames, and the page decodes nobody's audio."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page

from luna_voice.bots.host import ChromiumHost
from luna_voice.config import Settings
from roomtools import human_page, loud, tone_wav, until

pytestmark = pytest.mark.browser


async def summon(svc: Any) -> None:
    """Luna into the local room ``cost``, listening only, until she has joined."""
    status, _ = await svc.call("POST", "/rooms/cost/luna", json={"backend": "local", "policy": "never"})
    assert status == 201

    async def joined() -> bool:
        return (await svc.call("GET", "/rooms/cost/luna"))[1]["state"] == "joined"

    await until(joined, 30, "Luna to join")


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
    await summon(svc)  # she joins through her bridge
    assert sockets, "the page's local-room signalling socket should be visible: the watch works"
    assert not [url for url in sockets if "/bridge/" in url], sockets


# Counts, on Luna's page, what capturing a person used to cost: media elements played, WebAudio sources of remote
# streams, audio worklet nodes; and keeps the page's peer connections to read their receivers' stats.
COUNT_AUDIO_WORK = """(() => {
  const made = (window.__audioWork = { played: 0, sources: 0, worklets: [], pcs: [] });
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function (...args) { made.played += 1; return play.apply(this, args); };
  const A = AudioContext.prototype;
  const source = A.createMediaStreamSource;
  A.createMediaStreamSource = function (...args) { made.sources += 1; return source.apply(this, args); };
  window.AudioWorkletNode = class extends AudioWorkletNode {
    constructor(ctx, name, options) { super(ctx, name, options); made.worklets.push(name); }
  };
  window.RTCPeerConnection = class extends RTCPeerConnection {
    constructor(...args) { super(...args); made.pcs.push(this); }
  };
})();"""

RECEIVED = """async () => {
  const { played, sources, worklets, pcs } = window.__audioWork;
  const inbound = [];
  for (const pc of pcs) (await pc.getStats()).forEach((r) => r.type === "inbound-rtp" && inbound.push(r));
  return { played, sources, worklets, packets: inbound.map((r) => r.packetsReceived),
    decoded: inbound.map((r) => r.totalSamplesReceived) };
}"""


async def test_lunas_page_decodes_and_plays_nobody(start_service, launch_human, tmp_path):
    """Luna's page forwards each person's Opus packets as they arrive and Python decodes them: the page plays no
    media element for them, feeds no WebAudio graph with them, runs no capture worklet, and Chromium decodes
    none of their audio (their receivers' stats count packets but no samples). Python still hears them.
    (tests/test_e2e_voice.py: her page makes no AudioContext at all.)"""
    pages: list[Page] = []
    heard: list[bytes] = []

    async def watch(context: BrowserContext, _url: str) -> None:
        await context.add_init_script(script=COUNT_AUDIO_WORK)
        context.on("page", lambda page: pages.append(page))

    host = ChromiumHost(Settings(_env_file=None).chromium_path, prepare_context=watch)
    svc = await start_service(host=host, audio_tap=lambda _room, _pid, _ts, pcm: heard.append(pcm))
    await summon(svc)
    await human_page(launch_human, svc.url, "cost", "Ann", tone_wav(tmp_path / "tone.wav"))

    async def tone_heard() -> bool:
        return sum(loud(pcm) for pcm in heard) >= 50

    await until(tone_heard, 15, "a second of Ann's tone in Python")
    cost = await pages[0].evaluate(RECEIVED)
    assert cost["played"] == 0 and cost["sources"] == 0 and cost["worklets"] == [], cost
    assert cost["packets"] and min(cost["packets"]) >= 50 and cost["decoded"] == [0] * len(cost["packets"]), cost

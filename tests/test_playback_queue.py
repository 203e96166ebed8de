"""Luna's playback queue and her track's frame clock (``bot_page/audio/playback.js``), frame by frame on a clock the
test sets: the module the playback worker renders her voice with, run in Chromium as the page runs it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Page, async_playwright

from conftest import CHROMIUM, free_port
from luna_voice.bots.host import CHROMIUM_ARGS
from luna_voice.bridge import protocol as bp

pytestmark = pytest.mark.browser

BOT_PAGE = Path(__file__).resolve().parents[1] / "bot_page"
FRAME = bp.PLAYBACK_FRAME_SAMPLES
RATE = bp.PLAYBACK_RATE


@pytest_asyncio.fixture
async def page() -> AsyncIterator[Page]:
    app = web.Application()
    app.router.add_static("/bot", BOT_PAGE)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        p = await browser.new_page()
        await p.goto(f"http://127.0.0.1:{port}/bot/bot.html#")  # same origin; bot.js fails on the empty config
        yield p
        await browser.close()
    await runner.cleanup()


# Runs `steps` against a fresh queue: [["push", seq, samples (a list of int16), now], ["gain", g], ["clear"],
# ["render", now]]. Each step's result: render gives the frame's samples and the messages it gave rise to.
RUN = """async (steps) => {
  const { PlaybackQueue } = await import("/bot/audio/playback.js");
  const q = new PlaybackQueue();
  return steps.map(([op, ...a]) => {
    if (op === "push") return q.push(a[0], Int16Array.from(a[1]), a[2]);
    if (op === "gain") return q.setGain(a[0]);
    if (op === "clear") return q.clear();
    const out = new Float32Array(FRAME);
    const said = q.render(out, a[0]);
    return { out: Array.from(out), said };
  });
}""".replace("FRAME", str(FRAME))


async def run(page: Page, steps: list[list[Any]]) -> list[Any]:
    return await page.evaluate(RUN, steps)


def renders(at: float, n: int) -> list[list[Any]]:
    return [["render", at + k * 0.02] for k in range(n)]


def ramp(n: int) -> list[int]:
    return [(i % 20000) + 1 for i in range(n)]  # every sample non-zero and different


async def test_each_frame_of_a_message_gets_its_own_mark_and_every_sample_plays_in_order(page):
    pcm = ramp(6 * FRAME + FRAME // 2)
    steps = [["push", 3000, pcm[: 5 * FRAME], 0.0], ["push", 3005, pcm[5 * FRAME :], 0.0], *renders(0.0, 8)]
    results = (await run(page, steps))[2:]
    played = [s for r in results for s in r["said"] if s["type"] == "played"]
    assert [p["seq"] for p in played] == sorted(p["seq"] for p in played)
    assert any(3000 <= p["seq"] < 3004 and not p["idle"] for p in played), played  # marks inside a message
    assert played[-1] == {"type": "played", "seq": 3006, "idle": True}
    heard = [round(v * 0x8000) for r in results for v in r["out"]]
    assert heard[: len(pcm)] == pcm and not any(heard[len(pcm) :])


async def test_playback_starts_at_the_prebuffer_or_after_the_start_wait(page):
    short = ramp(2 * FRAME)  # 40 ms: under the 60 ms pre-buffer
    waited = await run(page, [["push", 0, short, 1.0], *renders(1.0, 6)])
    loud = [any(r["out"]) for r in waited[1:]]
    assert loud == [False] * 5 + [True]  # silent until 100 ms after the first sample arrived
    enough = await run(page, [["push", 0, ramp(3 * FRAME), 1.0], *renders(1.0, 1)])
    assert any(enough[1]["out"])  # 60 ms queued: at once


async def test_clear_drops_everything_queued_and_the_queue_starts_afresh(page):
    steps = [["push", 0, ramp(RATE), 0.0], *renders(0.0, 5), ["clear"], *renders(0.1, 3)]
    steps += [["push", 50, ramp(FRAME), 0.2], *renders(0.2, 6)]
    results = await run(page, steps)
    assert results[6] == {"type": "cleared", "dropped_ms": 900}
    after = results[7:10]
    assert not any(any(r["out"]) or r["said"] for r in after)  # silence, and no mark
    again = results[11:]
    assert [any(r["out"]) for r in again] == [False] * 5 + [True]  # the pre-buffer rule again
    assert again[-1]["said"] == [{"type": "played", "seq": 50, "idle": True}]


async def test_a_duck_ramps_down_in_10_ms_without_a_click_and_drops_nothing(page):
    level = 16384  # 0.5 of full scale
    steps = [["push", 0, [level] * (10 * FRAME), 0.0], *renders(0.0, 2), ["gain", 0.1], *renders(0.04, 8)]
    results = await run(page, steps)
    out = [v for r in results if isinstance(r, dict) and "out" in r for v in r["out"]]
    step = 0.5 / (0.01 * RATE)  # the ramp's largest move from one sample to the next
    assert max(abs(b - a) for a, b in itertools.pairwise(out)) <= step + 1e-6
    ducked = out[2 * FRAME :]
    assert ducked[int(0.01 * RATE)] == pytest.approx(0.05) and ducked[-1] == pytest.approx(0.05)
    assert len([v for v in out if v]) == 10 * FRAME  # quieter, not shorter
    marks = [s for r in results if isinstance(r, dict) and "said" in r for s in r["said"]]
    assert marks[-1] == {"type": "played", "seq": 9, "idle": True}


async def test_a_full_queue_drops_the_excess_and_says_so_once(page):
    results = await page.evaluate(
        """async () => {
      const { PlaybackQueue } = await import("/bot/audio/playback.js");
      const q = new PlaybackQueue();
      q.push(0, new Int16Array(31 * 48000).fill(100), 0);
      const out = new Float32Array(960);
      return [q.render(out, 0), q.render(out, 0.02)];
    }"""
    )
    assert results[0] == [
        {"type": "log", "level": "warn", "message": "playback queue full: 1000 ms of Luna's audio dropped"}
    ]
    assert results[1] == []


async def test_her_frame_clock_hands_out_every_due_frame_and_none_ahead(page):
    got = await page.evaluate(
        """async () => {
      const { FrameClock } = await import("/bot/audio/playback.js");
      const c = new FrameClock(1000, 20);
      return [c.due(1000), c.due(1075), c.next, c.due(1079.9), c.due(1080)];
    }"""
    )
    assert got == [[[0, 1000]], [[1, 1020], [2, 1040], [3, 1060]], 1080, [], [[4, 1080]]]

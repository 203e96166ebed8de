"""One clock: the page's frame timestamps are mapped onto the driver's monotonic clock, so endpointing compares
like with like whatever the page's clock origin or a wall-clock step says."""

from __future__ import annotations

import asyncio

from levels import VOICED, LoudIsVoiced
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bridge.clock import PageClock
from luna_voice.conversation.domain import Usage
from scripted_room import Room


def test_page_times_map_onto_ours_never_in_the_future():
    clock = PageClock()
    page_origin = -3600.0  # the page's clock is an hour behind ours
    for i, delay in enumerate([0.030, 0.005, 0.050, 0.010]):
        taken = 100.0 + i * 0.02
        now = taken + delay
        local = clock.to_local((taken + page_origin) * 1000, now)
        assert local <= now + 1e-9
        assert abs(local - taken) <= delay + 1e-9  # off by at most the transport delay


def test_a_slow_page_clock_is_followed():
    clock = PageClock()
    for i in range(50_000):  # 1000 s of frames from a page whose clock runs 500 ppm slow
        taken = i * 0.02
        local = clock.to_local(taken * (1 - 500e-6) * 1000, taken + 0.005)
    assert abs(local - taken) < 0.02


class Stt:
    name = "scripted"

    def __init__(self) -> None:
        self.opened = 0

    def open_stream(self, *, prompt: str | None = None, keywords=()):  # type: ignore[no-untyped-def]
        self.opened += 1
        return self

    async def push(self, pcm: bytes) -> None:
        pass

    async def finish(self):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()

    async def cancel(self) -> Usage:
        return Usage()

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class Idle:
    name = "idle"
    sample_rate = 48_000

    def __init__(self, close_hangs: bool = False) -> None:
        self.close_hangs = close_hangs

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        if self.close_hangs:
            await asyncio.Event().wait()


def pipeline(stt, now, *, tts=None):  # type: ignore[no-untyped-def]
    room = Room()
    room.core.participant_joined("a", "Ann", 0.0)
    return Pipeline(
        room.core,
        stt=stt,
        llm=Idle(),  # type: ignore[arg-type]
        tts=tts or Idle(),
        send_audio=lambda *_: None,
        clear_playback=lambda: None,
        publish=lambda _e: None,
        clock=lambda: now[0],
        new_vad=LoudIsVoiced,
    )


async def test_an_utterance_is_not_cut_when_the_page_clock_has_another_origin():
    stt, now = Stt(), [5000.0]
    pipe = pipeline(stt, now)
    for _ in range(100):  # two seconds of speech; the page's clock says it is an hour earlier
        now[0] += 0.02
        pipe.frame("a", (now[0] - 3600 - 0.01) * 1000, VOICED)
        pipe.core.tick(now[0])  # the ticker's check for a speaker whose frames stopped
    assert stt.opened == 1  # one utterance, not one per tick
    await pipe.aclose()


async def test_closing_is_bounded_when_a_provider_never_closes():
    pipe = pipeline(Stt(), [0.0], tts=Idle(close_hangs=True))
    pipe.start()
    async with asyncio.timeout(10):
        await pipe.aclose()

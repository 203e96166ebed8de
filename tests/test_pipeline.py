"""The asyncio driver: closing a pipeline stops all of its tasks, even while audio keeps waking it."""

from __future__ import annotations

import asyncio

from luna_voice.bots.pipeline import Pipeline
from scripted_room import Room


class Idle:
    """A provider that is never called here: these tests exercise the driver's own tasks."""

    name = "idle"
    sample_rate = 48_000

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_close_stops_the_ticker_while_frames_keep_waking_it():
    async with asyncio.timeout(20):  # a stuck ticker makes aclose() wait out its bound on every round
        survived = [await ticker_survives_close() for _ in range(100)]
    assert not any(survived)


async def ticker_survives_close() -> bool:
    pipe = Pipeline(
        Room().core,
        stt=Idle(),  # type: ignore[arg-type]
        llm=Idle(),  # type: ignore[arg-type]
        tts=Idle(),  # type: ignore[arg-type]
        send_audio=lambda *_: None,
        clear_playback=lambda: None,
        publish=lambda _e: None,
    )
    pipe.start()

    async def frames() -> None:
        while True:  # a busy room: every capture frame wakes the ticker
            pipe.frame("a", 0.0, bytes(640))
            await asyncio.sleep(0)

    feeder = asyncio.create_task(frames())
    await asyncio.sleep(0.005)
    await pipe.aclose()
    feeder.cancel()
    await asyncio.sleep(0)
    return not pipe._ticker.done()  # type: ignore[union-attr]

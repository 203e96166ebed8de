"""Silero off the event loop: one thread per process scores every speaker's pending windows in one batch.

The real model on generated audio; verdicts come back to the loop, and each test waits for the ones it needs.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import structlog

from luna_voice.hearing.vad import SpeakerVad, VadBatcher, Voice, shared_model
from room_sounds import music, piper_speech, silence

FRAME = 320  # 20 ms at 16 kHz
WAIT_S = 30.0


def frames(audio: np.ndarray) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return [pcm[i : i + FRAME].tobytes() for i in range(0, len(pcm) - FRAME + 1, FRAME)]


class Verdicts:
    """Collects (frame index, verdict) as they come back; ``until(n)`` waits for the n-th."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Voice]] = []
        self._more = asyncio.Event()

    def heard(self, index: int):  # type: ignore[no-untyped-def]
        def on(voice: Voice) -> None:
            self.got.append((index, voice))
            self._more.set()

        return on

    async def until(self, n: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.got) < n:
                self._more.clear()
                await self._more.wait()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([silence(0.3), piper_speech("Luna, what do you think about the budget?"), silence(0.5)])


async def test_batched_speakers_get_the_verdicts_they_would_get_alone_in_frame_order(speech):
    """Alice speaks while Bob's microphone plays loud music; their windows share onnxruntime calls."""
    alice, bob = frames(speech), frames(music(len(speech) / 16_000, level_db=-15))
    model, opened = shared_model(), threading.Event()

    def run_when_open(*args):  # type: ignore[no-untyped-def]
        opened.wait(WAIT_S)  # the first call waits until both speakers have windows queued
        return model.session.run(*args)

    # Without the silence gate: all windows are queued before the first call, so none could skip it anyway.
    batcher = VadBatcher(load=lambda: SimpleNamespace(session=SimpleNamespace(run=run_when_open)), gate=False)
    streams = {"alice": batcher.stream(0.5), "bob": batcher.stream(0.5)}
    got = {name: Verdicts() for name in streams}
    for i, (a, b) in enumerate(zip(alice, bob, strict=True)):
        streams["alice"].feed(a, got["alice"].heard(i))
        streams["bob"].feed(b, got["bob"].heard(i))
    opened.set()
    for name in streams:
        await got[name].until(len(alice))
    assert batcher.windows >= 1.9 * batcher.calls  # one window of each speaker per call
    for name, audio in (("alice", alice), ("bob", bob)):
        alone = SpeakerVad(0.5, gate=False)
        expected = [(alone.is_speech(f), alone.probability) for f in audio]
        assert [i for i, _ in got[name].got] == list(range(len(audio)))  # in frame order
        assert [v.speech for _, v in got[name].got] == [s for s, _ in expected]
        assert [v.probability for _, v in got[name].got] == pytest.approx([p for _, p in expected], abs=1e-4)
    assert any(v.speech for _, v in got["alice"].got)


async def test_a_speaker_who_leaves_frees_their_state_and_hears_nothing_late(speech):
    batcher = VadBatcher()
    leaving, staying = batcher.stream(0.5), batcher.stream(0.5)
    left, stayed = Verdicts(), Verdicts()
    for i, f in enumerate(frames(speech)[:50]):
        leaving.feed(f, left.heard(i))
    before = len(left.got)  # frames that needed no new window were answered at once
    leaving.close()
    gone = weakref.ref(leaving)
    del leaving
    words = frames(speech)[20:]  # past the leading silence, which needs no inference
    staying.feed(words[0], stayed.heard(0))  # one window: scored after everything submitted before it
    staying.feed(words[1], stayed.heard(1))
    await stayed.until(2)
    gc.collect()
    assert gone() is None  # its state and queued windows were let go
    assert len(left.got) == before < 50


async def test_a_failing_model_leaves_frames_unvoiced_in_order_and_says_why(speech):
    def broken_run(*_args):  # type: ignore[no-untyped-def]
        raise RuntimeError("onnxruntime: bad allocation")

    batcher = VadBatcher(load=lambda: SimpleNamespace(session=SimpleNamespace(run=broken_run)))
    stream, got = batcher.stream(0.5), Verdicts()
    with structlog.testing.capture_logs() as logs:
        for i, f in enumerate(frames(speech)):
            stream.feed(f, got.heard(i))
        await got.until(len(frames(speech)))
    assert [i for i, _ in got.got] == list(range(len(frames(speech))))
    assert not any(v.speech for _, v in got.got)
    assert batcher.problem is not None and "bad allocation" in batcher.problem
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["vad.failed"]  # once, not per window


async def test_a_silent_speaker_costs_no_inference_and_is_heard_the_same_when_they_speak():
    """A muted or quiet participant's track still brings 50 frames a second of digital silence."""
    said = np.concatenate([silence(3.0), piper_speech("Luna, is the budget ready?", varied=False), silence(2.0)])
    audio = frames(said)
    verdicts = {}
    for gate in (False, True):
        batcher = VadBatcher(gate=gate)
        stream, got = batcher.stream(0.5), Verdicts()
        for i, frame in enumerate(audio):  # as live: each frame's verdict is back before the next frame comes
            stream.feed(frame, got.heard(i))
            await got.until(i + 1)
        verdicts[gate] = ([v.speech for _, v in got.got], batcher.windows, stream.skipped)
    (ungated, every_window, _), (gated, scored, skipped) = verdicts[False], verdicts[True]
    assert any(gated) and gated == ungated  # the same speech, frame for frame: onsets and word ends included
    assert scored + skipped == every_window
    assert skipped > 0.7 * every_window  # the 5 s of silence around 2 s of speech cost no inference

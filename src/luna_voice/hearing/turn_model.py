"""Smart Turn v3.2: does this utterance sound finished? One model per process, one inference at a time.

pipecat's ``LocalSmartTurnAnalyzerV3`` runs the bundled ``smart-turn-v3.2-cpu.onnx`` (BSD-2, 23 languages) with
onnxruntime and a numpy Whisper front end. Its own silence bookkeeping is not used: the conversation core
decides when to ask (a candidate end, after a short silence) and this adapter only answers. Every call loads the
whole question into a cleared analyzer and awaits ``analyze_end_of_turn``, which runs on the analyzer's single
worker thread, so the model uses one core at most however many bots ask at once. Its Whisper front end's matmuls
go through numpy's OpenBLAS, which by default splits them over every core and leaves its idle worker spinning:
on 2 cores that doubled a call's CPU (~115 → ~58 ms) and made it slower. Loading the model limits the process's
BLAS to one thread; the service runs many bots in parallel, never one matmul.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from threadpoolctl import threadpool_limits

from luna_voice.hearing import _pipecat  # noqa: F401  (quiet pipecat before importing it)
from luna_voice.providers.offline._shared import load_once

log = structlog.get_logger(__name__)

RATE = 16_000
BLAS_THREADS = 1


def _load():  # type: ignore[no-untyped-def]
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    threadpool_limits(BLAS_THREADS, user_api="blas")  # for the whole process, from now on
    started = time.monotonic()
    analyzer = LocalSmartTurnAnalyzerV3(cpu_count=1, sample_rate=RATE)
    analyzer.set_sample_rate(RATE)
    log.info("smart_turn.loaded", seconds=round(time.monotonic() - started, 2))
    return analyzer


shared_analyzer = load_once(_load)


async def warm() -> None:
    await asyncio.to_thread(shared_analyzer)


async def probability_complete(pcm: bytes) -> float | None:
    """The model's probability that the speaker has finished, or None if it cannot say (then: silence rule)."""
    try:
        analyzer = await asyncio.to_thread(shared_analyzer)
        # clear + append + the start of analyze run without a suspension point in between, so concurrent callers
        # cannot mix their audio: the analyzer hands its buffer to its worker thread before the first await.
        analyzer.clear()
        analyzer.append_audio(pcm, True)
        _state, metrics = await analyzer.analyze_end_of_turn()
    except Exception as exc:
        log.warning("smart_turn.failed", error=f"{type(exc).__name__}: {exc}")
        return None
    return None if metrics is None else float(metrics.probability)

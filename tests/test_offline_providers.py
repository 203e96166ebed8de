"""The offline engines with their real models: Whisper tiny.en, Piper's joe voice, espeak-ng, and the demo echo.

Speech goes through the real engines both ways (espeak-ng → Whisper, Piper → Whisper) and is compared loosely.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import soxr

from luna_voice.conversation.domain import ReplyRequest, Usage
from luna_voice.providers.base import PIPELINE_RATE, ProviderError, Transcript
from luna_voice.providers.offline import DemoReply, OfflineTTS, WhisperSTT, whisper_stt
from luna_voice.providers.offline._shared import in_thread, load_once
from luna_voice.providers.offline.piper_tts import CHINESE_VOICE, shared_voice
from luna_voice.providers.offline.whisper_stt import shared_model
from speech import make_speech_wav, read_wav_int16, words_match

T = TypeVar("T")
ROOM_RATE = 48_000
FRAME = PIPELINE_RATE // 50 * 2  # 20 ms of int16 PCM, as the page sends it


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    shared_model()  # loaded once for the whole module (the engines share it per process anyway)
    return WhisperSTT()


@pytest.fixture(scope="module")
def tts() -> OfflineTTS:
    shared_voice()
    return OfflineTTS(sample_rate=ROOM_RATE)


async def transcribe(stt: WhisperSTT, samples: np.ndarray, prompt: str | None = None) -> Transcript:
    stream = stt.open_stream(prompt=prompt)
    pcm = samples.astype("<i2").tobytes()
    for start in range(0, len(pcm), FRAME):
        await stream.push(pcm[start : start + FRAME])
    return await stream.finish()


async def speak(tts: OfflineTTS, text: str) -> tuple[np.ndarray, list[Usage]]:
    """All audio ``tts`` produced for ``text`` (one array) and the usages it reported (after the audio)."""
    chunks: list[bytes] = []
    usages: list[Usage] = []
    async for item in tts.synthesize(text):
        if isinstance(item, Usage):
            usages.append(item)
        else:
            assert not usages, "audio after the usage"
            chunks.append(item)
    return np.frombuffer(b"".join(chunks), dtype="<i2"), usages


def voiced_seconds(samples: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds of 20 ms frames louder than ``threshold`` (RMS, full scale 1.0)."""
    frame = rate // 50
    n = len(samples) // frame
    frames = samples[: n * frame].astype(np.float32).reshape(n, frame) / 32768
    return float((np.sqrt((frames**2).mean(axis=1)) > threshold).sum() * 0.02)


async def ticks_while(work: Awaitable[T]) -> tuple[T, int]:
    """Await ``work`` while another task counts how often it got to run (it cannot while the loop is blocked)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        task.cancel()
    return result, ticks


# --- shared plumbing ---------------------------------------------------------------------------------------------


def test_concurrent_first_callers_share_one_load_and_a_failed_load_is_retried() -> None:
    loads: list[int] = []
    callers = 4
    arrived = threading.Condition()
    waiting = 0

    def load() -> object:
        loads.append(1)
        if len(loads) == 1:
            raise OSError("model file missing")
        with arrived:  # hold the load until every caller has asked for the model: they all overlap with it
            assert arrived.wait_for(lambda: waiting == callers, timeout=10)
        return object()

    def caller(_: int) -> object:
        nonlocal waiting
        with arrived:
            waiting += 1
            arrived.notify_all()
        return get()

    get = load_once(load)
    with pytest.raises(OSError):
        get()
    with ThreadPoolExecutor(callers) as pool:
        models = list(pool.map(caller, range(callers)))
    assert len(loads) == 2
    assert all(model is models[0] for model in models)


async def test_model_failures_become_provider_errors() -> None:
    with pytest.raises(ProviderError, match=r"synthesis failed \(ValueError\)") as caught:
        await in_thread("offline", "synthesis", int, "not a number")
    assert caught.value.provider == "offline"


# --- Whisper ---------------------------------------------------------------------------------------------------


async def test_whisper_transcribes_speech_pushed_in_20ms_frames(stt: WhisperSTT, tmp_path: Path) -> None:
    samples, rate = read_wav_int16(make_speech_wav("the weather is nice today", tmp_path / "said.wav"))
    assert rate == PIPELINE_RATE

    transcript = await transcribe(stt, samples, prompt="Luna")

    assert words_match("the weather is nice today", transcript.text), transcript.text
    assert transcript.text == transcript.text.strip()
    assert transcript.language == "en"
    assert transcript.usage == Usage(stt_seconds=pytest.approx(len(samples) / PIPELINE_RATE))


async def test_whisper_cancel_reports_the_audio_it_was_transcribing_like_the_cloud_engines(stt: WhisperSTT) -> None:
    """Free, but consistent: a timeout cancels a transcription under way (its audio is counted); a stream dropped
    before the end of the utterance was never transcribed (nothing is)."""
    pcm = np.zeros(PIPELINE_RATE, dtype="<i2").tobytes()
    dropped, overdue = stt.open_stream(), stt.open_stream()
    await dropped.push(pcm)
    await overdue.push(pcm)
    finishing = asyncio.create_task(overdue.finish())
    await asyncio.sleep(0)  # one step: the model is at work on the second
    finishing.cancel()
    await asyncio.wait([finishing])

    assert await dropped.cancel() == Usage()
    assert await overdue.cancel() == Usage(stt_seconds=1.0)


@pytest.mark.parametrize("pcm", [b"", b"\x01", np.zeros(800, dtype="<i2").tobytes()], ids=["none", "odd", "50ms"])
async def test_whisper_returns_empty_text_for_no_or_too_little_audio(stt: WhisperSTT, pcm: bytes) -> None:
    stream = stt.open_stream()
    await stream.push(pcm)
    transcript = await stream.finish()
    assert transcript.text == ""
    assert transcript.usage.stt_seconds < 0.1


async def test_whisper_cancel_drops_the_utterance(stt: WhisperSTT, tmp_path: Path) -> None:
    samples, _ = read_wav_int16(make_speech_wav("the weather is nice today", tmp_path / "said.wav"))
    stream = stt.open_stream()
    await stream.push(samples.tobytes())
    await stream.cancel()
    assert (await stream.finish()).text == ""


async def test_transcription_leaves_the_event_loop_free(stt: WhisperSTT, tmp_path: Path) -> None:
    samples, _ = read_wav_int16(make_speech_wav("please summarize the meeting", tmp_path / "said.wav"))
    stream = stt.open_stream()
    await stream.push(samples.tobytes())

    transcript, ticks = await ticks_while(stream.finish())

    assert words_match("please summarize the meeting", transcript.text), transcript.text
    assert ticks >= 3, "the event loop was blocked while Whisper ran"


async def test_an_utterance_that_ends_while_the_model_loads_is_transcribed_once_it_is_loaded(
    stt: WhisperSTT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported stuck turn: speech right after Luna joins, while ``warm`` still loads Whisper. The utterance's
    ``finish`` must wait for that one load (not start a second, not be lost) and return the words."""
    loading, release = threading.Event(), threading.Event()
    loads: list[int] = []

    def slow_load() -> Any:
        loads.append(1)
        loading.set()
        release.wait(10)
        return whisper_stt._load_model()

    monkeypatch.setattr(whisper_stt, "shared_model", load_once(slow_load))  # a cold process: nothing loaded yet
    samples, _ = read_wav_int16(make_speech_wav("the weather is nice today", tmp_path / "said.wav"))
    warm = asyncio.create_task(stt.warm())
    async with asyncio.timeout(10):
        await asyncio.to_thread(loading.wait)  # the load is in flight ...
    stream = stt.open_stream()
    await stream.push(samples.tobytes())
    finishing = asyncio.create_task(stream.finish())  # ... when the utterance ends
    await asyncio.sleep(0)  # one step: finish runs to its wait on the load (and must not get further)
    assert not finishing.done()
    release.set()
    async with asyncio.timeout(30):
        transcript = await finishing
        await warm
    assert words_match("the weather is nice today", transcript.text), transcript.text
    assert loads == [1]


# --- Piper and espeak-ng -----------------------------------------------------------------------------------------


async def test_piper_speech_is_heard_back_by_whisper(tts: OfflineTTS, stt: WhisperSTT) -> None:
    text = "Hello, I am Luna, nice to meet you."
    samples, usages = await speak(tts, text)

    assert usages == [Usage(tts_characters=len(text))]
    assert 1.0 < len(samples) / ROOM_RATE < 6.0
    assert voiced_seconds(samples, ROOM_RATE) > 1.0

    heard = await transcribe(stt, soxr.resample(samples, ROOM_RATE, PIPELINE_RATE))
    assert words_match(text, heard.text), heard.text


async def test_piper_yields_each_sentence_as_soon_as_it_is_ready(
    tts: OfflineTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piper runs its model once per sentence; the first sentence's audio comes before the next one is computed.

    Within one sentence Piper cannot stream: a long sentence arrives in one piece.
    """
    voice = shared_voice()
    model_runs: list[int] = []
    run_model = voice.phoneme_ids_to_audio

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        model_runs.append(1)
        return run_model(*args, **kwargs)

    monkeypatch.setattr(voice, "phoneme_ids_to_audio", counting_run)

    chunks = tts.synthesize("This is the first sentence. Here comes the second one. And the third ends it.")
    first = await anext(chunks)
    runs_at_first_audio = len(model_runs)
    rest = [chunk async for chunk in chunks]

    assert isinstance(first, bytes) and first
    assert runs_at_first_audio == 1
    assert len(model_runs) == 3
    assert sum(isinstance(chunk, bytes) for chunk in rest) >= 2

    model_runs.clear()
    await speak(tts, "A single long sentence, with several clauses, still takes one run of the model, start to end.")
    assert len(model_runs) == 1


async def test_synthesis_leaves_the_event_loop_free(tts: OfflineTTS) -> None:
    (samples, _), ticks = await ticks_while(speak(tts, "The event loop keeps running while this sentence is made."))
    assert len(samples) > 0
    assert ticks >= 3, "the event loop was blocked while Piper ran"


def espeak_directly(text: str, path: Path) -> tuple[np.ndarray, int]:
    subprocess.run(["espeak-ng", "-v", CHINESE_VOICE, "-w", str(path), text], check=True)
    return read_wav_int16(path)


async def test_chinese_text_is_spoken_by_espeak_pinyin_voice(tts: OfflineTTS, tmp_path: Path) -> None:
    text = "你好，今天天气很好。"
    samples, usages = await speak(tts, text)

    assert usages == [Usage(tts_characters=len(text))]
    assert voiced_seconds(samples, ROOM_RATE) > 0.5
    # It is espeak-ng's Mandarin voice (Piper's English voice has no Chinese): same length, at the room rate.
    direct, rate = espeak_directly(text, tmp_path / "zh.wav")
    assert len(samples) / ROOM_RATE == pytest.approx(len(direct) / rate, abs=0.01)


async def test_espeak_timeout_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="timed out"):
        await speak(OfflineTTS(espeak_timeout_s=0.0), "你好")


async def test_blank_text_reports_only_usage(tts: OfflineTTS) -> None:
    samples, usages = await speak(tts, "  ")
    assert len(samples) == 0
    assert usages == [Usage()]


# --- demo responder ------------------------------------------------------------------------------------------------


def request(text: str, **fields: Any) -> ReplyRequest:
    return ReplyRequest(room_id="r", turn_id="t1", speaker_id="p1", speaker_name="Ana", text=text, **fields)


async def reply_items(text: str, **fields: Any) -> list[str | Usage]:
    return [item async for item in DemoReply().reply(request(text, **fields))]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("what time is it?", "I heard Ana say: what time is it?"),
        ("今天天气怎么样？", "我听到Ana说：今天天气怎么样？"),
    ],
)
async def test_demo_echoes_word_by_word_then_reports_no_tokens(text: str, answer: str) -> None:
    items = await reply_items(text)
    deltas, usage = items[:-1], items[-1]
    assert usage == Usage()
    assert all(isinstance(delta, str) and delta for delta in deltas)
    assert "".join(deltas) == answer  # type: ignore[arg-type]
    assert len(deltas) >= 5


@pytest.mark.parametrize(
    ("addressed", "may_stay_silent", "speaks"), [(False, True, False), (True, True, True), (False, False, True)]
)
async def test_demo_stays_silent_only_when_allowed_and_not_addressed(
    addressed: bool, may_stay_silent: bool, speaks: bool
) -> None:
    items = await reply_items("nice weather", addressed=addressed, may_stay_silent=may_stay_silent)
    assert items[-1] == Usage()
    assert (len(items) > 1) is speaks

"""OpenAISTT: the real ``openai`` client against a local fake of OpenAI's audio API (tests/fakes/openai_audio.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import logging
import math
import os
import shutil
import socket
import subprocess
import wave
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from fakes.openai_audio import REALTIME_LOGPROBS, FakeOpenAIAudio, Fault
from luna_voice.conversation.domain import Usage
from luna_voice.providers.base import PIPELINE_RATE, ProviderError, RateLimited, Transcript
from luna_voice.providers.openai_stt import OpenAISTT, _confidence
from luna_voice.providers.stt_models import MODELS, default_model, startup_warnings
from roomtools import until
from scripted_room import Room

KEY = "sk-test-0123456789abcdef"
MIXED = "Luna，明天的 weather 怎么样？"
PROMPT = "Participants: 王伟, Alice. The assistant is called Luna (露娜)."
KEYWORDS = ("Luna", "露娜", "王伟", "Luna")  # her names and participant names; duplicates are sent once
FRAME = 320 * 2  # 20 ms at 16 kHz, as the pipeline pushes
MODES = ["realtime", "http"]


def tone(seconds: float, freq: float = 440.0, rate: int = PIPELINE_RATE) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 8_000).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


async def say(stt: OpenAISTT, pcm: bytes, prompt: str | None = None, keywords: tuple[str, ...] = ()):
    stream = stt.open_stream(prompt=prompt, keywords=keywords)
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i : i + FRAME])
    return await stream.finish()


@pytest.fixture
async def fake():
    async with FakeOpenAIAudio(script=lambda _req: MIXED, api_key=KEY) as server:
        yield server


@pytest.fixture
async def make_stt(fake: FakeOpenAIAudio):
    made: list[OpenAISTT] = []

    def make(mode: str, **kw) -> OpenAISTT:
        kw.setdefault("finish_timeout_s", 2.0)
        stt = OpenAISTT(api_key=kw.pop("api_key", KEY), base_url=kw.pop("base_url", fake.base_url), mode=mode, **kw)
        made.append(stt)
        return stt

    yield make
    for stt in made:
        await stt.aclose()


def assert_safe(exc: ProviderError) -> None:
    for text in (str(exc), repr(exc), exc.reason):
        assert KEY not in text and KEY[-4:] not in text and "Incorrect API key" not in text


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("mode", MODES)
async def test_mixed_chinese_english_round_trip(fake, make_stt, mode):
    transcript = await say(make_stt(mode), tone(1.2), prompt=PROMPT, keywords=KEYWORDS)

    assert transcript.text == MIXED
    assert transcript.language is None  # nothing configured, nothing detected: no language invented
    assert transcript.usage.stt_seconds == pytest.approx(1.2)
    assert transcript.final_after_s is not None and transcript.final_after_s >= 0
    [req] = fake.requests
    assert req.transport == mode
    assert req.model == {"realtime": "gpt-live-transcribe", "http": "gpt-transcribe"}[mode]  # the current models
    assert (req.languages, req.keywords, req.prompt) == (["zh", "en"], ["Luna", "露娜", "王伟"], PROMPT)
    assert fake.connections[0].authorization == f"Bearer {KEY}"


@pytest.mark.parametrize("mode", MODES)
async def test_prompt_and_language_passed_through(fake, make_stt, mode):
    await say(make_stt(mode, language="zh", model="gpt-4o-mini-transcribe"), tone(0.5), prompt=PROMPT)

    [req] = fake.requests
    assert (req.prompt, req.language, req.model) == (PROMPT, "zh", "gpt-4o-mini-transcribe")


@pytest.mark.parametrize("mode", MODES)
async def test_deprecated_model_gets_no_fields_it_would_refuse(fake, make_stt, mode):
    """gpt-4o-transcribe stays selectable: keywords and the language list are left out, one language is kept."""
    await say(make_stt(mode, model="gpt-4o-transcribe"), tone(0.5), prompt=PROMPT, keywords=KEYWORDS)

    [req] = fake.requests
    assert (req.model, req.prompt, req.keywords, req.languages, req.language) == (
        "gpt-4o-transcribe",
        PROMPT,
        None,
        None,
        None,
    )


@pytest.mark.parametrize("mode", MODES)
async def test_optional_fields_omitted_when_unset(fake, make_stt, mode):
    await say(make_stt(mode, model="gpt-4o-transcribe"), tone(0.5))

    [req] = fake.requests
    assert req.language is None and req.prompt is None
    if mode == "realtime":
        assert fake.sessions[0]["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}


@pytest.mark.parametrize("mode", MODES)
async def test_one_configured_language_wins_over_the_list(fake, make_stt, mode):
    await say(make_stt(mode, language="en"), tone(0.5))

    [req] = fake.requests
    assert (req.language, req.languages) == ("en", None)


async def test_http_uploads_the_pushed_audio_unchanged(fake, make_stt):
    pcm = tone(0.75)
    await say(make_stt("http"), pcm)

    [req] = fake.requests
    assert req.stream is True
    assert (req.sample_rate, req.audio) == (PIPELINE_RATE, pcm)


async def test_realtime_session_config_and_resampling(fake, make_stt):
    await say(make_stt("realtime"), tone(1.0, freq=440.0))

    assert fake.connections[0].query == {"intent": "transcription"}
    [update] = fake.sessions
    audio_in = update["audio"]["input"]
    assert update["type"] == "transcription"
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert "turn_detection" in audio_in and audio_in["turn_detection"] is None  # sent as null: our endpointing
    [req] = fake.requests
    assert req.session["audio"]["input"]["turn_detection"] is None  # the effective config the fake applied
    assert req.sample_rate == 24_000
    assert len(req.audio) == 2 * 24_000  # 1 s in, exactly 1 s out
    assert dominant_hz(req.audio, 24_000) == pytest.approx(440.0, abs=2.0)  # same sound, not just same length


async def test_realtime_streams_audio_before_finish(fake, make_stt):
    """Audio goes out while the person speaks, so finish() only has to commit."""
    stream = make_stt("realtime").open_stream()
    pcm = tone(0.6)
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i : i + FRAME])
    await until(lambda: asyncio.sleep(0, bool(fake.sessions)), 2, "the session to open while audio is pushed", 0.01)
    assert (await stream.finish()).text == MIXED


@pytest.mark.parametrize("mode", MODES)
async def test_too_short_utterance_is_empty_without_a_request(fake, make_stt, mode):
    transcript = await say(make_stt(mode), tone(0.05))

    assert transcript.text == ""
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_script_sees_each_utterance(fake, make_stt, mode):
    fake.script = lambda req: f"{round(req.duration_s, 1)} 秒 seconds"
    stt = make_stt(mode)

    first = await say(stt, tone(0.5))
    second = await say(stt, tone(1.5))

    assert (first.text, second.text) == ("0.5 秒 seconds", "1.5 秒 seconds")


async def test_cancel_drops_the_utterance(fake, make_stt):
    stream = make_stt("realtime").open_stream()
    await stream.push(tone(0.5))
    await stream.cancel()
    await asyncio.sleep(0.05)  # time passes, to show that no request follows the cancel

    assert fake.requests == []


async def test_a_realtime_stream_cancelled_mid_utterance_counts_the_audio_it_sent(fake, make_stt):
    """The bot leaves while someone speaks: the streaming model already billed the 1.5 s it received."""
    stream = make_stt("realtime").open_stream()
    pcm = tone(1.5)
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i : i + FRAME])
    await fake.until(lambda: fake.appended >= 2 * round(1.45 * 24_000))  # the resampler holds back a few ms

    usage = await stream.cancel()

    assert fake.requests == []  # never committed: no transcript, but billed all the same
    assert usage.stt_seconds == pytest.approx(fake.appended / 2 / 24_000)
    assert usage.stt_seconds == pytest.approx(1.5, abs=0.05)


async def test_a_blip_too_short_to_commit_still_counts_what_the_streaming_model_heard(fake, make_stt):
    stream = make_stt("realtime").open_stream()
    await stream.push(tone(0.06))
    await fake.until(lambda: fake.appended > 0)

    transcript = await stream.finish()

    assert transcript.text == "" and fake.requests == []
    assert transcript.usage.stt_seconds == pytest.approx(fake.appended / 2 / 24_000)


async def test_a_committed_turn_model_cancelled_before_the_commit_counts_nothing(fake, make_stt):
    stream = make_stt("realtime", model="gpt-4o-transcribe").open_stream()
    await stream.push(tone(1.0))
    await fake.until(lambda: fake.appended > 0)

    assert await stream.cancel() == Usage()


async def test_a_realtime_transcription_cancelled_after_the_commit_counts_its_audio(fake, make_stt):
    """The core's timeout gives up on a transcript that never comes: the committed audio was billed."""
    fake.fail_next(Fault(hang=True))
    stream = make_stt("realtime", model="gpt-4o-transcribe", finish_timeout_s=30).open_stream()
    await stream.push(tone(1.0))
    finishing = asyncio.create_task(stream.finish())
    await fake.until(lambda: bool(fake.requests))  # committed: the fake records it, then never answers
    finishing.cancel()
    await asyncio.wait([finishing])

    usage = await stream.cancel()

    assert usage.stt_seconds == pytest.approx(fake.requests[0].duration_s) == pytest.approx(1.0, abs=0.02)


async def test_an_http_transcription_cancelled_after_the_upload_counts_its_audio(fake, make_stt):
    fake.fail_next(Fault(hang=True))
    stream = make_stt("http", finish_timeout_s=30).open_stream()
    unsent = make_stt("http").open_stream()
    await stream.push(tone(1.0))
    await unsent.push(tone(1.0))
    finishing = asyncio.create_task(stream.finish())
    await fake.until(lambda: fake.hung == 1)  # the whole upload reached the service
    finishing.cancel()
    await asyncio.wait([finishing])

    assert await stream.cancel() == Usage(stt_seconds=pytest.approx(1.0))
    assert await unsent.cancel() == Usage()  # nothing uploaded, nothing billed


# ------------------------------------------------------------------ the model table


def _transports(name: str) -> list[str]:
    return sorted(MODELS[name].transports)


@pytest.mark.parametrize(("model", "mode"), [(m, t) for m in MODELS for t in _transports(m)], ids=lambda v: str(v))
async def test_every_model_in_the_table_is_accepted_by_the_strict_fake(fake, make_stt, model, mode):
    """The table and the service agree: each model gets exactly the fields it takes, on each transport it serves."""
    await say(make_stt(mode, model=model, delay="low"), tone(0.5), prompt=PROMPT, keywords=KEYWORDS)

    [req] = fake.requests
    info = MODELS[model]
    assert req.model == model
    assert (req.prompt == PROMPT) is info.prompt
    assert (req.keywords is not None) is info.keywords
    assert (req.languages == ["zh", "en"]) is info.languages
    assert (req.delay == "low") is (info.delay and mode == "realtime")
    assert (req.include is not None) is info.logprobs  # asked for logprobs exactly when the model gives them


@pytest.mark.parametrize(("model", "mode"), [("gpt-live-transcribe", "http"), ("gpt-realtime-whisper", "http")])
def test_a_model_on_a_transport_it_does_not_serve_is_refused_at_construction(model, mode):
    with pytest.raises(ValueError, match="does not work over http"):
        OpenAISTT(api_key=KEY, model=model, mode=mode)


def test_table_rules():
    assert (default_model("realtime"), default_model("http")) == ("gpt-live-transcribe", "gpt-transcribe")
    assert {m for m, i in MODELS.items() if i.keywords} == {"gpt-live-transcribe", "gpt-transcribe"}
    assert {m for m, i in MODELS.items() if i.delay} == {"gpt-realtime-whisper"}
    assert not MODELS["gpt-realtime-whisper"].prompt
    assert {m for m, i in MODELS.items() if i.logprobs} == {
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
    }
    assert MODELS["gpt-4o-transcribe"].shutdown == dt.date(2027, 2, 26)
    assert all(MODELS[m].shutdown is None for m in ("gpt-live-transcribe", "gpt-transcribe"))


def test_startup_warnings_name_the_shutdown_date_and_the_replacement():
    [line] = startup_warnings("gpt-4o-transcribe", "realtime", today=dt.date(2026, 12, 3))
    assert "2027-02-26" in line and "gpt-live-transcribe" in line
    [after] = startup_warnings("gpt-4o-transcribe", "http", today=dt.date(2027, 3, 1))
    assert "was shut down" in after and "gpt-transcribe" in after
    assert startup_warnings("gpt-live-transcribe", "realtime") == []
    assert "not in Luna's table" in startup_warnings("gpt-9-transcribe", "realtime")[0]


async def test_unknown_model_gets_only_model_and_language(fake, make_stt):
    """A model Luna does not know is sent nothing it might refuse (the fake refuses the model itself)."""
    with pytest.raises(ProviderError):
        await say(make_stt("realtime", model="gpt-9-transcribe"), tone(0.5), prompt=PROMPT, keywords=KEYWORDS)
    assert fake.sessions == []  # refused at session.update, as the real service would
    assert fake.refused_updates[0]["audio"]["input"]["transcription"] == {"model": "gpt-9-transcribe"}


async def test_streaming_model_sends_text_while_the_person_speaks(fake, make_stt):
    """gpt-live-transcribe transcribes as audio arrives: text exists before the end of speech, not only after."""
    stream = make_stt("realtime").open_stream()
    pcm = tone(1.5)
    for i in range(0, len(pcm), FRAME):
        await stream.push(pcm[i : i + FRAME])
    await until(lambda: asyncio.sleep(0, bool(fake.early_deltas)), 3, "text streamed before the commit", 0.01)
    transcript = await stream.finish()
    assert transcript.text == MIXED
    assert transcript.final_after_s is not None


@pytest.mark.parametrize("mode", MODES)
async def test_usage_is_what_the_service_reported(fake, make_stt, mode):
    """Token-billed models are priced from the returned tokens; duration-billed ones from the returned seconds."""
    tokens = (await say(make_stt(mode, model="gpt-4o-transcribe"), tone(1.0))).usage
    assert tokens.stt_audio_tokens == 10 and tokens.stt_output_tokens == len(MIXED)  # the fake's count
    assert tokens.stt_token_seconds == pytest.approx(1.0) == tokens.stt_seconds

    duration = (await say(make_stt(mode), tone(1.0))).usage
    assert duration.stt_audio_tokens == 0 and duration.stt_token_seconds == 0
    assert duration.stt_seconds == pytest.approx(1.0)


@pytest.mark.parametrize("mode", MODES)
async def test_optional_response_fields_missing_are_read_defensively(fake, make_stt, mode):
    """An older model or server sends no ``languages`` and no ``usage``: the transcript still arrives."""
    fake.bare_events = True
    transcript = await say(make_stt(mode, language="zh"), tone(0.8))

    assert transcript.text == MIXED
    assert transcript.language == "zh"
    assert transcript.usage.stt_seconds == pytest.approx(0.8)  # our own measure as the fallback


@pytest.mark.parametrize("mode", MODES)
async def test_detected_language_is_used(fake, make_stt, mode):
    fake.detected = ["zh", "en"]
    transcript = await say(make_stt(mode), tone(0.8))

    assert transcript.language == "zh"


# ------------------------------------------------------------------ the confidence gate (token logprobs)

QUESTION = "Luna, what is the capital of France?"
LOGPROB_MODEL = "gpt-4o-mini-transcribe"  # one of the models that return token logprobs


def heard_by_the_core(transcript: Transcript, **cfg: float) -> dict:
    """The transcript, with its confidence, through the conversation core as Alice's utterance: the turn it made."""
    room = Room(**cfg)
    room.join(("a", "Alice"))
    if transcript.confidence is not None:
        room.confidence["a"] = transcript.confidence
    room.say("a", transcript.text)
    return room.turn_by("a")


@pytest.mark.parametrize("mode", MODES)
async def test_a_low_confidence_transcript_is_dropped_as_no_speech(fake, make_stt, mode):
    """Noise the model "transcribed" as a question, every token unsure: never answered."""
    fake.script = lambda _req: QUESTION
    fake.logprob = -2.0  # p = 0.135 per token
    transcript = await say(make_stt(mode, model=LOGPROB_MODEL), tone(1.0))

    [req] = fake.requests
    assert req.include == {"http": ["logprobs"], "realtime": [REALTIME_LOGPROBS]}[mode]
    assert transcript.text == QUESTION
    assert transcript.confidence is not None and transcript.confidence.words == pytest.approx(math.exp(-2.0))
    turn = heard_by_the_core(transcript)
    assert (turn["state"], turn["reason"], turn["no_speech"]) == ("skipped", "no_speech", "low_confidence")


@pytest.mark.parametrize("mode", MODES)
async def test_a_confident_transcript_passes_the_gate(fake, make_stt, mode):
    fake.script = lambda _req: QUESTION
    fake.logprob = -0.05
    transcript = await say(make_stt(mode, model=LOGPROB_MODEL), tone(1.0))

    assert transcript.confidence is not None and transcript.confidence.words == pytest.approx(math.exp(-0.05))
    assert heard_by_the_core(transcript)["decision"] == "answer"


@pytest.mark.parametrize(
    ("model", "mode"), [(m, t) for m in MODELS for t in _transports(m) if not MODELS[m].logprobs], ids=str
)
async def test_a_model_without_logprobs_is_never_sent_include_and_has_no_gate(fake, make_stt, model, mode):
    fake.logprob = -5.0  # would be dropped, were there any logprobs
    transcript = await say(make_stt(mode, model=model), tone(0.5))

    [req] = fake.requests
    assert req.include is None
    assert all("include" not in update for update in fake.sessions)
    assert transcript.confidence is None
    assert heard_by_the_core(transcript)["decision"] == "answer"


@pytest.mark.parametrize(
    "logprobs",
    [None, [], "nope", [{"token": "a"}], [type("L", (), {"logprob": float("nan")})()], [type("L", (), {})()]],
    ids=["absent", "empty", "not-a-list", "dict", "nan", "no-logprob"],
)
def test_logprobs_are_read_defensively(logprobs):
    """Whatever shape an older server or SDK gives, nothing usable means no confidence (no gate), not an error."""
    assert _confidence(logprobs) is None


def test_confidence_is_the_geometric_mean_token_probability():
    tokens = [type("L", (), {"logprob": lp})() for lp in (-0.1, -0.3, -2.0)]
    confidence = _confidence(tokens)
    assert confidence is not None
    assert confidence.words == pytest.approx(math.exp(-0.8))
    assert confidence.speech is None  # OpenAI has no no-speech probability: the words alone decide


async def test_the_confidence_floor_is_configurable(fake, make_stt):
    """p = 0.61 passes the default floor (exp(-1)) and is dropped under a stricter LUNA_STT_MIN_CONFIDENCE."""
    fake.script = lambda _req: QUESTION
    fake.logprob = -0.5
    transcript = await say(make_stt("http", model=LOGPROB_MODEL), tone(1.0))

    assert heard_by_the_core(transcript)["decision"] == "answer"
    strict = heard_by_the_core(transcript, min_word_confidence=0.7)
    assert (strict["reason"], strict["no_speech"]) == ("no_speech", "low_confidence")


# ------------------------------------------------------------------ the fake is as strict as the service


async def _raw_events(fake: FakeOpenAIAudio, *, intent: bool, session: dict | None, audio_s: float = 0.5):
    """Drive the fake with the raw SDK connection: optional session.update, audio, commit, then a clear as a fence."""
    client = AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
    query = {"extra_query": {"intent": "transcription"}} if intent else {"model": "gpt-realtime"}
    events = []
    try:
        async with client.realtime.connect(**query) as conn:
            if session is not None:
                await conn.session.update(session=session)
            await conn.input_audio_buffer.append(audio=base64.b64encode(tone(audio_s, rate=24_000)).decode())
            await conn.input_audio_buffer.commit()
            await conn.input_audio_buffer.clear()
            async for event in conn:
                events.append(event)
                if event.type == "input_audio_buffer.cleared":
                    break
    finally:
        await client.close()
    return events


def _session(**transcription) -> dict:
    return {"type": "transcription", "audio": {"input": {"transcription": transcription, "turn_detection": None}}}


async def test_fake_refuses_a_transcription_session_without_the_intent(fake):
    events = await _raw_events(fake, intent=False, session=_session(model="gpt-live-transcribe"))

    assert next(e.error.code for e in events if e.type == "error") == "invalid_value"
    assert fake.requests == []


async def test_fake_refuses_fields_the_model_does_not_take(fake):
    events = await _raw_events(fake, intent=True, session=_session(model="gpt-4o-transcribe", keywords=["Luna"]))

    assert next(e.error.code for e in events if e.type == "error") == "unsupported_parameter"
    assert fake.requests == []


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-transcribe", "whisper-1"])
async def test_fake_refuses_logprobs_for_a_model_that_has_none(fake, model):
    session = {**_session(model=model), "include": [REALTIME_LOGPROBS]}
    events = await _raw_events(fake, intent=True, session=session)

    assert next(e.error.code for e in events if e.type == "error") == "unsupported_parameter"
    assert fake.requests == []


async def test_fake_http_refuses_logprobs_for_a_model_that_has_none(fake):
    client = AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(
                model="gpt-transcribe", file=("a.wav", wav_of(tone(0.5)), "audio/wav"), include=["logprobs"]
            )
        assert info.value.code == "unsupported_parameter"
        ok = await client.audio.transcriptions.create(
            model=LOGPROB_MODEL, file=("a.wav", wav_of(tone(0.5)), "audio/wav"), include=["logprobs"]
        )
        assert ok.logprobs and all(lp.logprob == fake.logprob for lp in ok.logprobs)
        plain = await client.audio.transcriptions.create(
            model=LOGPROB_MODEL, file=("a.wav", wav_of(tone(0.5)), "audio/wav")
        )
        assert plain.logprobs is None  # only when asked
    finally:
        await client.close()


def wav_of(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PIPELINE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


async def test_fake_does_not_transcribe_without_a_transcription_config(fake):
    events = await _raw_events(fake, intent=True, session=None)

    kinds = [e.type for e in events]
    assert "input_audio_buffer.committed" in kinds
    assert not any(k.startswith("conversation.item.input_audio_transcription") for k in kinds)
    assert fake.requests == []


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_key_is_auth_refused_without_leaking_it(fake, make_stt, mode):
    with pytest.raises(ProviderError) as info:
        await say(make_stt(mode, api_key=KEY[:-1] + "X"), tone(0.5))

    assert info.value.reason == "auth refused"
    assert_safe(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_401_is_auth_refused(fake, make_stt, mode):
    fake.fail_next(Fault(status=401))
    with pytest.raises(ProviderError) as info:
        await say(make_stt(mode), tone(0.5))

    assert info.value.reason == "auth refused"
    assert_safe(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_429_is_rate_limited_with_retry_after(fake, make_stt, mode):
    fake.fail_next(Fault(status=429, retry_after="7"))
    with pytest.raises(RateLimited) as info:
        await say(make_stt(mode), tone(0.5))

    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("mode", MODES)
async def test_500_fails_once_without_retries(fake, make_stt, mode):
    fake.fail_next(Fault(status=500))
    with pytest.raises(ProviderError) as info:
        await say(make_stt(mode), tone(0.5))

    assert info.value.reason == "http 500"
    assert len(fake.connections) == 1  # no SDK backoff eating the turn's time
    assert fake.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_hang_times_out(fake, make_stt, mode):
    fake.fail_next(Fault(hang=True))
    with pytest.raises(ProviderError) as info:
        await asyncio.wait_for(say(make_stt(mode, finish_timeout_s=0.5), tone(0.5)), timeout=5)

    assert info.value.reason == "timeout"


@pytest.mark.parametrize("mode", MODES)
async def test_unreachable(make_stt, mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ProviderError) as info:
        await say(make_stt(mode, base_url=f"http://127.0.0.1:{closed_port}/v1"), tone(0.5))

    assert info.value.reason == "unreachable"


@pytest.mark.parametrize(
    ("code", "reason", "error_type"),
    [
        ("server_error", "server error: server_error", ProviderError),
        ("invalid_api_key", "auth refused", ProviderError),
        ("rate_limit_exceeded", "rate limited", RateLimited),
    ],
)
async def test_realtime_error_event(fake, make_stt, code, reason, error_type):
    fake.fail_next(Fault(error_code=code))
    with pytest.raises(error_type) as info:
        await say(make_stt("realtime"), tone(0.5))

    assert info.value.reason == reason


async def test_realtime_drop_while_speaking_reconnects_and_loses_no_audio(fake, make_stt):
    fake.fail_next(Fault(drop_after_appends=1))
    pcm = tone(2.5, freq=300.0)
    half = len(pcm) // 2 // FRAME * FRAME
    stream = make_stt("realtime").open_stream()

    for i in range(0, half, FRAME):
        await stream.push(pcm[i : i + FRAME])
    # the person is still talking when the socket drops and the stream reconnects
    await until(lambda: asyncio.sleep(0, len(fake.sessions) == 2), 2, "the stream to reconnect", 0.01)
    assert len(fake.connections) == 2
    for i in range(half, len(pcm), FRAME):
        await stream.push(pcm[i : i + FRAME])
    transcript = await stream.finish()

    assert transcript.text == MIXED
    assert len(fake.connections) == 2 and len(fake.sessions) == 2  # the new session was configured again
    [req] = fake.requests
    assert len(req.audio) == 2 * round(2.5 * 24_000)  # the whole utterance, resent from its start
    assert dominant_hz(req.audio, 24_000) == pytest.approx(300.0, abs=2.0)
    # The dropped session's audio was billed too: usage counts it on top of the resent utterance.
    assert 2.5 < transcript.usage.stt_seconds <= 2.5 + half / 2 / PIPELINE_RATE + 0.01


async def test_realtime_second_drop_fails_the_utterance(fake, make_stt):
    fake.fail_next(Fault(drop_after_appends=1))
    fake.fail_next(Fault(drop_after_appends=1))
    with pytest.raises(ProviderError) as info:
        await asyncio.wait_for(say(make_stt("realtime"), tone(0.5)), timeout=5)

    assert info.value.reason == "connection lost"
    assert len(fake.connections) == 2
    # A streaming model heard (and billed) the audio of both sessions: the failure says so.
    assert info.value.usage is not None and 0 < info.value.usage.stt_seconds <= 2 * 0.5 + 0.01


async def test_a_committed_turn_model_is_not_billed_for_a_dropped_session(fake, make_stt):
    """gpt-4o-transcribe transcribes on commit: audio of a session that dropped before it was never billed."""
    fake.fail_next(Fault(drop_after_appends=1))
    transcript = await asyncio.wait_for(say(make_stt("realtime", model="gpt-4o-transcribe"), tone(0.5)), timeout=5)

    assert len(fake.connections) == 2
    assert transcript.usage.stt_seconds == pytest.approx(0.5)


# ------------------------------------------------------------------ live


def espeak_clip(tmp_path: Path, text: str) -> bytes:
    raw, wav = tmp_path / "raw.wav", tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-v", "en-gb-x-rp", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(PIPELINE_RATE), "-c", "1", "-b", "16", str(wav)], check=True, capture_output=True
    )
    with wave.open(str(wav)) as w:
        return w.readframes(w.getnframes())


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="OPENAI_API_KEY is not set")
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
@pytest.mark.parametrize("mode", MODES)
async def test_live_openai(tmp_path, mode):
    pcm = espeak_clip(tmp_path, "Hello Luna, what is the weather like tomorrow?")
    stt = OpenAISTT(
        api_key=os.environ["OPENAI_API_KEY"],
        base_url=os.environ.get("OPENAI_BASE_URL"),
        mode=mode,
        finish_timeout_s=30.0,
    )
    try:
        transcript = await say(stt, pcm, prompt="The assistant is called Luna (露娜).")
    finally:
        await stt.aclose()

    words = transcript.text.lower()
    assert "luna" in words and "weather" in words, transcript.text


@pytest.mark.parametrize("mode", MODES)
async def test_key_never_logged_even_at_debug(fake, make_stt, mode, caplog):
    caplog.set_level(logging.DEBUG)
    await say(make_stt(mode), tone(0.5))

    assert caplog.records, "debug logging was not captured"
    assert KEY not in caplog.text

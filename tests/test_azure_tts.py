"""AzureTextToSpeech: the real Speech SDK against a local USP WebSocket server (tests/fakes/azure_usp.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import numpy as np
import pytest
import structlog

from fakes.azure_usp import PATHS, FakeAzureTts, Fault
from luna_voice.conversation.domain import Usage
from luna_voice.providers.azure_tts import AzureTextToSpeech, billable_characters
from luna_voice.providers.base import ProviderError, RateLimited
from pageless import PagelessHost
from roomtools import until

ZH = "你好，我是 Luna。"
EN = "Hello, I am Luna, nice to meet you."
EN_VOICE = "en-US-AvaMultilingualNeural"
KEY = "s3cret-subscription-key"


@pytest.fixture
async def fake():
    async with FakeAzureTts(key=KEY) as server:
        yield server


@pytest.fixture
async def make(fake: FakeAzureTts):
    """Build providers for the fake; each is closed at the end of the test."""
    made: list[AzureTextToSpeech] = []

    def build(**overrides) -> AzureTextToSpeech:
        # A generous dial bound: under load a slow local dial must not turn into a probe request the test counts.
        args = {"key": KEY, "region": None, "endpoint": fake.endpoint, "timeout_s": 3.0, "dial_timeout_s": 5.0}
        args |= overrides
        made.append(tts := AzureTextToSpeech(**args))
        return tts

    yield build
    for tts in made:
        await tts.aclose()


async def speak(tts: AzureTextToSpeech, text: str) -> tuple[list[bytes], Usage]:
    """All chunks and the Usage of one sentence; a hang fails the test instead of blocking it."""
    chunks: list[bytes] = []
    usages: list[Usage] = []
    async with asyncio.timeout(15):
        async for item in tts.synthesize(text):
            (usages if isinstance(item, Usage) else chunks).append(item)  # type: ignore[arg-type]
    assert len(usages) == 1, "one Usage per sentence"
    return chunks, usages[0]


async def failure(tts: AzureTextToSpeech, text: str = ZH) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await speak(tts, text)
    return caught.value


# --- streaming and audio --------------------------------------------------------------------------------------


async def test_audio_streams_in_chunks_before_the_sentence_ends(fake: FakeAzureTts, make) -> None:
    tts = make()
    fake.gate = asyncio.Event()  # the fake holds the rest of the sentence after the first chunk
    stream = tts.synthesize(ZH)
    async with asyncio.timeout(10):
        usage = await anext(stream)  # billed as soon as it is sent, so reported first
        first = await anext(stream)
        assert isinstance(first, bytes) and first
        assert fake.synthesises[0].turn_ended is False  # we got audio while the service was still synthesizing
        fake.gate.set()
        rest = [item async for item in stream]
    chunks = [first, *rest]
    assert len(chunks) > 3
    assert b"".join(chunks) == fake.expected_pcm(ZH, 48_000)
    assert usage == Usage(tts_characters=billable_characters(ZH))
    assert tts.last_ttfb_s is not None and tts.last_ttfb_s > 0


@pytest.mark.parametrize("rate", [48_000, 24_000, 16_000])
async def test_sample_rate_is_requested_and_duration_matches(fake: FakeAzureTts, make, rate: int) -> None:
    tts = make(sample_rate=rate)
    chunks, _ = await speak(tts, ZH)
    assert fake.synthesises[0].output_format == f"raw-{rate // 1000}khz-16bit-mono-pcm"
    pcm = b"".join(chunks)
    assert pcm == fake.expected_pcm(ZH, rate)
    assert len(pcm) / 2 / rate == pytest.approx(len(ZH) * fake.ms_per_char / 1000, abs=1 / rate)


def test_unsupported_sample_rate_and_missing_location_are_refused() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        AzureTextToSpeech(key=KEY, region="eastus", endpoint=None, sample_rate=44_100)
    with pytest.raises(ValueError, match="region or an endpoint"):
        AzureTextToSpeech(key=KEY, region=None, endpoint=None)


async def test_ssml_special_characters_reach_the_service_intact(fake: FakeAzureTts, make) -> None:
    text = """Tom & Jerry say "<hi>" -- it's 5 > 3 & 2 < 4 ]]> 完"""
    chunks, usage = await speak(make(), text)
    assert fake.synthesises[0].text == text
    assert b"".join(chunks) == fake.expected_pcm(text, 48_000)
    assert usage.tts_characters == len(text) + 1  # "完" is billed twice


async def test_blank_text_costs_nothing_and_sends_nothing(fake: FakeAzureTts, make) -> None:
    chunks, usage = await speak(make(), "  ")
    assert (chunks, usage, fake.synthesises) == ([], Usage(), [])


# --- voices ---------------------------------------------------------------------------------------------------


async def test_chinese_voice_reads_everything_by_default(fake: FakeAzureTts, make) -> None:
    tts = make()
    await speak(tts, ZH)
    await speak(tts, EN)
    assert [s.voice for s in fake.synthesises] == ["zh-CN-XiaoxiaoNeural"] * 2
    assert 'xml:lang="zh-CN"' in fake.synthesises[0].ssml


async def test_english_voice_takes_latin_sentences_when_configured(fake: FakeAzureTts, make) -> None:
    tts = make(voice_en=EN_VOICE)
    for text in (EN, ZH, "我今天用 Python 写代码。", "Python 3.12 发布了 new features today"):
        await speak(tts, text)
    assert [s.voice for s in fake.synthesises] == [
        EN_VOICE,
        "zh-CN-XiaoxiaoNeural",
        "zh-CN-XiaoxiaoNeural",  # mostly Chinese with an English word
        EN_VOICE,  # mostly Latin letters
    ]
    assert 'xml:lang="en-US"' in fake.synthesises[0].ssml


# --- connection reuse -----------------------------------------------------------------------------------------


async def test_warm_opens_the_socket_before_the_first_sentence(fake: FakeAzureTts, make) -> None:
    tts = make()
    await tts.warm()
    assert len(fake.connections) == 1
    assert fake.connections[0].path == PATHS[0]
    assert fake.synthesises == []  # connected, nothing spoken yet
    await speak(tts, ZH)
    await speak(tts, EN)
    assert len(fake.connections) == 1  # both sentences used the warm socket
    assert fake.connections[0].frames.count("ssml") == 2


async def test_concurrent_sentences_on_one_instance_each_get_their_own_audio(fake: FakeAzureTts, make) -> None:
    tts = make()
    (a, _), (b, _) = await asyncio.gather(speak(tts, ZH), speak(tts, EN))
    assert b"".join(a) == fake.expected_pcm(ZH, 48_000)
    assert b"".join(b) == fake.expected_pcm(EN, 48_000)


# --- interruption ---------------------------------------------------------------------------------------------


async def _cut_by_aclose(tts: AzureTextToSpeech, text: str) -> None:
    stream = tts.synthesize(text)
    assert isinstance(await anext(stream), Usage)  # billed when sent
    assert isinstance(await anext(stream), bytes)
    await stream.aclose()


async def _cut_by_task_cancel(tts: AzureTextToSpeech, text: str) -> None:
    got_audio = asyncio.Event()

    async def consume() -> None:
        async for item in tts.synthesize(text):
            if isinstance(item, bytes):
                got_audio.set()

    task = asyncio.create_task(consume())
    await got_audio.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("cut", [_cut_by_aclose, _cut_by_task_cancel])
async def test_interrupted_sentence_never_leaks_into_the_next(fake: FakeAzureTts, make, cut) -> None:
    tts = make()
    await tts.warm()
    fake.gate = asyncio.Event()
    async with asyncio.timeout(10):
        await cut(tts, "这是一句很长的话，会被打断。")
    fake.gate.set()  # the rest of the first sentence may now flow, racing the SDK's stop
    chunks, usage = await speak(tts, EN)  # straight away, as after a barge-in
    assert b"".join(chunks) == fake.expected_pcm(EN, 48_000)
    assert usage.tts_characters == len(EN)  # no Chinese characters: one each
    # stopping drops the socket; the provider dialled again at once and the next sentence used that socket
    assert [c.frames.count("ssml") for c in fake.connections] == [1, 1]


@pytest.mark.parametrize(
    ("text", "billed"),
    [
        ("Hello, Luna.", 12),
        ("明天是晴天。", 6 * 2 - 1),  # five hanzi twice, the full-width stop once
        ("Luna 说 OK", 9 + 1),
        ("ひらがなとカタカナ", 9),  # kana are not Chinese characters
        ("日本語", 6),  # kanji are
        ("한국어 漢字", 6 + 2),  # hangul once, hanja twice
        ("𠀀", 2),  # an ideograph beyond the BMP is one code point, billed twice
    ],
)
def test_billable_characters_follow_azures_rule(text: str, billed: int) -> None:
    assert billable_characters(text) == billed


async def test_a_stopped_sentence_is_still_billed(fake: FakeAzureTts, make) -> None:
    """Barge-in after the first chunk: the sentence was billed when sent, and its usage was already reported."""
    tts = make()
    fake.gate = asyncio.Event()
    got: list[bytes | Usage] = []
    async with asyncio.timeout(10):
        stream = tts.synthesize(ZH)
        async for item in stream:
            got.append(item)
            if isinstance(item, bytes):
                break
        await stream.aclose()
    fake.gate.set()
    assert [i for i in got if isinstance(i, Usage)] == [Usage(tts_characters=billable_characters(ZH))]


# --- failures -------------------------------------------------------------------------------------------------


async def test_an_unknown_voice_fails_with_a_clear_reason(fake: FakeAzureTts, make) -> None:
    """The service refuses a voice it does not have (1007 after turn.start); the turn says so, not 'unreachable'."""
    error = await failure(make(voice="zh-CN-NoSuchNeural"))
    assert error.reason == "unsupported voice"
    assert fake.synthesises[0].voice == "zh-CN-NoSuchNeural" and fake.synthesises[0].audio_bytes == 0


async def test_wrong_key_is_auth_refused_and_no_secret_leaks(fake: FakeAzureTts, make, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="luna_voice")  # the fake server itself logs the headers it got
    wrong = "wrong-key-0123456789"
    tts = make(key=wrong)
    with structlog.testing.capture_logs() as logs:
        err = await failure(tts)
    assert err.reason == "auth refused"
    everything = "\n".join([str(err), repr(err), repr(tts), str(logs), caplog.text])
    assert wrong not in everything
    assert any(entry["event"] == "tts.failed" for entry in logs)


@pytest.mark.parametrize(("status", "reason"), [(401, "auth refused"), (403, "auth refused")])
async def test_handshake_refusal_is_auth_refused(fake: FakeAzureTts, make, status: int, reason: str) -> None:
    fake.reject_status = status
    assert (await failure(make())).reason == reason


async def test_throttled_handshake_is_rate_limited(fake: FakeAzureTts, make) -> None:
    fake.reject_status = 429
    err = await failure(make())
    assert isinstance(err, RateLimited)
    assert err.reason == "rate limited"


async def test_nothing_listening_is_unreachable(make) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tts = make(endpoint=f"ws://127.0.0.1:{port}{PATHS[0]}")
    assert (await failure(tts)).reason == "unreachable"


async def test_socket_closed_mid_sentence_is_a_service_error_then_recovers(fake: FakeAzureTts, make) -> None:
    tts = make()
    fake.fault = Fault.CLOSE_MID_STREAM
    assert (await failure(tts)).reason == "service error"
    fake.fault = Fault.NONE
    chunks, _ = await speak(tts, EN)
    assert b"".join(chunks) == fake.expected_pcm(EN, 48_000)


async def test_stalled_service_times_out_then_recovers(fake: FakeAzureTts, make) -> None:
    tts = make(timeout_s=0.5)
    fake.fault = Fault.STALL
    assert (await failure(tts)).reason == "timeout"
    fake.fault = Fault.NONE
    chunks, _ = await speak(tts, EN)
    assert b"".join(chunks) == fake.expected_pcm(EN, 48_000)


async def test_slow_first_chunk_is_waited_for_and_measured(fake: FakeAzureTts, make) -> None:
    tts = make()
    await tts.warm()
    fake.first_chunk_delay_s = 0.3
    chunks, _ = await speak(tts, ZH)
    assert b"".join(chunks) == fake.expected_pcm(ZH, 48_000)
    assert tts.last_ttfb_s is not None and tts.last_ttfb_s >= 0.3


async def test_first_chunk_later_than_the_timeout_is_a_timeout(fake: FakeAzureTts, make) -> None:
    tts = make(timeout_s=0.3)
    fake.first_chunk_delay_s = 1.0
    assert (await failure(tts)).reason == "timeout"


# --- live -----------------------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.skipif(
    not (os.environ.get("AZURE_SPEECH_KEY") and os.environ.get("AZURE_SPEECH_REGION")),
    reason="live Azure test needs AZURE_SPEECH_KEY and AZURE_SPEECH_REGION",
)
async def test_live_azure_speaks_chinese() -> None:
    tts = AzureTextToSpeech(
        key=os.environ["AZURE_SPEECH_KEY"], region=os.environ["AZURE_SPEECH_REGION"], endpoint=None, timeout_s=15.0
    )
    try:
        await tts.warm()
        chunks, usage = await speak(tts, ZH)
    finally:
        await tts.aclose()
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
    assert len(pcm) / tts.sample_rate > 0.5
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 100  # not silence
    assert usage.tts_characters == billable_characters(ZH)


# --- failures surface fast -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["bad_key", "unreachable"])
async def test_warm_finds_a_refused_key_or_a_dead_service_within_the_dial_bound(
    fake: FakeAzureTts, make, where
) -> None:
    """The SDK reports no failed dial; warm() must not sit out the 30 s timeout, and must say what is wrong."""
    if where == "bad_key":
        tts, expected = make(key="wrong-key", timeout_s=30.0, dial_timeout_s=0.3), "auth refused"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        endpoint = f"ws://127.0.0.1:{port}/tts/cognitiveservices/websocket/v1"
        tts, expected = make(endpoint=endpoint, timeout_s=30.0, dial_timeout_s=0.3), "unreachable"
    async with asyncio.timeout(10):  # far below timeout_s: the old warm() waited all of it
        await tts.warm()
    assert tts.problem == expected
    assert [s.text for s in fake.synthesises] == []  # the probe reached no service that could bill it


async def test_a_healthy_service_has_no_problem_and_the_probe_bills_nothing(fake: FakeAzureTts, make) -> None:
    tts = make(dial_timeout_s=0.0, timeout_s=20.0)  # forces the probe; a loaded machine may answer it slowly
    await tts.warm()
    assert tts.problem is None
    assert [s.text for s in fake.synthesises] in ([], [""])  # at most an empty request: nothing billable
    _, usage = await speak(tts, EN)
    assert usage.tts_characters == len(EN)


async def test_a_probe_lost_on_the_way_is_asked_again_and_a_healthy_service_shows_no_problem(
    fake: FakeAzureTts, make
) -> None:
    fake.lose_requests = 1  # read, never answered: as a request made while the SDK's first dial was in flight
    tts = make(dial_timeout_s=0.0, timeout_s=1.0)
    await tts.warm()
    assert tts.problem is None
    assert [s.text for s in fake.synthesises] == ["", ""]  # asked twice, nothing billable either time
    _, usage = await speak(tts, EN)
    assert usage.tts_characters == len(EN)


async def test_after_a_stop_whose_redial_fails_the_next_sentence_fails_at_once(fake: FakeAzureTts, make) -> None:
    """Barge-in drops the socket; if the key is revoked meanwhile, the next sentence fails fast and says why."""
    tts = make(timeout_s=30.0, dial_timeout_s=0.3)
    await tts.warm()
    fake.gate = asyncio.Event()
    async with asyncio.timeout(10):
        await _cut_by_aclose(tts, ZH)
    fake.reject_status = 401  # the redial after the stop is refused
    fake.gate.set()
    async with asyncio.timeout(10):  # not the 30 s timeout
        error = await failure(tts, EN)
    assert error.reason == "auth refused" and tts.problem == "auth refused"


async def test_readyz_shows_a_refused_azure_key_from_the_startup_probe(fake: FakeAzureTts, start_service) -> None:
    svc = await start_service(
        host=PagelessHost(), tts_provider="azure", azure_speech_key="wrong-key", azure_speech_endpoint=fake.endpoint
    )

    async def flagged():  # type: ignore[no-untyped-def]
        status, ready = await svc.call("GET", "/readyz")
        return (status, ready) if ready["provider_problems"] else None

    status, ready = await until(flagged, 10, "the startup probe to report the refused key")
    assert status == 200 and ready["provider_problems"] == {"tts": "auth refused"}

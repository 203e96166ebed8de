"""OpenAIChatEngine: the real ``openai`` client against a local chat-completions server, plus a live check."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator

import openai
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from fakes.chat_completions import Completion, FakeChatCompletions, fake_chat_completions
from luna_voice.conversation.domain import ReplyRequest, RoomLine, SpokenReason, Usage
from luna_voice.providers.base import ProviderError, RateLimited
from luna_voice.providers.openai_chat import OpenAIChatEngine
from luna_voice.providers.replies import ThinkFilter
from reply_stream import GUARD_S, collect, failure, texts, total

KEY = "sk-test-0123456789abcdef"
PROMPT = "You are Luna, brief and friendly."


def request(text: str = "Luna, what did Bob just say?", turn_id: str = "t1", **kw: object) -> ReplyRequest:
    base: dict[str, object] = {
        "room_id": "room-1",
        "turn_id": turn_id,
        "speaker_id": "p-alice",
        "speaker_name": "Alice",
        "text": text,
        "context": (
            RoomLine("Bob", "It will rain at noon.", 1_700_000_000.0),
            RoomLine("Carol", "Bring umbrellas.", 1_700_000_004.0),
        ),
    }
    return ReplyRequest(**{**base, **kw})  # type: ignore[arg-type]


async def answer(engine: OpenAIChatEngine, req: ReplyRequest) -> list[str | Usage]:
    """A turn played to the end: the reply, then its closing call with all of it heard."""
    got = await collect(engine, req)
    await engine.record_spoken(req.room_id, req.turn_id, "".join(texts(got)), SpokenReason.DONE)
    return got


async def aiter_until_text(replies: AsyncIterator[str | Usage]) -> AsyncIterator[str | Usage]:
    async for item in replies:
        yield item
        if isinstance(item, str):
            return


def sent_messages(fake: FakeChatCompletions, index: int = -1) -> list[dict[str, str]]:
    return fake.requests[index].json["messages"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeChatCompletions]:
    async with fake_chat_completions(api_key=KEY) as f:
        yield f


def make_engine(fake: FakeChatCompletions, **kw: object) -> OpenAIChatEngine:
    args: dict[str, object] = {"base_url": fake.base_url, "api_key": KEY, "system_prompt": PROMPT, "timeout_s": 0.5}
    return OpenAIChatEngine(**{**args, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def engine(fake: FakeChatCompletions) -> AsyncIterator[OpenAIChatEngine]:
    e = make_engine(fake)
    yield e
    await e.aclose()


async def test_deltas_stream_in_order_with_usage(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    release = asyncio.Event()
    fake.script(
        Completion(deltas=("Bob said ", "rain ", "at noon."), prompt_tokens=321, completion_tokens=5, hold_last=release)
    )
    got: list[str | Usage] = []
    async with asyncio.timeout(GUARD_S):
        async for item in engine.reply(request()):
            got.append(item)
            if len(got) == 2:
                assert not release.is_set(), "the last delta cannot have been sent yet"
                release.set()
    assert texts(got) == ["Bob said ", "rain ", "at noon."]
    assert total(got) == Usage(llm_input_tokens=321, llm_output_tokens=5)  # the service's count, not estimates


async def test_request_shape_and_context_with_names(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    await collect(engine, request())
    call = fake.requests[0]
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert call.json["model"] == "glm-4.7-flash"
    assert call.json["stream"] is True
    assert call.json["stream_options"] == {"include_usage": True}
    system, user = call.json["messages"]
    assert system["role"] == "system" and system["content"].startswith(PROMPT)
    assert "<silent>" not in system["content"]  # only offered under the llm turn policy
    assert user == {
        "role": "user",
        "content": "Recent conversation in the room (oldest first, UTC):\n"
        "[22:13:20] Bob: It will rain at noon.\n"
        "[22:13:24] Carol: Bring umbrellas.\n"
        "\n"
        "Now Alice (to you): Luna, what did Bob just say?",
    }


async def test_history_is_kept_per_room(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    fake.script(Completion(deltas=("Rain ", "at noon.")))
    await answer(engine, request("Luna, weather?", context=()))
    await collect(engine, request("And tomorrow?", turn_id="t2", context=()))
    assert sent_messages(fake)[1:] == [
        {"role": "user", "content": "Alice: Luna, weather?"},
        {"role": "assistant", "content": "Rain at noon."},
        {"role": "user", "content": "Now Alice (to you): And tomorrow?"},
    ]
    await collect(engine, request("Hi", turn_id="t3", room_id="room-2", context=()))
    assert len(sent_messages(fake)) == 2  # another room starts fresh


@pytest.mark.parametrize(("limits", "kept"), [({"max_history_messages": 4}, 2), ({"max_history_chars": 40}, 1)])
async def test_history_is_bounded(fake: FakeChatCompletions, limits: dict[str, int], kept: int) -> None:
    engine = make_engine(fake, **limits)
    try:
        for i in range(4):
            fake.script(Completion(deltas=(f"Answer {i}.",)))
            await answer(engine, request(f"Question {i}", turn_id=f"t{i}", context=()))
        await collect(engine, request("Last", turn_id="t9", context=()))
    finally:
        await engine.aclose()
    history = sent_messages(fake)[1:-1]
    assert [m["content"] for m in history] == [
        c for i in range(4 - kept, 4) for c in (f"Alice: Question {i}", f"Answer {i}.")
    ]


async def test_history_keeps_only_the_spoken_part_after_barge_in(
    fake: FakeChatCompletions, engine: OpenAIChatEngine
) -> None:
    fake.script(Completion(deltas=("It rains at noon. ", "Also tomorrow it will be cold."), hold_last=asyncio.Event()))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.reply(request("Luna, weather?", context=())):
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(GUARD_S):
        await first.wait()
        task.cancel()  # what the pipeline does on barge-in
        with pytest.raises(asyncio.CancelledError):
            await task
    await engine.record_spoken("room-1", "t1", "It rains", SpokenReason.INTERRUPTED)
    await collect(engine, request("Sorry, go on", turn_id="t2", context=()))
    assert sent_messages(fake)[1:3] == [
        {"role": "user", "content": "Alice: Luna, weather?"},
        {"role": "assistant", "content": "It rains [interrupted]"},
    ]
    assert "[interrupted]" in sent_messages(fake)[0]["content"]  # the model is told what the mark means


async def test_record_spoken_replaces_a_finished_answer(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    fake.script(Completion(deltas=("Twelve degrees.",)))
    await collect(engine, request("Luna, temperature?", context=()))
    await engine.record_spoken("room-1", "t1", "12 degrees.", SpokenReason.DONE)
    await engine.record_spoken("room-1", "unknown-turn", "ignored", SpokenReason.INTERRUPTED)
    await collect(engine, request("Thanks", turn_id="t2", context=()))
    assert sent_messages(fake)[2] == {"role": "assistant", "content": "12 degrees."}


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (("<sil", "ent", ">"), []),
        (("\n", "<silent>"), []),
        ((), []),
        (("<", "silly question, ", "Bob said rain."), ["<silly question, ", "Bob said rain."]),
        (("Bob said rain.",), ["Bob said rain."]),
    ],
    ids=["token", "token-after-newline", "empty", "starts-like-token", "plain"],
)
async def test_may_stay_silent(
    fake: FakeChatCompletions, engine: OpenAIChatEngine, deltas: tuple[str, ...], expected: list[str]
) -> None:
    fake.script(Completion(deltas=deltas, prompt_tokens=50, completion_tokens=3))
    got = await answer(engine, request("Bob, pass the salt", addressed=False, may_stay_silent=True))
    assert got == [*expected, Usage(llm_input_tokens=50, llm_output_tokens=3)]
    assert "<silent>" in sent_messages(fake)[0]["content"]
    assert sent_messages(fake)[-1]["content"].endswith("\nNow Alice: Bob, pass the salt")
    await collect(engine, request("next", turn_id="t2", context=()))
    kept = [m["content"] for m in sent_messages(fake)[1:-1]]
    assert kept == ([] if not expected else ["Alice: Bob, pass the salt", "".join(expected)])


async def test_silence_detection_does_not_delay_a_real_answer(
    fake: FakeChatCompletions, engine: OpenAIChatEngine
) -> None:
    release = asyncio.Event()
    fake.script(Completion(deltas=("Yes", ", Bob said rain."), hold_last=release))
    async with asyncio.timeout(GUARD_S):
        replies = engine.reply(request(may_stay_silent=True))
        first = [item async for item in aiter_until_text(replies)]
        assert texts(first) == ["Yes"]
        release.set()
        rest = [item async for item in replies]
    assert texts(rest) == [", Bob said rain."] and isinstance(rest[-1], Usage)


@pytest.mark.parametrize(
    ("completion", "reason", "deltas_first"),
    [
        (Completion(fault="rate_limit", retry_after="3"), "rate limited (HTTP 429 rate_limit_exceeded)", []),
        (Completion(fault="http_500"), "HTTP 500", []),
        (Completion(fault="slow_first_byte"), "timeout", []),
        (Completion(deltas=("One.", "Two."), fault="stall"), "timeout", ["One."]),
        (Completion(fault="malformed"), "malformed response", []),
        (Completion(deltas=("One.", "Two."), fault="error_event"), "stream error", ["One."]),
    ],
    ids=["429", "500", "slow_first_byte", "stall", "malformed", "error_event"],
)
async def test_faults_raise_the_right_error_without_hanging(
    fake: FakeChatCompletions, engine: OpenAIChatEngine, completion: Completion, reason: str, deltas_first: list[str]
) -> None:
    fake.script(completion)
    error, got = await failure(engine, request("Luna?", context=()))
    assert error.reason == reason
    assert texts(got) == deltas_first
    assert isinstance(error, RateLimited) == (completion.fault == "rate_limit")
    if completion.fault == "rate_limit":
        assert error.retry_after == 3.0
    assert len(fake.requests) == 1  # no hidden retries that would stall a voice turn
    await engine.record_spoken("room-1", "t1", "".join(texts(got)), SpokenReason.FAILED)
    await collect(engine, request("Again?", turn_id="t2", context=()))
    # A failed turn leaves only what was heard of it (nothing, or the part played before the stream broke).
    history = [m["content"] for m in sent_messages(fake)[1:-1]]
    assert history == ([] if not deltas_first else ["Alice: Luna?", "".join(deltas_first)])


async def test_refused_key_is_reported_without_the_key(fake: FakeChatCompletions) -> None:
    engine = make_engine(fake, api_key="sk-wrong-key-987654")
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(ProviderError) as info:
            await collect(engine, request())
    finally:
        await engine.aclose()
    assert info.value.reason == "auth refused (HTTP 401 invalid_api_key)"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    for text in (str(info.value), repr(engine), json.dumps(logs, default=str)):
        assert "987654" not in text


async def test_fake_answers_non_streaming_requests_like_openai(fake: FakeChatCompletions) -> None:
    fake.script(Completion(deltas=("Hello", " world"), prompt_tokens=9, completion_tokens=2))
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    try:
        result = await client.chat.completions.create(
            model="glm-4.7-flash", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        await client.close()
    assert result.choices[0].message.content == "Hello world"
    assert result.choices[0].finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 2)  # type: ignore[union-attr]


@pytest.mark.live
@pytest.mark.skipif(
    not (os.environ.get("LUNA_LLM_API_KEY") and os.environ.get("LUNA_LLM_BASE_URL")),
    reason="live test: set LUNA_LLM_API_KEY and LUNA_LLM_BASE_URL (optionally LUNA_LLM_MODEL)",
)
async def test_live_endpoint_streams_an_answer() -> None:
    engine = OpenAIChatEngine(
        base_url=os.environ["LUNA_LLM_BASE_URL"],
        api_key=os.environ["LUNA_LLM_API_KEY"],
        model=os.environ.get("LUNA_LLM_MODEL", "glm-4.7-flash"),
        system_prompt=PROMPT,
        timeout_s=60,
    )
    try:
        async with asyncio.timeout(120):
            got = [item async for item in engine.reply(request())]
    finally:
        await engine.aclose()
    text = "".join(i for i in got if isinstance(i, str))
    usage = got[-1]
    assert isinstance(usage, Usage) and usage.llm_input_tokens > 0 and usage.llm_output_tokens > 0
    assert "rain" in text.lower() or "雨" in text


# ------------------------------------------------------------------ thinking, reasoning and <think>


async def test_thinking_is_disabled_by_default(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    """GLM-4.7 thinks unless told not to; the default request turns it off, so no reasoning precedes the answer."""
    fake.script(Completion(deltas=("Sunny.",), reasoning=("The user asks about weather. ",) * 5))
    got = await collect(engine, request())

    assert fake.requests[0].json["thinking"] == {"type": "disabled"}
    assert texts(got) == ["Sunny."]
    assert total(got).llm_output_tokens == 1  # no reasoning tokens billed


async def test_a_strict_server_refuses_the_thinking_field_so_it_is_configurable() -> None:
    async with fake_chat_completions(api_key=KEY, strict=True) as strict:
        default = make_engine(strict)
        plain = make_engine(strict, extra_body={})
        try:
            with pytest.raises(ProviderError, match="HTTP 400"):
                await collect(default, request())
            assert texts(await collect(plain, request())) == ["Hi", "!"]
        finally:
            await default.aclose()
            await plain.aclose()
    assert "thinking" not in strict.requests[-1].json


async def test_reasoning_content_is_never_spoken_but_its_tokens_are_counted(fake: FakeChatCompletions) -> None:
    engine = make_engine(fake, extra_body={})  # an endpoint where thinking stays on
    fake.script(Completion(deltas=("It will ", "rain."), reasoning=("Bob said rain. ", "So: rain.")))
    try:
        got = await answer(engine, request())
        await collect(engine, request("And?", turn_id="t2", context=()))
    finally:
        await engine.aclose()

    assert texts(got) == ["It will ", "rain."]
    assert total(got).llm_output_tokens == 4  # two answer deltas and two reasoning deltas, as the service counts
    assert "Bob said rain. " not in json.dumps(fake.requests[-1].json)  # never stored in history either


@pytest.mark.parametrize(
    "deltas",
    [
        ("<think>Bob said rain, so</think>\n\nIt will rain.",),
        ("<thi", "nk>Bob said ", "rain</th", "ink>", "\n\nIt will", " rain."),
        ("<think>", "<silent> maybe?", "</think>It will rain."),
    ],
    ids=["whole", "split-tags", "silent-inside"],
)
async def test_think_blocks_in_content_are_never_spoken(
    fake: FakeChatCompletions, engine: OpenAIChatEngine, deltas: tuple[str, ...]
) -> None:
    """A server without a reasoning parser puts <think> into content: it must not be spoken or defeat <silent>."""
    fake.script(Completion(deltas=deltas, completion_tokens=20))
    got = await collect(engine, request(may_stay_silent=True))

    assert "".join(texts(got)) == "It will rain."
    assert total(got).llm_output_tokens == 20


async def test_think_block_then_silence_is_silence(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    fake.script(Completion(deltas=("<think>Not for me.</think>", "\n<silent>")))
    got = await collect(engine, request(may_stay_silent=True))
    assert texts(got) == []


async def test_a_cancelled_reply_has_already_reported_its_usage(fake: FakeChatCompletions) -> None:
    """Barge-in cancels the stream before the service's usage arrives; what it consumed so far is still counted."""
    engine = make_engine(fake, extra_body={})
    fake.script(Completion(deltas=("It rains at noon. ", "More."), reasoning=("x" * 200,), hold_last=asyncio.Event()))
    got: list[str | Usage] = []
    try:
        async with asyncio.timeout(GUARD_S):
            replies = engine.reply(request())
            async for item in replies:
                got.append(item)
                if isinstance(item, str):
                    break
            await replies.aclose()  # what cancelling the pipeline's task does to the generator
    finally:
        await engine.aclose()

    usage = total(got)
    assert usage.llm_input_tokens > 50  # the prompt, estimated
    assert usage.llm_output_tokens >= 50 + 4  # the reasoning and the first sentence, estimated


async def test_history_holds_only_what_was_heard(fake: FakeChatCompletions, engine: OpenAIChatEngine) -> None:
    """A merged turn and a turn nobody heard anything of leave no answer behind; only a closed turn is stored."""
    fake.script(Completion(deltas=("Answer one.",)), Completion(deltas=("Answer two.",)))
    await collect(engine, request("Luna, what about", turn_id="t1", context=()))
    await engine.record_spoken("room-1", "t1", "", SpokenReason.MERGED)
    await collect(engine, request("Luna, what about the weather?", turn_id="t2", context=()))
    await collect(engine, request("Anything else?", turn_id="t3", context=()))  # t2 not closed yet: not stored
    assert sent_messages(fake)[1:-1] == []
    await engine.record_spoken("room-1", "t2", "Answer two.", SpokenReason.DONE)
    await collect(engine, request("Thanks", turn_id="t4", context=()))
    assert [m["content"] for m in sent_messages(fake)[1:-1]] == ["Alice: Luna, what about the weather?", "Answer two."]


@given(st.lists(st.text(alphabet="ab<>/thinkTHINK 雨", max_size=6), max_size=8))
def test_think_filter_matches_a_whole_text_removal_however_the_text_is_split(pieces: list[str]) -> None:
    whole = "".join(pieces)
    f = ThinkFilter()
    streamed = "".join(f.feed(p) for p in pieces) + f.flush()
    expected = re.sub(r"<think>.*?(</think>\s*|$)", "", whole, flags=re.S)
    assert streamed == expected

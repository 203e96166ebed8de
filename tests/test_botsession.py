"""BotSessionEngine against a local app that implements docs/botsession.md (auth, SSE stream, faults)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from fakes.botsession import FakeBotSession, Reply, fake_botsession, serve
from luna_voice.conversation.domain import ReplyRequest, RoomLine, SpokenReason, Usage
from luna_voice.providers.base import ProviderError, RateLimited
from luna_voice.providers.botsession import BotSessionEngine, signature
from luna_voice.providers.replies import SILENCE_TOKEN, SilenceGate
from luna_voice.retry_after import parse_retry_after
from reply_stream import GUARD_S, collect, failure, texts, total

TOKEN = "tok-ABCDEF-secret"
SECRET = "hmac-secret-XYZ"


def request(**kw: object) -> ReplyRequest:
    base: dict[str, object] = {
        "room_id": "room-1",
        "turn_id": "turn-1",
        "speaker_id": "p-alice",
        "speaker_name": "Alice",
        "text": "Luna, what did Bob say?",
        "language": "en",
        "context": (RoomLine("Bob", "It will rain at noon.", 1_700_000_000.5),),
    }
    return ReplyRequest(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotSession]:
    async with fake_botsession(token=TOKEN, hmac_secret=SECRET) as f:
        yield f


@pytest.fixture
async def engine(fake: FakeBotSession) -> AsyncIterator[BotSessionEngine]:
    e = BotSessionEngine(url=fake.url, token=TOKEN, hmac_secret=SECRET, timeout_s=0.5)
    yield e
    await e.aclose()


async def test_deltas_stream_in_order_before_the_reply_ends(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    release = asyncio.Event()
    fake.script(
        Reply(deltas=("Bob said ", "it will rain ", "at noon."), input_tokens=120, output_tokens=9, hold_last=release)
    )
    got: list[str | Usage] = []
    async with asyncio.timeout(GUARD_S):
        async for item in engine.reply(request()):
            got.append(item)
            if len(got) == 2:
                assert not release.is_set(), "the last delta cannot have been sent yet"
                release.set()
    assert texts(got) == ["Bob said ", "it will rain ", "at noon."]
    assert total(got) == Usage(llm_input_tokens=120, llm_output_tokens=9)  # the app's count replaces estimates


async def test_request_carries_the_documented_fields(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    await collect(engine, request(may_stay_silent=True, addressed=False, language=None))
    (rec,) = fake.requests
    assert rec.headers["Content-Type"] == "application/json"
    assert rec.headers["Accept"] == "text/event-stream"
    assert rec.json == {
        "room_id": "room-1",
        "turn_id": "turn-1",
        "speaker_id": "p-alice",
        "speaker_name": "Alice",
        "text": "Luna, what did Bob say?",
        "language": None,
        "addressed": False,
        "may_stay_silent": True,
        "context": [{"speaker": "Bob", "text": "It will rain at noon.", "at": 1_700_000_000.5}],
    }


async def test_bearer_and_signature_are_accepted_by_the_app(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    await collect(engine, request(text="你好，露娜"))  # non-ASCII: the signature covers the exact bytes sent
    (rec,) = fake.requests
    assert fake.auth_failures == []
    assert rec.headers["Authorization"] == f"Bearer {TOKEN}"
    assert rec.headers["X-Luna-BotSession-Version"] == "2"
    t, v1, v2 = rec.headers["X-Luna-Signature"].split(",")
    assert t.startswith("t=") and v1.startswith("v1=") and v2.startswith("v2=") and len(v2) == 3 + 64


async def test_a_version_1_app_still_accepts_the_signature() -> None:
    """v1 stays in the header beside v2 (one more HMAC), so an app not yet on version 2 keeps working."""
    async with fake_botsession(token=TOKEN, hmac_secret=SECRET, accept_v1=True) as fake:
        engine = BotSessionEngine(url=fake.url, token=TOKEN, hmac_secret=SECRET, timeout_s=0.5)
        try:
            await collect(engine, request())
            await engine.record_spoken("room-1", "turn-1", "Hello there.", SpokenReason.DONE)
        finally:
            await engine.aclose()
    assert fake.auth_failures == []
    assert fake.spoken[0].json["interrupted"] is False


async def test_signature_covers_method_and_path() -> None:
    """A signed reply body replayed to the spoken route (or the reverse) is refused."""
    async with fake_botsession(hmac_secret=SECRET) as fake:
        engine = BotSessionEngine(url=fake.url, token=None, hmac_secret=SECRET, timeout_s=0.5)
        try:
            await collect(engine, request())
        finally:
            await engine.aclose()
        sent = fake.requests[0]
        async with aiohttp.ClientSession() as http:
            headers = {k: v for k, v in sent.headers.items() if k.lower().startswith("x-luna")}
            async with http.post(f"{fake.url}/spoken", data=sent.body, headers=headers) as resp:
                assert resp.status == 401
    assert fake.auth_failures == ["bad_signature"]


def test_signature_test_vector_in_the_contract():
    """The vector in docs/botsession.md, computed independently of the engine."""
    body = (
        b'{"room_id":"room-1","turn_id":"turn-1","spoken_text":"Bob said it will","reason":"interrupted",'
        b'"interrupted":true}'
    )
    msg = b"1764000000.POST./api/luna/reply/spoken." + body
    want = hmac.new(b"example-secret", msg, hashlib.sha256).hexdigest()
    assert signature(b"example-secret", "1764000000", "POST", "/api/luna/reply/spoken", body).endswith(f"v2={want}")
    assert f"`v2={want}`" in (Path(__file__).parent.parent / "docs" / "botsession.md").read_text()


@pytest.mark.parametrize(
    ("token", "secret", "problem"),
    [
        ("wrong-token-123", SECRET, "bad_token"),
        (TOKEN, "wrong-secret", "bad_signature"),
        (TOKEN, None, "missing_signature"),
    ],
)
async def test_refused_auth_is_a_clear_error_without_the_secret(
    fake: FakeBotSession, token: str, secret: str | None, problem: str
) -> None:
    engine = BotSessionEngine(url=fake.url, token=token, hmac_secret=secret, timeout_s=0.5)
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(ProviderError) as info:
            await collect(engine, request())
    finally:
        await engine.aclose()
    assert fake.auth_failures == [problem]
    assert info.value.reason == f"auth refused (HTTP 401 {problem})"
    for leak in (token, secret or "never-set"):
        assert leak not in str(info.value) and leak not in repr(engine) and leak not in json.dumps(logs, default=str)


async def test_only_a_bearer_token_sends_no_signature() -> None:
    async with fake_botsession(token=TOKEN) as fake:
        engine = BotSessionEngine(url=fake.url, token=TOKEN, hmac_secret=None, timeout_s=0.5)
        try:
            await collect(engine, request())
        finally:
            await engine.aclose()
    assert "X-Luna-Signature" not in fake.requests[0].headers


@pytest.mark.parametrize(
    ("reply", "reason", "deltas_first"),
    [
        (Reply(fault="rate_limit", retry_after="7"), "rate limited (HTTP 429 rate_limited)", []),
        (Reply(fault="http_500"), "HTTP 500 internal", []),
        (Reply(fault="slow_first_byte"), "timeout", []),
        (Reply(deltas=("One.", "Two."), fault="stall"), "timeout", ["One."]),
        (Reply(fault="malformed"), "malformed response", []),
        (Reply(deltas=("One.", "Two."), fault="error_event"), "app error: model_overloaded", ["One."]),
    ],
    ids=["429", "500", "slow_first_byte", "stall", "malformed", "error_event"],
)
async def test_faults_raise_the_right_error_without_hanging(
    fake: FakeBotSession, engine: BotSessionEngine, reply: Reply, reason: str, deltas_first: list[str]
) -> None:
    fake.script(reply)
    error, got = await failure(engine, request())
    assert error.reason == reason
    assert texts(got) == deltas_first
    assert (total(got).llm_output_tokens > 0) == bool(deltas_first)  # what streamed before the fault is counted
    assert isinstance(error, RateLimited) == (reply.fault == "rate_limit")
    if reply.fault == "rate_limit":
        assert error.retry_after == 7.0
    # The engine stays usable after a fault.
    assert await collect(engine, request()) == ["Hello", " there.", Usage(llm_input_tokens=42, llm_output_tokens=7)]


async def test_oversized_or_truncated_streams_are_errors_not_crashes() -> None:
    bodies = {
        "/huge": b"event: delta\ndata: " + b"x" * 2_000_000 + b"\n\n",
        "/cut": b'event: delta\ndata: {"text": "Hi"}\n\n',
    }

    async def handler(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(req)
        await resp.write(bodies[req.path])
        return resp

    app = web.Application()
    app.router.add_post("/{name}", handler)
    async with serve(app) as base:
        for path, reason in [("/huge", "malformed response"), ("/cut", "truncated response")]:
            engine = BotSessionEngine(url=base + path, token=None, hmac_secret=None, timeout_s=0.5)
            try:
                with pytest.raises(ProviderError) as info:
                    await collect(engine, request())
            finally:
                await engine.aclose()
            assert info.value.reason == reason


async def test_unreachable_app_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    engine = BotSessionEngine(url=f"http://127.0.0.1:{port}/luna/reply", token=None, hmac_secret=None, timeout_s=0.5)
    try:
        with pytest.raises(ProviderError, match="connection failed"):
            await collect(engine, request())
    finally:
        await engine.aclose()


async def test_cancelling_a_reply_hangs_up_on_the_app(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    fake.script(Reply(deltas=("First.", "Never sent."), hold_last=asyncio.Event()))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.reply(request()):
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(GUARD_S):
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake.hung_up.wait()  # the app sees the disconnect and can stop generating


@pytest.mark.parametrize("reason", list(SpokenReason))
async def test_record_spoken_reports_what_was_heard_and_why(
    fake: FakeBotSession, engine: BotSessionEngine, reason: SpokenReason
) -> None:
    await engine.record_spoken("room-1", "turn-1", "Bob said it will", reason)
    (rec,) = fake.spoken
    assert rec.path == "/luna/reply/spoken"
    assert rec.json == {
        "room_id": "room-1",
        "turn_id": "turn-1",
        "spoken_text": "Bob said it will",
        "reason": reason.value,
        "interrupted": reason is SpokenReason.INTERRUPTED,
    }
    assert rec.headers["X-Luna-BotSession-Version"] == "2"
    assert fake.auth_failures == []


async def test_record_spoken_failures_are_logged_not_raised(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    fake.spoken_status = 500
    with structlog.testing.capture_logs() as logs:
        await engine.record_spoken("room-1", "turn-1", "text", SpokenReason.DONE)
    assert [e["event"] for e in logs] == ["botsession.spoken_refused"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = BotSessionEngine(url=f"http://127.0.0.1:{port}/r", token=TOKEN, hmac_secret=None, timeout_s=0.5)
    try:
        with structlog.testing.capture_logs() as logs:
            await dead.record_spoken("room-1", "turn-1", "text", SpokenReason.DONE)
    finally:
        await dead.aclose()
    assert [e["event"] for e in logs] == ["botsession.spoken_failed"]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (("<sil", "ent>"), []),
        ((" ", "<silent>", "\n"), []),
        ((), []),
        (("<", "sil", "ly me, ", "Bob said rain."), ["<silly me, ", "Bob said rain."]),
        (("<s", "ure thing>"), ["<sure thing>"]),
    ],
    ids=["token", "token-with-whitespace", "empty", "starts-like-token", "starts-like-token-2"],
)
async def test_silent_replies_yield_only_usage(
    fake: FakeBotSession, engine: BotSessionEngine, deltas: tuple[str, ...], expected: list[str]
) -> None:
    fake.script(Reply(deltas=deltas))
    assert await collect(engine, request(may_stay_silent=True)) == [
        *expected,
        Usage(llm_input_tokens=42, llm_output_tokens=7),
    ]


async def test_silence_detection_does_not_delay_a_real_answer(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    release = asyncio.Event()
    fake.script(Reply(deltas=("Sure", ", it rains."), hold_last=release))
    async with asyncio.timeout(GUARD_S):
        replies = engine.reply(request(may_stay_silent=True))
        first: list[str | Usage] = []
        while not texts(first):  # arrives while the app still holds the rest back
            first.append(await anext(replies))
        assert texts(first) == ["Sure"]
        release.set()
        rest = [item async for item in replies]
    assert texts(rest) == [", it rains."] and total(first + rest) == Usage(llm_input_tokens=42, llm_output_tokens=7)


def test_silence_token_is_only_honoured_when_allowed() -> None:
    gate = SilenceGate(active=False)
    assert gate.feed(SILENCE_TOKEN) == SILENCE_TOKEN and not gate.silent


@given(st.lists(st.text(max_size=6), max_size=6))
def test_gate_releases_text_as_soon_as_it_cannot_be_silence(deltas: list[str]) -> None:
    gate = SilenceGate(active=True)
    fed, out = "", ""
    for d in deltas:
        fed += d
        out += gate.feed(d)
        head = fed.lstrip()
        if head.startswith(SILENCE_TOKEN) or SILENCE_TOKEN.startswith(head):
            assert out == ""
        else:
            assert out == fed
    assert gate.silent == (out == "")


@given(st.text(max_size=8), st.lists(st.integers(0, 20), max_size=4), st.text(alphabet=" \n", max_size=2))
def test_gate_swallows_the_token_however_it_is_split(tail: str, cuts: list[int], lead: str) -> None:
    text = lead + SILENCE_TOKEN + tail
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    gate = SilenceGate(active=True)
    assert "".join(gate.feed(p) for p in pieces) == "" and gate.silent


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_a_minute = parse_retry_after(formatdate(time.time() + 60, usegmt=True))
    assert in_a_minute is not None and 55 < in_a_minute <= 60


async def test_think_blocks_from_the_app_are_never_spoken(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    """An app that forwards raw model output with <think> still never makes Luna speak the reasoning."""
    fake.script(Reply(deltas=("<think>The user", " wants rain</think>\n", "It will rain.")))
    got = await collect(engine, request(may_stay_silent=True))
    assert texts(got) == ["It will rain."]


async def test_a_cancelled_reply_has_already_reported_its_usage(fake: FakeBotSession, engine: BotSessionEngine) -> None:
    fake.script(Reply(deltas=("It rains at noon. ", "More."), hold_last=asyncio.Event()))
    got: list[str | Usage] = []
    async with asyncio.timeout(GUARD_S):
        replies = engine.reply(request())
        async for item in replies:
            got.append(item)
            if isinstance(item, str):
                break
        await replies.aclose()  # barge-in: the stream is cancelled before ``done``
    assert total(got).llm_input_tokens > 20 and total(got).llm_output_tokens >= 4  # estimates, not zero

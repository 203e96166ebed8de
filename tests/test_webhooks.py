"""Signed webhooks against a local receiver that checks signatures and fails some attempts: ordered delivery, retries
with backoff, a receiver that is down loses nothing, overflow and give-up are counted, and the service sends
the lifecycle, speak.* and transcript.ready events of a stay."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from conftest import free_port
from fakes.botsession import serve
from fakes.webhook_receiver import Receiver
from luna_voice.config import Settings
from luna_voice.conversation.events import MutedChanged, SpeakChanged, SpeakingChanged, SpeakPhase, TurnChanged
from luna_voice.events import StateChanged
from luna_voice.signing import signature, verify
from luna_voice.webhooks import WebhookSender, webhook_event
from pageless import event_stream, next_event, open_room
from roomtools import until

SECRET = "whsec-test"


@pytest.fixture
async def sender() -> AsyncIterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def make(url: str, secret: str = SECRET, **kw) -> WebhookSender:  # type: ignore[no-untyped-def]
        s = WebhookSender(url, secret, registry=CollectorRegistry(), first_backoff_s=0.01, max_backoff_s=0.05, **kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.aclose(drain_s=0)


def count(s: WebhookSender, outcome: str) -> float:
    """The ``outcome`` counter as a scrape would read it (prometheus-client's public ``collect``)."""
    (family,) = s.outcomes.collect()
    found = [x.value for x in family.samples if x.name.endswith("_total") and x.labels == {"outcome": outcome}]
    return found[0] if found else 0.0


def submit(s: WebhookSender, n: int, kind: str = "bot.state") -> None:
    for i in range(n):
        s.submit(kind, {"n": i}, room_id="r", bot_id="b")


async def test_every_event_arrives_once_in_order_despite_500s():
    receiver = Receiver(SECRET.encode(), fail=lambda attempt, _: 500 if attempt % 3 == 0 else None)
    async with serve(receiver.app()) as url:
        s = WebhookSender(url + "/hooks", SECRET, registry=CollectorRegistry(), first_backoff_s=0.01)
        s.start()
        submit(s, 20)
        await receiver.wait_for(lambda events: len(events) == 20)
        await s.aclose()
    assert [e["data"]["n"] for e in receiver.events] == list(range(20))
    assert receiver.refused == [] and receiver.duplicates == 0
    assert count(s, "delivered") == 20 and count(s, "retried") == receiver.attempts - 20 > 0
    first = receiver.events[0]
    assert (first["type"], first["room_id"], first["bot_id"]) == ("bot.state", "r", "b")
    assert abs(first["created_at"] - time.time()) < 60


async def test_a_receiver_that_is_down_loses_nothing():
    port = free_port()
    receiver = Receiver(SECRET.encode())
    s = WebhookSender(f"http://127.0.0.1:{port}/hooks", SECRET, registry=CollectorRegistry(), first_backoff_s=0.01)
    s.start()
    submit(s, 5)

    await until(lambda: asyncio.sleep(0, count(s, "retried") >= 3), 10, "retries", step=0.01)  # refused, again
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()  # the receiver comes back
    try:
        await receiver.wait_for(lambda events: len(events) == 5)
    finally:
        await s.aclose()
        await runner.cleanup()
    assert [e["data"]["n"] for e in receiver.events] == list(range(5))


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(sender):
    receiver = Receiver(SECRET.encode())
    async with serve(receiver.app()) as url:
        s = sender(url + "/hooks", secret="not-the-secret")
        submit(s, 2)
        await until(lambda: asyncio.sleep(0, count(s, "rejected") == 2), 10, "both refused", step=0.01)
    assert receiver.refused == ["bad signature", "bad signature"] and receiver.events == []
    assert count(s, "retried") == 0


async def test_overflow_and_giving_up_are_counted_and_later_events_still_go_out(sender):
    receiver = Receiver(SECRET.encode(), fail=lambda _, event: 503 if event["data"]["n"] == 0 else None)
    async with serve(receiver.app()) as url:
        s = sender(url + "/hooks", max_queue=3, retry_for_s=0.05)
        submit(s, 10)  # the first three fit; the first of them is retried until its window is over
        assert count(s, "overflow") == 7
        await receiver.wait_for(lambda events: len(events) == 2)
    assert count(s, "gave_up") == 1 and count(s, "retried") >= 1  # event 0 failed, then its window was over
    assert [e["data"]["n"] for e in receiver.events] == [1, 2]


def test_signature_verifies_and_refuses_replays_and_tampering():
    body = b'{"id":"evt_1"}'
    header = signature(b"k", "1700000000", "POST", "/hooks", body)
    assert verify(b"k", header, "POST", "/hooks", body, now=1_700_000_100)
    assert not verify(b"k", header, "POST", "/hooks", body, now=1_700_000_000 + 301)  # replayed six minutes later
    assert not verify(b"k", header, "POST", "/hooks", body + b" ", now=1_700_000_000)
    assert not verify(b"k", header, "POST", "/other-route", body, now=1_700_000_000)
    assert not verify(b"other", header, "POST", "/hooks", body, now=1_700_000_000)
    assert not verify(b"k", "t=1700000000,v2=abc", "POST", "/hooks", body, now=1_700_000_000)


def test_only_events_the_app_needs_become_webhooks():
    turn = {
        "id": "t1",
        "kind": "utterance",
        "speaker": {"id": "p1", "name": "Ann"},
        "state": "done",
        "heard_text": "Luna, hi",
        "language": "en",
        "decision": "answer",
        "reason": "addressed_by_name",
        "request": None,
        "reply_text": "Hi Ann.",
        "spoken_text": "Hi Ann.",
        "interrupted": False,
        "error": None,
        "latency": {"first_audio_played_ms": 640.0},
        "cost_usd": 0.001,
    }
    kind, data = webhook_event(TurnChanged(turn))  # type: ignore[misc]
    assert kind == "turn.completed"
    assert (data["heard"], data["spoken"], data["decision"]) == ("Luna, hi", "Hi Ann.", "answer")
    assert data["cost_usd"] == 0.001 and data["latency"] == {"first_audio_played_ms": 640.0}
    assert webhook_event(TurnChanged({**turn, "state": "speaking"})) is None
    assert webhook_event(TurnChanged({**turn, "kind": "say"})) is None  # speak.* carries those
    assert webhook_event(SpeakingChanged(True, 1.0)) is None
    assert webhook_event(StateChanged("joined", None, None)) == (
        "bot.state",
        {"state": "joined", "sub_code": None, "reason": None},
    )
    assert webhook_event(MutedChanged(True, "a host muted Luna", 2.0)) == (
        "bot.state",
        {"state": "muted", "sub_code": None, "reason": "a host muted Luna"},
    )
    cut = SpeakChanged(SpeakPhase.INTERRUPTED, "t2", "say", "Hello there.", 5.0, "Hel", 0.2)
    assert webhook_event(cut) == (
        "speak.interrupted",
        {"say_id": "t2", "kind": "say", "text": "Hello there.", "at": 5.0, "spoken_text": "Hel", "played_audio_s": 0.2},
    )


def test_a_webhook_url_without_a_secret_is_a_configuration_error():
    with pytest.raises(ValidationError, match="LUNA_WEBHOOK_SECRET"):
        Settings(_env_file=None, webhook_url="http://127.0.0.1:1/hooks")


async def test_the_service_sends_a_stays_events_signed(start_service):
    receiver = Receiver(SECRET.encode(), fail=lambda attempt, _: 500 if attempt % 2 == 0 else None)
    async with serve(receiver.app()) as url:
        svc, _page = await open_room(
            start_service, "hooked", webhook_url=url + "/hooks", webhook_secret=SECRET, greeting=""
        )
        async with event_stream(svc, "hooked") as events:
            status, said = await svc.call("POST", "/rooms/hooked/luna/say", json={"text": "Hello from the app."})
            assert status == 202
            await next_event(events, "speak.completed")
        await svc.call("DELETE", "/rooms/hooked/luna")
        await receiver.wait_for(lambda events: any(e["type"] == "transcript.ready" for e in events))
    states = [e["data"]["state"] for e in receiver.of("bot.state")]
    assert states == ["joining", "joined", "leaving", "ended"]
    assert receiver.of("bot.state")[-1]["data"]["sub_code"] == "dismissed"
    speak = [e["type"] for e in receiver.events if e["type"].startswith("speak.")]
    assert speak == ["speak.started", "speak.completed"]
    done = receiver.of("speak.completed")[0]
    assert done["data"]["say_id"] == said["say_id"] and done["data"]["spoken_text"] == "Hello from the app."
    (ready,) = receiver.of("transcript.ready")
    assert ready["data"]["lines"] == 1 and ready["data"]["transcript"]["lines"][0]["text"] == "Hello from the app."
    assert receiver.refused == [] and receiver.duplicates == 0
    assert all(e["room_id"] == "hooked" for e in receiver.events)
    async with svc.http.get(svc.url + "/metrics") as resp:
        metrics = await resp.text()
    assert f'luna_webhook_events_total{{outcome="delivered"}} {float(len(receiver.events))}' in metrics
    assert json.dumps(receiver.events)  # plain JSON throughout


def test_the_readme_receiver_accepts_luna_s_requests_and_refuses_replays_and_forgeries():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("  ```python\n  import hashlib, hmac, json, time", 1)[1].split("  ```", 1)[0]
    scope: dict = {}
    exec(textwrap.dedent("  import hashlib, hmac, json, time" + code), scope)  # as a reader pastes it
    receive, seen = scope["receive"], set()
    body = json.dumps({"id": "evt_1", "type": "bot.state", "data": {}}).encode()
    key, now = SECRET.encode(), int(time.time())
    headers = {"X-Luna-Signature": signature(key, str(now), "POST", "/hooks", body), "X-Luna-Webhook-Id": "evt_1"}
    assert receive(key, "/hooks", headers, body, seen)["id"] == "evt_1"
    assert receive(key, "/hooks", headers, body, seen) is None  # the same event again
    assert receive(key, "/hooks", headers, body.replace(b"evt_1", b"evt_2"), set()) is None  # signed for evt_1
    assert receive(key, "/billing", headers, body, set()) is None  # signed for another route
    old = {**headers, "X-Luna-Signature": signature(key, str(now - 600), "POST", "/hooks", body)}
    assert receive(key, "/hooks", old, body, set()) is None  # ten minutes old: a replay
    assert receive(b"wrong", "/hooks", headers, body, set()) is None

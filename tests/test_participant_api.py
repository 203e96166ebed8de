"""The participant API over HTTP: ``POST .../luna/say`` (every status code) and ``GET .../luna/transcript`` (JSON
and WebVTT, after the stay too). The test plays Luna's page over the real bridge socket: it joins, announces a
person, and renders Luna's audio at once, reporting playback marks as the page's worklet does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from luna_voice.api.models import MAX_SAY_CHARS
from luna_voice.bridge import protocol as bp
from pageless import PagelessHost, event_stream, next_event, open_room
from roomtools import until


async def test_say_is_spoken_into_the_room_and_followed_on_the_events_stream(start_service):
    svc, page = await open_room(start_service, "say-ok")
    async with event_stream(svc, "say-ok") as events:
        status, body = await svc.call("POST", "/rooms/say-ok/luna/say", json={"text": "  The room is booked.  "})
        assert status == 202, body
        say_id = body["say_id"]
        started = await next_event(events, "speak.started")
        assert (started["say_id"], started["kind"], started["text"]) == (say_id, "say", "The room is booked.")
        done = await next_event(events, "speak.completed")
        assert done["say_id"] == say_id and done["spoken_text"] == "The room is booked."
        assert done["played_audio_s"] > 0.3
    assert page.samples / bp.PLAYBACK_RATE == pytest.approx(done["played_audio_s"], abs=0.001)  # all of it played
    turn = next(t for t in (await svc.call("GET", "/rooms/say-ok/luna"))[1]["turns"] if t["id"] == say_id)
    assert (turn["kind"], turn["state"], turn["spoken_text"]) == ("say", "done", "The room is booked.")


async def test_say_with_interrupt_cuts_the_say_before_it(start_service):
    svc, _page = await open_room(start_service, "say-cut")
    long = "This is a long announcement. " * 8
    async with event_stream(svc, "say-cut") as events:
        first = (await svc.call("POST", "/rooms/say-cut/luna/say", json={"text": long}))[1]["say_id"]
        await next_event(events, "speaking")
        status, body = await svc.call("POST", "/rooms/say-cut/luna/say", json={"text": "Stop.", "interrupt": True})
        assert status == 202
        cut = await next_event(events, "speak.interrupted")
        assert cut["say_id"] == first and len(cut["spoken_text"]) < len(long.strip())
        done = await next_event(events, "speak.completed")
        assert done["say_id"] == body["say_id"] and done["spoken_text"] == "Stop."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": ""}, "text"),
        ({"text": "   \n "}, "blank"),
        ({"text": "x" * (MAX_SAY_CHARS + 1)}, str(MAX_SAY_CHARS)),
        ({}, "text"),
        ({"text": "hi", "loud": True}, "loud"),
        ({"text": "hi", "interrupt": "maybe"}, "interrupt"),
        ({"text": 5}, "text"),
    ],
)
async def test_say_refuses_bad_bodies_with_400(start_service, body, message):
    svc, _page = await open_room(start_service, "say-400")
    status, got = await svc.call("POST", "/rooms/say-400/luna/say", json=body)
    assert status == 400 and got["error"]["code"] == "invalid_body" and message in got["error"]["message"]
    json_type = {"Content-Type": "application/json"}
    status, got = await svc.call("POST", "/rooms/say-400/luna/say", data="{not json", headers=json_type)
    assert status == 400 and got["error"]["code"] == "invalid_json"


async def test_say_without_a_live_luna_is_404(start_service):
    svc = await start_service(host=PagelessHost())
    status, got = await svc.call("POST", "/rooms/empty/luna/say", json={"text": "hi"})
    assert status == 404 and got["error"]["code"] == "not_found"
    await svc.call("POST", "/rooms/gone/luna")
    await svc.call("DELETE", "/rooms/gone/luna")  # ended: still known, but not live
    status, got = await svc.call("POST", "/rooms/gone/luna/say", json={"text": "hi"})
    assert status == 404 and got["error"]["code"] == "not_found"


async def test_say_before_she_has_joined_is_409(start_service):
    svc = await start_service(host=PagelessHost())
    await svc.call("POST", "/rooms/early/luna")
    status, got = await svc.call("POST", "/rooms/early/luna/say", json={"text": "hi"})
    assert status == 409 and got["error"]["code"] == "not_joined"


async def test_say_in_listen_only_mode_is_409(start_service):
    svc, _page = await open_room(start_service, "quiet", turn_policy="never")
    status, got = await svc.call("POST", "/rooms/quiet/luna/say", json={"text": "hi"})
    assert status == 409 and got["error"]["code"] == "listen_only"
    status, got = await svc.call("GET", "/rooms/quiet/luna")
    assert got["listen_only"] is True


async def test_greeting_is_spoken_once_after_joining(start_service):
    svc, _page = await open_room(start_service, "hello", greeting="Hello, I am Luna.")

    async def greeted() -> dict[str, Any] | None:
        turns = (await svc.call("GET", "/rooms/hello/luna"))[1]["turns"]
        return next((t for t in turns if t["kind"] == "greeting" and t["state"] == "done"), None)

    greeting = await until(greeted, 20, "the greeting")
    assert greeting["spoken_text"] == "Hello, I am Luna."


async def test_transcript_as_json_and_webvtt_and_after_the_stay(start_service):
    svc, _page = await open_room(start_service, "minutes", greeting="Hello, I am Luna.")

    async def lines() -> list[dict[str, Any]]:
        return (await svc.call("GET", "/rooms/minutes/luna/transcript"))[1]["lines"]

    (line,) = await until(lines, 20, "Luna's greeting in the transcript")
    assert (line["speaker"], line["luna"], line["kind"]) == ("Luna", True, "greeting")
    assert line["text"] == "Hello, I am Luna."
    assert line["end"] > line["start"] and line["offset_s"] >= 0
    for kwargs in ({"headers": {"Accept": "text/vtt"}}, {"params": {"format": "vtt"}}):
        async with svc.http.get(f"{svc.url}/rooms/minutes/luna/transcript", **kwargs) as resp:
            assert resp.status == 200 and resp.content_type == "text/vtt"
            vtt = await resp.text()
        assert vtt.startswith("WEBVTT\n\n1\n00:00:") and "<v Luna>Hello, I am Luna." in vtt
    assert (await svc.call("DELETE", "/rooms/minutes/luna"))[1]["state"] == "ended"
    status, after = await svc.call("GET", "/rooms/minutes/luna/transcript")
    assert status == 200 and after["state"] == "ended" and len(after["lines"]) == 1


async def test_transcript_errors(start_service):
    svc, _page = await open_room(start_service, "off", transcript=False)
    status, got = await svc.call("GET", "/rooms/off/luna/transcript")
    assert status == 404 and got["error"]["code"] == "transcript_disabled"
    status, got = await svc.call("GET", "/rooms/nobody/luna/transcript")
    assert status == 404 and got["error"]["code"] == "not_found"
    svc = await start_service(host=PagelessHost())
    await svc.call("POST", "/rooms/on/luna")
    status, got = await svc.call("GET", "/rooms/on/luna/transcript", params={"format": "srt"})
    assert status == 400 and got["error"]["code"] == "invalid_format"


async def test_openapi_lists_say_and_transcript(start_service):
    svc = await start_service(host=PagelessHost())
    doc = (await svc.call("GET", "/openapi.json"))[1]
    assert {"202", "400", "404", "409"} <= doc["paths"]["/rooms/{room_id}/luna/say"]["post"]["responses"].keys()
    assert "get" in doc["paths"]["/rooms/{room_id}/luna/transcript"]
    assert doc["components"]["schemas"]["SayRequest"]["properties"]["text"]["maxLength"] == MAX_SAY_CHARS


async def test_say_while_a_host_has_muted_her_is_409(start_service):
    svc, page = await open_room(start_service, "muted")
    await page.ws.send_str(json.dumps({"type": "muted", "muted": True, "reason": "a host muted Luna"}))

    async def muted() -> bool:
        return bool((await svc.call("GET", "/rooms/muted/luna"))[1]["muted_by_host"])

    await until(muted, 5, "the mute to reach Python")
    status, got = await svc.call("POST", "/rooms/muted/luna/say", json={"text": "hi"})
    assert status == 409 and got["error"]["code"] == "muted_by_host"

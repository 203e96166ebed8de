"""How a bot's stay ends: each way out is a typed state with a sub-code and a reason, and the page is told to
leave. The test plays Luna's page over the real bridge socket (no browser needed for the lifecycle)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pageless import PagelessHost, page_config, page_hello
from roomtools import until


async def summon(start_service, **settings):  # type: ignore[no-untyped-def]
    host = PagelessHost()
    svc = await start_service(host=host, **settings)
    status, bot = await svc.call("POST", "/rooms/life/luna")
    assert status == 201
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "the page to open")
    return svc, bot, page_config(host.urls[0]), host


async def ended(svc) -> dict:  # type: ignore[no-untyped-def]
    async def done():
        body = (await svc.call("GET", "/rooms/life/luna"))[1]
        return body if body["state"] in ("ended", "failed") else None

    return await until(done, 10, "the bot to end")


async def attach(svc, bot, cfg):  # type: ignore[no-untyped-def]
    ws = await svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}")
    await ws.send_str(page_hello(cfg))
    return ws


async def test_leaves_when_alone(start_service):
    svc, bot, cfg, _ = await summon(start_service, alone_timeout_s=1.0)
    ws = await attach(svc, bot, cfg)
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
    await asyncio.sleep(1.5)  # someone is here: she stays
    assert (await svc.call("GET", "/rooms/life/luna"))[1]["state"] == "joined"
    await ws.send_str(json.dumps({"type": "participant_left", "index": 1, "id": "p1"}))
    msg = await ws.receive(timeout=5)
    assert json.loads(msg.data) == {"type": "leave"}  # the page is told to leave the room
    await ws.send_str(json.dumps({"type": "room_state", "state": "left", "sub_code": "dismissed"}))
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("ended", "alone_timeout")
    assert "nobody else" in body["reason"]
    await ws.close()


async def test_join_timeout_is_a_failure_with_a_reason(start_service):
    svc, _bot, _cfg, _ = await summon(start_service, join_timeout_s=1.0)
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("failed", "join_timeout")
    assert "not joined after 1 s" in body["reason"]


@pytest.mark.parametrize(
    ("page_says", "state", "sub_code"),
    [
        ({"state": "failed", "sub_code": "join_failed", "reason": "enableAudio was refused"}, "failed", "join_failed"),
        ({"state": "left", "sub_code": "ended", "reason": "meeting ended for all"}, "ended", "room_ended"),
        ({"state": "left", "sub_code": "kicked", "reason": "a host removed Luna"}, "ended", "kicked"),
        ({"state": "left", "sub_code": "waitlisted", "reason": "preset has a waiting room"}, "failed", "waitlisted"),
        ({"state": "failed", "sub_code": "disconnected", "reason": "reconnect gave up"}, "failed", "disconnected"),
    ],
)
async def test_room_states_from_the_page(start_service, page_says, state, sub_code):
    svc, bot, cfg, _ = await summon(start_service)
    ws = await attach(svc, bot, cfg)
    if page_says["state"] == "left":
        await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "room_state", **page_says}))
    body = await ended(svc)
    assert (body["state"], body["sub_code"], body["reason"]) == (state, sub_code, page_says["reason"])
    await ws.close()


async def test_reconnecting_then_joined_again(start_service):
    svc, bot, cfg, _ = await summon(start_service)
    ws = await attach(svc, bot, cfg)
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "room_state", "state": "reconnecting", "sub_code": "disconnected"}))
    await until(lambda: _state(svc, "reconnecting"), 5, "reconnecting")
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await until(lambda: _state(svc, "joined"), 5, "joined again")
    await ws.close()


async def test_page_crash_rejoins_once_then_fails(start_service):
    svc, bot, cfg, host = await summon(start_service)
    ws = await attach(svc, bot, cfg)
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
    await until(lambda: _state(svc, "joined"), 5, "joined")
    host.crash()
    await ws.close()
    await until(lambda: asyncio.sleep(0, len(host.urls) == 2), 5, "a fresh page")
    status = (await svc.call("GET", "/rooms/life/luna"))[1]
    assert (status["state"], status["sub_code"]) == ("reconnecting", "crashed")
    assert status["participants"] == []  # the new page tells again who is there
    ws = await attach(svc, bot, page_config(host.urls[1]))
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
    await until(lambda: _state(svc, "joined"), 5, "joined again")
    host.crash()  # a second crash is not retried
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("failed", "crashed")
    await ws.close()


async def _state(svc, state: str) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.call("GET", "/rooms/life/luna"))[1]["state"] == state

"""The local room behind the API token: room tickets, a guarded participant list, and strict signaling input."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
import structlog

from luna_voice.rooms.tickets import RoomTickets
from pageless import PagelessHost, page_config

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def guarded(start_service):  # type: ignore[no-untyped-def]
    return await start_service(host=PagelessHost(), api_token=TOKEN)


@pytest.fixture
async def open_demo(start_service):  # type: ignore[no-untyped-def]
    return await start_service(host=PagelessHost())


async def join(svc, room: str, **message) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    """Open the room's signaling socket, send a first message, and return what came back: welcome or close."""
    url = f"{svc.url.replace('http', 'ws')}/local/rooms/{room}/signal"
    async with svc.http.ws_connect(url) as ws:
        first = message.pop("raw", None)
        await ws.send_str(first if first is not None else json.dumps({"type": "join", **message}))
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return "welcome", json.loads(msg.data)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        return f"closed {ws.close_code}", msg.extra


async def ticket(svc, room: str, headers=AUTH) -> str:  # type: ignore[no-untyped-def]
    status, body = await svc.call("POST", f"/local/rooms/{room}/tickets", headers=headers)
    assert status == 201 and body["expires_in_s"] > 0, body
    return body["ticket"]


@pytest.mark.faults
async def test_with_the_token_set_a_join_without_a_ticket_is_refused(guarded):
    outcome, reason = await join(guarded, "r", name="Mallory")
    assert outcome == "closed 4401" and "ticket" in reason
    assert await join(guarded, "r", name="Mallory", ticket="made-up") == (outcome, reason)
    status, body = await guarded.call("POST", "/local/rooms/r/tickets")  # minting needs the token itself
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_a_ticket_admits_one_person_once_to_one_room(guarded):
    t = await ticket(guarded, "r")
    assert (await join(guarded, "other", name="Alice", ticket=t))[0] == "closed 4401"  # bound to its room
    t = await ticket(guarded, "r")
    outcome, welcome = await join(guarded, "r", name="Alice", ticket=t, kind="bot")
    assert outcome == "welcome" and welcome["type"] == "welcome"  # type: ignore[index]
    assert (await join(guarded, "r", name="Alice again", ticket=t))[0] == "closed 4401"  # single use


async def test_a_person_cannot_pose_as_luna(guarded):
    watcher_ticket, impostor_ticket = await ticket(guarded, "r"), await ticket(guarded, "r")
    url = f"{guarded.url.replace('http', 'ws')}/local/rooms/r/signal"
    async with guarded.http.ws_connect(url) as watcher:
        await watcher.send_str(json.dumps({"type": "join", "name": "Alice", "ticket": watcher_ticket}))
        assert json.loads((await watcher.receive(timeout=5)).data)["type"] == "welcome"
        assert (await join(guarded, "r", name="Luna", kind="bot", ticket=impostor_ticket))[0] == "welcome"
        joined = json.loads((await watcher.receive(timeout=5)).data)
    assert joined["type"] == "peer_joined" and joined["peer"]["kind"] == "human"  # the ticket decides


async def test_lunas_page_gets_its_own_bot_ticket(start_service):
    host = PagelessHost()
    svc = await start_service(host=host, api_token=TOKEN)
    status, _ = await svc.call("POST", "/rooms/r/luna", json={"backend": "local"}, headers=AUTH)
    assert status == 201
    room = page_config(host.urls[0])["room"]
    assert svc.service.tickets.redeem(room["ticket"], "r") == "bot"


async def test_the_participant_list_and_metrics_need_the_token_and_probes_stay_open(guarded):
    assert (await guarded.call("GET", "/local/rooms/r/participants"))[0] == 401
    assert await guarded.call("GET", "/local/rooms/r/participants", headers=AUTH) == (200, {"participants": []})
    async with guarded.http.get(guarded.url + "/metrics") as resp:
        assert resp.status == 401
    for path in ("/healthz", "/readyz", "/openapi.json", "/demo/rooms/r", "/bot/demo.js"):
        async with guarded.http.get(guarded.url + path) as resp:
            assert resp.status == 200, path


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_the_startup_log_says_who_may_join(start_service, token):
    with structlog.testing.capture_logs() as logs:
        await start_service(host=PagelessHost(), api_token=token)
    access = [e for e in logs if e["event"].startswith("access")]
    if token is None:
        assert access[0]["log_level"] == "warning" and "without a ticket" in access[0]["note"]
    else:
        assert access[0]["log_level"] == "info" and "ticket" in access[0]["local_rooms"]
    assert TOKEN not in repr(logs)


async def test_without_a_token_the_demo_stays_open(open_demo):
    outcome, _ = await join(open_demo, "r", name="Alice")
    assert outcome == "welcome"
    assert (await open_demo.call("GET", "/local/rooms/r/participants"))[0] == 200


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("[]", "JSON objects"),
        ("1", "JSON objects"),
        ("null", "JSON objects"),
        ("not json", "JSON objects"),
        ('{"type": "signal", "to": "p1", "data": {}}', "join"),
        ('{"type": "join", "name": 7}', "name"),
        ('{"type": "join", "kind": "robot"}', "kind"),
    ],
)
async def test_a_bad_first_message_gets_a_clean_close(open_demo, caplog, raw, reason):
    with caplog.at_level(logging.DEBUG):
        outcome, why = await join(open_demo, "r", raw=raw)
    assert outcome == "closed 4400" and reason in why  # type: ignore[operator]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]  # no traceback


def test_tickets_expire_on_the_clock_they_are_given() -> None:
    now = [100.0]
    tickets = RoomTickets(ttl_s=60, clock=lambda: now[0])
    early, late = tickets.mint("r"), tickets.mint("r", "bot")
    now[0] += 59
    assert tickets.redeem(early, "r") == "human"
    now[0] += 2
    assert tickets.redeem(late, "r") is None


async def test_a_muted_microphone_is_told_to_everyone_and_to_newcomers(open_demo):
    """The local room's mute, as RealtimeKit's audioEnabled: the others get ``peer_mic``, a newcomer sees ``mic``
    in the welcome, the participant list shows it, and a ``mic`` without a boolean is refused like any junk."""
    url = f"{open_demo.url.replace('http', 'ws')}/local/rooms/r/signal"
    async with open_demo.http.ws_connect(url) as alice, open_demo.http.ws_connect(url) as luna:
        await alice.send_str(json.dumps({"type": "join", "name": "Alice"}))
        assert json.loads((await alice.receive(timeout=5)).data)["type"] == "welcome"
        await luna.send_str(json.dumps({"type": "join", "name": "Luna", "kind": "bot"}))
        welcome = json.loads((await luna.receive(timeout=5)).data)
        assert [(p["name"], p["mic"]) for p in welcome["peers"]] == [("Alice", True)]
        assert json.loads((await alice.receive(timeout=5)).data)["type"] == "peer_joined"

        await alice.send_str(json.dumps({"type": "mic", "enabled": False}))
        told = json.loads((await luna.receive(timeout=5)).data)
        assert told == {"type": "peer_mic", "peer": {**welcome["peers"][0], "mic": False}}
        _, people = await open_demo.call("GET", "/local/rooms/r/participants")
        assert {p["name"]: p["mic"] for p in people["participants"]} == {"Alice": False, "Luna": True}
        outcome, newcomer = await join(open_demo, "r", name="Bob", mic=False)  # joins muted
        assert outcome == "welcome"
        assert {p["name"]: p["mic"] for p in newcomer["peers"]} == {"Alice": False, "Luna": True}  # type: ignore[index]
        bob = json.loads((await luna.receive(timeout=5)).data)
        assert bob["type"] == "peer_joined" and bob["peer"]["mic"] is False
        assert json.loads((await luna.receive(timeout=5)).data)["type"] == "peer_left"

        await alice.send_str(json.dumps({"type": "mic", "enabled": True}))
        told = json.loads((await luna.receive(timeout=5)).data)
        assert told["type"] == "peer_mic" and told["peer"]["mic"] is True

        await alice.send_str(json.dumps({"type": "mic", "enabled": "no"}))
        while (closed := await alice.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            pass  # Bob's coming and going
        assert closed.type == aiohttp.WSMsgType.CLOSE and alice.close_code == 4400 and "enabled" in closed.extra

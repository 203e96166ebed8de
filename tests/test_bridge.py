"""The bridge protocol: framing, and a socket that refuses bad tokens and malformed frames with clear codes."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import pytest

from luna_voice.bridge import protocol as bp
from pageless import PagelessHost, page_config


def test_audio_frame_round_trip():
    pcm = struct.pack("<4h", 0, 1000, -1000, 32767)
    frame = bp.decode_audio(bp.encode_audio(bp.KIND_CAPTURE, 3, 2**32 + 5, 1700000000123.5, pcm))
    assert (frame.kind, frame.participant, frame.seq, frame.timestamp_ms, frame.pcm) == (
        bp.KIND_CAPTURE,
        3,
        5,
        1700000000123.5,
        pcm,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x01", "shorter than"),
        (bp.HEADER.pack(9, 1, 0, 0, 0.0), "version"),
        (bp.HEADER.pack(1, 7, 0, 0, 0.0), "kind"),
        (bp.HEADER.pack(1, 1, 0, 0, 0.0) + b"\x00", "whole number"),
        (bp.HEADER.pack(1, 1, 0, 0, 0.0) + bytes(bp.MAX_FRAME_BYTES), "larger"),
    ],
)
def test_malformed_audio_frames_are_refused(data, message):
    with pytest.raises(bp.ProtocolError) as err:
        bp.decode_audio(data)
    assert err.value.code == bp.CLOSE_MALFORMED and message in err.value.reason


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"no": "type"}',
        '{"type": "nope"}',
        '{"type": "hello"}',
        '{"type": "room_state", "state": "x"}',
        '{"type": "participant_joined", "index": "1", "id": "a"}',
        '{"type": "played", "seq": true}',
    ],
)
def test_malformed_control_messages_are_refused(text):
    with pytest.raises(bp.ProtocolError) as err:
        bp.decode_text(text)
    assert err.value.code == bp.CLOSE_MALFORMED


def test_control_messages_parse():
    assert bp.decode_text('{"type":"participant_joined","index":2,"id":"p7","name":"Bob"}') == bp.ParticipantJoined(
        2, "p7", "Bob"
    )
    assert bp.decode_text('{"type":"played","seq":41,"idle":true}') == bp.Played(41, True)
    assert json.loads(bp.control("clear")) == {"type": "clear"}


async def summon_pageless(start_service):  # type: ignore[no-untyped-def]
    host = PagelessHost()
    svc = await start_service(host=host)
    status, bot = await svc.call("POST", "/rooms/bridge-test/luna", json={"backend": "local"})
    assert status == 201
    for _ in range(50):
        if host.urls:
            break
        await asyncio.sleep(0.02)
    return svc, bot, page_config(host.urls[0])


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int:
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code or msg.data


async def test_bridge_refuses_unknown_bot_and_bad_token(start_service):
    svc, bot, cfg = await summon_pageless(start_service)
    ws_url = svc.url.replace("http", "ws")
    async with svc.http.ws_connect(f"{ws_url}/bridge/bot_nope") as ws:
        assert await closed_with(ws) == bp.CLOSE_UNKNOWN_BOT
    async with svc.http.ws_connect(f"{ws_url}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(json.dumps({"type": "hello", "token": "wrong"}))
        assert await closed_with(ws) == bp.CLOSE_UNAUTHORIZED
    async with svc.http.ws_connect(f"{ws_url}/bridge/{bot['bot_id']}") as ws:
        await ws.send_bytes(b"\x01" * 20)  # audio before hello
        assert await closed_with(ws) == bp.CLOSE_UNAUTHORIZED
    assert cfg["token"] not in json.dumps((await svc.call("GET", "/rooms/bridge-test/luna"))[1])


async def test_bridge_carries_participants_and_refuses_malformed_frames(start_service):
    svc, bot, cfg = await summon_pageless(start_service)
    ws_url = f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}"
    async with svc.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"type": "hello", "token": cfg["token"], "backend": "local"}))
        await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Bob"}))
        silence = bytes(640)
        for seq in range(10):
            await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE, 1, seq, 0.0, silence))
        for _ in range(50):
            status, body = await svc.call("GET", "/rooms/bridge-test/luna")
            if body["participants"] and body["stats"]["frames_in"] == 10:
                break
            await asyncio.sleep(0.05)
        assert body["state"] == "joined"
        assert body["participants"] == [{"id": "p1", "name": "Bob"}]
        assert body["stats"]["frames_in"] == 10

        async with svc.http.ws_connect(ws_url) as second:  # one page per bot
            await second.send_str(json.dumps({"type": "hello", "token": cfg["token"]}))
            assert await closed_with(second) == bp.CLOSE_CONFLICT

        await ws.send_bytes(b"\x01\x01\x00")
        assert await closed_with(ws) == bp.CLOSE_MALFORMED

    for _ in range(100):  # the bot ends with a reason; the service keeps answering
        status, body = await svc.call("GET", "/rooms/bridge-test/luna")
        if body["state"] in ("ended", "failed"):
            break
        await asyncio.sleep(0.05)
    assert status == 200 and body["sub_code"] == "crashed" and "bridge" in body["reason"]

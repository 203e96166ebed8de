"""The bridge protocol: framing, and a socket that refuses bad tokens and malformed frames with clear codes."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import aiohttp
import numpy as np
import pytest
import structlog

from luna_voice.bridge import opus_stream as os_
from luna_voice.bridge import protocol as bp
from opus_packets import OpusSender, tone
from pageless import PagelessHost, page_config, page_hello
from roomtools import until
from speech import speech_frames


def test_audio_frame_round_trip():
    pcm = struct.pack("<4h", 0, 1000, -1000, 32767)
    frame = bp.decode_audio(bp.encode_audio(bp.KIND_PLAYBACK, 0, 2**32 + 5, 1700000000123.5, pcm))
    assert (frame.kind, frame.participant, frame.seq, frame.timestamp_ms, frame.payload) == (
        bp.KIND_PLAYBACK,
        0,
        5,
        1700000000123.5,
        pcm,
    )
    opus = bytes([15 << 3]) + b"\x01\x02"  # an Opus packet's length is its own: odd is fine
    frame = bp.decode_audio(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 3, 3_000_000_000, 5.0, opus))
    assert (frame.kind, frame.participant, frame.seq, frame.payload) == (bp.KIND_CAPTURE_OPUS, 3, 3_000_000_000, opus)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x01", "shorter than"),
        (bp.HEADER.pack(9, 1, 0, 0, 0.0), "version"),
        (bp.HEADER.pack(1, 7, 0, 0, 0.0), "kind"),
        (bp.HEADER.pack(1, 1, 0, 0, 0.0) + bytes(640), "kind"),  # 16 kHz PCM capture, retired
        (bp.HEADER.pack(1, 2, 0, 0, 0.0) + b"\x00", "whole number"),
        (bp.HEADER.pack(1, 3, 0, 0, 0.0) + bytes(bp.MAX_FRAME_BYTES), "larger"),
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
        '{"type": "played", "seq": -2}',
        "[" * 30_000 + "]" * 30_000,  # json.loads overflowed the stack: a RecursionError, not junk
        '{"type": "log", "message": "x", "extra": ' + "[" * 30_000 + "]" * 30_000 + "}",
        '{"type": "room_state", "state": "failed", "sub_code": 5}',  # reached the bot's shutdown as a TypeError
        '{"type": "room_state", "state": "left", "reason": ["x"]}',
        '{"type": "participant_joined", "index": 0, "id": "a"}',
        '{"type": "participant_joined", "index": 70000, "id": "a"}',
        '{"type": "participant_joined", "index": 1, "id": ""}',
        '{"type": "participant_left", "index": 1.5}',
        '{"type": "cleared", "dropped_ms": -1}',
        '{"type": "cleared", "dropped_ms": "10"}',
        '{"type": "log", "level": "shout", "message": "hi"}',
        '{"type": "hello", "token": "t", "backend": "local"}',
        '{"type": "audio_context", "state": "running"}',  # retired with the page's AudioContext
        '{"type": "muted"}',
        '{"type": "muted", "muted": "yes"}',
    ],
)
def test_malformed_control_messages_are_refused(text):
    with pytest.raises(bp.ProtocolError) as err:
        bp.decode_text(text)
    assert err.value.code == bp.CLOSE_MALFORMED


def test_a_deeply_nested_hello_is_refused_not_a_crash():
    deep = '{"type": "hello", "token": "t", "x": ' + "[" * 30_000 + "]" * 30_000 + "}"
    with pytest.raises(bp.ProtocolError) as err:
        bp.decode_hello(deep, "t")
    assert err.value.code == bp.CLOSE_UNAUTHORIZED


def test_control_messages_parse():
    assert bp.decode_text('{"type":"participant_joined","index":2,"id":"p7","name":"Bob"}') == bp.ParticipantJoined(
        2, "p7", "Bob"
    )
    assert bp.decode_text('{"type":"played","seq":41,"idle":true}') == bp.Played(41, True)
    assert json.loads(bp.control("clear")) == {"type": "clear"}
    assert bp.decode_text('{"type":"muted","muted":true,"reason":"a host muted Luna"}') == bp.Muted(
        True, "a host muted Luna"
    )
    assert bp.decode_text('{"type":"muted","muted":false}') == bp.Muted(False, None)
    assert json.loads(bp.control("unmute")) == {"type": "unmute"}


def test_relayed_free_text_is_cut_to_size_not_refused():
    long = "x" * 50_000
    failed = bp.decode_text(json.dumps({"type": "room_state", "state": "failed", "reason": long}))
    assert isinstance(failed, bp.RoomState) and failed.state == "failed" and len(failed.reason or "") == 1000
    person = bp.decode_text(json.dumps({"type": "participant_joined", "index": 1, "id": "p", "name": long}))
    assert isinstance(person, bp.ParticipantJoined) and len(person.name) == 256
    assert len(bp.decode_text(json.dumps({"type": "log", "level": "warn", "message": long})).message) == 2000  # type: ignore[union-attr]


async def summon_pageless(start_service, **kw):  # type: ignore[no-untyped-def]
    host = PagelessHost()
    svc = await start_service(host=host, **kw)
    status, bot = await svc.call("POST", "/rooms/bridge-test/luna", json={"backend": "local"})
    assert status == 201
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "Luna's page to open")
    return svc, bot, page_config(host.urls[0])


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code or msg.data, msg.extra or ""


async def test_bridge_refuses_unknown_bot_and_bad_token(start_service):
    svc, bot, cfg = await summon_pageless(start_service)
    ws_url = svc.url.replace("http", "ws")
    async with svc.http.ws_connect(f"{ws_url}/bridge/bot_nope") as ws:
        assert (await closed_with(ws))[0] == bp.CLOSE_UNKNOWN_BOT
    async with svc.http.ws_connect(f"{ws_url}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(page_hello(cfg, token="wrong"))
        assert (await closed_with(ws))[0] == bp.CLOSE_UNAUTHORIZED
    async with svc.http.ws_connect(f"{ws_url}/bridge/{bot['bot_id']}") as ws:
        await ws.send_bytes(b"\x01" * 20)  # audio before hello
        assert (await closed_with(ws))[0] == bp.CLOSE_UNAUTHORIZED
    assert cfg["token"] not in json.dumps((await svc.call("GET", "/rooms/bridge-test/luna"))[1])


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"playback_rate": 44_100}, ["44100", "48000"]),  # a page that writes her voice at another rate
        ({"playback_rate": None}, ["playback_rate"]),  # a page from before the rates were sent
    ],
)
async def test_a_page_with_other_rates_is_refused_with_a_reason(start_service, override, names):
    svc, bot, cfg = await summon_pageless(start_service)
    async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(page_hello(cfg, **override))
        code, reason = await closed_with(ws)
    assert code == bp.CLOSE_MALFORMED and all(n in reason for n in names), reason


async def _status(svc):  # type: ignore[no-untyped-def]
    return (await svc.call("GET", "/rooms/bridge-test/luna"))[1]


@pytest.mark.faults
async def test_junk_from_the_page_is_logged_once_and_dropped(start_service):
    svc, bot, cfg = await summon_pageless(start_service)
    ws_url = f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}"
    packets = OpusSender().packets(bytes(640 * 10))
    with structlog.testing.capture_logs() as logs:
        async with svc.http.ws_connect(ws_url) as ws:
            await ws.send_str(page_hello(cfg))
            await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
            await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Bob"}))
            for rtp, payload in packets[:5]:
                await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, 0.0, payload))
            # a room_state whose sub_code is not a string once left the bot joined forever (TypeError in shutdown)
            for _ in range(3):
                await ws.send_str(json.dumps({"type": "room_state", "state": "failed", "sub_code": 5}))
            await ws.send_bytes(b"\x01\x01\x00")
            await ws.send_str(json.dumps({"type": "participant_joined", "index": 0, "id": "p2"}))
            for payload in (bytes([15 << 3]) * 1501, bytes([16 << 3 | 3, 0])):  # not Opus: too long, no frames
                await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, packets[5][0], 0.0, payload))
            for rtp, payload in packets[5:]:  # the page is still heard
                await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, 0.0, payload))

            async def all_frames():  # type: ignore[no-untyped-def]
                body = await _status(svc)
                return body if body["stats"]["frames_in"] >= 10 else None  # (then silence while none come)

            body = await until(all_frames, 5, "the valid frames after the junk")
            assert body["state"] == "joined" and body["participants"] == [{"id": "p1", "name": "Bob"}]
            assert body["stats"]["malformed"] == 7

            async with svc.http.ws_connect(ws_url) as second:  # one page per bot
                await second.send_str(page_hello(cfg))
                assert (await closed_with(second))[0] == bp.CLOSE_CONFLICT

            status, after = await svc.call("DELETE", "/rooms/bridge-test/luna")
    assert status == 200 and after["state"] == "ended" and after["sub_code"] == "dismissed"
    dropped = [e["reason"] for e in logs if e["event"] == "bridge.malformed"]
    assert len(dropped) == 5 and any("sub_code" in r for r in dropped), dropped  # each reason once


async def test_a_frame_over_the_limit_closes_the_bridge_and_the_log_says_why(start_service):
    svc, bot, cfg = await summon_pageless(start_service)
    with structlog.testing.capture_logs() as logs:
        async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as ws:
            await ws.send_str(page_hello(cfg))
            await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
            await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, 0, 0.0, bytes(bp.MAX_FRAME_BYTES)))
            assert (await closed_with(ws))[0] == 1009  # message too big

        async def lost():  # type: ignore[no-untyped-def]
            body = await _status(svc)
            return body if body["sub_code"] == "crashed" else None

        body = await until(lost, 10, "the bot to notice its page's bridge closed")  # and try a new page
    assert "bridge" in body["reason"]
    closed = [e for e in logs if e["event"] == "bridge.closed"]
    assert len(closed) == 1 and f"exceeds limit {bp.MAX_FRAME_BYTES}" in (closed[0]["error"] or ""), closed


async def test_the_bridge_declines_permessage_deflate_so_no_frame_is_compressed(start_service):
    """Chromium offers permessage-deflate on every WebSocket and the bridge accepted it: each 20 ms frame was
    deflated by one side and inflated by the other for a few percent fewer bytes of PCM on a local socket."""
    svc, bot, cfg = await summon_pageless(start_service)
    url = f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}"
    async with svc.http.ws_connect(url, compress=15) as ws:  # offered, as Chromium does
        assert ws.compress == 0  # declined in the handshake
        await ws.send_str(page_hello(cfg))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Bob"}))
        (rtp, packet), *_ = OpusSender().packets(bytes(640))
        await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, 0.0, packet))

        async def heard():  # type: ignore[no-untyped-def]
            return (await _status(svc))["stats"]["frames_in"] >= 1

        await until(heard, 5, "the frame, uncompressed")


async def test_the_audio_tap_sees_every_capture_frame_python_receives(start_service):
    """Each Opus packet is decoded into 20 ms frames stamped with when it reached the page; the tap (the bench's)
    sees them as the pipeline does."""
    tapped: list[tuple[str, str, float, bytes]] = []
    svc, bot, cfg = await summon_pageless(start_service, audio_tap=lambda *frame: tapped.append(frame))
    packets = OpusSender().packets(tone(0.06))
    async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(page_hello(cfg))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Bob"}))
        for k, (rtp, payload) in enumerate(packets):
            await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, 1000.0 + 20 * k, payload))
        await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 9, 0, 0.0, packets[0][1]))  # nobody has index 9
        await until(lambda: asyncio.sleep(0, len(tapped) >= 3), 5, "three tapped frames")
    assert [(room, pid, ts, len(pcm)) for room, pid, ts, pcm in tapped[:3]] == [
        ("bridge-test", "p1", 1000.0 + 20 * k, 640) for k in range(3)
    ]
    assert max(abs(int.from_bytes(tapped[2][3][i : i + 2], "little", signed=True)) for i in range(0, 640, 2)) > 5000


async def test_packets_that_waited_out_a_busy_loop_are_heard_not_filled_over(start_service):
    """The service's event loop is busy (its own work, a loaded machine) for longer than the fill's slack while the
    page's packets wait in the socket. When it frees, the due fill timer and the socket's read come in the same
    loop pass: the packets are taken first, so every one is heard and none is dropped as late."""
    tapped: list[tuple[str, str, float, bytes]] = []
    svc, bot, cfg = await summon_pageless(start_service, audio_tap=lambda *frame: tapped.append(frame))
    packets = OpusSender().packets(tone(0.6))
    async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(page_hello(cfg))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Bob"}))
        t0 = time.time() * 1000
        for k, (rtp, payload) in enumerate(packets):  # each stamped when the page took it, one per 20 ms
            await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, t0 + 20 * k, payload))
            if k < 10:
                await asyncio.sleep(0.02)  # paces real-time audio; the rest wait in the socket ...
        time.sleep(os_.SLACK_S + 0.2)  # noqa: ASYNC251 -- the loop kept busy: the stall under test, not a wait

        async def heard_all() -> bool:
            return len(tapped) >= len(packets)

        await until(heard_all, 5, "every packet's frame")
        _, status = await svc.call("GET", "/rooms/bridge-test/luna")
    assert status["stats"]["packets_late"] == 0, status["stats"]
    assert [ts for _, _, ts, _ in tapped[: len(packets)]] == [t0 + 20 * k for k in range(len(packets))]


async def test_an_utterance_followed_by_dtx_still_ends_its_turn_on_time(start_service, tmp_path):
    """A sender in DTX sends (nearly) nothing once its speaker is silent. Python fills that time with silence, so
    the endpointer's rules end the turn as after any utterance, not its stall rule (``stalled``, no frames)."""
    svc, bot, cfg = await summon_pageless(start_service, turn_model=False)
    pcm = np.frombuffer(b"".join(speech_frames("Luna, what time is it?", tmp_path / "ann.wav")), np.int16)
    last = np.flatnonzero(np.abs(pcm) > 1000)[-1]
    words = pcm[: (last // 320 + 2) * 320].tobytes()  # to the last word's end: what follows is the sender's DTX
    async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as ws:
        await ws.send_str(page_hello(cfg))
        await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
        for rtp, payload in OpusSender().packets(words):  # in real time, then nothing at all
            await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, time.time() * 1000, payload))
            await asyncio.sleep(0.02)  # paces real-time audio

        async def ended():  # type: ignore[no-untyped-def]
            turns = (await _status(svc))["turns"]
            return turns[0] if turns else None

        turn = await until(ended, 10, "Ann's turn to end")
    assert turn["end"]["reason"] == "silence", turn["end"]  # without the filled silence: "stalled"
    wait = turn["timings"]["end_of_turn"] - turn["timings"]["end_of_speech"]
    assert 0.5 <= wait < 1.5, turn["timings"]  # end_of_speech_ms (500 ms), and the fill's slack


def test_duck_message_carries_a_gain_in_range():
    assert json.loads(bp.duck(10 ** (-15 / 20))) == {"type": "duck", "gain": 0.1778}
    with pytest.raises(ValueError):
        bp.duck(1.5)

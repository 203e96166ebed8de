"""How a bot's stay ends: each way out is a typed state with a sub-code and a reason, and the page is told to
leave. The test plays Luna's page over the real bridge socket (no browser needed for the lifecycle)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest

from fakes.botsession import Reply, fake_botsession
from luna_voice.bridge import protocol as bp
from luna_voice.conversation import actions as act
from luna_voice.conversation.domain import Usage
from luna_voice.providers.base import Transcript
from luna_voice.providers.botsession import BotSessionEngine
from luna_voice.providers.select import ProviderSet
from opus_packets import OpusSender
from pageless import PagelessHost, page_config, page_hello
from roomtools import until
from scripted_room import Room
from speech import speech_frames


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


class HandClock:
    """The stay's monotonic clock, moved by the test. ``looked`` waits until the bot's own task (whose only clock
    reads while it stays are its supervisor's checks) has read the clock since the last move: the decision for the
    new time is then made."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._read = asyncio.Event()

    def __call__(self) -> float:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("bot-"):
            self._read.set()
        return self.now

    def move(self, seconds: float) -> None:
        self.now += seconds
        self._read.clear()

    async def looked(self) -> None:
        async with asyncio.timeout(5):
            await self._read.wait()


async def test_leaves_when_alone(start_service):
    clock = HandClock()
    host = PagelessHost()
    svc = await start_service(host=host, alone_timeout_s=1.0)
    svc.service.manager.clock = clock  # bots summoned from now on run on it
    assert (await svc.call("POST", "/rooms/life/luna"))[0] == 201
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "the page to open")
    bot = (await svc.call("GET", "/rooms/life/luna"))[1]
    ws = await _joined_with(svc, bot, page_config(host.urls[0]), "Ann")
    clock.move(60)  # a minute with Ann in the room, far past the alone timeout
    await clock.looked()
    assert (await svc.call("GET", "/rooms/life/luna"))[1]["state"] == "joined"  # someone is here: she stays
    await ws.send_str(json.dumps({"type": "participant_left", "index": 1, "id": "p1"}))

    async def alone() -> bool:
        return (await svc.call("GET", "/rooms/life/luna"))[1]["participants"] == []

    await until(alone, 5, "Ann to have left")
    clock.move(0.5)
    await clock.looked()
    assert (await svc.call("GET", "/rooms/life/luna"))[1]["state"] == "joined"  # alone, but not for long enough
    clock.move(0.6)
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


@pytest.mark.faults
async def test_page_crash_rejoins_within_the_budget_then_fails(start_service):
    svc, bot, cfg, host = await summon(start_service, rejoin_max=2)
    ws = await attach(svc, bot, cfg)
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
    await until(lambda: _state(svc, "joined"), 5, "joined")
    for attempt in (1, 2):
        host.crash()
        await ws.close()
        await until(lambda: asyncio.sleep(0, len(host.urls) == attempt + 1), 5, "a fresh page")  # noqa: B023
        status = (await svc.call("GET", "/rooms/life/luna"))[1]
        assert (status["state"], status["sub_code"]) == ("reconnecting", "crashed")
        assert status["participants"] == []  # the new page tells again who is there
        ws = await attach(svc, bot, page_config(host.urls[attempt]))
        await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
        await ws.send_str(json.dumps({"type": "participant_joined", "index": 1, "id": "p1", "name": "Ann"}))
        await until(lambda: _state(svc, "joined"), 5, "joined again")
        status = (await svc.call("GET", "/rooms/life/luna"))[1]
        assert status["sub_code"] is None  # a rejoin that worked clears the crash ...
        assert [r["cause"] for r in status["rejoins"]] == ["page crashed"] * attempt  # ... and records it
    host.crash()  # the budget of 2 is used up: the third crash is not retried
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("failed", "crashed")
    assert "gave up after 2 rejoins" in body["reason"]
    await ws.close()


async def _state(svc, state: str) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.call("GET", "/rooms/life/luna"))[1]["state"] == state


async def _joined_with(svc, bot, cfg, *people: str):  # type: ignore[no-untyped-def]
    """Attach a page that reports joined with ``people`` in the room, and wait until the status shows them."""
    ws = await attach(svc, bot, cfg)
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    for i, name in enumerate(people, 1):
        await ws.send_str(json.dumps({"type": "participant_joined", "index": i, "id": f"p{i}", "name": name}))

    async def shown() -> bool:
        body = (await svc.call("GET", "/rooms/life/luna"))[1]
        return body["state"] == "joined" and len(body["participants"]) == len(people)

    await until(shown, 5, "the page to join with its people")
    return ws


async def _sync(svc, ws, name: str) -> dict:  # type: ignore[no-untyped-def]
    """A marker through the current page: once the status shows ``name``, everything sent before it was handled."""
    await ws.send_str(json.dumps({"type": "participant_joined", "index": 99, "id": "marker", "name": name}))

    async def seen():
        body = (await svc.call("GET", "/rooms/life/luna"))[1]
        return body if any(p["name"] == name for p in body["participants"]) else None

    return await until(seen, 5, f"marker {name}")


async def _answer_leave(ws) -> None:  # type: ignore[no-untyped-def]
    """Play the page's part in leaving: on ``leave``, report having left the room."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data) == {"type": "leave"}:
            await ws.send_str(json.dumps({"type": "room_state", "state": "left", "sub_code": "dismissed"}))
            return


@pytest.mark.faults
async def test_late_signals_from_an_old_page_are_ignored(start_service):
    svc, bot, cfg, host = await summon(start_service)
    old_ws = await _joined_with(svc, bot, cfg, "Ann")
    old_crash = host.crash
    old_crash()  # the renderer died; its bridge socket has not noticed yet
    await until(lambda: asyncio.sleep(0, len(host.urls) == 2), 5, "a fresh page")
    ws = await _joined_with(svc, bot, page_config(host.urls[1]), "Ann")
    old_crash()  # late crash event and bridge close of the old page
    await old_ws.close()
    body = await _sync(svc, ws, "Bob")
    assert (body["state"], body["sub_code"]) == ("joined", None)
    assert len(body["rejoins"]) == 1 and len(host.urls) == 2
    await ws.close()


@pytest.mark.faults
async def test_a_malformed_room_state_never_reaches_the_lifecycle(start_service):
    svc, bot, cfg, _ = await summon(start_service)
    ws = await _joined_with(svc, bot, cfg, "Ann")
    await ws.send_str(json.dumps({"type": "room_state", "state": "failed", "sub_code": {"x": 1}, "reason": "junk"}))
    await ws.send_str(json.dumps({"type": "room_state", "state": "left", "sub_code": [1]}))
    body = await _sync(svc, ws, "Bob")
    assert (body["state"], body["sub_code"]) == ("joined", None)
    assert body["stats"]["malformed"] == 2
    leave = asyncio.create_task(_answer_leave(ws))
    status, body = await svc.call("DELETE", "/rooms/life/luna")
    assert (status, body["state"], body["sub_code"]) == (200, "ended", "dismissed")
    await leave
    await ws.close()


@pytest.mark.faults
async def test_the_alone_timeout_ends_the_stay_when_the_room_emptied_during_a_crash(start_service):
    svc, bot, cfg, host = await summon(start_service, alone_timeout_s=1.0)
    await _joined_with(svc, bot, cfg, "Ann")
    host.crash()  # Ann leaves while Luna's page is down: the new page finds nobody
    await until(lambda: asyncio.sleep(0, len(host.urls) == 2), 5, "a fresh page")
    ws = await attach(svc, bot, page_config(host.urls[1]))
    await ws.send_str(json.dumps({"type": "room_state", "state": "joined"}))
    leave = asyncio.create_task(_answer_leave(ws))
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("ended", "alone_timeout")
    await leave
    await ws.close()


async def test_a_wall_clock_step_does_not_stop_the_alone_timer(start_service, monkeypatch):
    svc, bot, cfg, _ = await summon(start_service, alone_timeout_s=1.0)
    ws = await _joined_with(svc, bot, cfg, "Ann")
    await ws.send_str(json.dumps({"type": "participant_left", "index": 1, "id": "p1"}))

    async def alone() -> bool:
        return (await svc.call("GET", "/rooms/life/luna"))[1]["participants"] == []

    await until(alone, 5, "Ann to have left")  # Luna's alone timer is running now
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # NTP steps the clock back an hour
    leave = asyncio.create_task(_answer_leave(ws))
    body = await ended(svc)
    assert body["sub_code"] == "alone_timeout"
    await leave
    await ws.close()


@pytest.mark.faults
async def test_summoning_while_luna_leaves_starts_a_new_stay(start_service):
    svc, bot, cfg, host = await summon(start_service)
    ws = await _joined_with(svc, bot, cfg, "Ann")
    dismiss = asyncio.create_task(svc.call("DELETE", "/rooms/life/luna"))
    msg = await ws.receive(timeout=5)
    assert json.loads(msg.data) == {"type": "leave"}  # Luna is leaving now
    summon_again = asyncio.create_task(svc.call("POST", "/rooms/life/luna"))
    await until(lambda: _state(svc, "leaving"), 5, "the old stay to be leaving")
    assert not summon_again.done()  # it waits for the leave ...
    await ws.send_str(json.dumps({"type": "room_state", "state": "left", "sub_code": "dismissed"}))
    status, new = await summon_again
    assert status == 201 and new["bot_id"] != bot["bot_id"]  # ... then starts a new stay
    assert new["state"] in ("starting", "joining")
    assert (await dismiss)[1]["state"] == "ended"
    await until(lambda: asyncio.sleep(0, len(host.urls) == 2), 5, "the new stay's page")
    await ws.close()


async def _sse(svc, path: str):  # type: ignore[no-untyped-def]
    """Yield the JSON events of a server-sent event stream until the server ends it."""
    async with svc.http.get(svc.url + path) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


@pytest.mark.faults
async def test_an_event_stream_ends_with_the_final_status_after_dismiss(start_service):
    svc, bot, cfg, _ = await summon(start_service)
    ws = await _joined_with(svc, bot, cfg, "Ann")
    events: list[dict] = []

    async def read() -> None:
        async for event in _sse(svc, "/rooms/life/luna/events"):
            events.append(event)
            if len(events) == 1:
                leave = asyncio.create_task(_answer_leave(ws))
                await svc.call("DELETE", "/rooms/life/luna")
                await leave

    async with asyncio.timeout(15):
        await read()  # returns only because the server ended the stream
    assert events[0]["type"] == "status" and events[0]["status"]["state"] == "joined"
    last = events[-1]
    assert last["type"] == "status" and last["final"] and last["status"]["state"] == "ended"
    await ws.close()


async def test_a_room_stream_follows_the_rooms_next_bot(start_service):
    svc, bot, _cfg, _host = await summon(start_service)
    seen: list[str] = []

    async def read() -> None:
        async for event in _sse(svc, "/rooms/life/luna/events?follow=room"):
            seen.append(event["bot_id"])
            if event["type"] == "status" and event.get("final"):
                assert (await svc.call("POST", "/rooms/life/luna"))[0] == 201
            elif event["bot_id"] != bot["bot_id"]:
                return
            if len(seen) == 1:
                await svc.call("DELETE", "/rooms/life/luna")

    async with asyncio.timeout(15):
        await read()
    assert seen[0] == bot["bot_id"] and seen[-1] != bot["bot_id"]


async def test_ended_bots_are_forgotten_beyond_the_retention_count_and_time(start_service):
    host = PagelessHost()
    svc = await start_service(host=host, ended_retention_count=2, ended_retention_s=3600)
    for i in range(4):
        assert (await svc.call("POST", f"/rooms/r{i}/luna"))[0] == 201
        assert (await svc.call("DELETE", f"/rooms/r{i}/luna"))[1]["state"] == "ended"
    rooms = (await svc.call("GET", "/rooms"))[1]["rooms"]
    assert [r["room_id"] for r in rooms] == ["r2", "r3"]  # the oldest went first
    assert (await svc.call("GET", "/rooms/r0/luna"))[0] == 404

    svc = await start_service(host=PagelessHost(), ended_retention_s=0.5)
    await svc.call("POST", "/rooms/brief/luna")
    await svc.call("DELETE", "/rooms/brief/luna")

    async def forgotten() -> bool:
        return (await svc.call("GET", "/rooms/brief/luna"))[0] == 404

    await until(forgotten, 5, "the ended bot to be forgotten")


def test_a_new_page_resets_playback_and_history_keeps_what_the_room_heard():
    room = Room()
    room.join(("a", "Alice"))
    room.replies["a"] = "The first sentence is here. The second sentence is longer and nobody will hear it."
    room.say("a", "Tell me something.")
    room.wait(2.0)  # part of the first sentence has played when the page dies
    turn = room.turn_by("a")
    assert turn["state"] == "speaking" and 0 < turn["played_audio_s"] < turn["reply_audio_s"]
    sent = len(room.of(act.SendAudio))
    room.page.clear()  # the old page and whatever it still had queued are gone
    room.core.playback_reset(room.now)
    room.run()
    turn = room.turn_by("a")
    assert turn["state"] == "interrupted" and turn["interrupted"]
    assert turn["spoken_text"] and "nobody will hear it" not in turn["spoken_text"]
    room.wait(2.0)
    assert len(room.of(act.SendAudio)) == sent  # nothing of the old answer goes to the new page
    room.say("a", "And then?")
    room.wait(0.5)
    history = room.of(act.RequestReply)[-1].request.context
    assert history[-1].text == turn["spoken_text"] + "…"  # Luna's line is what was heard, marked as cut off


class RefusingHost(PagelessHost):
    """A browser whose page load fails the way Playwright reports it: the URL, fragment and all, in the message."""

    async def open(self, url, *, on_crash):  # type: ignore[no-untyped-def]
        self.urls.append(url)
        raise RuntimeError(f"Page.goto: net::ERR_CONNECTION_REFUSED at {url}")


async def test_a_page_that_does_not_open_fails_without_leaking_its_tokens(start_service, capsys):
    host = RefusingHost()
    svc = await start_service(host=host)
    assert (await svc.call("POST", "/rooms/life/luna"))[0] == 201
    body = await ended(svc)
    assert (body["state"], body["sub_code"]) == ("failed", "crashed")
    assert "ERR_CONNECTION_REFUSED" in body["reason"]
    secret = host.urls[0].split("#", 1)[1]
    assert secret not in body["reason"] and secret not in capsys.readouterr().out


async def test_every_url_the_page_gets_is_built_from_the_configured_base(start_service):
    host = PagelessHost()
    svc = await start_service(host=host, bot_base_url="https://luna-bots.internal:9443/")
    status, bot = await svc.call("POST", "/rooms/life/luna", json={"backend": "local"})
    assert status == 201
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "the page to open")
    cfg = page_config(host.urls[0])
    assert host.urls[0].startswith("https://luna-bots.internal:9443/bot/bot.html#")
    assert cfg["bridgeUrl"] == f"wss://luna-bots.internal:9443/bridge/{bot['bot_id']}"
    assert cfg["room"]["signalUrl"] == "wss://luna-bots.internal:9443/local/rooms/life/signal"


class HeardAnn:
    """STT that hears every utterance as one fixed question."""

    name = "heard-ann"

    def open_stream(self, *, prompt=None, keywords=()):  # type: ignore[no-untyped-def]
        return self

    async def push(self, pcm: bytes) -> None:
        pass

    async def finish(self) -> Transcript:
        return Transcript("Luna, are you there?", "en")

    async def cancel(self) -> Usage:
        return Usage()

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class SecondPerSentence:
    """TTS whose every sentence is one second of (silent) voice at the playback rate."""

    name = "second-per-sentence"
    sample_rate = bp.PLAYBACK_RATE

    async def warm(self) -> None:
        pass

    async def synthesize(self, text: str):  # type: ignore[no-untyped-def]
        yield Usage(tts_characters=len(text))
        yield bytes(2 * bp.PLAYBACK_RATE)

    async def aclose(self) -> None:
        pass


async def test_dismissed_mid_answer_the_app_is_told_what_the_room_heard(start_service, tmp_path):
    """BotSession contract v2 at the end of a stay: the turn Luna is speaking when she is dismissed gets its one
    closing ``spoken`` call (interrupted, with what was heard), so the app does not keep an answer nobody heard."""
    async with fake_botsession(token="t0k") as app:
        rest = asyncio.Event()  # the answer's last part never comes: she is still answering when dismissed
        app.script(Reply(deltas=("Yes, I am here. ", "And there is much more to say."), hold_last=rest))
        providers = ProviderSet(
            make_stt=HeardAnn,
            make_llm=lambda: BotSessionEngine(app.url, "t0k", None),
            make_tts=SecondPerSentence,
            names={"stt": "scripted", "llm": "botsession", "tts": "scripted"},
        )
        host = PagelessHost()
        svc = await start_service(providers=providers, host=host)
        assert (await svc.call("POST", "/rooms/life/luna"))[0] == 201
        await until(lambda: asyncio.sleep(0, bool(host.urls)), 5, "the page to open")
        bot = (await svc.call("GET", "/rooms/life/luna"))[1]
        ws = await _joined_with(svc, bot, page_config(host.urls[0]), "Ann")
        words = speech_frames("Luna, are you there?", tmp_path / "ann.wav", bp.CAPTURE_FRAME_SAMPLES)
        silence = bytes(2 * bp.CAPTURE_FRAME_SAMPLES)
        sender = OpusSender()

        async def ann_speaks_then_is_quiet() -> None:  # in real time, as a page forwards it, until cancelled
            for seq in itertools.count():
                for rtp, payload in sender.packets(words[seq] if seq < len(words) else silence):
                    await ws.send_bytes(bp.encode_audio(bp.KIND_CAPTURE_OPUS, 1, rtp, seq * 20.0, payload))
                await asyncio.sleep(bp.FRAME_MS / 1000)  # paces real-time audio

        async def speaking():  # type: ignore[no-untyped-def]
            turns = (await svc.call("GET", "/rooms/life/luna"))[1]["turns"]
            return turns[0] if turns and turns[0]["state"] == "speaking" else None

        capture = asyncio.create_task(ann_speaks_then_is_quiet())
        try:
            turn = await until(speaking, 15, "Luna to answer out loud")
        finally:
            capture.cancel()
        heard: list[int] = []
        while len(heard) < 10:  # playback messages carry one or more frames
            frame = bp.decode_audio((await ws.receive(timeout=5)).data)
            heard += bp.playback_seqs(frame.seq, frame.payload)
        heard = heard[:10]
        await ws.send_str(json.dumps({"type": "played", "seq": heard[-1], "idle": False}))  # the room heard 0.2 s
        await _sync(svc, ws, "marker")
        leave = asyncio.create_task(_answer_leave(ws))
        status, body = await svc.call("DELETE", "/rooms/life/luna")
        await leave
        assert (status, body["state"]) == (200, "ended")
        (spoken,) = app.closing_calls()[turn["id"]]
        assert spoken[1] == "interrupted" and 0 < len(spoken[0]) < len("Yes, I am here.")
        assert list(app.closing_calls()) == [turn["id"]]
        rest.set()
        await ws.close()

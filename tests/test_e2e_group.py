"""Luna in a room of three people (real browsers, real audio): Bob talks without her name and gets no answer,
Alice addresses her by name and gets one, and Carol talks over her — and Luna's voice stops at Bob's ear."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from luna_voice.providers.base import PIPELINE_RATE
from roomtools import active_seconds, human_page, join_room, luna_quiet_at, record_luna, speech_file, until
from speech import words_match

pytestmark = pytest.mark.browser

BOB = "I think we should order pizza tonight."
# One breath: with commas, espeak pauses long enough for the semantic endpointer to cut after "the sea,".
ALICE = "Luna please tell me a long story about the sea and the mountains and the rivers."
CAROL = "Wait, wait, stop please, I have something important to say."


async def test_group_addressing_and_barge_in(start_service, launch_human, tmp_path):
    svc = await start_service()
    assert (await svc.call("POST", "/rooms/group/luna", json={"backend": "local"}))[0] == 201

    async def status():
        return (await svc.call("GET", "/rooms/group/luna"))[1]

    await until(lambda: _state_is(status, "joined"), 30, "Luna to join")
    bob = await human_page(launch_human, svc.url, "group", "Bob", speech_file(tmp_path, BOB, 4.0, "bob"))
    alice = await human_page(launch_human, svc.url, "group", "Alice", speech_file(tmp_path, ALICE, 9.0, "alice"))
    carol = await human_page(
        launch_human, svc.url, "group", "Carol", speech_file(tmp_path, CAROL, 0.2, "carol"), join=False
    )
    await record_luna(bob)  # Bob records Luna's voice alone

    def turn_of(s, name):
        return next((t for t in s["turns"] if t["speaker"]["name"] == name and t["heard_text"]), None)

    async def bob_heard():
        return turn_of(await status(), "Bob")

    bob_turn = await until(bob_heard, 40, "Luna to hear Bob")
    assert words_match(BOB, bob_turn["heard_text"]), bob_turn["heard_text"]
    assert (bob_turn["decision"], bob_turn["reason"]) == ("listen", "not_addressed")

    async def luna_speaking_to_alice():
        t = turn_of(await status(), "Alice")
        return t if t and t["state"] == "speaking" and "first_audio_played" in t["timings"] else None

    await until(luna_speaking_to_alice, 40, "Luna to start answering Alice", step=0.1)

    async def well_into_the_reply():
        t = turn_of(await status(), "Alice")
        return t["state"] == "speaking" and t["played_audio_s"] >= 0.8

    # she is mid-reply when Carol, who just arrived, talks over her
    await until(well_into_the_reply, 20, "0.8 s of Luna's answer played into the room", step=0.05)
    await join_room(carol, "Carol")

    async def alice_turn_over():
        t = turn_of(await status(), "Alice")
        return t if t["state"] in ("interrupted", "done") else None

    alice_turn = await until(alice_turn_over, 30, "Alice's turn to end")
    await luna_quiet_at(bob, limit=30)  # what was already on its way has reached Bob (the recording checks the rest)
    rec = await bob.evaluate("lunaDemo.stopRecording()")

    assert (alice_turn["decision"], alice_turn["reason"]) == ("answer", "addressed_by_name")
    assert alice_turn["state"] == "interrupted", alice_turn
    assert alice_turn["reply_text"].startswith(alice_turn["spoken_text"])
    assert 0 < alice_turn["played_audio_s"] < alice_turn["reply_audio_s"] - 1.0
    # At Bob's ear Luna's voice lasted about as long as what was played, and stopped well before the full reply.
    luna_at_bob = active_seconds(np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16), PIPELINE_RATE)
    assert luna_at_bob < alice_turn["reply_audio_s"] - 1.0, (luna_at_bob, alice_turn)
    assert luna_at_bob > 0.3

    async def carol_heard():
        s = await status()
        t = turn_of(s, "Carol")
        return s if t and t["decision"] else None

    final = await until(carol_heard, 20, "Luna to hear Carol out")
    assert final["stats"]["barge_ins"] == 1
    assert len([t for t in final["turns"] if t["decision"] == "answer"]) == 1  # only Alice got an answer
    assert turn_of(final, "Carol")["reason"] == "not_addressed"
    assert any("Carol" in line for line in await alice.evaluate("lunaDemo.captions()"))


async def _state_is(status, state: str) -> bool:  # type: ignore[no-untyped-def]
    return (await status())["state"] == state

"""Luna as a meeting participant in the local room, with real browsers and real audio: she greets Alice, the app
makes her say something and Alice hears it (and reads it, mirrored as chat), Bob asks her to leave, she says
goodbye and her tile leaves the grid, and the transcript of the stay holds Bob's words and hers."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from luna_voice.providers.base import PIPELINE_RATE
from roomtools import active_seconds, human_page, luna_quiet_at, speech_file, until
from speech import transcribe, words_match

pytestmark = pytest.mark.browser

GREETING = "Hello, I am Luna."
SAID = "The meeting moves to three o'clock on Friday."
# Whisper tiny.en hears espeak's bare "you can leave" as "can't leave", and "leave now" as "leave the house".
BOB = "Luna, you can leave the meeting."


async def test_say_is_heard_and_asked_to_leave_she_says_goodbye_and_goes(start_service, launch_human, tmp_path):
    svc = await start_service(greeting=GREETING, chat_mirror=True)
    assert (await svc.call("POST", "/rooms/meet/luna", json={"backend": "local"}))[0] == 201

    async def status() -> dict[str, Any]:
        return (await svc.call("GET", "/rooms/meet/luna"))[1]

    async def turn(kind: str, *states: str) -> dict[str, Any] | None:
        return next((t for t in (await status())["turns"] if t["kind"] == kind and t["state"] in states), None)

    await until(lambda: state_is(status, "joined"), 30, "Luna to join")
    alice = await human_page(launch_human, svc.url, "meet", "Alice", None)  # she listens (no microphone)
    greeting = await until(lambda: turn("greeting", "done"), 30, "the greeting")
    assert greeting["spoken_text"] == GREETING

    # The app makes Luna say something; Alice hears it with Luna's voice.
    await alice.evaluate("lunaDemo.startRecording('Luna')")
    said = await alice.evaluate("(text) => lunaDemo.say(text)", SAID)  # the demo page's "Say…" box
    assert said["state"] in ("thinking", "queued")
    done = await until(lambda: turn("say", "done"), 30, "Luna to say it")
    assert done["id"] == said["say_id"] and done["spoken_text"] == SAID
    await luna_quiet_at(alice)  # the end of her voice has crossed WebRTC into Alice's page
    rec = await alice.evaluate("lunaDemo.stopRecording()")
    heard = np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16)
    assert active_seconds(heard, PIPELINE_RATE) >= 0.5 * done["played_audio_s"]
    assert words_match(SAID, await transcribe(heard), min_ratio=0.5)

    async def captions_show(text: str) -> bool:
        return any(text in line for line in await alice.evaluate("lunaDemo.captions()"))

    await until(lambda: captions_show(f"Luna (chat): {SAID}"), 10, "the chat mirror in Alice's captions")
    assert await captions_show(f"Luna (say): {SAID}")

    # Bob joins and asks her to leave: she says goodbye, then her tile leaves Alice's grid.
    bob = await human_page(launch_human, svc.url, "meet", "Bob", speech_file(tmp_path, BOB, 1.5, "bob"))

    async def bob_heard() -> dict[str, Any] | None:
        return next((t for t in (await status())["turns"] if t["speaker"]["name"] == "Bob" and t["decision"]), None)

    request = await until(bob_heard, 60, "Luna to hear Bob")
    assert words_match(BOB, request["heard_text"]), request["heard_text"]
    assert request["request"] == {"kind": "leave", "outcome": "leaving"}, request["heard_text"]

    async def luna_gone() -> bool:
        return "Luna" not in [p["name"] for p in await alice.evaluate("lunaDemo.participants()")]

    await until(luna_gone, 60, "Luna to leave Alice's grid")
    await until(lambda: state_is(status, "ended"), 10, "her stay to end")
    final = await status()
    assert (final["state"], final["sub_code"]) == ("ended", "asked_to_leave")
    assert "Bob" in final["reason"]
    goodbye = next(t for t in final["turns"] if t["kind"] == "goodbye")
    assert goodbye["state"] == "done" and goodbye["played_audio_s"] > 0.5
    assert goodbye["timings"]["finished"] <= final["ended_at"]
    await bob.close()

    # After the stay: the transcript holds Bob's words and everything Luna said, in order.
    status_code, transcript = await svc.call("GET", "/rooms/meet/luna/transcript")
    assert status_code == 200 and transcript["state"] == "ended"
    lines = [(line["speaker"], line["luna"], line.get("kind")) for line in transcript["lines"]]
    assert lines == [
        ("Luna", True, "greeting"),
        ("Luna", True, "say"),
        ("Bob", False, "utterance"),
        ("Luna", True, "goodbye"),
    ], lines
    assert transcript["lines"][1]["text"] == SAID
    async with svc.http.get(svc.url + "/rooms/meet/luna/transcript?format=vtt") as resp:
        vtt = await resp.text()
    assert "<v Bob>" in vtt and f"<v Luna>{SAID}" in vtt


async def state_is(status, state: str) -> bool:  # type: ignore[no-untyped-def]
    return (await status())["state"] == state

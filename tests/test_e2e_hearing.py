"""Hearing in a real room: a person whose microphone hums with steady noise asks one question. Luna answers it
once and never answers the noise (before the old webrtcvad front end answered noise every ~30 s)."""

from __future__ import annotations

import numpy as np
import pytest

from room_sounds import over, piper_speech, silence, sox_noise, write_wav
from roomtools import human_page, until
from speech import words_match

pytestmark = pytest.mark.browser

MIC = 48_000
QUESTION = "Luna, what time is it in Paris?"


async def test_noise_then_a_question_then_noise_is_answered_once(start_service, launch_human, tmp_path):
    svc = await start_service()
    status, _ = await svc.call("POST", "/rooms/hum/luna", json={"backend": "local"})
    assert status == 201

    async def joined():
        return (await svc.call("GET", "/rooms/hum/luna"))[1]["state"] == "joined"

    await until(joined, 30, "Luna to join")
    lead, noise_s, asked_at = 2.0, 16.0, 6.0  # the mic starts when Alice joins; the question comes 6 s into the hum
    # A loud fan: steady pink noise 10 dB under the speech (-20 dB). webrtcvad called half of its frames speech.
    hum = sox_noise("pinknoise", noise_s, -30, rate=MIC)
    mic = np.concatenate([silence(lead, MIC), over(hum, (asked_at, piper_speech(QUESTION, rate=MIC)), rate=MIC)])
    await human_page(launch_human, svc.url, "hum", "Alice", write_wav(tmp_path / "mic.wav", mic, MIC))

    async def heard_everything():  # every 20 ms frame of Alice's microphone file reached Python
        _, bot = await svc.call("GET", "/rooms/hum/luna")
        return bot if bot["stats"]["frames_in"] >= (lead + noise_s) / 0.02 else None

    async def settled():
        _, bot = await svc.call("GET", "/rooms/hum/luna")
        return bot if all(t["state"] in ("done", "skipped") for t in bot["turns"]) else None

    await until(heard_everything, 60, "Alice's whole microphone file to reach Luna", step=0.5)
    bot = await until(settled, 30, "every turn to settle", step=0.5)
    answered = [t for t in bot["turns"] if t["decision"] == "answer"]
    assert len(answered) == 1, bot["turns"]
    (turn,) = answered
    assert words_match(QUESTION, turn["heard_text"]), turn["heard_text"]
    assert turn["state"] == "done" and not turn["interrupted"]  # the hum under her answer did not stop her
    assert all(t["reason"] == "no_speech" for t in bot["turns"] if t is not turn), bot["turns"]
    assert bot["stats"]["barge_ins"] == 0

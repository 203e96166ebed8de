"""The audio spine end to end, as a person would use it: a human page speaks in a local room, Luna is summoned
through the HTTP API, hears the words, answers out loud, and the human's page records her answer."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from luna_voice.providers.offline import WhisperSTT
from speech import make_speech_wav, words_match

from luna_voice.providers.base import PIPELINE_RATE

pytestmark = pytest.mark.browser

SAID = "Hello there, what is the weather like today?"


async def until(predicate, limit: float, what: str, step: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(step)


def speech_file(tmp_path: Path, text: str, lead_silence_s: float) -> Path:
    """A 48 kHz WAV that is silent for ``lead_silence_s`` (time to join and connect), then says ``text``."""
    raw = make_speech_wav(text, tmp_path / "raw.wav")
    out = tmp_path / "mic.wav"
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", str(out), "pad", str(lead_silence_s), "1.5"], check=True)
    return out


def active_seconds(pcm: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds of 20 ms frames louder than ``threshold`` (RMS, full scale 1.0)."""
    frame = rate // 50
    n = len(pcm) // frame
    frames = pcm[: n * frame].astype(np.float32).reshape(n, frame) / 32768
    return float((np.sqrt((frames**2).mean(axis=1)) > threshold).sum() * 0.02)


async def transcribe(pcm: np.ndarray) -> str:
    stream = WhisperSTT().open_stream()
    await stream.push(pcm.astype(np.int16).tobytes())
    return (await stream.finish()).text


async def test_luna_hears_a_person_and_answers_out_loud(start_service, launch_human, tmp_path):
    svc = await start_service()
    status, bot = await svc.call("POST", "/rooms/e2e/luna", json={"backend": "local"})
    assert status == 201, bot
    assert bot["state"] in ("starting", "joining", "joined")

    async def joined():
        _, b = await svc.call("GET", "/rooms/e2e/luna")
        return b["state"] == "joined"

    await until(joined, 30, "Luna to join the local room")

    human = await launch_human(speech_file(tmp_path, SAID, lead_silence_s=4.0))
    page = await (await human.new_context()).new_page()
    await page.goto(f"{svc.url}/demo/rooms/e2e?name=Alice&autojoin=1&processing=0")

    async def luna_visible():
        names = [p["name"] for p in await page.evaluate("window.lunaDemo ? lunaDemo.participants() : []")]
        return "Luna" in names

    await until(luna_visible, 15, "Luna in Alice's participant grid")
    await page.evaluate("lunaDemo.startRecording()")

    async def answered():
        _, b = await svc.call("GET", "/rooms/e2e/luna")
        done = [t for t in b["turns"] if t["state"] == "done"]
        return done[0] if done else None

    turn = await until(answered, 90, "Luna to hear Alice and finish her answer", step=0.5)
    await asyncio.sleep(1.0)  # the last audio crosses WebRTC into Alice's page
    rec = await page.evaluate("lunaDemo.stopRecording()")

    # Luna heard the words Alice said, and knows who said them.
    assert turn["speaker"]["name"] == "Alice"
    assert words_match(SAID, turn["heard_text"]), turn["heard_text"]
    assert turn["decision"] == "answer" and turn["reason"] == "one_to_one"
    assert turn["spoken_text"] == turn["reply_text"] and "Alice" in turn["reply_text"]
    for key in ("end_of_speech", "transcript_ready", "first_reply_text", "first_tts_audio", "first_audio_sent"):
        assert key in turn["timings"], key
    t = turn["timings"]
    assert t["end_of_speech"] <= t["transcript_ready"] <= t["first_reply_text"] <= t["first_tts_audio"]
    assert t["first_tts_audio"] <= t["first_audio_sent"] <= t["finished"]

    # Alice's page received Luna's spoken answer: speech energy for about as long as the reply's audio, and
    # it is intelligible — Whisper hears Luna's words in what Alice recorded.
    heard = np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16)
    assert rec["sampleRate"] == PIPELINE_RATE
    voiced = active_seconds(heard, PIPELINE_RATE)
    assert voiced >= 0.5 * turn["reply_audio_s"], (voiced, turn["reply_audio_s"])
    assert words_match(turn["reply_text"], await transcribe(heard), min_ratio=0.5)

    # Dismiss: Luna leaves Alice's grid and her browser context is gone.
    status, after = await svc.call("DELETE", "/rooms/e2e/luna")
    assert status == 200
    assert after["state"] == "ended" and after["sub_code"] == "dismissed"

    async def luna_gone():
        names = [p["name"] for p in await page.evaluate("lunaDemo.participants()")]
        return "Luna" not in names

    await until(luna_gone, 10, "Luna to leave Alice's grid")
    browser = svc.service.host._browser
    assert browser is not None and browser.contexts == []

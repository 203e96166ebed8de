"""Helpers for browser tests in the local room: waiting, speech files with a lead-in, people's pages."""

from __future__ import annotations

import asyncio
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
from playwright.async_api import Page

from speech import make_speech_wav


async def until(predicate, limit: float, what: str, step: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(step)


TONE_HZ = 440


def tone_wav(path: Path, seconds: float = 90.0, level: float = 0.3) -> Path:
    """A microphone that plays a steady tone from the moment the person joins (level 0: a silent one)."""
    t = np.arange(int(seconds * 48_000)) / 48_000
    pcm = (level * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(pcm.tobytes())
    return path


def loud(pcm: bytes) -> bool:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, np.int16).astype(np.float64) ** 2))) > 1000


def speech_file(tmp_path: Path, text: str, lead_silence_s: float, name: str = "mic") -> Path:
    """A 48 kHz WAV that is silent for ``lead_silence_s`` (time to join and connect), then says ``text``."""
    raw = make_speech_wav(text, tmp_path / f"{name}-raw.wav")
    out = tmp_path / f"{name}.wav"
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", str(out), "pad", str(lead_silence_s), "1.5"], check=True)
    return out


def active_seconds(pcm: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds of 20 ms frames louder than ``threshold`` (RMS, full scale 1.0)."""
    frame = rate // 50
    n = len(pcm) // frame
    frames = pcm[: n * frame].astype(np.float32).reshape(n, frame) / 32768
    return float((np.sqrt((frames**2).mean(axis=1)) > threshold).sum() * 0.02)


async def human_page(launch_human, base_url: str, room: str, name: str, wav: Path | None, *, join: bool = True) -> Page:  # type: ignore[no-untyped-def]
    """A person opens the local room in their own browser (microphone = ``wav``, which starts playing when they
    join) and, if ``join``, joins and waits to see Luna in the grid."""
    browser = await launch_human(wav)
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{base_url}/demo/rooms/{room}?name={name}&processing=0")
    if join:
        await join_room(page, name)
    return page


async def join_room(page: Page, name: str) -> None:
    await page.evaluate("lunaDemo.join()")

    async def luna_visible() -> bool:
        names = [p["name"] for p in await page.evaluate("lunaDemo.participants()")]
        return "Luna" in names

    await until(luna_visible, 15, f"Luna in {name}'s participant grid")


# Starts recording Luna alone once her audio has reached the page (her tile shows before her track arrives).
_RECORD_LUNA = """() => {
  try {
    lunaDemo.startRecording("Luna");
    return true;
  } catch (err) {
    if (/nobody called Luna is audible/.test(err.message)) return false;
    throw err;
  }
}"""


async def record_luna(page: Page, limit: float = 10) -> None:
    """Start recording only Luna's voice at this person's page, as soon as her track has arrived there."""

    async def started() -> bool:
        return bool(await page.evaluate(_RECORD_LUNA))

    await until(started, limit, "Luna's audio at the listener's page")


async def luna_quiet_at(page: Page, quiet_s: float = 0.5, limit: float = 10) -> None:
    """Wait until Luna's tile on a person's page has shown no voice for ``quiet_s``: the demo's level meter reads
    the audio that actually arrived, so this is the end of her voice at that person's ear, not in Python."""
    script = "!(document.querySelector('.tile.bot')?.classList.contains('speaking'))"
    quiet_since: list[float] = []

    async def quiet_long_enough() -> bool:
        if not await page.evaluate(script):
            quiet_since.clear()
            return False
        quiet_since[:] = quiet_since or [time.monotonic()]
        return time.monotonic() - quiet_since[0] >= quiet_s

    await until(quiet_long_enough, limit, "Luna to fall silent at the listener's page", step=0.05)

"""A muted person costs Luna nothing, in the local room: the demo page's "Mute microphone" tells the room (the
hub's ``peer_mic``, as RealtimeKit's ``audioUpdate`` does), Luna's page drops that person's capture (no media
element, no worklet, no frames to Python) and attaches again on unmute, soon enough that a word said on the
unmute keeps its first syllable: the start lost is under the pre-roll the endpointer keeps anyway."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from luna_voice.bridge import protocol as bp
from luna_voice.config import Settings
from roomtools import TONE_HZ, human_page, loud, tone_wav, until

pytestmark = pytest.mark.browser


async def test_a_muted_person_sends_no_frames_and_is_heard_from_the_unmute_on(start_service, launch_human, tmp_path):
    frames: dict[str, list[tuple[float, bytes]]] = defaultdict(list)  # participant id -> (page stamp ms, pcm)
    svc = await start_service(audio_tap=lambda _room, pid, ts, pcm: frames[pid].append((ts, pcm)))
    status, _ = await svc.call("POST", "/rooms/mute/luna", json={"backend": "local"})
    assert status == 201

    async def luna_joined() -> bool:
        return (await svc.call("GET", "/rooms/mute/luna"))[1]["state"] == "joined"

    await until(luna_joined, 30, "Luna to join the local room")
    alice = await human_page(launch_human, svc.url, "mute", "Alice", tone_wav(tmp_path / "tone.wav"))
    # a silent microphone, but sending (a person without one sends no packets): the test's clock
    await human_page(launch_human, svc.url, "mute", "Bob", tone_wav(tmp_path / "silence.wav", level=0))

    async def ids() -> dict[str, str] | None:
        people = {p["name"]: p["id"] for p in (await svc.call("GET", "/rooms/mute/luna"))[1]["participants"]}
        return people if {"Alice", "Bob"} <= people.keys() else None

    people = await until(ids, 15, "Luna's page to announce Alice and Bob")
    a, b = people["Alice"], people["Bob"]

    async def after_bob(n: int) -> None:
        """Wait for ``n`` more of Bob's frames (20 ms each): time as Luna's page counts it."""
        target = len(frames[b]) + n

        async def counted() -> bool:
            return len(frames[b]) >= target

        await until(counted, 10, f"{n} more frames of Bob")

    async def alice_loud() -> bool:
        return any(loud(pcm) for _, pcm in frames[a][-10:])

    await until(alice_loud, 15, "Alice's tone at Luna")

    await alice.evaluate("lunaDemo.setMic(false)")
    # the mute reaches Luna's page, frames already on their way arrive, and Python stops filling her silence
    # (bridge/opus_stream.py: PAUSE_S after a sender's last packet)
    await after_bob(75)
    muted_at = len(frames[a])
    await after_bob(100)
    assert len(frames[a]) == muted_at, "a muted person's capture kept sending frames"
    _, listed = await svc.call("GET", "/local/rooms/mute/participants")
    assert {p["name"]: p["mic"] for p in listed["participants"]} == {"Luna": True, "Alice": False, "Bob": True}

    unmuted_ms = await alice.evaluate(
        "(() => { const t = performance.timeOrigin + performance.now(); lunaDemo.setMic(true); return t; })()"
    )

    async def heard_again() -> tuple[float, bytes] | None:
        return next(((ts, pcm) for ts, pcm in frames[a][muted_at:] if loud(pcm)), None)

    stamp_ms, _ = await until(heard_again, 10, "Alice's tone after she unmuted")
    lost_ms = stamp_ms - bp.FRAME_MS - unmuted_ms  # the frame's start, on the shared wall clock
    assert lost_ms < Settings.model_fields["preroll_ms"].default, f"{lost_ms:.0f} ms of Alice lost after the unmute"
    await after_bob(25)
    resumed = np.frombuffer(b"".join(pcm for _, pcm in frames[a][-20:]), np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(resumed * np.hanning(len(resumed))))
    assert abs(np.argmax(spectrum) * bp.CAPTURE_RATE / len(resumed) - TONE_HZ) < 20  # her microphone, not silence

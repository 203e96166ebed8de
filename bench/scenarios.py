"""The measurements. Each scenario plays known audio through the real service and real browsers on loopback and
returns plain numbers (milliseconds, ratios, counts) for the table and the JSON.

Times are wall-clock seconds shared by pages and Python. A recorder's sample i was taken at t0 + i/16000,
where t0 is the page's clock when recording started; Python's received audio is timed by each frame's arrival.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from bench import legs
from bench import signals as sg
from bench.harness import FrameStamps, Recording, Rig, Running, chromium_pids, cpu_seconds, hears, memory_mb, until
from bench.instant import ReplyAudio


@dataclass(frozen=True)
class Plan:
    clicks: int  # clicks the floor / hearing-path speaker plays
    turns: int  # turns for the speaking path and turn overhead
    barge_ins: int
    scale: tuple[int, ...]  # bots at once
    scale_window_s: float
    summons: int  # warm summons (and plain-page joins for their floor)
    frames: FrameStamps = FrameStamps.SENT  # which encoded frames rows 1 and 3 stamp (bench/legs.py)

    @staticmethod
    def make(quick: bool) -> Plan:
        if quick:
            return Plan(clicks=20, turns=6, barge_ins=4, scale=(1, 2, 4), scale_window_s=10.0, summons=3)
        return Plan(clicks=60, turns=24, barge_ins=12, scale=(1, 2, 4, 8), scale_window_s=30.0, summons=8)


SETTLE_S = 2.0  # after a page joins, before measuring: its start-up load has passed
FRAME_S = 0.005  # loudness frames when looking for silence at the ear
RECORDER_BEHIND_MAX_S = 0.2  # the speaker's own recorder hears its microphone at most this much after the sample


def ms(seconds: np.ndarray | list[float]) -> dict[str, float | int]:
    """p50/p95 in ms of the finite values, and how many there were."""
    v = np.asarray(seconds, float) * 1000
    return {"p50": sg.pct(v, 50), "p95": sg.pct(v, 95), "n": int(np.isfinite(v).sum())}


def _wav(tmp: Path, name: str, *parts: np.ndarray) -> Path:
    return sg.write_wav(tmp / f"{name}.wav", np.concatenate(parts), sg.MIC_RATE)


def _loop(sound: np.ndarray, period_s: float) -> np.ndarray:
    """``sound`` followed by silence up to ``period_s``: one cycle of a looping microphone."""
    return np.concatenate([sound, sg.silence(period_s - len(sound) / sg.MIC_RATE, sg.MIC_RATE)])


# ------------------------------------------------------------------------------------- 1 + 2: floor and hearing
async def floor_and_hearing(rig: Rig, svc: Running, plan: Plan, tmp: Path) -> dict[str, Any]:
    """One speaker page plays a click train, then a sentence. Two listeners hear it at once: a plain page (the
    floor: WebRTC between two browsers) and Luna (page → bridge → Python). The speaker's own microphone is
    recorded on its page too, so each click has a wall-clock time at the mouth; the speaker's and the listener's
    pages stamp their encoded frames, so each click also has the time the microphone took it (rows 1 and 2 are
    timed from it) and its legs. The clicks start after a lead of silence long enough for the jitter buffers to
    settle from the browsers' start-up."""
    room, lead_s = "floor", 7.0
    offsets = sg.click_offsets(plan.clicks, seed=1)
    said = sg.speech("The quick brown fox jumps over the lazy dog, then naps in the sun.", sg.MIC_RATE)
    mic = _wav(
        tmp,
        room,
        sg.silence(lead_s, sg.MIC_RATE),
        sg.click_train(offsets, sg.MIC_RATE),
        sg.silence(1.0, sg.MIC_RATE),
        said,
    )
    listener_browser, speaker_browser = await rig.browser(None), await rig.browser(mic)
    log = svc.service.frame_logs[room] = []
    await svc.summon(room, policy="never")  # listen only: Luna says nothing in this room
    listener = await rig.human(listener_browser, svc, room, "Listener", frames=plan.frames)
    await until(
        lambda: listener.page.evaluate("lunaDemo.participants().length >= 1"), 20, "Luna on the listener's page"
    )
    speaker = await rig.human(speaker_browser, svc, room, "Speaker", frames=plan.frames)
    await hears(svc, room, "Speaker")
    t_rec, t_tap = await listener.start_recording(), await speaker.start_tap()
    opened = await speaker.mic_opened()
    if time.time() > opened + lead_s - 0.5:
        raise RuntimeError("the speaker connected too late for the first click; raise the lead silence")
    await asyncio.sleep(opened + sg.read_wav(mic)[0].size / sg.MIC_RATE + 1.0 - time.time())
    heard, tap = await listener.stop_recording(t_rec), await speaker.stop_tap(t_tap)
    floor_jitter = await listener.jitter_buffer_ms()
    sent, received = await speaker.frames(t_tap), await listener.frames(t_rec)
    pid = svc.service.pid_of(room, "Speaker")
    await svc.dismiss(room)
    del svc.service.frame_logs[room]

    # The mouth: the speaker's own microphone. Its first clicks must have the WAV's intervals.
    src = tap.times(sg.click_peaks(tap.x)[: plan.clicks])
    if len(src) < plan.clicks or not np.allclose(np.diff(src), np.diff(offsets), atol=0.004):
        raise RuntimeError("the speaker's own recording does not show the click train it played")
    floor = sg.match_lag(src, heard.times(sg.click_peaks(heard.x)))
    at = lead_s * sg.MIC_RATE + np.round(offsets * sg.MIC_RATE)  # each click's sample in the WAV
    floor_stamps = legs.per_click(src, floor, sent, received, at, np.zeros(len(src)))

    frames = [f for f in log if f[2] == pid]
    arrival = np.array([f[0] for f in frames])
    stamp = np.array([f[1] / 1000 for f in frames])
    py = np.concatenate([sg.from_int16(f[3]) for f in frames])
    frame_of = sg.click_peaks(py) // 320  # a sample reaches Python when its 20 ms frame does
    # Luna can hear a click before the speaker's own recorder does (that recorder is tens of ms behind the
    # microphone; her page forwards the packet as it arrives), so her lag from src may be below zero.
    hearing = sg.match_lag(src, arrival[frame_of], min_lag=-RECORDER_BEHIND_MAX_S)
    to_page = sg.match_lag(src, stamp[frame_of], min_lag=-RECORDER_BEHIND_MAX_S)  # bridge hop excluded

    # The speaker's own recorder hears each click later than the microphone took it (bench/README.md, "Row 3 leg
    # by leg"); timed from the microphone's sample, like row 3 from Python's, the floor and row 2 add that back.
    late = src - floor_stamps[:, legs.STAMPS.index("sample")]
    ref = soxr.resample(said, sg.MIC_RATE, sg.RATE)
    return {
        "floor_ms": ms(floor),  # from the speaker's recorder, as rows 5 and H5 time the mouth
        "floor_sample_ms": ms(floor + late),
        "mouth_late_ms": ms(late),
        "floor_jitter_buffer_ms": floor_jitter,
        "floor_legs": legs.summary(floor_stamps),
        "hearing_ms": ms(hearing),
        "hearing_sample_ms": ms(hearing + late),
        "hearing_to_page_ms": ms(to_page),
        "hearing_to_page_sample_ms": ms(to_page + late),
        "clicks_sent": plan.clicks,
        "fidelity_floor": sg.ncc(ref, heard.x),
        "fidelity_hearing": sg.ncc(ref, py),
    }


# ------------------------------------------------------------------------------ replies heard at the ear
def _reply(reply_s: float, seed: int, *, under: float = 0.0) -> np.ndarray:
    """Luna's voice for a scenario: clicks at random intervals over ``reply_s``, on a tone of level ``under``
    (a continuous tone makes any gap audible as silence)."""
    offsets = sg.click_offsets(int(reply_s / 0.22), seed=seed, lo=0.15, hi=0.28)
    clicks = sg.click_train(offsets[offsets < reply_s - 0.1], sg.MIC_RATE)
    out = sg.tone(len(clicks) / sg.MIC_RATE, sg.MIC_RATE, amp=under)
    return out + clicks


def _answered(status: dict[str, Any], ear: Recording, reply_s: float, margin_s: float) -> list[dict[str, Any]]:
    """Turns whose whole reply was sent while ``ear`` recorded, with ``margin_s`` left for it to arrive."""
    end = ear.t0 + len(ear.x) / sg.RATE - reply_s - margin_s
    return [t for t in status["turns"] if ear.t0 < t["timings"].get("first_audio_sent", 0) < end]


def _offsets(reply: np.ndarray) -> np.ndarray:
    """The reply's clicks: seconds from its first sample, found as at the ear."""
    return sg.click_peaks(soxr.resample(reply, sg.MIC_RATE, sg.RATE)) / sg.RATE


def _click_latency(turns: list[dict[str, Any]], reply: np.ndarray, ear: Recording) -> np.ndarray:
    """Per turn and click: time at the ear minus when Python meant it to play (``first_audio_sent`` + offset)."""
    offsets = _offsets(reply)
    heard = ear.times(sg.click_peaks(ear.x))
    return np.array([sg.match_lag(t["timings"]["first_audio_sent"] + offsets, heard) for t in turns]).reshape(
        len(turns), len(offsets)
    )


# ---------------------------------------------------------------------------- 3 + 4: speaking path, turn overhead
async def turns(rig: Rig, svc: Running, audio: ReplyAudio, plan: Plan, tmp: Path) -> dict[str, Any]:
    """A person asks again and again; Luna answers each time at once (instant STT, reply and TTS) with a click
    train, which the person's page records. Each click's latency is its time at the ear minus when Python meant
    it to play: the turn's ``first_audio_sent`` plus the click's offset in the reply."""
    # 6 s apart: the question leaves over 4 s of silence, more than the endpointer's max_wait (2.5 s) for a
    # question Smart Turn calls unfinished; 4 s apart left 2.3 s, and every question ran into the next.
    room, period_s = "turns", 6.0
    reply = _reply(1.2, seed=2)
    reply_s = len(reply) / sg.MIC_RATE
    audio.pcm = sg.to_int16(reply)
    mic = _wav(tmp, room, _loop(sg.speech("Luna, what time is it now?", sg.MIC_RATE), period_s))
    browser = await rig.browser(mic, loop=True)
    await svc.summon(room, frames=plan.frames)
    person = await rig.human(browser, svc, room, "Alice", frames=plan.frames)
    await hears(svc, room, "Alice")
    await asyncio.sleep(SETTLE_S)
    t_rec = await person.start_recording()
    await asyncio.sleep(plan.turns * period_s + 1.0)
    ear = await person.stop_recording(t_rec)
    ear_jitter = await person.jitter_buffer_ms()
    sent, received = await svc.luna_frames(room, t_rec), await person.frames(t_rec)
    status = await svc.dismiss(room)

    done = [t for t in _answered(status, ear, reply_s, 0.5) if t["state"] == "done"]
    if not done:
        raise RuntimeError(f"no answered turns in the recording: {[t['state'] for t in status['turns']]}")
    lat = _click_latency(done, reply, ear)
    src = np.concatenate([t["timings"]["first_audio_sent"] + _offsets(reply) for t in done])
    at = np.tile(np.round(_offsets(reply) * sg.MIC_RATE), len(done))  # each click's sample in its reply
    turn = np.repeat(np.arange(len(done)), lat.shape[1])
    speaking_stamps = legs.per_click(src, lat.ravel(), sent, received, at, turn)
    first = np.where(np.isfinite(lat[:, 0]), lat[:, 0], np.nanmedian(lat, axis=1))  # the reply's first sample
    timing = {
        k: np.array([t["timings"].get(k, np.nan) for t in done])
        for k in ("end_of_speech", "end_of_turn", "first_audio_sent", "first_audio_played")
    }
    # From the commit on: how long the end of turn took (semantic, or the silence rule) is row H3's business.
    python = timing["first_audio_sent"] - timing["end_of_turn"]
    return {
        "speaking_ms": ms(lat.ravel()),
        "ear_jitter_buffer_ms": ear_jitter,
        "speaking_legs": legs.summary(speaking_stamps),
        "speaking_by_turn_ms": [round(float(v) * 1000, 1) for v in np.nanmedian(lat, axis=1)],
        "clicks_sent": int(lat.size),
        "playback_gaps": status["stats"]["playback_gaps"],
        "frames_out": status["stats"]["frames_out"],
        "overhead_ms": ms(python + first),
        "overhead_python_ms": ms(python),
        "overhead_ear_ms": ms(first),
        "first_played_mark_ms": ms(timing["first_audio_played"] - timing["first_audio_sent"]),
        "end_of_turn_ms": ms(timing["end_of_turn"] - timing["end_of_speech"]),
        "turns": len(done),
    }


# ----------------------------------------------------------------------------------------------- 5: barge-in
async def barge_in(rig: Rig, svc: Running, audio: ReplyAudio, plan: Plan, tmp: Path) -> dict[str, Any]:
    """Luna answers each question with a 6 s tone; the person's next question starts while it plays, so every
    question interrupts the previous answer. Latency: the question's start at the mouth (the person's own
    microphone) → Luna's tone gone at the ear (60 ms of silence)."""
    # Every 7 s: the turn must end (up to 2.5 s of silence when the turn model hears "unfinished") and her tone
    # start before the next question, or that question only lengthens the unanswered one (no barge-in to time).
    room, period_s = "barge", 7.0
    audio.pcm = sg.to_int16(sg.tone(6.0, sg.MIC_RATE))
    mic = _wav(tmp, room, _loop(sg.speech("Luna, wait, one more thing.", sg.MIC_RATE), period_s))
    browser = await rig.browser(mic, loop=True)
    await svc.summon(room)
    person = await rig.human(browser, svc, room, "Bob")
    await hears(svc, room, "Bob")
    await asyncio.sleep(SETTLE_S)
    t_rec, t_tap = await person.start_recording(), await person.start_tap()
    await asyncio.sleep((plan.barge_ins + 1) * period_s)
    ear, mouth = await person.stop_recording(t_rec), await person.stop_tap(t_tap)
    status = await svc.dismiss(room)

    loud = sg.frame_rms(ear.x, sg.RATE, FRAME_S) > 0.01
    quiet_run = int(0.06 / FRAME_S)
    latencies, not_speaking = [], 0
    for start in mouth.t0 + sg.onsets(mouth.x):
        i = int((start - ear.t0) / FRAME_S)
        if i < 2 or i >= len(loud) or not loud[i - 2 : i + 1].all():
            not_speaking += 1  # Luna was not audible at the ear when the person started: no barge-in to time
            continue
        stops = [j for j in range(i, len(loud) - quiet_run) if not loud[j : j + quiet_run].any()]
        if stops:
            latencies.append(ear.t0 + stops[0] * FRAME_S - start)
    return {
        "barge_in_ms": ms(latencies),
        "barge_in_min_ms": svc.service.settings.barge_in_min_ms,
        "questions_while_silent": not_speaking,
        "barge_ins_counted": status["stats"]["barge_ins"],
    }


# ---------------------------------------------------------------------------------------------------- 6: scale
def _gaps_at_ear(ear: Recording, reply_s: float) -> tuple[int, int, list[float]]:
    """Silent 5 ms frames inside the replies heard whole (their tone is continuous), frames inspected, and each
    such reply's length at the ear (shorter than sent: the receiver's jitter buffer sped it up)."""
    loud = sg.frame_rms(ear.x, sg.RATE, FRAME_S) > 0.01
    silent = total = 0
    lengths = []
    for start in sg.onsets(ear.x, quiet_before_s=0.3):
        i, stop = int(start / FRAME_S), int((start + reply_s + 0.3) / FRAME_S)
        if i == 0 or stop > len(loud):
            continue  # cut by the recording's start or end
        last = i + int(np.flatnonzero(loud[i:stop])[-1])
        silent += int((~loud[i : last + 1]).sum())
        total += last + 1 - i
        lengths.append((last + 1 - i) * FRAME_S)
    return silent, total, lengths


async def scale(rig: Rig, svc: Running, audio: ReplyAudio, plan: Plan, tmp: Path) -> dict[str, Any]:
    """N rooms, each with a person asking every 6 s and Luna answering with 2.5 s of clicks on a tone. Over a
    steady window: CPU and memory of the service process plus Luna's Chromium, per bot, against the same for the
    people's pages (the floor: a plain page in a call); the core's playback gaps; at the ears, silence inside
    replies (underruns), how much shorter replies arrived, and the Python → ear latency of their clicks."""
    period_s = 6.0
    reply = _reply(2.5, seed=3, under=0.1)
    reply_s = len(reply) / sg.MIC_RATE
    audio.pcm = sg.to_int16(reply)
    browser = await rig.browser(
        _wav(tmp, "scale", _loop(sg.speech("Luna, say something.", sg.MIC_RATE), period_s)), loop=True
    )
    me = {os.getpid()}
    luna, humans = chromium_pids()
    idle, human_idle = np.array(memory_mb(me | luna)), np.array(memory_mb(humans))
    rows = []
    for n in plan.scale:
        rooms = [f"scale{n}-{i}" for i in range(n)]
        for room in rooms:
            await svc.summon(room)
        people = [await rig.human(browser, svc, room, "Carol") for room in rooms]
        for room in rooms:
            await hears(svc, room, "Carol")
        await asyncio.sleep(SETTLE_S)
        t_recs = [await p.start_recording() for p in people]
        luna, humans = chromium_pids()
        cpu0, wall0 = (cpu_seconds(me | luna), cpu_seconds(humans)), time.monotonic()
        await asyncio.sleep(plan.scale_window_s)
        cpu1, wall = (cpu_seconds(me | luna), cpu_seconds(humans)), time.monotonic() - wall0
        mem, human_mem = (np.array(memory_mb(me | luna)) - idle) / n, (np.array(memory_mb(humans)) - human_idle) / n
        ears = [await p.stop_recording(t) for p, t in zip(people, t_recs, strict=True)]
        stats = [await svc.dismiss(room) for room in rooms]
        for p in people:
            await p.close()
        silent, total, lengths = 0, 0, []
        latency = []
        for ear, status in zip(ears, stats, strict=True):
            s, t, ls = _gaps_at_ear(ear, reply_s)
            silent, total, lengths = silent + s, total + t, lengths + ls
            latency.append(_click_latency(_answered(status, ear, reply_s, 1.5), reply, ear).ravel())
        lat = np.concatenate(latency)
        gaps = sum(s["stats"]["playback_gaps"] for s in stats)
        frames_out = sum(s["stats"]["frames_out"] for s in stats)
        rows.append(
            {
                "bots": n,
                "cpu_per_bot_pct": 100 * (cpu1[0] - cpu0[0]) / wall / n,
                "rss_per_bot_mb": mem[0],
                "pss_per_bot_mb": mem[1],
                "human_cpu_per_page_pct": 100 * (cpu1[1] - cpu0[1]) / wall / n,
                "human_rss_per_page_mb": human_mem[0],
                "human_pss_per_page_mb": human_mem[1],
                "playback_gaps": gaps,
                "frames_out": frames_out,
                "underrun_pct": 100 * silent / total if total else float("nan"),
                "replies_checked": len(lengths),
                "reply_shortened_pct": 100 * (1 - np.mean(lengths) / reply_s) if lengths else float("nan"),
                "speaking_ms": ms(lat),
                "clicks_lost_pct": 100 * float(np.isnan(lat).mean()) if lat.size else float("nan"),
            }
        )
    ok = {r["bots"] for r in rows if r["underrun_pct"] < 0.1 and r["playback_gaps"] < 0.001 * max(1, r["frames_out"])}
    largest = max((n for n in plan.scale if all(m in ok for m in plan.scale if m <= n)), default=0)
    return {
        "rows": rows,
        "idle_rss_pss_mb": idle.tolist(),
        "human_idle_rss_pss_mb": human_idle.tolist(),
        "largest_ok": largest,
    }


# -------------------------------------------------------------------------------------------------- 7: summon
async def summon(rig: Rig, svc: Running, audio: ReplyAudio, plan: Plan) -> dict[str, Any]:
    """POST → ``joined``: warm (Chromium running) in fresh rooms, and cold (the first bot of a fresh service).
    Floor: a plain demo page joining the local room the same way (new browser context, load, join)."""
    warm = []
    for i in range(plan.summons):
        posted, status = await svc.summon(f"summon{i}")
        warm.append(status["joined_at"] - posted)
        await svc.dismiss(f"summon{i}")

    async def page_join(browser: Any) -> float:
        started = time.time()
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"{svc.url}/demo/rooms/summon-floor?name=Dave")
        await page.evaluate("lunaDemo.join()")
        took = time.time() - started
        await context.close()
        return took

    started = time.time()
    plain = await rig.browser(None)
    launch = time.time() - started  # kept in the JSON: the floor's counterpart of the service's start
    page_joins = [await page_join(plain) for _ in range(plan.summons + 1)]

    fresh = await rig.service(audio)
    posted, status = await fresh.summon("cold")
    cold = status["joined_at"] - posted
    await fresh.dismiss("cold")
    await fresh.close()
    rig.services.remove(fresh)
    return {
        "warm_ms": ms(warm),
        "warm_floor_ms": ms(page_joins[1:]),
        "cold_ms": ms([cold]),
        "cold_floor_ms": ms(page_joins[:1]),
        "startup_ms": ms([fresh.startup_s]),  # the fresh service's start, which launches its Chromium
        "browser_launch_ms": ms([launch]),  # the floor's: a plain browser launch
    }

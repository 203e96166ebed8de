"""Sounds a room makes, generated (never committed as audio): Piper speech, sox noise, typing, music, and a
replay of the hearing front end (Silero VAD + endpointer + Smart Turn) over them.

Shared by the real-model tests and the hearing bench (``bench/hearing.py`` imports it as ``tests.room_sounds``).
Everything is float32 mono at 16 kHz in -1..1 unless a rate is given.
"""

from __future__ import annotations

import io
import subprocess
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soxr

from luna_voice.conversation.actions import FinishTranscription, PredictEndOfTurn, RequestReply, Synthesize
from luna_voice.conversation.addressing import AddressDetector, is_backchannel
from luna_voice.conversation.chunking import SentenceChunker, is_cjk
from luna_voice.conversation.core import Conversation, CoreConfig
from luna_voice.conversation.domain import Confidence, Usage
from luna_voice.conversation.endpointing import (
    EndCandidate,
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    UtteranceEnded,
    UtteranceStarted,
)
from luna_voice.conversation.requests import RequestDetector
from luna_voice.hearing import turn_model
from luna_voice.hearing.vad import SpeakerVad

RATE = 16_000
FRAME = 320  # 20 ms


def piper_speech(
    text: str, rate: int = RATE, level_db: float = -20.0, pace: float = 1.0, *, varied: bool = True
) -> np.ndarray:
    """``text`` in Piper's en_US "joe" voice (natural prosody, which the turn model listens to), trimmed of
    leading and trailing silence, at ``level_db`` RMS. ``pace`` > 1 speaks slower (Piper's length scale).

    Piper draws random noise into each synthesis, so the same text differs a little every time (as a person's
    voice does); ``varied=False`` switches that noise off, for a test whose claim is about one exact waveform.
    """
    from piper import SynthesisConfig

    from luna_voice.providers.offline.piper_tts import shared_voice

    voice = shared_voice()
    still = None if varied else 0.0
    config = SynthesisConfig(length_scale=None if pace == 1.0 else pace, noise_scale=still, noise_w_scale=still)
    chunks = voice.synthesize(text, syn_config=config)
    pcm = np.concatenate([chunk.audio_int16_array for chunk in chunks])
    return _trimmed(soxr.resample(pcm.astype(np.float32) / 32768, voice.config.sample_rate, rate), level_db)


def espeak_speech(text: str, voice: str = "cmn-latn-pinyin", rate: int = RATE, level_db: float = -20.0) -> np.ndarray:
    """``text`` in an espeak-ng voice (the offline Chinese voice by default: Hanzi read with their tones),
    trimmed and levelled like ``piper_speech``. Robotic, but a second speaker with its own melody."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        src, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return _trimmed(soxr.resample(pcm.astype(np.float32) / 32768, src, rate), level_db)


def _trimmed(x: np.ndarray, level_db: float) -> np.ndarray:
    voiced = np.flatnonzero(np.abs(x) > 0.02)
    return at_level(x[voiced[0] : voiced[-1] + 1], level_db)


def paused_speech(
    first: str, rest: str, pause_s: float, rate: int = RATE, speak: Callable[[str, int], np.ndarray] | None = None
) -> np.ndarray:
    """``first rest`` said as one sentence, with a ``pause_s`` silence inserted between the two parts.

    The sentence is synthesized whole, so the voice before the pause keeps its mid-sentence melody (two separate
    syntheses would end the first part with a sentence's falling pitch, which no speaker pausing mid-thought
    has). The cut is the quietest 10 ms within 250 ms of where ``first`` alone would end. ``speak(text, rate)``
    is the voice (``piper_speech`` by default).
    """
    speak = speak or piper_speech
    whole, alone = speak(f"{first} {rest}", rate), speak(first, rate)
    hop = rate // 100
    energy = np.sqrt(np.mean(whole[: len(whole) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    lo, hi = (max(1, round((len(alone) / rate + d) * 100)) for d in (-0.25, 0.25))
    cut = (lo + int(np.argmin(energy[lo:hi]))) * hop + hop // 2
    return np.concatenate([whole[:cut], silence(pause_s, rate), whole[cut:]])


def sox_noise(kind: str, seconds: float, level_db: float, rate: int = RATE) -> np.ndarray:
    """Steady noise from sox (``pinknoise``, ``brownnoise``, ``whitenoise``) at ``level_db`` RMS; ``-R`` makes it
    the same on every run."""
    raw = subprocess.run(
        ["sox", "-R", "-n", "-r", str(rate), "-c", "1", "-b", "16", "-t", "raw", "-", "synth", str(seconds), kind],
        capture_output=True,
        check=True,
    ).stdout
    return at_level(np.frombuffer(raw, "<i2").astype(np.float32) / 32768, level_db)


def keyboard(seconds: float, level_db: float = -30.0, rate: int = RATE, seed: int = 2) -> np.ndarray:
    """Typing: 6–10 key clicks a second, each a few ms of bright noise with a fast decay, some with a thud."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), np.float32)
    t = 0.05
    while t < seconds - 0.05:
        n = int(rate * rng.uniform(0.015, 0.04))
        burst = rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / (0.004 * rate))
        if rng.random() < 0.3:  # a heavier key or the space bar
            burst += 0.5 * np.sin(2 * np.pi * 180 * np.arange(n) / rate) * np.exp(-np.arange(n) / (0.01 * rate))
        i = int(t * rate)
        out[i : i + n] += burst * rng.uniform(0.5, 1.0)
        t += rng.uniform(0.1, 0.17)
    return at_level(out, level_db, active_only=True)


def music(seconds: float, level_db: float = -26.0, rate: int = RATE, seed: int = 3) -> np.ndarray:
    """Instrumental background: plucked chords and a bass line with harmonics, a new note every 250 ms."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), np.float32)
    note = int(0.25 * rate)
    scale = [220.0, 246.9, 277.2, 293.7, 329.6, 370.0, 415.3, 440.0]
    for i in range(0, len(out) - note, note):
        t = np.arange(note * 2) / rate
        env = np.exp(-t / 0.35)
        f = scale[rng.integers(len(scale))] * rng.choice([1, 2])
        tone = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) + 0.6 * np.sin(2 * np.pi * f / 4 * t)
        seg = (tone * env).astype(np.float32)
        out[i : i + len(seg)] += seg[: len(out) - i]
    return at_level(out, level_db)


def at_level(x: np.ndarray, level_db: float, *, active_only: bool = False) -> np.ndarray:
    """``x`` scaled to ``level_db`` dBFS RMS (over its non-silent samples with ``active_only``)."""
    part = x[np.abs(x) > 1e-4] if active_only else x
    rms = float(np.sqrt(np.mean(part.astype(np.float64) ** 2))) or 1.0
    return (x * (10 ** (level_db / 20) / rms)).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def over(background: np.ndarray, *parts: tuple[float, np.ndarray], rate: int = RATE) -> np.ndarray:
    """``background`` with each ``(start_s, sound)`` added on top."""
    out = background.copy()
    for start, sound in parts:
        i = int(start * rate)
        out[i : i + len(sound)] += sound[: len(out) - i]
    return out


@dataclass(frozen=True)
class Heard:
    started: float  # audio seconds of the first voiced frame
    end_of_speech: float
    committed: float  # audio seconds when the utterance was ended (a model answer's arrival included)
    reason: str
    probability: float | None
    voiced_ms: int
    model_s: float  # inference time of the turn model's answer, if that answer ended it at once (else 0)


async def _ask_turn_model(pcm: bytes, inference: list[float] | None) -> tuple[float | None, float]:
    """Smart Turn's answer for ``pcm`` and the seconds it took (also appended to ``inference`` when given): the
    replays add that time to the audio's own, as the pipeline would wait for it."""
    asked = time.perf_counter()
    p = await turn_model.probability_complete(pcm)
    took = time.perf_counter() - asked
    if inference is not None:
        inference.append(took)
    return p, took


async def hear(
    audio: np.ndarray,
    config: EndpointConfig | None = None,
    threshold: float = 0.5,
    inference: list[float] | None = None,
) -> list[Heard]:
    """Replay ``audio`` through one speaker's front end: Silero VAD, the endpointer and the real turn model.

    Time is the audio's own: a question to the model is answered at the instant it was asked plus the measured
    inference time (appended to ``inference`` if given), between frames, as the pipeline's worker thread would.
    """
    cfg = config or EndpointConfig()
    vad, ep = SpeakerVad(threshold), Endpointer(cfg)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    out: list[Heard] = []
    answers: list[tuple[float, int, float | None, float]] = []  # arrival, request, probability, inference
    started = 0.0

    async def handle(events: list[EndpointEvent], at: float, model_s: float = 0.0) -> None:
        nonlocal started
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                started = ev.at
            elif isinstance(ev, EndCandidate):
                p, took = await _ask_turn_model(ev.pcm, inference)
                answers.append((at + took, ev.request, p, took))
            elif isinstance(ev, UtteranceEnded):
                out.append(Heard(started, ev.end_of_speech, at, ev.reason.value, ev.probability, ev.voiced_ms, model_s))

    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        t = (i + FRAME) / RATE
        while answers and answers[0][0] <= t:
            arrived, request, p, took = answers.pop(0)
            await handle(ep.prediction(request, p), arrived, took)
        frame = pcm[i : i + FRAME].tobytes()
        await handle(ep.feed(t, frame, vad.is_speech(frame)), t)
    return out


@dataclass(frozen=True)
class Asked:
    """The core asked the reply engine to answer ``text`` (one answered turn) at ``at``, audio seconds."""

    text: str
    at: float
    hold: str | None  # the turn's ``Turn.hold``: joined to a held fragment, expired, ...


@dataclass(frozen=True)
class Conversed:
    asked: list[Asked]  # in order
    # When the endpointer committed each utterance long enough to transcribe (audio seconds): what the core
    # would ask at without the hold of unfinished transcripts, which changes nothing the endpointer does.
    committed: list[float]
    # What the room heard her answer (the texts of the turns whose reply audio she sent), when replies came back.
    heard: list[str]


Transcriber = Callable[[float, float], Awaitable[tuple[str, Confidence | None]]]
PREROLL_S = 0.3  # audio before the first voiced frame the STT gets (EndpointConfig.preroll_ms)
STT_TAIL_S = 0.3  # ... and after the end of speech (the rest of a wait's silence says nothing)


def whisper(audio: np.ndarray, names: tuple[str, ...] = ("Luna", "露娜")) -> Transcriber:
    """Offline Whisper (tiny.en) as the core's STT on ``audio``, each piece once (replays of several rules
    share them), with her names as its prompt and keywords as the pipeline gives them."""
    from luna_voice.providers.offline.whisper_stt import WhisperSTT

    cache: dict[tuple[float, float], tuple[str, Confidence | None]] = {}

    async def transcribe(started: float, end_of_speech: float) -> tuple[str, Confidence | None]:
        key = (round(started, 2), round(end_of_speech, 2))
        if key not in cache:
            piece = audio[max(0, int((started - PREROLL_S) * RATE)) : int((end_of_speech + STT_TAIL_S) * RATE)]
            stream = WhisperSTT().open_stream(prompt=", ".join(names), keywords=names)
            await stream.push((np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes())
            result = await stream.finish()
            cache[key] = result.text, result.confidence
        return cache[key]

    return transcribe


async def converse(
    audio: np.ndarray,
    transcribe: Transcriber,
    config: EndpointConfig | None = None,
    *,
    continuation_wait_s: float | None = None,
    inference: list[float] | None = None,
    reply_after_s: float | None = None,
) -> Conversed:
    """Replay ``audio`` as one person's speech in a one-to-one room through the real conversation core (its
    endpointer, Silero VAD before it, the real turn model, the hold of unfinished transcripts): which turns it
    would answer, and when.

    Time is the audio's own, as in ``hear``. ``transcribe(started, end_of_speech)`` stands in for the STT and
    answers at once (the wait for a transcript is the STT's, not end of turn's). The reply engine never answers,
    so a follow-on the core merges into a turn already sent to it counts as a second request, as it costs one.
    With ``reply_after_s`` it does answer: one short sentence whose speech arrives that long after the request
    (the STT's wait, the LLM's and the TTS's first audio, all in one), and ``heard`` says which turns' answers
    the room would have heard begin.
    """
    core_cfg = CoreConfig(room_id="replay", playback_rate=RATE, endpoint=config or EndpointConfig())
    if continuation_wait_s is not None:
        core_cfg = replace(core_cfg, continuation_wait_s=continuation_wait_s)
    names = AddressDetector()
    core = Conversation(
        core_cfg,
        is_addressed=names.is_addressed,
        is_backchannel=is_backchannel,
        new_chunker=SentenceChunker,
        find_request=RequestDetector(names.is_addressed, names.without_names),
    )
    names.present = core.participants.values()
    core.participant_joined("a", "Alice", 0.0)
    vad = SpeakerVad(0.5)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    answers: list[tuple[float, int, float | None]] = []  # arrival, request, probability
    asked: list[Asked] = []
    replies: list[tuple[float, str]] = []  # when the reply engine's answer arrives, for which turn

    async def run(now: float) -> None:
        for a in core.drain():
            if isinstance(a, PredictEndOfTurn):
                p, took = await _ask_turn_model(a.pcm, inference)
                answers.append((now + took, a.request, p))
            elif isinstance(a, FinishTranscription):
                turn = next(t for t in core.turns.values() if t.utterance_id == a.utterance_id)
                text, confidence = await transcribe(turn.timings["speech_started"], turn.timings["end_of_speech"])
                language = "zh" if any(is_cjk(c) for c in text) else "en"
                core.transcript(a.utterance_id, text, language, Usage(), now, confidence=confidence)
                await run(now)
            elif isinstance(a, RequestReply):
                asked.append(Asked(a.request.text, now, core.turns[a.turn_id].to_dict().get("hold")))
                if reply_after_s is not None:
                    replies.append((now + reply_after_s, a.turn_id))
            elif isinstance(a, Synthesize):
                core.speech_audio(a.turn_id, a.index, bytes(2 * RATE // 2), now)  # half a second of her voice
                core.speech_done(a.turn_id, a.index, Usage(), now)

    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        t = (i + FRAME) / RATE
        while answers and answers[0][0] <= t:
            arrived, request, p = answers.pop(0)
            core.end_of_turn("a", request, p, arrived)
            await run(arrived)
        while replies and replies[0][0] <= t:
            arrived, turn_id = replies.pop(0)
            core.reply_delta(turn_id, "Okay.", arrived)
            core.reply_done(turn_id, Usage(), arrived)
            await run(arrived)
        frame = pcm[i : i + FRAME].tobytes()
        core.audio("a", t, frame, vad.is_speech(frame), t)
        core.tick(t)
        await run(t)
    turns = core.turns.values()
    heard = [t.heard_text for t in turns if "first_audio_sent" in t.timings]
    return Conversed(asked, [t.timings["end_of_turn"] for t in turns if t.no_speech != "short"], heard)


def write_wav(path: Path, x: np.ndarray, rate: int = RATE) -> Path:
    """16-bit mono WAV, e.g. for a fake microphone."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path

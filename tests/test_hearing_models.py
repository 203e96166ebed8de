"""The real hearing models on generated audio: Silero VAD, Smart Turn v3.2 and offline Whisper's confidence.

Speech is Piper's (natural prosody, which Smart Turn listens to), noise is sox's; nothing is committed as audio.
``room_sounds.hear`` replays one speaker's front end (VAD → endpointer → turn model) in the audio's own time.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from luna_voice.conversation.actions import SetPlaybackGain, StartTranscription
from luna_voice.conversation.addressing import AddressDetector
from luna_voice.conversation.transcript_filter import no_speech_reason
from luna_voice.hearing import turn_model
from luna_voice.hearing.vad import SpeakerVad
from luna_voice.providers.base import Transcript
from luna_voice.providers.offline.whisper_stt import WhisperSTT
from room_sounds import (
    converse,
    hear,
    keyboard,
    music,
    over,
    paused_speech,
    piper_speech,
    silence,
    sox_noise,
)
from room_sounds import whisper as whisper_stt
from scripted_room import Room, luna_talking

QUESTION = "What time is it?"
NAMES = ["Luna", "露娜", "Alice"]


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return piper_speech(QUESTION)


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda: sox_noise("pinknoise", 10, -45), id="pink-quiet"),
        pytest.param(lambda: sox_noise("pinknoise", 10, -30), id="pink-loud"),
        pytest.param(lambda: sox_noise("brownnoise", 10, -30), id="brown-hum"),
        pytest.param(lambda: keyboard(10), id="keyboard"),
        pytest.param(lambda: music(10), id="music"),
    ],
)
async def test_noise_alone_is_no_utterance(noise):
    assert await hear(noise()) == []


async def test_a_paused_sentence_stays_one_utterance():
    said = paused_speech("So I was wondering whether", "we could move the meeting to Friday.", 0.8)
    (heard,) = await hear(np.concatenate([silence(0.5), said, silence(3.0)]))
    assert heard.end_of_speech > 0.5 + len(said) / 16_000 - 0.3  # it spans the pause, to the end


async def test_a_clause_the_turn_model_calls_finished_is_still_one_answered_turn():
    """The default answers a first p >= 0.7 at once, so the front end cuts "Could you tell me if" at its pause. What
    the room meets is the core's answer: Whisper's transcript of the piece trails off ("...if the..."), the core
    holds it and joins it to the rest, and the reply engine is asked once, for the whole sentence."""
    said = paused_speech(
        "Could you tell me if", "the train is on time today?", 0.8, speak=lambda t, r: piper_speech(t, r, varied=False)
    )
    audio = np.concatenate([silence(0.5), said, silence(3.0)])
    replay = await converse(audio, whisper_stt(audio))
    assert len(replay.committed) == 2  # two utterances: the eager endpointer cut it
    (asked,) = replay.asked
    assert asked.hold == "joined"
    assert asked.text.lower().startswith("could you tell me if") and "on time today" in asked.text.lower()


async def test_a_finished_question_commits_early(question):
    (heard,) = await hear(np.concatenate([silence(0.5), question, silence(1.5)]))
    assert heard.reason == "semantic" and heard.probability is not None and heard.probability >= 0.5
    asked_at = heard.committed - heard.model_s  # audio time; the model's own inference time is the bench's business
    assert asked_at - heard.end_of_speech < 0.1  # asked at the first silent frames (the silence rule waits 0.5 s)


async def test_a_question_over_steady_noise_at_10_db_snr_is_one_utterance(question):
    (heard,) = await hear(over(sox_noise("pinknoise", 4, -30), (0.5, question)))  # speech at -20 dB
    assert heard.voiced_ms >= 500


def test_each_speaker_has_their_own_vad_state(question):
    """Interleaving another person's music between a speaker's frames changes nothing for that speaker."""
    speech = np.concatenate([silence(0.3), question, silence(0.5)])
    other = music(len(speech) / 16_000, level_db=-15)
    alone, mine, theirs = SpeakerVad(0.5), SpeakerVad(0.5), SpeakerVad(0.5)
    solo, mixed = [], []
    for i in range(0, len(speech) - 320 + 1, 320):
        a = (speech[i : i + 320] * 32767).astype("<i2").tobytes()
        b = (other[i : i + 320] * 32767).astype("<i2").tobytes()
        solo.append(alone.is_speech(a))
        theirs.is_speech(b)
        mixed.append(mine.is_speech(a))
        assert mine.probability == alone.probability
    assert solo == mixed and any(solo)


async def whisper(audio: np.ndarray) -> Transcript:
    stream = WhisperSTT().open_stream(prompt=", ".join(NAMES), keywords=tuple(NAMES))  # as the core asks
    await stream.push((audio * 32767).astype("<i2").tobytes())
    return await stream.finish()


async def test_whisper_reports_confidence_and_the_filter_passes_speech(question):
    speech = await whisper(np.concatenate([silence(0.2), question, silence(0.3)]))
    assert speech.confidence is not None and speech.confidence.speech > 0.5 and speech.confidence.words > 0.5
    assert no_speech_reason(speech.text, speech.confidence, NAMES) is None


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda: silence(2.0), id="silence"),
        pytest.param(lambda: sox_noise("whitenoise", 2, -40), id="white"),
        pytest.param(lambda: sox_noise("pinknoise", 3, -30), id="pink"),
    ],
)
async def test_whisper_does_not_hear_the_room_s_names_in_noise(noise):
    """Given the names as a prompt, Whisper wrote "露娜, Alice," for silence and quiet white noise."""
    heard = await whisper(noise())
    assert not any(name in heard.text for name in NAMES), heard.text


async def test_whisper_spells_her_name_so_she_knows_she_is_addressed():
    """Without a hint tiny.en wrote these as "When a, how many …" and "Lena, what time …" (9 of 20 addressed)."""
    detector = AddressDetector()
    for text in (
        "Luna, how many people are in this meeting?",
        "Luna, what time is it?",
    ):
        heard = await whisper(np.concatenate([silence(0.3), piper_speech(text), silence(0.5)]))
        assert detector.is_addressed(heard.text), heard.text


# ---------------------------------------------------------------------------------------- ducking on real audio
LONG_REPLY = "Here is a long answer that keeps going. " * 40  # about 80 s of her voice in the scripted room


def over_her_voice(room: Room, audio: np.ndarray) -> list[bool]:
    """Alice's ``audio`` through the real Silero VAD into the core while Luna speaks; her ducked state per frame."""
    luna_talking(room, LONG_REPLY)
    vad, ducked = SpeakerVad(0.5), []
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    for i in range(0, len(pcm) - 320 + 1, 320):
        frame = pcm[i : i + 320].tobytes()
        room.frame({"a": (frame, vad.is_speech(frame), vad.probability)})
        ducked.append(room.gain < 1.0)
    assert room.core.turns[next(iter(room.core.turns))].state == "speaking"  # she was audible throughout
    return ducked


@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(lambda: sox_noise("pinknoise", 30, -30), id="pink-loud"),
        pytest.param(lambda: sox_noise("brownnoise", 30, -30), id="brown-hum"),
        pytest.param(lambda: keyboard(30), id="keyboard"),
        pytest.param(lambda: music(60), id="music"),  # Silero scores some of its notes 0.5–0.75
    ],
)
def test_noise_typing_or_music_over_her_voice_never_ducks_her(noise):
    room = Room()
    assert not any(over_her_voice(room, noise()))
    assert room.core.stats["ducks"] == 0


def test_okay_over_her_voice_ducks_her_before_its_utterance_starts():
    room = Room()
    ducked = over_her_voice(room, np.concatenate([silence(0.5), piper_speech("Okay.", varied=False), silence(0.3)]))
    (start,) = [i for i, a in enumerate(room.log) if isinstance(a, StartTranscription) and a.speaker_id == "a"][1:]
    first_duck = room.log.index(next(a for a in room.log if isinstance(a, SetPlaybackGain)))
    assert any(ducked) and first_duck < start  # the first sure window, not the 60 ms utterance rule


def test_the_turn_model_leaves_numpy_one_blas_thread():
    """OpenBLAS splits Smart Turn's feature matmuls over every core and its idle worker spins: on 2 cores that
    doubled each call's CPU. Loading the model limits the process to one BLAS thread."""
    turn_model.shared_analyzer()
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas), blas

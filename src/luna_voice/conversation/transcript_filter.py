"""Is this transcript speech, or what an STT model makes of noise? Pure functions, no I/O.

Whisper-family models given noise or silence do not return nothing: they return a caption from their training
data ("Thank you for watching", "字幕由…"), or the words of their prompt. ``no_speech_reason`` names why a
transcript should be dropped (then the utterance is recorded as ``no_speech`` and never answered), or None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from luna_voice.conversation.domain import Confidence


class Drop(StrEnum):
    EMPTY = "empty"
    PUNCTUATION = "punctuation"
    PROMPT_WORDS = "prompt_words"  # only names the model was primed with
    HALLUCINATION = "hallucination"  # a known caption Whisper invents on non-speech
    LOW_CONFIDENCE = "low_confidence"  # the STT itself says there was no speech
    SHORT = "short"  # too little voiced audio to be speech (set by the endpointer, not here)


# Whole transcripts Whisper produces on silence, noise or music (lower case, punctuation removed).
_EXACT = {
    "you",
    "thank you",
    "thank you very much",
    "thanks for watching",
    "thank you for watching",
    "thank you so much for watching",
    "bye",
    "bye bye",
    "so",
    "oh",
    "uh",
    "um",
    "hmm",
    "music",
    "applause",
    "silence",
    "谢谢",
    "谢谢观看",
    "謝謝觀看",
    "謝謝收看",
    "谢谢收看",
}
# Fragments that never occur in talk addressed to a voice assistant, anywhere in a transcript.
_FRAGMENTS = (
    "thanks for watching",
    "thank you for watching",
    "please subscribe",
    "like and subscribe",
    "subscribe to my channel",
    "amara.org",
    "subtitles by",
    "captions by",
    "字幕由",
    "字幕志愿者",
    "字幕組",
    "字幕组",
    "請不吝點贊",
    "请不吝点赞",
    "订阅我的频道",
    "明镜与点点栏目",
)
_WORD = re.compile(r"[\w']+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SOUND_TAG = re.compile(r"^[\[(（【].*[\])）】]$")  # "[Music]", "(applause)"

# Whisper's own no-speech rule (no_speech_prob > 0.6 with avg_logprob < -1), in probabilities. An engine with no
# no-speech score (OpenAI's token logprobs) is judged on the words alone: below ``words_floor`` it is dropped.
SPEECH_FLOOR = 0.4
WORDS_FLOOR = 0.37  # exp(-1); the default of ``words_floor`` (LUNA_STT_MIN_CONFIDENCE)
GARBLED_FLOOR = 0.14  # exp(-2): text this unsure is not worth answering even if there was sound


def _units(text: str) -> list[str]:
    """Words, with each Chinese character a word of its own."""
    return [u for w in _WORD.findall(text.lower()) for u in (list(w) if _CJK.search(w) else [w])]


def no_speech_reason(
    text: str, confidence: Confidence | None, prompt_words: Iterable[str], words_floor: float = WORDS_FLOOR
) -> Drop | None:
    """Why ``text`` is not speech worth a turn, or None if it is."""
    stripped = text.strip()
    if not stripped:
        return Drop.EMPTY
    if confidence is not None:
        unsure_of_speech = confidence.speech is None or confidence.speech < SPEECH_FLOOR
        if (unsure_of_speech and confidence.words < words_floor) or confidence.words < GARBLED_FLOOR:
            return Drop.LOW_CONFIDENCE
    units = _units(stripped)
    if not units:
        return Drop.PUNCTUATION
    lowered = stripped.lower()
    if " ".join(_WORD.findall(lowered)) in _EXACT or _SOUND_TAG.match(stripped):
        return Drop.HALLUCINATION
    if any(fragment in lowered for fragment in _FRAGMENTS):
        return Drop.HALLUCINATION
    primed = {u for word in prompt_words for u in _units(word)}
    if primed and all(u in primed for u in units):
        return Drop.PROMPT_WORDS
    return None

"""Per-speaker endpointing: turns 20 ms frames with a speech/no-speech flag into utterances.

Each remote participant gets one ``Endpointer``, so people who talk at once are cut separately. Pure state
machine: the caller supplies the frame's timestamp and the VAD decision, and polls ``check(now)`` so a speaker
whose frames stop (muted, left, network) is ended rather than stuck "speaking" forever.

End of turn is semantic when a turn model is available. The model is asked early and speculatively: after
``candidate_ms`` of silence (two frames) the endpointer emits ``EndCandidate`` with the utterance's recent audio;
the caller runs the model off the event loop and answers with ``prediction()``. While the silence grows it asks
again, one question in flight, every ``reask_ms`` until ``reask_until_ms``, with the longer audio. The latest
answer sets the wait:

* ``p >= confident_threshold`` in an answer to one of the first ``confident_asks`` questions (the first only by
  default, at 40 ms of silence): the turn ends as soon as it arrives (stale if speech resumed meanwhile), a model
  inference after the VAD's release;
* ``p >= complete_threshold`` (a later confident answer included): probably finished, but the model also says
  so after many mid-sentence fragments, so the turn ends after ``likely_wait_ms`` of silence, longer than most
  pauses;
* ``p < complete_threshold``: mid-thought, the turn ends after ``max_wait_ms`` of silence.

``confident_asks`` trades speed for cuts: the model hears trailing silence as a cue, so its "complete" rises as
a pause grows, for mid-sentence pauses as much as for finished questions. Measured on Piper (three paces) and
espeak-ng Chinese speech (88 finished questions, 68 mid-sentence pauses; bench/README.md, "Hearing"), p >= 0.9
came in the first answer (~100 ms after the last word) for 50 % of the questions and 6 % of the pauses (p >= 0.85:
53 % and 7 %); in one of the first two, 60 % and 13 %; in one of all three, 70 % and 24 %; in the old rule's single
answer (one question after 200 ms of silence) 68 % and 24 %. The early answer separates them best, so by default
only it may end a turn at once; the later answers only set the wait. Its threshold is 0.7, lower than the
acoustics alone would bear (0.85 cut fewest pauses without help), because the core holds a plainly unfinished
transcript for the speaker's next words (``continuation.py``): with that hold, 0.7 answered as few paused
sentences in pieces as 0.85 and ended more finished questions at once, in the same bench runs.

No answer (model unavailable, failed, or slower than the silence rule) falls back to the plain rule:
``end_of_speech_ms`` of silence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class EndpointConfig:
    frame_ms: int = 20
    start_ms: int = 60  # consecutive voiced audio before an utterance starts (ignores clicks)
    end_of_speech_ms: int = 500  # the silence rule, used when no turn model answers
    max_utterance_s: float = 30.0
    preroll_ms: int = 300  # audio kept from before the start, so the first syllable is not clipped
    min_speech_ms: int = 200  # an utterance with less voiced audio is noise (a click, a cough): no_speech
    semantic: bool = True  # ask a turn model at candidate ends
    candidate_ms: int = 40  # silence before the first question to the turn model
    reask_ms: int = 100  # ask again when the silence has grown this much since the last question was asked ...
    reask_until_ms: int = 300  # ... until the silence is this long (then the last answer sets the wait)
    confident_asks: int = 1  # answers to this many first questions of a silence may end the turn at once
    # Voice before the model is asked at all: after a lone "Luna," it hears a finished turn (p 0.95), and the
    # question that follows would become a turn of its own. Shorter utterances end by the silence rule.
    min_semantic_ms: int = 600
    complete_threshold: float = 0.5  # the model's probability of "complete" below which it means "mid-thought"
    confident_threshold: float = 0.7  # ... and above which the turn ends at once (see confident_asks)
    likely_wait_ms: int = 1000  # silence that ends a turn the model called probably complete
    max_wait_ms: int = 2500  # silence that ends a turn the model called incomplete
    model_audio_s: float = 8.0  # the turn model looks at the utterance's last seconds only


class EndReason(StrEnum):
    SEMANTIC = "semantic"  # the turn model said complete
    SILENCE = "silence"  # the silence rule (no model answer)
    MAX_WAIT = "max_wait"  # the model said incomplete, and the speaker stayed silent
    MAX_LENGTH = "max_length"
    STALLED = "stalled"  # frames stopped arriving
    LEFT = "left"


@dataclass(frozen=True)
class UtteranceStarted:
    at: float  # seconds (the driver's monotonic clock) of the first voiced frame
    pcm: bytes  # pre-roll plus the voiced frames that triggered the start


@dataclass(frozen=True)
class UtteranceAudio:
    pcm: bytes


@dataclass(frozen=True)
class EndCandidate:
    """Ask the turn model whether the utterance sounds finished; answer with ``Endpointer.prediction``."""

    request: int
    pcm: bytes  # the utterance's recent audio, trailing silence included


@dataclass(frozen=True)
class UtteranceEnded:
    end_of_speech: float  # seconds of the last voiced frame's end
    reason: EndReason
    voiced_ms: int
    probability: float | None = None  # the turn model's "complete" probability, when it was asked


EndpointEvent = UtteranceStarted | UtteranceAudio | EndCandidate | UtteranceEnded


class Endpointer:
    def __init__(self, config: EndpointConfig) -> None:
        self.cfg = config
        self._preroll: deque[bytes] = deque(maxlen=max(1, config.preroll_ms // config.frame_ms))
        self._recent: deque[bytes] = deque(maxlen=max(1, round(config.model_audio_s * 1000 / config.frame_ms)))
        self._voiced_run = 0
        self.speaking = False
        self.voiced_ms = 0  # voiced audio in the current utterance
        self._started_at = 0.0
        self._last_voice = 0.0
        self._last_frame = 0.0
        self._silence_ms = 0
        self._requests = 0
        self._first = 1  # the first request of this silence: answers to earlier ones are about other audio
        self._asked_at: int | None = None  # silence (ms) when the model was last asked during this silence
        self._in_flight = False  # a question of this silence awaits its answer
        self._failed = False  # the model could not answer during this silence: the silence rule applies
        self._verdict: float | None = None  # its latest answer for this silence
        self._verdict_request = 0
        self._verdict_early = False  # the verdict answers one of the silence's first ``confident_asks`` questions

    def feed(self, t_end: float, pcm: bytes, is_speech: bool) -> list[EndpointEvent]:
        """One frame whose last sample was captured at ``t_end`` (seconds on the driver's clock)."""
        if not self.speaking and t_end - self._last_frame > self.cfg.preroll_ms / 1000:
            # Frames stopped for longer than the pre-roll (a muted microphone, a track being replaced): what it
            # holds was said before the gap, not the lead-in of the words to come.
            self._preroll.clear()
            self._voiced_run = 0
        self._last_frame = t_end
        if not self.speaking:
            self._preroll.append(pcm)
            self._voiced_run = self._voiced_run + 1 if is_speech else 0
            if self._voiced_run * self.cfg.frame_ms < self.cfg.start_ms:
                return []
            return [self._start(t_end, b"".join(self._preroll))]
        self._recent.append(pcm)
        events: list[EndpointEvent] = [UtteranceAudio(pcm)]
        if is_speech:
            self.voiced_ms += self.cfg.frame_ms
            self._last_voice = t_end
            if self._silence_ms:
                self._new_silence()  # a later answer is about audio that has moved on
            self._silence_ms = 0
        else:
            self._silence_ms += self.cfg.frame_ms
        if (end := self._silence_end()) is not None:
            events.append(self._end(end))
        elif t_end - self._started_at >= self.cfg.max_utterance_s:
            events.append(self._end(EndReason.MAX_LENGTH))
            if is_speech:  # a monologue goes on: keep listening without losing a frame
                events.append(self._start(t_end, b""))
        elif self._candidate():
            self._asked_at, self._in_flight = self._silence_ms, True
            self._requests += 1
            events.append(EndCandidate(self._requests, b"".join(self._recent)))
        return events

    def prediction(self, request: int, probability: float | None) -> list[EndpointEvent]:
        """The turn model's answer to ``EndCandidate(request)``; None if it could not answer."""
        if not (self.speaking and self._first <= request <= self._requests):
            return []  # stale: speech resumed, or the utterance already ended
        if request == self._requests:
            self._in_flight = False
        if probability is None:
            self._failed = True  # no more questions during this silence
            return []  # the silence rule stays in force, unless an earlier answer set a wait
        if request < self._verdict_request:
            return []  # overtaken by the answer about longer audio
        self._verdict, self._verdict_request = probability, request
        self._verdict_early = request < self._first + self.cfg.confident_asks
        if (end := self._silence_end()) is not None:
            return [self._end(end)]
        return []

    def check(self, now: float) -> list[EndpointEvent]:
        """End an utterance whose frames stopped arriving."""
        if self.speaking and now - self._last_frame >= self.cfg.end_of_speech_ms / 1000:
            return [self._end(EndReason.STALLED)]
        return []

    def stall_due(self) -> float | None:
        """When ``check`` would end the utterance if no frame came before then (None while nobody speaks): the
        driver's one timer for this speaker, instead of a look every frame."""
        return self._last_frame + self.cfg.end_of_speech_ms / 1000 if self.speaking else None

    def close(self) -> list[EndpointEvent]:
        return [self._end(EndReason.LEFT)] if self.speaking else []

    def _candidate(self) -> bool:
        if not (self.cfg.semantic and self.voiced_ms >= self.cfg.min_semantic_ms) or self._in_flight or self._failed:
            return False
        if self._asked_at is None:
            return self._silence_ms >= self.cfg.candidate_ms
        return self._silence_ms - self._asked_at >= self.cfg.reask_ms and self._silence_ms <= self.cfg.reask_until_ms

    def _new_silence(self) -> None:
        self._first = self._requests + 1
        self._asked_at, self._in_flight, self._failed = None, False, False
        self._verdict, self._verdict_request, self._verdict_early = None, 0, False

    def _silence_end(self) -> EndReason | None:
        if (p := self._verdict) is not None:
            if p >= self.cfg.confident_threshold and self._verdict_early:
                return EndReason.SEMANTIC
            if p >= self.cfg.complete_threshold:
                return EndReason.SEMANTIC if self._silence_ms >= self.cfg.likely_wait_ms else None
            return EndReason.MAX_WAIT if self._silence_ms >= self.cfg.max_wait_ms else None
        return EndReason.SILENCE if self._silence_ms >= self.cfg.end_of_speech_ms else None

    def _start(self, t_end: float, pcm: bytes) -> UtteranceStarted:
        self.speaking = True
        voiced = self._voiced_run * self.cfg.frame_ms
        self.voiced_ms = voiced
        self._started_at = t_end - voiced / 1000
        self._last_voice = t_end
        self._silence_ms = 0
        self._recent.clear()
        self._recent.extend(self._preroll)
        self._preroll.clear()
        self._voiced_run = 0
        self._new_silence()
        return UtteranceStarted(at=self._started_at, pcm=pcm)

    def _end(self, reason: EndReason) -> UtteranceEnded:
        self.speaking = False
        event = UtteranceEnded(
            end_of_speech=self._last_voice, reason=reason, voiced_ms=self.voiced_ms, probability=self._verdict
        )
        self.voiced_ms = 0
        self._recent.clear()
        self._new_silence()
        return event

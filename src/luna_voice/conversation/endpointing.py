"""Per-speaker endpointing: turns a stream of 20 ms frames with a speech/no-speech flag into utterances.

Each remote participant gets one ``Endpointer``, so people who talk at once are cut separately. Pure state
machine: the caller supplies the frame's timestamp and the VAD decision, and polls ``check(now)`` so a speaker
whose frames stop (muted, left, network) is ended rather than stuck "speaking" forever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointConfig:
    frame_ms: int = 20
    start_ms: int = 60  # consecutive voiced audio before an utterance starts (ignores clicks)
    end_of_speech_ms: int = 500
    max_utterance_s: float = 30.0
    preroll_ms: int = 300  # audio kept from before the start, so the first syllable is not clipped


@dataclass(frozen=True)
class UtteranceStarted:
    at: float  # seconds (the driver's monotonic clock) of the first voiced frame
    pcm: bytes  # pre-roll plus the voiced frames that triggered the start


@dataclass(frozen=True)
class UtteranceAudio:
    pcm: bytes


@dataclass(frozen=True)
class UtteranceEnded:
    end_of_speech: float  # seconds of the last voiced frame's end
    reason: str  # "silence" | "max_length" | "stalled" | "left"
    voiced_ms: int


EndpointEvent = UtteranceStarted | UtteranceAudio | UtteranceEnded


class Endpointer:
    def __init__(self, config: EndpointConfig) -> None:
        self.cfg = config
        self._preroll: deque[bytes] = deque(maxlen=max(1, config.preroll_ms // config.frame_ms))
        self._voiced_run = 0
        self.speaking = False
        self.voiced_ms = 0  # voiced audio in the current utterance
        self._started_at = 0.0
        self._last_voice = 0.0
        self._last_frame = 0.0
        self._silence_ms = 0

    def feed(self, t_end: float, pcm: bytes, is_speech: bool) -> list[EndpointEvent]:
        """One frame whose last sample was captured at ``t_end`` (seconds on the driver's clock)."""
        self._last_frame = t_end
        if not self.speaking:
            self._preroll.append(pcm)
            self._voiced_run = self._voiced_run + 1 if is_speech else 0
            if self._voiced_run * self.cfg.frame_ms < self.cfg.start_ms:
                return []
            return [self._start(t_end, b"".join(self._preroll))]
        events: list[EndpointEvent] = [UtteranceAudio(pcm)]
        if is_speech:
            self.voiced_ms += self.cfg.frame_ms
            self._last_voice = t_end
            self._silence_ms = 0
        else:
            self._silence_ms += self.cfg.frame_ms
        if self._silence_ms >= self.cfg.end_of_speech_ms:
            events.append(self._end("silence"))
        elif t_end - self._started_at >= self.cfg.max_utterance_s:
            events.append(self._end("max_length"))
            if is_speech:  # a monologue goes on: keep listening without losing a frame
                events.append(self._start(t_end, b""))
        return events

    def check(self, now: float) -> list[EndpointEvent]:
        """End an utterance whose frames stopped arriving."""
        if self.speaking and now - self._last_frame >= self.cfg.end_of_speech_ms / 1000:
            return [self._end("stalled")]
        return []

    def close(self) -> list[EndpointEvent]:
        return [self._end("left")] if self.speaking else []

    def _start(self, t_end: float, pcm: bytes) -> UtteranceStarted:
        self.speaking = True
        voiced = self._voiced_run * self.cfg.frame_ms
        self.voiced_ms = voiced
        self._started_at = t_end - voiced / 1000
        self._last_voice = t_end
        self._silence_ms = 0
        self._preroll.clear()
        self._voiced_run = 0
        return UtteranceStarted(at=self._started_at, pcm=pcm)

    def _end(self, reason: str) -> UtteranceEnded:
        self.speaking = False
        event = UtteranceEnded(end_of_speech=self._last_voice, reason=reason, voiced_ms=self.voiced_ms)
        self.voiced_ms = 0
        return event

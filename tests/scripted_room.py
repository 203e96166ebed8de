"""A scripted room around the sans-I/O conversation core, with a fake clock (shared by core and driver tests).

A ``Room`` plays the page and the providers: it feeds 20 ms frames with a VAD flag, answers transcription
requests with scripted text, streams scripted replies, "synthesizes" audio whose length follows the text, and
renders Luna's audio in real time as the page's playback worklet would, reporting playback marks.
"""

from __future__ import annotations

from collections import deque

from luna_voice.conversation import actions as act
from luna_voice.conversation.addressing import AddressDetector, is_backchannel
from luna_voice.conversation.chunking import SentenceChunker
from luna_voice.conversation.core import Conversation, CoreConfig
from luna_voice.conversation.domain import Confidence, Usage
from luna_voice.conversation.requests import RequestDetector

FRAME = 0.02
RATE = 48_000
SAMPLES_PER_CHAR = 2400  # 50 ms of speech per character


class Room:
    def __init__(self, policy: str = "auto", **cfg) -> None:  # type: ignore[no-untyped-def]
        self.now = 1000.0
        names = AddressDetector()
        self.core = Conversation(
            CoreConfig(room_id="r1", playback_rate=RATE, policy=policy, **cfg),  # type: ignore[arg-type]
            is_addressed=names.is_addressed,
            is_backchannel=is_backchannel,
            new_chunker=SentenceChunker,
            price=lambda u: u.stt_seconds * 0.1,
            find_request=RequestDetector(names.is_addressed, names.without_names),
        )
        names.present = self.core.participants.values()
        self.log: list[act.Action] = []
        self.transcripts: dict[str, str | list[str]] = {}  # speaker -> text for their next utterance(s)
        self.confidence: dict[str, Confidence] = {}  # speaker -> STT confidence of their next transcript
        self.replies: dict[str, str] = {}  # speaker -> Luna's reply to their next answered turn
        self.auto_reply = True
        self.auto_transcript = True  # False: the STT never answers (a stuck engine); finished utterances wait
        self.unanswered: list[str] = []  # utterance ids finished while auto_transcript was off
        self.stt_final_after_s = 0.25  # what the STT provider reports as its own share of the wait
        self.stt_audio: dict[str, int] = {}  # utterance -> bytes received
        self.page: deque[tuple[int, int]] = deque()  # (seq, samples not yet played)
        self.page_played = -1
        # The turn model's scripted answers per speaker, in order; with none scripted it never answers.
        self.turn_model: dict[str, list[float | None]] = {}
        self.gain = 1.0  # Luna's playback gain in the page
        self.rendered: list[tuple[float, float, int]] = []  # (time, gain, samples) Luna's audio heard by the room

    # -- people --------------------------------------------------------------------------------------------
    def join(self, *people: tuple[str, str]) -> None:
        for pid, name in people:
            self.core.participant_joined(pid, name, self.now)
        self.run()

    def talk(self, seconds: float, probability: float | None = None, **speaking: bool) -> None:
        """Advance time frame by frame; each named speaker sends voiced (True) or silent (False) frames, with the
        VAD's ``probability`` for them if given (None: voiced frames are sure)."""
        for _ in range(round(seconds / FRAME)):
            self.frame({pid: (bytes(640), voiced, probability) for pid, voiced in speaking.items()})

    def frame(self, frames: dict[str, tuple[bytes, bool, float | None]]) -> None:
        """One 20 ms step: each speaker's (pcm, voiced, VAD probability), then the page renders and time moves."""
        self.now += FRAME
        for pid, (pcm, voiced, probability) in frames.items():
            self.core.audio(pid, self.now, pcm, voiced, self.now, probability=probability)
        self._page_render(FRAME)
        self.core.tick(self.now)
        self.run()

    def say(self, pid: str, text: str, seconds: float = 1.0, then_silence: float = 0.6) -> None:
        self.transcripts[pid] = text
        self.talk(seconds, **{pid: True})
        self.talk(then_silence, **{pid: False})

    def wait(self, seconds: float) -> None:
        self.talk(seconds)

    # -- the page and the providers --------------------------------------------------------------------------
    def _page_render(self, dt: float) -> None:
        budget = round(dt * RATE)
        last = self.page_played
        while self.page and budget:
            seq, left = self.page[0]
            used = min(left, budget)
            budget -= used
            self.rendered.append((self.now, self.gain, used))
            if used == left:
                self.page.popleft()
                last = seq
            else:
                self.page[0] = (seq, left - used)
        if last != self.page_played or (not self.page and budget < round(dt * RATE)):
            self.page_played = last
            self.core.played(last, not self.page, self.now)

    def run(self) -> None:
        pending = deque(self.core.drain())
        while pending:
            a = pending.popleft()
            self.log.append(a)
            if isinstance(a, act.StartTranscription):
                self.stt_audio[a.utterance_id] = len(a.pcm)
                self._speaker_of = {**getattr(self, "_speaker_of", {}), a.utterance_id: a.speaker_id}
            elif isinstance(a, act.TranscriptionAudio):
                self.stt_audio[a.utterance_id] += len(a.pcm)
            elif isinstance(a, act.FinishTranscription) and not self.auto_transcript:
                self.unanswered.append(a.utterance_id)
            elif isinstance(a, act.FinishTranscription):
                pid = self._speaker_of[a.utterance_id]
                text = self.transcripts.pop(pid, "")
                if isinstance(text, list):  # one text per utterance, in order
                    text, rest = (text[0], text[1:]) if text else ("", [])
                    if rest:
                        self.transcripts[pid] = rest
                self.core.transcript(
                    a.utterance_id,
                    text,
                    None,
                    Usage(stt_seconds=1.0),
                    self.now,
                    final_after_s=self.stt_final_after_s,
                    confidence=self.confidence.pop(pid, None),
                )
            elif isinstance(a, act.RequestReply) and self.auto_reply:
                reply = self.replies.pop(a.request.speaker_id, f"Hello {a.request.speaker_name}. Nice day.")
                self.core.reply_delta(a.turn_id, reply, self.now)
                self.core.reply_done(a.turn_id, Usage(llm_output_tokens=5), self.now)
            elif isinstance(a, act.Synthesize):
                self.core.speech_audio(a.turn_id, a.index, bytes(2 * SAMPLES_PER_CHAR * len(a.text)), self.now)
                self.core.speech_done(a.turn_id, a.index, Usage(tts_characters=len(a.text)), self.now)
            elif isinstance(a, act.SendAudio):
                self.page.append((a.seq, len(a.pcm) // 2))
            elif isinstance(a, act.ClearPlayback):
                self.page.clear()
            elif isinstance(a, act.SetPlaybackGain):
                self.gain = a.gain
            elif isinstance(a, act.PredictEndOfTurn) and self.turn_model.get(a.speaker_id):
                p = self.turn_model[a.speaker_id].pop(0)
                self.core.end_of_turn(a.speaker_id, a.request, p, self.now)
            pending.extend(self.core.drain())

    # -- reading the outcome -----------------------------------------------------------------------------------
    def turns(self) -> list[dict]:
        return [t.to_dict() for t in self.core.turns.values()]

    def turn_by(self, pid: str, n: int = 0) -> dict:
        return [t for t in self.turns() if t["speaker"]["id"] == pid][n]

    def of(self, kind: type) -> list:
        return [a for a in self.log if isinstance(a, kind)]


GROUP = (("a", "Alice"), ("b", "Bob"))


def luna_talking(room: Room, reply: str = "Here is a long answer. It goes on for several seconds. And more.") -> None:
    """Alice asks, and Luna is speaking her answer (50 ms of audio per character of ``reply``)."""
    room.join(("a", "Alice"))
    room.replies["a"] = reply
    room.say("a", "Luna, explain tides.")
    room.wait(0.3)
    assert room.core.turns[next(iter(room.core.turns))].state == "speaking"

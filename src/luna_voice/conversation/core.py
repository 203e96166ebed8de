"""The conversation core: a sans-I/O state machine for one bot in one room.

Events go in as method calls that carry the current time (``now``, monotonic seconds) — audio frames with a
VAD flag, transcripts, reply deltas, synthesized audio, playback marks from the page, participants joining and
leaving. Actions come out of ``drain()`` (see ``actions.py``) and the driver performs them. Nothing here does
I/O or reads a clock, so scripted multi-speaker timelines run in milliseconds in the tests.

Rules that are easy to get wrong, in one place:

* One endpointer per speaker; two people talking at once become two utterances and two turns, in the order
  their speech ended.
* Luna works on one turn at a time. An answered utterance that arrives while she is busy is queued, except
  that a follow-on from the *same* speaker before any of her answer was sent to the room is merged into the
  turn being prepared (the reply is restarted with both parts), however far the reply and its synthesis got.
  While that speaker is talking again (an utterance open, its transcript on the way, or a fragment held), her
  answer waits to start: she does not answer the first half of a sentence over its second half. Queued turns
  older than ``stale_after_s`` by the time she is free are dropped as ``stale`` — answering a question from half
  a minute ago confuses a room.
* Barge-in: the first frame of a confident onset (one VAD window at ``duck_threshold``) while Luna is audible
  ducks her voice in the page (no audio is dropped), without waiting for the utterance-start rule. If the voice
  stops before an utterance starts (a click, a breath), her volume comes back at once: a *false duck*, counted.
  ``barge_in_min_ms`` of voiced overlap, or a transcript that is more than a backchannel, stops her (cancel reply
  and synthesis, ``clear`` the page). A backchannel, a cough or noise restores her volume: a
  *false interruption*, counted, with nothing lost. Only the played part of the reply is kept in history, known
  from the page's playback marks. Luna never hears herself: the page captures remote participants only.
* Muted by someone else (a host's mute, a preset without audio): she stops speaking at once and drops what is
  queued, but keeps listening and captioning. With ``unmute_when_addressed`` she asks the room to unmute her
  when someone addresses her by name afterwards, and answers that turn; otherwise she stays silent.
* Luna as a participant (see ``requests.py``): a greeting once after she joins, when someone is there to hear
  it; texts the app asks her to say, queued or cutting her off; voice requests to stop, hush (listen only until
  she is addressed again) or leave (a goodbye, then the ``Leave`` action). Speech turns publish
  ``speak.started`` and ``speak.completed``/``speak.interrupted``/``speak.failed`` with what the room heard.
* Leaving for good (``stay_ended``), whatever the cause, closes the turn in progress as interrupted with what the
  room heard: every turn that reached the reply engine gets its one closing call, even when Luna is gone.
* A transcript that is plainly unfinished ("Could you tell me if", ``continuation.py``) is held until
  ``continuation_wait_s`` after its end of speech: the same speaker's next words (an utterance that started within
  the wait, whenever its transcript comes) are joined to it as one turn; if none come it is answered as it is.
  Someone else's words never join it. The turn model ends turns on the sound; this is the words' veto.
* The meeting transcript (``transcript.py``) gets every utterance heard and every reply as the room heard it.
* No turns from noise: an utterance with less than ``min_speech_ms`` of voice, or whose transcript the filter
  rejects (STT confidence, punctuation, only names, known hallucinations), is recorded as ``no_speech`` and is
  never answered nor remembered as something said.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from luna_voice.conversation import actions as act
from luna_voice.conversation.chunking import is_cjk
from luna_voice.conversation.continuation import unfinished
from luna_voice.conversation.domain import Confidence, ReplyRequest, RoomLine, SpokenReason, Usage
from luna_voice.conversation.endpointing import (
    EndCandidate,
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
)
from luna_voice.conversation.events import (
    LateUsage,
    ListenOnlyChanged,
    MutedChanged,
    Participant,
    ParticipantsChanged,
    SpeakChanged,
    SpeakingChanged,
    SpeakPhase,
    TurnChanged,
)
from luna_voice.conversation.pacing import Pacer
from luna_voice.conversation.policy import PolicyName, TurnPolicy
from luna_voice.conversation.requests import RequestOutcome, RequestRecord, SayRefused, VoiceRequest
from luna_voice.conversation.transcript import Line, MeetingTranscript
from luna_voice.conversation.transcript_filter import WORDS_FLOOR, Drop, no_speech_reason
from luna_voice.conversation.turns import Hold, Sentence, Turn, TurnKind, TurnState, join_sentences


class Chunker(Protocol):
    def feed(self, delta: str) -> list[str]: ...

    def flush(self) -> list[str]: ...


@dataclass(frozen=True)
class CoreConfig:
    room_id: str
    playback_rate: int  # Hz of the audio Luna sends (bridge.protocol.PLAYBACK_RATE)
    bot_name: str = "Luna"
    policy: PolicyName = "auto"
    follow_up_window_s: float = 8.0
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    barge_in_min_ms: int = 500  # voiced overlap that stops her; ducked meanwhile, so "okay", "yeah" pass
    duck_gain: float = 10 ** (-15 / 20)  # Luna's level while someone may be interrupting her (-15 dB)
    # A VAD window this sure ducks her at once; music and noise rarely reach it (the VAD threshold, 0.5, they do).
    duck_threshold: float = 0.8
    context_seconds: float = 300.0
    context_chars: int = 4000
    stale_after_s: float = 20.0
    rate_limited_line: str = ""
    unmute_when_addressed: bool = True  # after a host's mute: speak again only when addressed by name
    lead_s: float = 0.6
    # The pacer tops the lead up once it has fallen by this much: a few frames per wake-up, not one every 20 ms.
    refill_s: float = 0.1
    max_turns_kept: int = 200
    greeting: str = ""  # said once after joining; empty: none
    goodbye: str = "Okay, goodbye everyone!"  # before leaving when asked in English (or another Latin script)
    goodbye_zh: str = "好的，大家再见！"  # ... and when asked in Chinese
    transcript_lines: int = 5000  # lines of the meeting transcript kept; 0 turns it off
    # An utterance whose transcript has not come this long after it ended fails its turn ("stt: timeout"),
    # whatever the engine: a stuck provider (or a model still loading) must never leave a turn "transcribing".
    transcribe_timeout_s: float = 30.0
    # STT confidence gate: a transcript whose mean token probability is below this is dropped as ``no_speech``
    # when the engine also doubts there was speech, or gives no such score (see ``transcript_filter``).
    min_word_confidence: float = WORDS_FLOOR
    # A plainly unfinished transcript ("Could you tell me if", ``continuation.py``) waits this long after its end of
    # speech for the same speaker to go on, and is joined to their next words; 0 answers it at once.
    continuation_wait_s: float = 1.5


@dataclass(frozen=True)
class _Held:
    turn: Turn  # an unfinished transcript, not answered yet
    due: float  # answered as it is if its speaker has not gone on by then


@dataclass(frozen=True)
class _InFlight:
    seq: int
    turn_id: str
    sentence: int
    samples: int


class Conversation:
    def __init__(
        self,
        config: CoreConfig,
        *,
        is_addressed: Callable[[str], bool],
        is_backchannel: Callable[[str], bool],
        new_chunker: Callable[[], Chunker],
        price: Callable[[Usage], float] = lambda usage: 0.0,
        find_request: Callable[[str], VoiceRequest | None] = lambda text: None,
    ) -> None:
        self.cfg = config
        self.policy = TurnPolicy(config.policy, is_addressed, config.follow_up_window_s)
        self._is_addressed = is_addressed
        self._is_backchannel = is_backchannel
        self._new_chunker = new_chunker
        self._price = price
        self._find_request = find_request
        self.transcript_record = MeetingTranscript(config.transcript_lines) if config.transcript_lines else None
        self.participants: dict[str, str] = {}
        self.turns: dict[str, Turn] = {}
        self.usage = Usage()
        self.stats = {
            "frames_in": 0,
            "frames_out": 0,
            "barge_ins": 0,
            "ducks": 0,
            "false_interruptions": 0,
            "false_ducks": 0,
            "playback_gaps": 0,
        }
        self._endpointers: dict[str, Endpointer] = {}
        self._open: dict[str, tuple[str, float]] = {}  # speaker -> (utterance id, speech started)
        self._overlap: dict[str, int] = {}  # speaker -> voiced ms while Luna was audible
        self._ducking: set[str] = set()  # utterances that overlapped Luna and are not resolved yet
        self._onset_ducks: set[str] = set()  # speakers whose confident onset ducked her before an utterance started
        self._ducked = False
        # A lone "Luna," (the speaker paused after her name, so it was an utterance of its own): speaker -> (the
        # name as heard, when). Not answered by itself; it prefixes the same speaker's next words.
        self._called: dict[str, tuple[str, float]] = {}
        self._held: dict[str, _Held] = {}  # speaker -> their unfinished transcript, waiting for the rest
        self._by_utterance: dict[str, tuple[Turn, float]] = {}  # utterance id -> (its turn, transcript due by)
        self._active: Turn | None = None
        self._chunker: Chunker | None = None
        self._queue: deque[Turn] = deque()
        self._pacer: Pacer[tuple[str, int]] = Pacer(
            rate=config.playback_rate, lead_s=config.lead_s, refill_s=config.refill_s
        )
        self._inflight: deque[_InFlight] = deque()
        self._context: deque[RoomLine] = deque()
        self._ids = itertools.count(1)
        self._leave_reasons: dict[str, str] = {}  # goodbye turn id -> why she leaves after it
        self._llm_cooldown_until = 0.0
        self._out: list[act.Action] = []
        self._speaking = False
        self.muted = False  # someone else turned Luna's audio in the room off
        self._in_room = False  # joined at least once (the greeting waits for this and for a listener)
        self._greeted = False
        self._quiet = False  # asked to be quiet: listen only until addressed by name
        self._leaving = False  # asked to leave: nothing more but the goodbye
        self._gone = False  # the stay is over: nothing more will be heard or said

    # ------------------------------------------------------------------ inputs: room
    def participant_joined(self, pid: str, name: str, now: float) -> None:
        self.participants[pid] = name
        self._publish_participants()
        self._maybe_greet(now)

    def participant_left(self, pid: str, now: float) -> None:
        ep = self._endpointers.pop(pid, None)
        if ep is not None:
            self._endpoint(pid, ep.close(), now)
        if pid in self._onset_ducks:
            self._false_duck(pid)
        self.participants.pop(pid, None)
        self._publish_participants()

    def set_muted(self, muted: bool, reason: str | None, now: float) -> None:
        """Someone else turned Luna's audio off (``muted``) or it is back on. Muted, she stops speaking at once."""
        if muted == self.muted:
            return
        self.muted = muted
        self._out.append(act.Publish(MutedChanged(muted, reason, now)))
        if not muted:
            return
        while self._queue:
            self._settle(self._queue.popleft(), TurnState.SKIPPED, now, decision="listen", reason="muted")
        if self._active is not None:
            self._interrupt(self._active, now)

    def arrived(self, now: float) -> None:
        """Luna is in the room (first join only: a rejoin must not greet again)."""
        self._in_room = True
        self._maybe_greet(now)

    @property
    def listen_only(self) -> bool:
        """She only listens: the ``never`` policy, or someone asked her to be quiet."""
        return self.policy.name == "never" or self._quiet

    @property
    def leaving(self) -> bool:
        return self._leaving

    def say(self, text: str, now: float, *, interrupt: bool = False) -> Turn:
        """Speak ``text`` after what she is saying, or at once with ``interrupt`` (her reply is cut as by a
        barge-in). Raises ``SayRefused`` while a host has muted her, she only listens or she is leaving."""
        if self._leaving:
            raise SayRefused("leaving", "Luna is leaving the room")
        if self.muted:
            raise SayRefused("muted_by_host", "someone else muted Luna in the room")
        if self.listen_only:
            raise SayRefused("listen_only", "Luna is in listen-only mode")
        turn = self._speech_turn(TurnKind.SAY, text, now)
        self._speak(turn, now, interrupt=interrupt)
        return turn

    @property
    def cost_usd(self) -> float:
        """Provider cost of everything this bot used (turns pruned from ``turns`` included)."""
        return self._price(self.usage)

    def participant_list(self) -> list[dict[str, str]]:
        return [{"id": pid, "name": name} for pid, name in self.participants.items()]

    def audio(
        self, pid: str, t_end: float, pcm: bytes, is_speech: bool, now: float, *, probability: float | None = None
    ) -> None:
        """One 20 ms capture frame of participant ``pid`` whose last sample was taken at ``t_end``. ``probability``
        is the VAD's for its latest window; None (a detector without one) counts a voiced frame as sure."""
        self.stats["frames_in"] += 1
        ep = self._endpointers.get(pid)
        if ep is None:
            ep = self._endpointers[pid] = Endpointer(self.cfg.endpoint)
        self._endpoint(pid, ep.feed(t_end, pcm, is_speech), now)
        sure = is_speech and (1.0 if probability is None else probability) >= self.cfg.duck_threshold
        if not ep.speaking:  # before an utterance starts: a sure window ducks at once, a broken run gives it back
            self._overlap.pop(pid, None)
            if sure and self._audible():
                self._onset_ducks.add(pid)
                self._update_gain()
            elif not is_speech and pid in self._onset_ducks:
                self._false_duck(pid)
            return
        uid = self._open[pid][0]
        if pid in self._onset_ducks:  # the onset became an utterance: its duck is the utterance's now
            self._onset_ducks.discard(pid)
            self._ducking.add(uid)
        # Barge-in counts only voiced audio *while Luna is audible*: speech that ended just before she
        # started, or a short "mm", does not cut her off.
        if not self._audible():
            self._overlap.pop(pid, None)
        elif is_speech:
            if sure:
                self._duck(uid)
            self._overlap[pid] = self._overlap.get(pid, 0) + self.cfg.endpoint.frame_ms
            if self._overlap[pid] >= self.cfg.barge_in_min_ms:
                assert self._active is not None
                self.stats["barge_ins"] += 1
                self._overlap.clear()
                self._interrupt(self._active, now)

    # ------------------------------------------------------------------ inputs: providers
    def end_of_turn(self, pid: str, request: int, probability: float | None, now: float) -> None:
        """The turn model's answer to ``PredictEndOfTurn``: probability the speaker finished, None if unknown."""
        ep = self._endpointers.get(pid)
        if ep is not None:
            self._endpoint(pid, ep.prediction(request, probability), now)

    def transcript(
        self,
        utterance_id: str,
        text: str,
        language: str | None,
        usage: Usage,
        now: float,
        *,
        final_after_s: float | None = None,
        confidence: Confidence | None = None,
    ) -> None:
        turn, _due = self._by_utterance.pop(utterance_id, (None, 0.0))
        if turn is None:
            return
        turn.mark("transcript_ready", now)
        turn.stt_final_after_s = final_after_s
        self._add_usage(turn, usage)
        text = text.strip()
        turn.heard_text, turn.language = text, language
        if (drop := no_speech_reason(text, confidence, self._names(), self.cfg.min_word_confidence)) is not None:
            if drop is Drop.PROMPT_WORDS and self._is_addressed(text):  # "Luna," then a pause: she was called
                self._called[turn.speaker_id] = (text, turn.timings["end_of_speech"])
            return self._no_speech(turn, drop, now)
        called, at = self._called.pop(turn.speaker_id, ("", 0.0))
        if called and turn.timings["speech_started"] - at <= self.cfg.follow_up_window_s:
            text = turn.heard_text = join_sentences((called, text))  # what they said to her, in one piece
        if (held := self._held.pop(turn.speaker_id, None)) is not None:  # they went on: one turn, the whole sentence
            text = turn.heard_text = join_sentences((held.turn.heard_text, text))
            turn.hold, held.turn.hold = Hold.JOINED, Hold.MERGED
            turn.timings["speech_started"] = held.turn.timings["speech_started"]  # the sentence began there
            self._settle(held.turn, TurnState.MERGED, now)
        if (
            self.cfg.continuation_wait_s > 0
            and unfinished(text)
            and not self._is_backchannel(text)  # "Okay," over her voice is not half a sentence
            and self._find_request(text) is None
        ):
            turn.hold = Hold.HELD  # "Could you tell me if": wait for the rest before answering
            self._held[turn.speaker_id] = _Held(turn, turn.timings["end_of_speech"] + self.cfg.continuation_wait_s)
            self._words_over_her(utterance_id, now)  # half a sentence is more than a backchannel
            return self._publish_turn(turn)
        self._hear(turn, now)

    def _release(self, pid: str, now: float) -> None:
        """Nobody finished ``pid``'s held fragment: answer it as it is (it is never lost)."""
        held = self._held.pop(pid)
        held.turn.hold = Hold.EXPIRED
        held.turn.mark("released", now)
        self._hear(held.turn, now)

    def _words_over_her(self, utterance_id: str, now: float) -> None:
        """Words that are more than a backchannel, from an utterance that ducked her: she stops."""
        if utterance_id in self._ducking and self._active is not None:
            self.stats["barge_ins"] += 1
            self._interrupt(self._active, now)

    def _hear(self, turn: Turn, now: float) -> None:
        """A transcript that is speech and not held: remember it, then act on it (request, answer, listen)."""
        text, utterance_id, language = turn.heard_text, turn.utterance_id, turn.language
        self._remember(turn.speaker_name, text, turn.timings["end_of_speech"])
        self._record_line(
            Line(turn.speaker_id, turn.speaker_name, turn.timings["speech_started"], turn.timings["end_of_speech"],
                 text, language)
        )  # fmt: skip
        if (request := self._find_request(text)) is not None:
            return self._on_request(turn, request, now)
        addressed = self._is_addressed(text)
        if self._leaving:
            return self._settle(turn, TurnState.SKIPPED, now, decision="listen", reason="leaving")
        if self._quiet and addressed:
            self._set_quiet(False, now)
        if not addressed and self._is_backchannel(text):
            self._resolve_duck(utterance_id)
            return self._settle(turn, TurnState.SKIPPED, now, decision="listen", reason="backchannel")
        self._words_over_her(utterance_id, now)
        if self._quiet:
            return self._settle(turn, TurnState.SKIPPED, now, decision="listen", reason="asked_to_be_quiet")
        d = self.policy.decide(
            speaker_id=turn.speaker_id,
            text=text,
            humans=len(self.participants),
            end_of_speech=turn.timings["end_of_speech"],
        )
        turn.decision, turn.reason = ("answer" if d.answer else "listen"), d.reason
        if not d.answer:
            return self._settle(turn, TurnState.SKIPPED, now)
        if self.muted:
            if not (self.cfg.unmute_when_addressed and self._is_addressed(text)):
                return self._settle(turn, TurnState.SKIPPED, now, decision="listen", reason="muted")
            self._out.append(act.Unmute())
        active = self._active
        if active is None:
            self._start(turn, d.may_stay_silent, now)
        elif active.speaker_id == turn.speaker_id and self._unsent(active):
            turn.heard_text = join_sentences((active.heard_text, text))
            self._cancel_generation(active)
            self._pacer.clear(now)  # synthesized, never sent: nobody heard it
            self._close(active, SpokenReason.MERGED)
            active.move(TurnState.MERGED)
            self._publish_turn(active)
            self._active = None
            self._start(turn, d.may_stay_silent, now)
        else:
            turn.move(TurnState.QUEUED)
            self._queue.append(turn)
            self._publish_turn(turn)

    def transcript_failed(self, utterance_id: str, reason: str, now: float, *, usage: Usage | None = None) -> None:
        """``usage``: what the failed transcription was billed for all the same."""
        turn, _due = self._by_utterance.pop(utterance_id, (None, 0.0))
        if turn is not None:
            turn.error = f"stt: {reason}"
            if usage is not None:
                self._add_usage(turn, usage)
            self._settle(turn, TurnState.FAILED, now)

    def reply_delta(self, turn_id: str, text: str, now: float) -> None:
        turn = self._current(turn_id)
        if turn is None or not text:
            return
        turn.mark("first_reply_text", now)
        turn.reply_text += text
        assert self._chunker is not None
        for sentence in self._chunker.feed(text):
            self._add_sentence(turn, sentence)

    def reply_done(self, turn_id: str, usage: Usage, now: float) -> None:
        turn = self._current(turn_id)
        if turn is None:
            return
        self._add_usage(turn, usage)
        assert self._chunker is not None
        for sentence in self._chunker.flush():
            self._add_sentence(turn, sentence)
        turn.reply_done = True
        if not turn.sentences:
            return self._finish(turn, TurnState.SILENT, now)
        self._publish_turn(turn)
        self._maybe_finish(turn, now)

    def reply_failed(
        self, turn_id: str, reason: str, now: float, *, rate_limited: bool = False, retry_after: float | None = None
    ) -> None:
        if rate_limited and retry_after:  # honour the app's rate limit: no reply requests until then
            self._llm_cooldown_until = max(self._llm_cooldown_until, now + retry_after)
        turn = self._current(turn_id)
        if turn is None:
            return
        turn.error = f"llm: {reason}"
        turn.reply_done = True
        if rate_limited and self.cfg.rate_limited_line and not turn.sentences:
            self._add_sentence(turn, self.cfg.rate_limited_line)
            turn.reply_text = self.cfg.rate_limited_line
            return
        self._cancel_generation(turn)
        self._drop_unsynthesized(turn)
        self._maybe_finish(turn, now)

    def add_usage(self, turn_id: str | None, usage: Usage) -> None:
        """Usage of a call that ended without a result (cancelled or failed): billed all the same, so counted.

        A turn that has already ended (the usual case after a barge-in), or none at all, publishes it as
        ``late_usage``, so totals built from finished turns (metrics) see it too.
        """
        if usage == Usage():
            return
        turn = None if turn_id is None else self.turns.get(turn_id)
        if turn is None:
            self.usage += usage
        else:
            self._add_usage(turn, usage)
        if turn is None or turn.state.terminal:
            self._out.append(act.Publish(LateUsage(turn_id, vars(usage).copy(), round(self._price(usage), 6))))

    def transcription_usage(self, utterance_id: str, usage: Usage) -> None:
        """Usage of a transcription cancelled without a result (overdue, too short, or the bot leaving mid-
        utterance): the service billed the audio it received. Counted on the utterance's turn; an utterance cut
        off before it became a turn counts for the bot alone."""
        turn = next((t for t in self.turns.values() if t.utterance_id == utterance_id), None)
        self.add_usage(None if turn is None else turn.id, usage)

    def speech_audio(self, turn_id: str, index: int, pcm: bytes, now: float) -> None:
        turn = self._current(turn_id)
        if turn is None or not pcm or index >= len(turn.sentences):
            return
        turn.mark("first_tts_audio", now)
        turn.sentences[index].samples += len(pcm) // 2
        if turn.state is not TurnState.SPEAKING:
            turn.move(TurnState.SPEAKING)
            self._publish_turn(turn)
        self._pacer.push(pcm, (turn_id, index))
        self._pump(now)

    def speech_done(self, turn_id: str, index: int, usage: Usage, now: float) -> None:
        turn = self._current(turn_id)
        if turn is None or index >= len(turn.sentences):
            return
        self._add_usage(turn, usage)
        turn.sentences[index].synthesized = True
        self._pacer.flush()
        self._pump(now)
        self._maybe_finish(turn, now)

    def speech_failed(self, turn_id: str, index: int, reason: str, now: float) -> None:
        turn = self._current(turn_id)
        if turn is None:
            return
        turn.error = f"tts: {reason}"
        turn.reply_done = True
        self._cancel_generation(turn)
        self._drop_unsynthesized(turn)
        self._pacer.flush()
        self._maybe_finish(turn, now)

    # ------------------------------------------------------------------ inputs: page playback
    def played(self, seq: int, idle: bool, now: float) -> None:
        """The page rendered every frame up to ``seq`` into Luna's microphone."""
        while self._inflight and self._inflight[0].seq <= seq:
            f = self._inflight.popleft()
            turn = self.turns.get(f.turn_id)
            if turn is not None and f.sentence < len(turn.sentences):
                turn.sentences[f.sentence].played += f.samples
                turn.mark("first_audio_played", now)
        active = self._active
        # The page ran dry mid-reply: TTS was slower than real time.
        gap = idle and active is not None and active.state is TurnState.SPEAKING and not self._inflight
        if gap and not self._turn_complete(active):  # type: ignore[arg-type]
            self.stats["playback_gaps"] += 1
        if active is not None:
            self._maybe_finish(active, now)
        self._set_speaking(bool(self._inflight) or bool(self._pacer.queued_s), now)

    def playback_reset(self, now: float) -> None:
        """A new page took over Luna's microphone: audio released to the old one is gone with it.

        The answer being spoken ends as interrupted and history keeps only what the room heard (the played marks
        the old page sent); a reply still being thought about carries on into the new page.
        """
        self._pacer.clear(now)
        self._inflight.clear()
        active = self._active
        if active is not None and active.sentences:
            active.interrupted = True
            self._cancel_generation(active)
            self._finish(active, TurnState.INTERRUPTED, now)
        self._set_speaking(False, now)

    def stay_ended(self, now: float) -> None:
        """Luna is out of the room for good (dismissed, room ended, kicked, a crash not rejoined, shutdown, her
        goodbye): close the books before the driver stops.

        The turn in progress ends as interrupted and makes its one closing call with what the room heard of it, so
        the reply engine never keeps an answer nobody heard. Queued turns never reached the engine: cancelled, no
        call. Transcripts still on their way are heard but not answered (``leaving``). Calling it again is a no-op.
        """
        if self._gone:
            return
        self._gone = self._leaving = True
        for pid in list(self._held):  # heard, recorded, not answered
            self._release(pid, now)
        self._silence(now)

    def tick(self, now: float) -> None:
        for pid, ep in list(self._endpointers.items()):
            self._endpoint(pid, ep.check(now), now)
        for pid, held in list(self._held.items()):
            if now >= held.due and not self._going_on(pid, held.due):
                self._release(pid, now)
        for uid, (_turn, due) in list(self._by_utterance.items()):
            if now >= due:
                self._out.append(act.CancelTranscription(uid))
                self.transcript_failed(uid, f"timeout (no transcript within {self.cfg.transcribe_timeout_s:g} s)", now)
        self._pump(now)

    def next_deadline(self, now: float) -> float | None:
        """When ``tick`` has work next (pacing, a stalled speaker, an overdue transcript or a held fragment whose
        wait runs out), or None. A fragment whose speaker went on waits for their transcript, not for the clock; a
        speaker's frames need no clock at all until they would have stalled (``feed`` does the rest), so the driver
        arms one timer for the earliest of these instead of waking every frame."""
        dues = [d for _turn, d in self._by_utterance.values()]
        dues += [h.due for pid, h in self._held.items() if not self._going_on(pid, h.due)]
        dues += [d for ep in self._endpointers.values() if (d := ep.stall_due()) is not None]
        if not self._asker_going_on() and (pacing := self._pacer.next_due(now)) is not None:
            dues.append(pacing)
        return min(dues, default=None)

    def drain(self) -> list[act.Action]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ internals
    def _going_on(self, pid: str, due: float) -> bool:
        """Whether ``pid`` started speaking again by ``due`` and that utterance has no transcript yet: its words
        may finish the fragment they left hanging."""
        if pid in self._open and self._open[pid][1] <= due:
            return True
        return any(t.speaker_id == pid and t.timings["speech_started"] <= due for t, _ in self._by_utterance.values())

    def _endpoint(self, pid: str, events: list[EndpointEvent], now: float) -> None:
        for ev in events:
            if isinstance(ev, UtteranceStarted):
                uid = f"u{next(self._ids)}"
                self._open[pid] = (uid, ev.at)
                names = self._names()
                self._out.append(act.StartTranscription(uid, pid, ", ".join(names), ev.pcm, names))
            elif isinstance(ev, UtteranceAudio):
                self._out.append(act.TranscriptionAudio(self._open[pid][0], ev.pcm))
            elif isinstance(ev, EndCandidate):
                self._out.append(act.PredictEndOfTurn(pid, ev.request, ev.pcm))
            elif isinstance(ev, UtteranceEnded):
                uid, started = self._open.pop(pid)
                turn = Turn(f"t{next(self._ids)}", uid, pid, self.participants.get(pid, pid), self.cfg.playback_rate)
                turn.end_reason, turn.end_probability = ev.reason.value, ev.probability
                turn.mark("speech_started", started)
                turn.mark("end_of_speech", ev.end_of_speech)
                turn.mark("end_of_turn", now)
                self.turns[turn.id] = turn
                self._prune_turns()
                if ev.voiced_ms < self.cfg.endpoint.min_speech_ms:  # a click, a cough: not worth transcribing
                    self._out.append(act.CancelTranscription(uid))
                    self._no_speech(turn, Drop.SHORT, now)
                else:
                    self._out.append(act.FinishTranscription(uid))
                    self._by_utterance[uid] = (turn, now + self.cfg.transcribe_timeout_s)

    # ------------------------------------------------------------------ Luna as a participant
    def _maybe_greet(self, now: float) -> None:
        if self._greeted or not (self._in_room and self.participants and self.cfg.greeting.strip()):
            return
        self._greeted = True
        if not (self.listen_only or self._leaving or self.muted):
            self._speak(self._speech_turn(TurnKind.GREETING, self.cfg.greeting, now), now)

    def _on_request(self, turn: Turn, request: VoiceRequest, now: float) -> None:
        """Act on a voice request and record it, with what it did, on the turn that made it."""
        turn.decision, turn.reason = "request", str(request)
        if self._leaving:  # the goodbye is under way; nothing else to do
            outcome = RequestOutcome.LEAVING
        else:
            cut = self._silence(now)
            if request is VoiceRequest.STOP:
                outcome = RequestOutcome.STOPPED if cut else RequestOutcome.NOTHING_TO_STOP
            elif request is VoiceRequest.QUIET:
                self._set_quiet(True, now)
                outcome = RequestOutcome.LISTEN_ONLY
            else:
                self._leaving = True
                outcome = RequestOutcome.LEAVING
                goodbye = self.cfg.goodbye_zh if any(is_cjk(c) for c in turn.heard_text) else self.cfg.goodbye
                reason = f"{turn.speaker_name} asked Luna to leave"
                if goodbye.strip() and not (self.policy.name == "never" or self.muted):
                    self._speak(self._speech_turn(TurnKind.GOODBYE, goodbye, now, leave_reason=reason), now)
                else:
                    self._out.append(act.Leave(reason))
        turn.request = RequestRecord(request, outcome)
        self._settle(turn, TurnState.HANDLED, now)

    def _silence(self, now: float) -> bool:
        """Cut what she is saying or preparing and drop what was queued; True if anything was cut."""
        cut = bool(self._queue)
        while self._queue:
            self._settle(self._queue.popleft(), TurnState.CANCELLED, now)
        if self._active is not None:
            self._interrupt(self._active, now)
            cut = True
        return cut

    def _set_quiet(self, quiet: bool, now: float) -> None:
        self._quiet = quiet
        self._out.append(act.Publish(ListenOnlyChanged(self.listen_only, now)))

    def _speech_turn(self, kind: TurnKind, text: str, now: float, *, leave_reason: str = "") -> Turn:
        turn = Turn(f"t{next(self._ids)}", "", "luna", self.cfg.bot_name, self.cfg.playback_rate, kind=kind)
        turn.decision, turn.reason, turn.reply_text = "speak", str(kind), text
        turn.mark("requested", now)
        if leave_reason:
            self._leave_reasons[turn.id] = leave_reason
        self.turns[turn.id] = turn
        self._prune_turns()
        return turn

    def _speak(self, turn: Turn, now: float, *, interrupt: bool = False) -> None:
        if self._active is None:
            self._start_speech(turn, now)
        elif interrupt:
            self._queue.appendleft(turn)  # ending the cut turn starts the next in the queue: this one
            self._interrupt(self._active, now)
        else:
            turn.move(TurnState.QUEUED)
            self._queue.append(turn)
            self._publish_turn(turn)

    def _start_speech(self, turn: Turn, now: float) -> None:
        """Speak a given text with her voice and the usual chunking; no reply engine involved."""
        self._active = turn
        turn.move(TurnState.THINKING)
        chunker = self._new_chunker()
        for sentence in [*chunker.feed(turn.reply_text), *chunker.flush()]:
            self._add_sentence(turn, sentence)
        turn.reply_done = True
        self._publish_turn(turn)
        self._publish_speak(SpeakPhase.STARTED, turn, now)
        if not turn.sentences:  # nothing speakable (only markdown, say): done at once
            self._finish(turn, TurnState.DONE, now)

    def _publish_speak(self, phase: SpeakPhase, turn: Turn, now: float) -> None:
        event = SpeakChanged(phase, turn.id, str(turn.kind), turn.reply_text, now)
        if phase is not SpeakPhase.STARTED:
            played = round(sum(s.played for s in turn.sentences) / turn.playback_rate, 3)
            event = replace(event, spoken_text=turn.spoken_text, played_audio_s=played, error=turn.error)
        self._out.append(act.Publish(event))

    def _record_line(self, line: Line) -> None:
        if self.transcript_record is not None:
            self.transcript_record.add(line)

    def _prune_turns(self) -> None:
        while len(self.turns) > self.cfg.max_turns_kept:
            self.turns.pop(next(iter(self.turns)))

    def _names(self) -> tuple[str, ...]:
        """Her names (hers first) and everyone's display names: the STT prompt and keywords, so names are spelled
        right, and what transcripts of noise are made of."""
        names = [self.cfg.bot_name, "Luna", "露娜", *self.participants.values()]
        return tuple(dict.fromkeys(n for n in names if n))

    def _no_speech(self, turn: Turn, drop: Drop, now: float) -> None:
        """Record an utterance that was not speech; it is never answered nor remembered."""
        turn.no_speech = drop.value
        self._resolve_duck(turn.utterance_id)
        self._settle(turn, TurnState.SKIPPED, now, decision="listen", reason="no_speech")

    def _duck(self, utterance_id: str) -> None:
        self._ducking.add(utterance_id)
        self._update_gain()

    def _false_duck(self, pid: str) -> None:
        """A sure onset that never became an utterance: her volume comes back at once."""
        self._onset_ducks.discard(pid)
        self.stats["false_ducks"] += 1
        self._update_gain()

    def _resolve_duck(self, utterance_id: str) -> None:
        """An utterance over Luna's voice turned out harmless (a false interruption): once none is left, her
        volume comes back. A real interruption never gets here: it ends her turn, which restores the volume."""
        if utterance_id not in self._ducking:
            return
        self._ducking.discard(utterance_id)
        self.stats["false_interruptions"] += 1
        self._update_gain()

    def _restore_volume(self) -> None:
        self._ducking.clear()
        self._onset_ducks.clear()
        self._update_gain()

    def _update_gain(self) -> None:
        """Ducked while any onset or utterance over her voice is unresolved; the page hears only changes."""
        ducked = bool(self._ducking or self._onset_ducks)
        if ducked != self._ducked:
            self._ducked = ducked
            self.stats["ducks"] += ducked
            self._out.append(act.SetPlaybackGain(self.cfg.duck_gain if ducked else 1.0))

    def _start(self, turn: Turn, may_stay_silent: bool, now: float) -> bool:
        """Ask for a reply to ``turn``; False if the reply engine asked us to wait (the turn fails at once)."""
        if now < self._llm_cooldown_until:
            turn.error = f"llm: rate limited, retry in {self._llm_cooldown_until - now:.0f} s"
            self._settle(turn, TurnState.FAILED, now)
            return False
        self._active = turn
        self._chunker = self._new_chunker()
        turn.move(TurnState.THINKING)
        context = [line for line in self._context if line.at < turn.timings["end_of_speech"]]
        request = ReplyRequest(
            room_id=self.cfg.room_id,
            turn_id=turn.id,
            speaker_id=turn.speaker_id,
            speaker_name=turn.speaker_name,
            text=turn.heard_text,
            language=turn.language,
            addressed=turn.reason == "addressed_by_name",
            context=tuple(context),
            may_stay_silent=may_stay_silent,
        )
        self._out.append(act.RequestReply(turn.id, request))
        turn.requested = True
        self._publish_turn(turn)
        return True

    def _add_sentence(self, turn: Turn, text: str) -> None:
        turn.sentences.append(Sentence(text))
        self._out.append(act.Synthesize(turn.id, len(turn.sentences) - 1, text))

    def _unsent(self, turn: Turn) -> bool:
        """A reply to someone's words of which nothing was sent to the room yet: it can still be redone."""
        return (
            turn.state in (TurnState.THINKING, TurnState.SPEAKING)
            and not turn.kind.speech
            and "first_audio_sent" not in turn.timings
        )

    def _asker_going_on(self) -> bool:
        """Her answer has not started and the person she is answering speaks again (or their transcript or held
        fragment is pending): wait for their words, which may finish the question (the merge above)."""
        turn = self._active
        if turn is None or not self._unsent(turn):
            return False
        return turn.speaker_id in self._held or self._going_on(turn.speaker_id, math.inf)

    def _pump(self, now: float) -> None:
        if self._asker_going_on():
            return
        for frame in self._pacer.poll(now):
            turn_id, index = frame.tag
            self._inflight.append(_InFlight(frame.seq, turn_id, index, frame.samples))
            self._out.append(act.SendAudio(frame.seq, frame.pcm))
            self.stats["frames_out"] += 1
            turn = self.turns.get(turn_id)
            if turn is not None:
                turn.mark("first_audio_sent", now)
            self._set_speaking(True, now)

    def _audible(self) -> bool:
        return (
            self._active is not None
            and self._active.state is TurnState.SPEAKING
            and not self._unsent(self._active)  # audio held back while the asker goes on is not heard
            and bool(self._inflight or self._pacer.queued_s)
        )

    def _interrupt(self, turn: Turn, now: float) -> None:
        turn.interrupted = True
        self._cancel_generation(turn)
        self._out.append(act.ClearPlayback())
        self._pacer.clear(now)
        self._inflight.clear()
        self._finish(turn, TurnState.INTERRUPTED, now)

    def _cancel_generation(self, turn: Turn) -> None:
        self._out.append(act.CancelReply(turn.id))
        self._out.append(act.CancelSynthesis(turn.id))

    @staticmethod
    def _drop_unsynthesized(turn: Turn) -> None:
        turn.sentences = [s for s in turn.sentences if s.samples]
        for s in turn.sentences:
            s.synthesized = True

    def _turn_complete(self, turn: Turn) -> bool:
        return (
            turn.reply_done
            and all(s.synthesized for s in turn.sentences)
            and not self._inflight
            and not self._pacer.queued_s
        )

    def _maybe_finish(self, turn: Turn, now: float) -> None:
        if turn is self._active and self._turn_complete(turn):
            self._finish(turn, TurnState.FAILED if turn.error else TurnState.DONE, now)

    def _finish(self, turn: Turn, state: TurnState, now: float) -> None:
        """End the active turn: record what was really said, then take the next queued turn."""
        spoken = turn.spoken_text
        if turn.interrupted:
            self._close(turn, SpokenReason.INTERRUPTED)
        else:
            self._close(turn, SpokenReason.FAILED if state is TurnState.FAILED else SpokenReason.DONE)
        if spoken:
            self._remember(self.cfg.bot_name, spoken + ("…" if turn.interrupted else ""), now)
            start = turn.timings.get("first_audio_played", turn.timings.get("first_audio_sent", now))
            kind = "reply" if turn.kind is TurnKind.UTTERANCE else str(turn.kind)
            self._record_line(Line("luna", self.cfg.bot_name, start, now, spoken, None, True, kind, turn.interrupted))
            if not turn.interrupted and not turn.kind.speech:
                self.policy.answered(turn.speaker_id, now)
        self._settle(turn, state, now)
        self._active = None
        self._chunker = None
        self._restore_volume()
        self._set_speaking(False, now)
        if turn.kind is TurnKind.GOODBYE and not self._gone:  # a goodbye cut by the end of the stay: gone already
            self._out.append(act.Leave(self._leave_reasons.pop(turn.id, "")))
        while self._queue:
            nxt = self._queue.popleft()
            if nxt.kind.speech:
                self._start_speech(nxt, now)
                break
            if now - nxt.timings["end_of_speech"] > self.cfg.stale_after_s:
                self._settle(nxt, TurnState.STALE, now)
                continue
            if self._start(nxt, nxt.reason == "llm_decides", now):
                break

    def _close(self, turn: Turn, reason: SpokenReason) -> None:
        """The turn's one closing call, if its reply was requested: what the room heard of it, and why it ended."""
        if turn.requested:
            turn.requested = False
            self._out.append(act.RecordSpoken(turn.id, turn.spoken_text, reason))

    def _settle(
        self, turn: Turn, state: TurnState, now: float, *, decision: str | None = None, reason: str | None = None
    ) -> None:
        """Give a turn its final state (answered or not) and publish it."""
        if decision is not None:
            turn.decision, turn.reason = decision, reason
        turn.move(state)
        turn.mark("finished", now)
        self._publish_turn(turn)
        if turn.kind.speech:
            ended = {TurnState.DONE: SpeakPhase.COMPLETED, TurnState.FAILED: SpeakPhase.FAILED}
            self._publish_speak(ended.get(state, SpeakPhase.INTERRUPTED), turn, now)

    def _current(self, turn_id: str) -> Turn | None:
        """The active turn if ``turn_id`` names it; late events of cancelled turns are ignored."""
        turn = self._active
        return turn if turn is not None and turn.id == turn_id else None

    def _add_usage(self, turn: Turn, usage: Usage) -> None:
        turn.usage += usage
        self.usage += usage
        turn.cost_usd = self._price(turn.usage)

    def _remember(self, speaker: str, text: str, at: float) -> None:
        self._context.append(RoomLine(speaker, text, at))
        horizon = at - self.cfg.context_seconds
        while self._context and (
            self._context[0].at < horizon or sum(len(line.text) for line in self._context) > self.cfg.context_chars
        ):
            self._context.popleft()

    def _set_speaking(self, speaking: bool, now: float) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            self._out.append(act.Publish(SpeakingChanged(speaking, now)))

    def _publish_turn(self, turn: Turn) -> None:
        self._out.append(act.Publish(TurnChanged(turn.to_dict())))

    def _publish_participants(self) -> None:
        people = tuple(Participant(pid, name) for pid, name in self.participants.items())
        self._out.append(act.Publish(ParticipantsChanged(people)))

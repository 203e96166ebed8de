"""The asyncio driver around the conversation core: it runs the VAD, the providers and the bridge I/O.

All decisions live in ``conversation.core``; this module only turns the core's actions into tasks and feeds
their results back, always on the event loop's thread. Each provider call is a task of its own, so a slow or
failing provider never blocks audio, and cancelling a turn is cancelling its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import soxr
import structlog

from luna_voice.bridge.clock import PageClock
from luna_voice.bridge.protocol import FRAME_MS
from luna_voice.conversation import actions as act
from luna_voice.conversation.core import Conversation
from luna_voice.conversation.domain import Usage
from luna_voice.conversation.events import CoreEvent
from luna_voice.conversation.turns import Turn
from luna_voice.hearing import turn_model
from luna_voice.hearing.vad import Voice, VoiceDetector, shared_batcher
from luna_voice.hearing.vad import shared_model as silero_model
from luna_voice.providers.base import (
    ProviderError,
    RateLimited,
    ReplyEngine,
    SpeechToText,
    TextToSpeech,
    TranscriptionStream,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
_FINISH = object()
PROVIDER_CLOSE_S = 3.0
CLOSING_CALLS_S = 2.0  # turns' closing record_spoken calls still in flight when the bot leaves
_CANCEL = object()
# The ticker sleeps until the core's next deadline (``_run`` wakes it for an earlier one); it also looks this often
# regardless, for a clock that is not the event loop's (tests move theirs by hand).
LOOK_ANYWAY_S = 1.0
# Consecutive frames the core releases at once (a refill of the pacer's lead, five frames) leave as one bridge
# message: one WebSocket message, one hop through the page's worker and one postMessage to the worklet, not five.
PLAYBACK_FRAMES_PER_MESSAGE = 10


class Pipeline:
    def __init__(
        self,
        core: Conversation,
        *,
        stt: SpeechToText,
        llm: ReplyEngine,
        tts: TextToSpeech,
        send_audio: Callable[[int, bytes], None],
        clear_playback: Callable[[], None],
        publish: Callable[[CoreEvent], None],
        unmute: Callable[[], None] = lambda: None,
        leave: Callable[[str], None] = lambda reason: None,
        set_playback_gain: Callable[[float], None] = lambda _gain: None,
        vad_threshold: float = 0.5,
        new_vad: Callable[[], VoiceDetector] | None = None,
        predict_end: Callable[[bytes], Awaitable[float | None]] | None = turn_model.probability_complete,
        clock: Callable[[], float] = time.monotonic,
        audio_tap: Callable[[str, float, bytes], None] | None = None,
    ) -> None:
        self.core = core
        self.stt, self.llm, self.tts = stt, llm, tts
        self._send_audio = send_audio
        self._clear_playback = clear_playback
        self._publish = publish
        self._unmute = unmute
        self._leave = leave
        self._set_playback_gain = set_playback_gain
        # One Silero state per speaker; the model, and the thread that runs it off the event loop, are shared.
        self._new_vad = new_vad or (lambda: shared_batcher().stream(vad_threshold))
        self._vads: dict[str, VoiceDetector] = {}
        self._predict_end = predict_end
        self._playback_rate = core.cfg.playback_rate
        self._clock = clock  # monotonic: a wall-clock step must not stall or burst playback
        self._page_clock = PageClock()
        self._audio_tap = audio_tap  # sees every capture frame (participant, page stamp ms, pcm): the bench
        self._utterances: dict[str, asyncio.Queue[Any]] = {}
        self._transcriptions: dict[str, asyncio.Future[None]] = {}  # utterance id -> its STT task, until it ends
        self._replies: dict[str, asyncio.Task[None]] = {}
        self._speech: dict[str, tuple[asyncio.Queue[tuple[int, str]], asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Future[None]] = set()  # turns' closing record_spoken calls in flight
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tick_at = float("inf")  # when the ticker looks next on its own
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        return self._ticker is not None

    @property
    def running(self) -> bool:
        """Started, and its ticker has not stopped (close stops it whatever wakes it)."""
        return self._ticker is not None and not self._ticker.done()

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="pipeline-ticker")
        self._spawn(self._warm())
        self.core.arrived(self._clock())
        self._run()

    async def _warm(self) -> None:
        """Open connections and load models when Luna joins, not when she first hears or speaks."""
        await asyncio.to_thread(silero_model)
        if self.core.cfg.endpoint.semantic and self._predict_end is turn_model.probability_complete:
            try:
                await turn_model.warm()
            except Exception as exc:  # each candidate end then fails alone and the silence rule applies
                log.warning("smart_turn.warm_failed", error=str(exc))
        for provider in (self.tts, self.stt):
            try:
                await provider.warm()
            except Exception as exc:  # the first call will retry and report a proper turn error
                log.warning("provider.warm_failed", provider=provider.name, error=str(exc))

    def page_changed(self) -> None:
        """A new page took over: its timestamps have their own origin, and the old page's playback is gone."""
        self._page_clock = PageClock()
        self.core.playback_reset(self._clock())
        self._run()

    def stay_ended(self) -> None:
        """Luna is leaving for good: the core closes the turn in progress (its closing call starts now; ``aclose``
        lets it finish) and answers nothing more."""
        self.core.stay_ended(self._clock())
        self._run()

    async def aclose(self) -> None:
        if not self._closed:  # whoever closes without saying the stay ended (the bench, a test) still closes turns
            self.stay_ended()
        self._closed = True
        self._wake.set()
        for vad in self._vads.values():
            vad.close()
        self._vads.clear()
        tasks = [t for t in (self._ticker, *self._tasks, *self._replies.values()) if t is not None]
        tasks += [task for _, task in self._speech.values()]
        for t in tasks:
            t.cancel()
        if tasks:  # bounded: a provider that ignores cancellation must not keep the bot from leaving
            _done, stuck = await asyncio.wait(tasks, timeout=2.0)
            if stuck:
                log.warning("pipeline.tasks_stuck", count=len(stuck))
        if self._closing:  # a turn's one closing call must reach the engine: let it finish, within a bound
            _done, late = await asyncio.wait(set(self._closing), timeout=CLOSING_CALLS_S)
            for t in late:
                t.cancel()
            if late:
                log.warning("pipeline.closing_calls_cut", count=len(late))
        for provider in (self.stt, self.llm, self.tts):
            try:
                await asyncio.wait_for(provider.aclose(), PROVIDER_CLOSE_S)
            except Exception as exc:  # TimeoutError included: a hung provider must not keep the bot
                log.warning("provider.close_failed", provider=provider.name, error=str(exc) or type(exc).__name__)

    def provider_problems(self) -> dict[str, str]:
        """Providers that know they cannot work (a refused key, an unreachable service), with why."""
        roles = {"stt": self.stt, "llm": self.llm, "tts": self.tts, "vad": shared_batcher()}
        return {role: problem for role, p in roles.items() if isinstance(problem := getattr(p, "problem", None), str)}

    # ------------------------------------------------------------------ inputs from the bridge
    def participant_joined(self, pid: str, name: str) -> None:
        self.core.participant_joined(pid, name, self._clock())
        self._run()

    def participant_left(self, pid: str) -> None:
        if (vad := self._vads.pop(pid, None)) is not None:
            vad.close()
        self.core.participant_left(pid, self._clock())
        self._run()

    def frame(self, pid: str, timestamp_ms: float, pcm: bytes) -> None:
        """One capture frame; ``timestamp_ms`` is on the page's clock and is mapped onto ours."""
        if self._audio_tap is not None:
            self._audio_tap(pid, timestamp_ms, pcm)
        vad = self._vads.get(pid)
        if vad is None:
            vad = self._vads[pid] = self._new_vad()
        t_end = self._page_clock.to_local(timestamp_ms, self._clock())  # mapped as it arrives, not as it is scored
        vad.feed(pcm, lambda voice: self._heard(pid, t_end, pcm, voice))

    def _heard(self, pid: str, t_end: float, pcm: bytes, voice: Voice) -> None:
        """A frame's VAD verdict, in frame order per speaker (a closed detector drops those still on their way)."""
        self.core.audio(pid, t_end, pcm, voice.speech, self._clock(), probability=voice.probability)
        self._run()

    def played(self, seq: int, idle: bool) -> None:
        self.core.played(seq, idle, self._clock())
        self._run()

    def muted(self, muted: bool, reason: str | None) -> None:
        self.core.set_muted(muted, reason, self._clock())
        self._run()

    def say(self, text: str, *, interrupt: bool = False) -> Turn:
        """Luna says ``text`` (``POST /rooms/{id}/luna/say``); raises ``SayRefused`` when she cannot."""
        turn = self.core.say(text, self._clock(), interrupt=interrupt)
        self._run()
        return turn

    # ------------------------------------------------------------------ actions
    def _run(self) -> None:
        self._perform_all(self.core.drain())
        # Wake the ticker only for work due before it looks anyway: every capture frame passes here (50 a second
        # per speaker), and waking for each doubled the event loop's passes.
        now = self._clock()
        due = self.core.next_deadline(now)
        if due is not None and (due < self._tick_at or now >= self._tick_at):
            self._wake.set()

    def _perform_all(self, actions: list[act.Action]) -> None:
        """Perform in order; a run of consecutive full frames (and the one after the last) goes as one message."""
        frames: list[act.SendAudio] = []
        for a in actions:
            if frames and not (isinstance(a, act.SendAudio) and self._continues(frames, a)):
                self._send_audio(frames[0].seq, b"".join(f.pcm for f in frames))
                frames = []
            if isinstance(a, act.SendAudio):
                frames.append(a)
            else:
                self._perform(a)
        if frames:
            self._send_audio(frames[0].seq, b"".join(f.pcm for f in frames))

    def _continues(self, frames: list[act.SendAudio], a: act.SendAudio) -> bool:
        last = frames[-1]
        full = len(last.pcm) == self._playback_rate * FRAME_MS // 1000 * 2  # only the last may be short
        return full and a.seq == last.seq + 1 and len(frames) < PLAYBACK_FRAMES_PER_MESSAGE

    def _perform(self, a: act.Action) -> None:
        if isinstance(a, act.StartTranscription):
            q: asyncio.Queue[Any] = asyncio.Queue()
            q.put_nowait(a.pcm)
            self._utterances[a.utterance_id] = q
            stream = self.stt.open_stream(prompt=a.prompt, keywords=a.keywords)
            task = self._spawn(self._transcribe(a.utterance_id, stream, q))
            self._transcriptions[a.utterance_id] = task
            task.add_done_callback(lambda _t, uid=a.utterance_id: self._transcriptions.pop(uid, None))
        elif isinstance(a, act.TranscriptionAudio):
            if (q := self._utterances.get(a.utterance_id)) is not None:
                q.put_nowait(a.pcm)
        elif isinstance(a, act.FinishTranscription | act.CancelTranscription):
            if (q := self._utterances.pop(a.utterance_id, None)) is not None:
                q.put_nowait(_FINISH if isinstance(a, act.FinishTranscription) else _CANCEL)
            elif isinstance(a, act.CancelTranscription) and (task := self._transcriptions.get(a.utterance_id)):
                task.cancel()  # finished, but its transcript is overdue (the core failed the turn): stop waiting
        elif isinstance(a, act.PredictEndOfTurn):
            if self._predict_end is None:
                self.core.end_of_turn(a.speaker_id, a.request, None, self._clock())
            else:
                self._spawn(self._end_of_turn(a, self._predict_end))
        elif isinstance(a, act.RequestReply):
            self._replies[a.turn_id] = asyncio.create_task(self._reply(a))
        elif isinstance(a, act.CancelReply):
            if (task := self._replies.pop(a.turn_id, None)) is not None:
                task.cancel()
        elif isinstance(a, act.Synthesize):
            if a.turn_id not in self._speech:
                sq: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
                self._speech[a.turn_id] = (sq, asyncio.create_task(self._speak(a.turn_id, sq)))
            self._speech[a.turn_id][0].put_nowait((a.index, a.text))
        elif isinstance(a, act.CancelSynthesis):
            if (entry := self._speech.pop(a.turn_id, None)) is not None:
                entry[1].cancel()
        elif isinstance(a, act.ClearPlayback):
            self._clear_playback()
        elif isinstance(a, act.Unmute):
            self._unmute()
        elif isinstance(a, act.SetPlaybackGain):
            self._set_playback_gain(a.gain)
        elif isinstance(a, act.RecordSpoken):
            task = asyncio.ensure_future(self.llm.record_spoken(self.core.cfg.room_id, a.turn_id, a.text, a.reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif isinstance(a, act.Leave):
            self._leave(a.reason)
        elif isinstance(a, act.Publish):
            self._publish(a.event)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Future[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ provider tasks
    async def _end_of_turn(self, a: act.PredictEndOfTurn, predict: Callable[[bytes], Awaitable[float | None]]) -> None:
        probability = await predict(a.pcm)
        self.core.end_of_turn(a.speaker_id, a.request, probability, self._clock())
        self._run()

    async def _transcribe(self, uid: str, stream: TranscriptionStream, q: asyncio.Queue[Any]) -> None:
        try:
            while (item := await q.get()) is not _FINISH:
                if item is _CANCEL:
                    await self._cancel_transcription(uid, stream)
                    return
                await stream.push(item)
            result = await stream.finish()
        except ProviderError as exc:
            log.warning("stt.failed", utterance=uid, reason=exc.reason)
            self.core.transcript_failed(uid, exc.reason, self._clock(), usage=exc.usage)
        except asyncio.CancelledError:  # overdue (the core gave up on it) or the bot is leaving
            with contextlib.suppress(Exception):
                await self._cancel_transcription(uid, stream)
            raise
        except Exception as exc:
            log.exception("stt.crashed", utterance=uid)
            self.core.transcript_failed(uid, f"unexpected error: {type(exc).__name__}", self._clock())
        else:
            self.core.transcript(
                uid,
                result.text,
                result.language,
                result.usage,
                self._clock(),
                final_after_s=result.final_after_s,
                confidence=result.confidence,
            )
        self._run()

    async def _cancel_transcription(self, uid: str, stream: TranscriptionStream) -> None:
        """What the service heard before the cancel was billed: it is counted (as late usage once the turn ended)."""
        self.core.transcription_usage(uid, await stream.cancel())
        self._run()

    async def _reply(self, a: act.RequestReply) -> None:
        usage = Usage()
        try:
            async for item in self.llm.reply(a.request):
                if isinstance(item, Usage):
                    usage += item
                else:
                    self.core.reply_delta(a.turn_id, item, self._clock())
                    self._run()
        except RateLimited as exc:
            self.core.add_usage(a.turn_id, usage)
            self.core.reply_failed(a.turn_id, exc.reason, self._clock(), rate_limited=True, retry_after=exc.retry_after)
        except ProviderError as exc:
            log.warning("llm.failed", turn=a.turn_id, reason=exc.reason)
            self.core.add_usage(a.turn_id, usage)
            self.core.reply_failed(a.turn_id, exc.reason, self._clock())
        except asyncio.CancelledError:
            self.core.add_usage(a.turn_id, usage)  # barge-in or merge: what was consumed so far is billed anyway
            raise
        except Exception as exc:
            log.exception("llm.crashed", turn=a.turn_id)
            self.core.add_usage(a.turn_id, usage)
            self.core.reply_failed(a.turn_id, f"unexpected error: {type(exc).__name__}", self._clock())
        else:
            self.core.reply_done(a.turn_id, usage, self._clock())
        finally:
            self._replies.pop(a.turn_id, None)
        self._run()

    async def _speak(self, turn_id: str, q: asyncio.Queue[tuple[int, str]]) -> None:
        """Synthesize a turn's sentences one after another, so their audio reaches the core in order.

        The task ends when its queue is empty; a later sentence of the same turn starts a new one.
        """
        try:
            while not q.empty():
                if not await self._speak_one(turn_id, *q.get_nowait()):
                    return
        finally:
            if self._speech.get(turn_id, (None,))[0] is q:
                del self._speech[turn_id]

    async def _speak_one(self, turn_id: str, index: int, text: str) -> bool:
        usage = Usage()
        resampler = None
        if self.tts.sample_rate != self._playback_rate:
            resampler = soxr.ResampleStream(self.tts.sample_rate, self._playback_rate, 1, dtype="int16")
        try:
            async for item in self.tts.synthesize(text):  # usage comes first: a stopped sentence is billed too
                if isinstance(item, Usage):
                    usage += item
                    continue
                pcm = item
                if resampler is not None:
                    pcm = resampler.resample_chunk(np.frombuffer(item, np.int16)).tobytes()
                self.core.speech_audio(turn_id, index, pcm, self._clock())
                self._run()
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, np.int16), last=True).tobytes()
                self.core.speech_audio(turn_id, index, tail, self._clock())
        except ProviderError as exc:
            log.warning("tts.failed", turn=turn_id, reason=exc.reason)
            self.core.add_usage(turn_id, usage)
            self.core.speech_failed(turn_id, index, exc.reason, self._clock())
            self._run()
            return False
        except asyncio.CancelledError:
            self.core.add_usage(turn_id, usage)
            raise
        except Exception as exc:
            log.exception("tts.crashed", turn=turn_id)
            self.core.add_usage(turn_id, usage)
            self.core.speech_failed(turn_id, index, f"unexpected error: {type(exc).__name__}", self._clock())
            self._run()
            return False
        self.core.speech_done(turn_id, index, usage, self._clock())
        self._run()
        return True

    async def _tick_loop(self) -> None:
        # Not asyncio.wait_for: on Python 3.11 it can swallow a cancel that lands just as the event is set (every
        # capture frame sets it), which left tickers of ended bots running. ``closed`` ends the loop regardless.
        while not self._closed:
            now = self._clock()
            due = self.core.next_deadline(now)
            delay = LOOK_ANYWAY_S if due is None else min(LOOK_ANYWAY_S, max(0.005, due - now))
            self._tick_at = now + delay
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self._closed:
                return
            self.core.tick(self._clock())
            self._perform_all(self.core.drain())

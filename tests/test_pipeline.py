"""The asyncio driver (``bots/pipeline.py``) with scripted providers: each provider call is a task whose result,
error or cancellation reaches the core, and closing stops every task and provider.

The test plays the page: voiced frames (a harmonic buzz) and silence on a fake clock, and it "renders" what Python
sends by reporting playback marks. Every wait is on the published event itself. A level detector stands in for
Silero (``LoudIsVoiced``): these tests are about the driver's tasks; the VAD has tests of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fakes.openai_audio import FakeOpenAIAudio, Fault
from levels import SILENT, VOICED, LoudIsVoiced
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bridge import protocol as bp
from luna_voice.conversation.addressing import AddressDetector, is_backchannel
from luna_voice.conversation.chunking import SentenceChunker
from luna_voice.conversation.core import Conversation, CoreConfig
from luna_voice.conversation.domain import ReplyRequest, SpokenReason, Usage
from luna_voice.conversation.events import CoreEvent, LateUsage, TurnChanged
from luna_voice.conversation.turns import TurnState
from luna_voice.hearing.vad import VadBatcher, shared_model
from luna_voice.providers.base import ProviderError, RateLimited, Transcript
from luna_voice.providers.openai_stt import OpenAISTT
from room_sounds import piper_speech

RATE = 48_000
FRAME_BYTES = RATE // 50 * 2


class Hang(Exception):
    """Script step: block until cancelled."""


class Gate(Exception):
    """Script step: wait until the test opens it."""

    def __init__(self) -> None:
        super().__init__("gate")
        self.open = asyncio.Event()


@dataclass
class Calls:
    """What the providers saw; ``until`` waits for it to change (no sleeps)."""

    hanging: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    spoken: list[tuple[str, SpokenReason]] = field(default_factory=list)
    late: list[LateUsage] = field(default_factory=list)  # usage of cancelled calls, after their turn ended
    requests: list[ReplyRequest] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # playback seqs the driver sent to the page, frame by frame
    messages: list[tuple[int, int]] = field(default_factory=list)  # ... and the messages they went in: (seq, bytes)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, where: list[Any], item: Any) -> None:
        where.append(item)
        self.changed.set()

    async def until(self, pred: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(5):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


async def _hang(calls: Calls, what: str) -> None:
    calls.note(calls.hanging, what)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        calls.note(calls.cancelled, what)
        raise


class ScriptedSTT:
    """Each utterance takes the next outcome: a text, or an exception to raise from ``finish``."""

    name = "scripted-stt"

    def __init__(self, calls: Calls, outcomes: list[str | Exception]) -> None:
        self.calls, self.outcomes = calls, outcomes

    def open_stream(self, *, prompt: str | None = None, keywords: Sequence[str] = ()) -> Any:
        outcome = self.outcomes.pop(0) if self.outcomes else ""
        calls = self.calls

        class Stream:
            async def push(self, pcm: bytes) -> None:
                pass

            async def finish(self) -> Transcript:
                if isinstance(outcome, Hang):
                    await _hang(calls, "stt")
                if isinstance(outcome, Exception):
                    raise outcome
                return Transcript(outcome, "en", Usage(stt_seconds=1.0))

            async def cancel(self) -> Usage:
                calls.note(calls.cancelled, "stt-stream")
                return Usage()

        return Stream()

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        self.calls.note(self.calls.closed, self.name)


class ScriptedLLM:
    """Each reply plays the next script: text deltas (and Usage items), then Usage; an exception item is raised."""

    name = "scripted-llm"

    def __init__(self, calls: Calls, scripts: list[list[str | Usage | Exception]]) -> None:
        self.calls, self.scripts = calls, scripts
        self.record_gate: asyncio.Event | None = None

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        self.calls.requests.append(request)
        script: list[str | Usage | Exception] = list(self.scripts.pop(0) if self.scripts else ["Hello there."])
        for item in script:
            if isinstance(item, Hang):
                await _hang(self.calls, "llm")
            if isinstance(item, Gate):
                await item.open.wait()
                continue
            if isinstance(item, Exception):
                raise item
            yield item
        yield Usage(llm_output_tokens=3)

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        if self.record_gate is not None:  # a slow app: the closing call takes a while
            self.calls.note(self.calls.hanging, "record")
            await self.record_gate.wait()
        self.calls.note(self.calls.spoken, (spoken_text, reason))

    async def aclose(self) -> None:
        self.calls.note(self.calls.closed, self.name)


class ScriptedTTS:
    """Every sentence becomes ``seconds`` of audio; ``fail`` raises instead, ``hang`` blocks after the audio."""

    name = "scripted-tts"
    sample_rate = RATE

    def __init__(self, calls: Calls, seconds: float = 0.4, fail: Exception | None = None, hang: bool = False) -> None:
        self.calls, self.seconds, self.fail, self.hang = calls, seconds, fail, hang

    async def warm(self) -> None:
        pass

    async def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]:
        if self.fail is not None:
            raise self.fail
        yield Usage(tts_characters=len(text))  # billed when sent, as Azure reports it
        yield bytes(2 * round(self.seconds * RATE))
        if self.hang:
            await _hang(self.calls, "tts")

    async def aclose(self) -> None:
        self.calls.note(self.calls.closed, self.name)


@dataclass
class Page:
    """Luna's page as the driver sees it: audio in, playback marks out, on a clock the test moves."""

    stt: ScriptedSTT
    llm: ScriptedLLM
    tts: ScriptedTTS
    now: float = 1000.0
    clears: int = 0
    turns: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_vad: Callable[[], Any] = LoudIsVoiced
    pipe: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        core = Conversation(
            CoreConfig(room_id="r", playback_rate=RATE),
            is_addressed=AddressDetector().is_addressed,
            is_backchannel=is_backchannel,
            new_chunker=SentenceChunker,
        )
        self.pipe = Pipeline(
            core,
            stt=self.stt,  # type: ignore[arg-type]
            llm=self.llm,  # type: ignore[arg-type]
            tts=self.tts,  # type: ignore[arg-type]
            send_audio=self._send,
            clear_playback=self._clear,
            publish=self._publish,
            clock=lambda: self.now,
            new_vad=self.new_vad,
        )

    @property
    def calls(self) -> Calls:
        return self.stt.calls

    @property
    def sent(self) -> list[int]:
        return self.calls.sent

    def _send(self, seq: int, pcm: bytes) -> None:
        """One playback message: its frames are seq, seq + 1, … (20 ms each but the last)."""
        self.calls.messages.append((seq, len(pcm)))
        for frame_seq in bp.playback_seqs(seq, pcm):
            self.calls.note(self.calls.sent, frame_seq)

    def _clear(self) -> None:
        self.clears += 1

    def _publish(self, event: CoreEvent) -> None:
        if isinstance(event, TurnChanged):
            self.turns[event.turn["id"]] = dict(event.turn)
            self.calls.changed.set()
        elif isinstance(event, LateUsage):
            self.calls.note(self.calls.late, event)

    def talk(self, seconds: float, frame: bytes) -> None:
        for _ in range(round(seconds / 0.02)):
            self.now += 0.02
            self.pipe.frame("a", self.now * 1000, frame)

    def say(self) -> None:
        self.talk(0.6, VOICED)
        self.talk(0.8, SILENT)  # webrtcvad hangs over ~120 ms; then 500 ms ends the utterance

    async def play_through(self) -> dict[str, Any]:
        """The page renders whatever arrives, in real time on the test's clock, until the turn is over."""
        async with asyncio.timeout(5):
            while not (done := [t for t in self.turns.values() if TurnState(t["state"]).terminal]):
                self.calls.changed.clear()
                self.now += 0.5
                if self.sent:
                    self.pipe.played(self.sent[-1], True)
                await self.calls.changed.wait()  # more audio, or the turn's end
        return done[0]

    async def turn(self, n: int, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while len(found := [t for t in self.turns.values() if pred(t)]) <= n:
                self.calls.changed.clear()
                await self.calls.changed.wait()
        return found[n]

    async def ended(self, n: int = 0) -> dict[str, Any]:
        return await self.turn(n, lambda t: TurnState(t["state"]).terminal, f"turn {n} to end")

    async def speaking(self) -> dict[str, Any]:
        return await self.turn(0, lambda t: t["state"] == "speaking", "Luna to speak")

    async def until_sent(self) -> None:
        await self.calls.until(lambda: bool(self.sent), "audio sent to the page")  # on the ticker's next beat


def page(stt: list[str | Exception], llm: list[list[str | Usage | Exception]] | None = None, **tts: Any) -> Page:
    calls = Calls()
    p = Page(ScriptedSTT(calls, stt), ScriptedLLM(calls, llm or []), ScriptedTTS(calls, **tts))
    p.pipe.start()
    p.pipe.participant_joined("a", "Alice")
    return p


async def test_a_turn_runs_through_every_provider_task():
    p = page(["What time is it?"], [["It is noon. ", "Enjoy lunch."]])
    p.say()
    await p.speaking()
    turn = await p.play_through()
    assert (turn["state"], turn["reply_text"], turn["spoken_text"]) == (
        "done",
        "It is noon. Enjoy lunch.",
        turn["reply_text"],
    )
    assert turn["usage"] == vars(Usage(stt_seconds=1.0, llm_output_tokens=3, tts_characters=23))
    assert p.calls.requests[0].text == "What time is it?"
    await p.calls.until(lambda: bool(p.calls.spoken), "what was said to reach the reply engine")
    assert p.calls.spoken == [("It is noon. Enjoy lunch.", SpokenReason.DONE)]
    await p.pipe.aclose()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ProviderError("stt", "timeout"), "stt: timeout"),
        (RuntimeError("boom"), "stt: unexpected error: RuntimeError"),  # a bug in an adapter is a failed turn too
    ],
)
async def test_a_transcription_error_fails_the_turn_and_the_next_one_is_heard(error, message):
    p = page([error, "Are you there?"])
    p.say()
    failed = await p.ended()
    assert (failed["state"], failed["error"]) == ("failed", message)
    p.say()
    await p.speaking()
    assert p.calls.requests[-1].text == "Are you there?"
    await p.pipe.aclose()


async def test_a_transcription_that_never_finishes_fails_the_turn_and_its_stream_is_cancelled():
    p = page([Hang(), "Are you there?"])
    p.say()
    await p.calls.until(lambda: "stt" in p.calls.hanging, "the transcription to start")
    p.now += 31  # past the default transcribe_timeout_s, on the core's clock; the ticker notices
    failed = await p.ended()
    assert (failed["state"], failed["error"]) == ("failed", "stt: timeout (no transcript within 30 s)")
    await p.calls.until(lambda: "stt" in p.calls.cancelled, "the stuck transcription to be cancelled")
    p.say()
    await p.speaking()
    assert p.calls.requests[-1].text == "Are you there?"
    await p.pipe.aclose()


async def test_a_failed_transcription_still_counts_the_audio_it_was_billed_for():
    p = page([ProviderError("stt", "connection lost", usage=Usage(stt_seconds=2.5))])
    p.say()
    failed = await p.ended()
    assert failed["state"] == "failed" and failed["usage"]["stt_seconds"] == 2.5
    await p.pipe.aclose()


KEY = "sk-test-0123456789abcdef"


def realtime_stt(p: Page, fake: FakeOpenAIAudio) -> None:
    """The real OpenAI realtime client against the local fake, in place of the scripted STT."""
    p.pipe.stt = OpenAISTT(api_key=KEY, base_url=fake.base_url, mode="realtime", finish_timeout_s=60)


async def test_a_transcription_given_up_on_by_the_timeout_counts_the_audio_it_was_billed_for():
    """LUNA_STT_TIMEOUT_S fires on a committed utterance the service never answers: it billed the audio anyway."""
    async with FakeOpenAIAudio(api_key=KEY) as fake:
        fake.fail_next(Fault(hang=True))
        p = page([])
        realtime_stt(p, fake)
        p.say()
        await fake.until(lambda: bool(fake.requests))  # committed, never answered
        p.now += 31  # past the default transcribe_timeout_s, on the core's clock
        failed = await p.ended()
        assert failed["error"] == "stt: timeout (no transcript within 30 s)"
        await p.calls.until(lambda: bool(p.calls.late), "the cancelled transcription's usage")
        [late] = p.calls.late
        billed = fake.requests[0].duration_s
        assert late.turn_id == failed["id"] and late.usage["stt_seconds"] == pytest.approx(billed)
        assert p.pipe.core.usage.stt_seconds == pytest.approx(billed) and billed > 1.0
        await p.pipe.aclose()


async def test_leaving_mid_utterance_counts_the_audio_the_service_already_heard():
    async with FakeOpenAIAudio(api_key=KEY) as fake:
        p = page([])
        realtime_stt(p, fake)
        p.talk(1.0, VOICED)  # still speaking when she leaves: no turn yet
        await fake.until(lambda: fake.appended >= 2 * round(0.8 * 24_000))
        async with asyncio.timeout(5):
            await p.pipe.aclose()
        [late] = p.calls.late
        assert late.turn_id is None and 0.8 <= late.usage["stt_seconds"] <= 1.5
        assert p.pipe.core.usage.stt_seconds == late.usage["stt_seconds"]
        assert not fake.requests  # never committed: billed for what it heard all the same


async def test_a_reply_error_mid_stream_keeps_what_was_already_said():
    gate = Gate()
    p = page(["Tell me a story."], [["Once upon a time. ", gate, ProviderError("llm", "stream cut")]])
    p.say()
    await p.speaking()
    gate.open.set()  # the stream breaks once the first sentence is being heard
    turn = await p.play_through()
    assert (turn["state"], turn["error"], turn["spoken_text"]) == ("failed", "llm: stream cut", "Once upon a time.")
    await p.pipe.aclose()


async def test_a_rate_limited_reply_holds_off_the_next_turn():
    p = page(["One?", "Two?"], [[RateLimited("llm", "429", retry_after=30)]])
    p.say()
    first = await p.ended()
    assert (first["state"], first["error"]) == ("failed", "llm: 429")
    p.say()
    second = await p.ended(1)
    assert second["state"] == "failed" and "retry in" in second["error"]
    assert len(p.calls.requests) == 1  # the engine was not asked again inside its Retry-After
    await p.pipe.aclose()


async def test_a_synthesis_error_fails_the_turn_without_audio():
    p = page(["Hello?"], fail=ProviderError("tts", "voice gone"))
    p.say()
    turn = await p.ended()
    assert (turn["state"], turn["error"], turn["spoken_text"]) == ("failed", "tts: voice gone", "")
    assert p.sent == []
    await p.pipe.aclose()


async def test_barge_in_cancels_the_reply_and_the_synthesis_tasks():
    reported = Usage(llm_input_tokens=100, llm_output_tokens=4)  # what the engine had reported when cut off
    p = page(["Talk for a while."], [["First part. ", reported, Hang()]], seconds=3.0, hang=True)
    p.say()
    await p.speaking()
    await p.until_sent()
    p.pipe.played(p.sent[0], False)  # the room is hearing her
    p.talk(0.7, VOICED)  # Alice talks over her for longer than barge_in_min_ms
    turn = await p.ended()
    assert turn["state"] == "interrupted" and p.clears == 1
    await p.calls.until(lambda: sorted(p.calls.cancelled) == ["llm", "tts"], "both tasks cancelled")
    await p.calls.until(lambda: bool(p.calls.spoken), "the cut-off reply to reach the reply engine")
    assert p.calls.spoken[0][1] is SpokenReason.INTERRUPTED  # history knows she was cut off
    # The cancelled reply and sentence were billed up to the cut: counted, and published after the turn ended.
    await p.calls.until(lambda: len(p.calls.late) == 2, "the cancelled calls' usage")
    late = Usage()
    for event in p.calls.late:
        late += Usage(**event.usage)
    assert late == Usage(llm_input_tokens=100, llm_output_tokens=4, tts_characters=len("First part."))
    assert p.pipe.core.usage.llm_input_tokens == 100
    await p.pipe.aclose()


async def test_close_cancels_every_task_and_closes_every_provider():
    p = page([Hang()])
    p.talk(0.6, VOICED)
    p.talk(0.8, SILENT)  # the utterance is with STT, which never answers
    await p.calls.until(lambda: p.calls.hanging == ["stt"], "STT to be working on the utterance")
    async with asyncio.timeout(5):
        await p.pipe.aclose()
    assert "stt" in p.calls.cancelled and "stt-stream" in p.calls.cancelled
    assert sorted(p.calls.closed) == ["scripted-llm", "scripted-stt", "scripted-tts"]
    assert not p.pipe.running


async def test_close_stops_the_ticker_while_frames_keep_waking_it():
    async with asyncio.timeout(20):  # a stuck ticker makes aclose() wait out its bound on every round
        survived = [await ticker_survives_close() for _ in range(100)]
    assert not any(survived)


async def ticker_survives_close() -> bool:
    p = page([])

    async def frames() -> None:
        while True:  # a busy room
            p.pipe.frame("a", 0.0, SILENT)
            await asyncio.sleep(0)  # one frame per loop step, as fast as the loop runs

    feeder = asyncio.create_task(frames())
    await asyncio.sleep(0)  # one step: the feeder is running when close starts
    await p.pipe.aclose()
    feeder.cancel()
    await asyncio.sleep(0)  # one step: a ticker the close missed would be woken and running again
    return p.pipe.running


async def test_close_lets_a_turns_closing_call_reach_the_engine():
    p = page(["What time is it?"], [["It is noon."]])
    p.llm.record_gate = asyncio.Event()
    p.say()
    assert (await p.play_through())["state"] == "done"
    await p.calls.until(lambda: "record" in p.calls.hanging, "the closing call to be on its way")
    closing = asyncio.create_task(p.pipe.aclose())  # the bot leaves right after the answer
    await asyncio.sleep(0)  # one step: close runs to its first await, having cancelled the pipeline's tasks
    p.llm.record_gate.set()
    await closing
    assert p.calls.spoken == [("It is noon.", SpokenReason.DONE)]  # cancelled with the rest, it was lost


async def test_closing_mid_answer_closes_the_turn_with_what_the_room_heard():
    """The bot leaves while Luna speaks: the turn's one closing call still reaches the engine, as interrupted with
    the played part only (on main the answer stayed in the app's history as if heard in full)."""
    p = page(["Tell me a story."], [["Once upon a time. ", Hang()]], seconds=3.0)
    p.say()
    await p.speaking()
    await p.until_sent()
    p.now += 1.0  # a second on: the ticker releases more audio, and the room hears it
    await p.calls.until(lambda: len(p.sent) >= 50, "a second of audio sent")
    p.pipe.played(p.sent[49], False)
    p.pipe.stay_ended()  # what the lifecycle does as the stay ends
    async with asyncio.timeout(5):
        await p.pipe.aclose()
    (spoken,) = p.calls.spoken
    assert spoken[1] is SpokenReason.INTERRUPTED and 0 < len(spoken[0]) < len("Once upon a time.")
    assert p.clears == 1  # she stops talking at once, before the page leaves
    assert "llm" in p.calls.cancelled


async def test_closing_while_thinking_closes_the_turn_with_nothing_heard():
    p = page(["What is the weather?"], [[Hang()]])
    p.say()
    await p.calls.until(lambda: "llm" in p.calls.hanging, "the reply to be on its way")
    async with asyncio.timeout(5):
        await p.pipe.aclose()  # closing alone is enough (the bench, or a driver without a lifecycle)
    assert p.calls.spoken == [("", SpokenReason.INTERRUPTED)]


async def test_capture_frames_wake_the_ticker_only_for_work_due_sooner():
    """Each capture frame used to wake the ticker (50 a second per speaker), which doubled the event loop's passes
    for nothing: in silence the core has no deadline before the ticker's own next look."""
    p = page([])
    ticks = 0
    tick = p.pipe.core.tick
    passed = asyncio.Event()

    def counting_tick(now: float) -> None:
        nonlocal ticks
        ticks += 1
        passed.set()
        tick(now)

    p.pipe.core.tick = counting_tick  # type: ignore[method-assign]
    async with asyncio.timeout(5):
        await passed.wait()  # a ticker pass: then it sleeps up to 100 ms
    start, before = time.monotonic(), ticks
    for _ in range(25):
        p.pipe.frame("a", p.now * 1000, SILENT)
        await asyncio.sleep(0)
    elapsed = time.monotonic() - start
    await p.pipe.aclose()
    assert ticks - before <= 1 + int(elapsed / 0.1), (ticks - before, elapsed)


async def test_a_speaker_who_leaves_while_silero_still_scores_their_words_is_never_heard_after():
    """The real Silero, batched off the loop: Alice's question is fed, and she leaves while her first window is
    being scored (the model waits for a gate) and the rest are queued. Nothing of hers reaches the core after she
    left, so no utterance and no transcription; Bob, scored after her, is still heard."""
    model, gate = shared_model(), threading.Event()

    def run_after_gate(*args: Any) -> Any:
        gate.wait(10)
        return model.session.run(*args)

    batcher = VadBatcher(load=lambda: SimpleNamespace(session=SimpleNamespace(run=run_after_gate)))
    calls = Calls()
    question = "Luna, what time is it?"
    scripted = ScriptedSTT(calls, [question]), ScriptedLLM(calls, []), ScriptedTTS(calls)
    p = Page(*scripted, new_vad=lambda: batcher.stream(0.5))
    p.pipe.start()
    p.pipe.participant_joined("a", "Alice")
    p.pipe.participant_joined("b", "Bob")
    heard: list[str] = []
    bob = asyncio.Event()
    core_audio = p.pipe.core.audio

    def audio(pid: str, *args: Any, **kw: Any) -> None:  # the core as it was, noting who it hears
        core_audio(pid, *args, **kw)
        heard.append(pid)
        if heard.count("b") == 3:
            bob.set()

    p.pipe.core.audio = audio  # type: ignore[method-assign]
    pcm = (np.clip(piper_speech(question), -1, 1) * 32767).astype("<i2").tobytes()
    for i in range(0, len(pcm) - 640 + 1, 640):
        p.now += 0.02
        p.pipe.frame("a", p.now * 1000, pcm[i : i + 640])
    p.pipe.participant_left("a")
    before = len(heard)  # her first frame (no window yet) only
    gate.set()
    for _ in range(3):
        p.now += 0.02
        p.pipe.frame("b", p.now * 1000, SILENT)
    async with asyncio.timeout(10):
        await bob.wait()
    assert heard.count("a") == before < len(pcm) // 640  # none of hers after she left ...
    assert heard[before:] == ["b", "b", "b"]  # ... while Bob, scored after her, is heard
    assert p.stt.outcomes == [question]  # never transcribed
    await p.pipe.aclose()


async def test_the_ticker_does_not_pass_while_someone_speaks_and_nothing_is_due():
    """While Alice spoke the ticker passed every 20 ms (the core asked for the clock every frame, so each frame woke
    it), each pass a few wake-ups of the event loop; her frames need it only if they stop, so it sleeps till then."""
    p = page(["Hello?"])
    wakes = 0
    wake = p.pipe._wake.set

    def counting_wake() -> None:
        nonlocal wakes
        wakes += 1
        wake()

    looked = asyncio.Event()
    tick = p.pipe.core.tick

    def noting_tick(now: float) -> None:
        tick(now)
        looked.set()  # the ticker re-arms its timer before it next awaits, so before this test runs again

    p.pipe._wake.set = counting_wake  # type: ignore[method-assign]
    p.pipe.core.tick = noting_tick  # type: ignore[method-assign]
    p.talk(0.2, VOICED)  # an utterance is open
    looked.clear()
    async with asyncio.timeout(5):
        await looked.wait()  # the ticker looked once at the open utterance
    before = wakes
    for _ in range(20):  # 0.4 s more of her voice, a frame every 20 ms as the page sends them
        p.now += 0.02
        p.pipe.frame("a", p.now * 1000, VOICED)
    woken = wakes - before
    p.now += 0.6  # her frames stop: the timer armed for the stall ends the utterance
    await p.turn(0, lambda t: t["end"]["reason"] == "stalled", "the utterance to end as stalled")
    await p.pipe.aclose()
    assert woken == 0, woken  # 20 before: one per frame


async def test_frames_released_together_leave_in_one_message_and_keep_their_seqs():
    """Each 20 ms frame was a bridge message of its own (a WebSocket message, a hop through the page's worker and a
    postMessage to the worklet, 50 a second while Luna speaks); the frames of one release now share a message, and
    the page still marks each frame's seq (the message's seq is its first frame's)."""
    p = page(["What time is it?"], [["It is noon."]], seconds=2.01)  # a tail shorter than a frame ends the sentence
    p.say()
    turn = await p.play_through()
    assert turn["state"] == "done"
    messages = p.calls.messages
    assert p.sent == list(range(1, 102))  # every frame of the 2.01 s, in order, none twice
    assert all(n <= 10 * FRAME_BYTES for _seq, n in messages) and len(messages) <= len(p.sent) / 4, messages
    assert messages[-1][1] % FRAME_BYTES == 0.01 * RATE * 2  # the short tail ends its message
    await p.pipe.aclose()

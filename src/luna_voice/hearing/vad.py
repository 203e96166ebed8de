"""Silero VAD, one recurrent state per speaker, one ONNX session and one inference thread per process.

The model and its session come from the ``pipecat-ai`` wheel (``SileroOnnxModel`` on the bundled
``silero_vad.onnx``, one intra-op thread): 512-sample windows at 16 kHz. pipecat's runner keeps one state for its
whole batch, and its ``SileroVADAnalyzer`` follows one stream; a room has many speakers, so each speaker keeps its
own state and context here, and one person's noise floor never leaks into another's decisions.

Live bots feed ``SpeakerStream``s: a frame's windows go to the process's ``VadBatcher``, whose thread runs the
pending windows of every speaker of every bot in one onnxruntime call (the model takes a batch dimension for
input and state) with the GIL released, so ~30 inferences a second per speaker no longer run on the event loop's
thread. Verdicts come back to the loop in frame order per speaker. ``SpeakerVad`` runs the same windows on the
caller's thread, for offline replay (tests, the hearing bench).

Silence costs no inference: a window that is digitally silent (a muted or quiet participant's track, which
WebRTC still decodes 50 times a second) after a window the model already called non-speech is scored 0 without
the model. The speaker's state becomes the one the model reaches after a few windows of silence from a fresh
start (computed once), so the next word's onset is found on the same window as without skipping, where a fresh
state would find it a frame late about half the time. Most people in a meeting are silent most of the time, so
most windows are skipped; the model's release after the last word is never cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import numpy as np
import structlog

from luna_voice.hearing import _pipecat  # noqa: F401  (quiet pipecat before importing it)
from luna_voice.providers.offline._shared import load_once

log = structlog.get_logger(__name__)

RATE = 16_000
WINDOW = 512  # samples per model call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees before each window (as pipecat's runner does)
# Like pipecat's analyzer: reset the recurrent state now and then during clear non-speech, because long noise or
# music shifts it so the model under-reports the speech that follows.
_RESET_AFTER_WINDOWS = round(2.0 * RATE / WINDOW)
_RESET_MAX_P = 0.1
_RESET_QUIET_WINDOWS = 5
# A window whose loudest sample is under −60 dBFS: the model scores it ~0 whatever came before.
_SILENT_PEAK = 10 ** (-60 / 20)
_PRIMING_WINDOWS = 4  # silent windows from a fresh state to the one a skipped speaker resumes from


@dataclass(frozen=True)
class Voice:
    """One frame's verdict: voiced or not, and the speech probability of the latest window behind it."""

    speech: bool
    probability: float


class VoiceDetector(Protocol):
    def feed(self, pcm: bytes, heard: Callable[[Voice], None]) -> None:
        """One 20 ms frame of one speaker; ``heard`` gets its verdict, now or later, in frame order."""
        ...

    def close(self) -> None:
        """The speaker left: free the state; verdicts still on their way are dropped."""
        ...


def _load():  # type: ignore[no-untyped-def]
    from pipecat.audio.vad.silero import SileroOnnxModel

    path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
    return SileroOnnxModel(str(path), force_onnx_cpu=True)


shared_model = load_once(_load)


class _State:
    """One speaker's recurrent state and context, and the bookkeeping for its periodic reset."""

    def __init__(self) -> None:
        self.reset()
        self.since_reset = 0
        self.quiet = 0

    def reset(self) -> None:
        self.rnn = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)

    def skips(self, window: np.ndarray, last: float) -> bool:
        """True (and the state after silence) for a silent window after a non-speech one: no inference needed."""
        if last >= _RESET_MAX_P or float(np.max(np.abs(window))) >= _SILENT_PEAK:
            return False
        self.rnn, self.context = _after_silence(), np.zeros((1, CONTEXT), np.float32)
        return True

    def advanced(self, probability: float) -> None:
        self.since_reset += 1
        self.quiet = self.quiet + 1 if probability < _RESET_MAX_P else 0
        if self.since_reset >= _RESET_AFTER_WINDOWS and self.quiet >= _RESET_QUIET_WINDOWS:
            self.reset()
            self.since_reset = 0


def infer(model: Any, states: list[_State], windows: list[np.ndarray]) -> list[float]:
    """One onnxruntime call for one window of each speaker; each state moves on by its own window."""
    x = np.concatenate([np.concatenate([s.context for s in states]), np.stack(windows)], axis=1)
    rnn = np.concatenate([s.rnn for s in states], axis=1)
    out, rnn = model.session.run(None, {"input": x, "state": rnn, "sr": np.array(RATE, np.int64)})
    probabilities = [float(p) for p in out[:, 0]]
    for i, (state, p) in enumerate(zip(states, probabilities, strict=True)):
        state.rnn, state.context = rnn[:, i : i + 1], x[i : i + 1, -CONTEXT:]
        state.advanced(p)
    return probabilities


@load_once
def _after_silence() -> np.ndarray:
    state, silent = _State(), np.zeros(WINDOW, np.float32)
    for _ in range(_PRIMING_WINDOWS):
        infer(shared_model(), [state], [silent])
    return state.rnn


class _Windows:
    """Cuts a speaker's 20 ms frames into the model's 32 ms windows."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def cut(self, pcm: bytes) -> list[np.ndarray]:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate((self._pending, audio))
        n = len(self._pending) // WINDOW
        windows = [self._pending[i * WINDOW : (i + 1) * WINDOW] for i in range(n)]
        self._pending = self._pending[n * WINDOW :]
        return windows


class SpeakerVad:
    """One speaker's decisions on the caller's thread: offline replay, where time is the audio's own."""

    def __init__(self, threshold: float, *, gate: bool = True) -> None:
        self.threshold = threshold
        self.gate = gate  # skip silent windows, as the batcher's streams do
        self.probability = 0.0  # the latest window's speech probability
        self._model = shared_model()
        self._state = _State()
        self._windows = _Windows()

    def is_speech(self, pcm: bytes) -> bool:
        """Feed one frame; True if the most recent complete window is speech."""
        for window in self._windows.cut(pcm):
            if self.gate and self._state.skips(window, self.probability):
                self.probability = 0.0
            else:
                (self.probability,) = infer(self._model, [self._state], [window])
        return self.probability >= self.threshold

    def feed(self, pcm: bytes, heard: Callable[[Voice], None]) -> None:
        heard(Voice(self.is_speech(pcm), self.probability))

    def close(self) -> None:
        pass


class SpeakerStream:
    """One live speaker: windows go to the batcher; verdicts come back on the loop's thread in frame order."""

    def __init__(self, batcher: VadBatcher, threshold: float) -> None:
        self.threshold = threshold
        self.skipped = 0  # silent windows scored without the model
        self.state = _State()  # touched only by the batcher's thread
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._batcher = batcher
        self._windows = _Windows()
        self._cut = 0  # windows sent to the batcher
        self._done = 0  # ... and scored
        self._probability = 0.0  # the latest scored window's
        self._waiting: deque[tuple[int, Callable[[Voice], None]]] = deque()  # frames waiting for their window

    def feed(self, pcm: bytes, heard: Callable[[Voice], None]) -> None:
        windows = self._windows.cut(pcm)
        # Skipping is decided here, on the loop, only while the batcher holds none of this speaker's windows (so
        # its state is ours to reset, and no window can overtake an earlier one).
        while (
            windows
            and self._done == self._cut
            and self._batcher.gate
            and self.state.skips(windows[0], self._probability)
        ):
            windows.pop(0)
            self._cut += 1
            self._done += 1
            self._probability = 0.0
            self.skipped += 1
        self._cut += len(windows)
        if windows:
            self._batcher.submit(self, windows)
        if self._waiting or self._done < self._cut:
            self._waiting.append((self._cut, heard))
        else:
            heard(self._voice())

    def close(self) -> None:
        self.closed = True
        self._waiting.clear()
        self._batcher.forget(self)

    def scored(self, probability: float) -> None:
        """The batcher scored this speaker's next window (on the loop's thread): release the frames it decides."""
        if self.closed:
            return
        self._done += 1
        self._probability = probability
        while self._waiting and self._waiting[0][0] <= self._done:
            self._waiting.popleft()[1](self._voice())

    def _voice(self) -> Voice:
        return Voice(self._probability >= self.threshold, self._probability)


class VadBatcher:
    """One thread per process: all pending windows of all speakers (one per speaker per call, since each window
    needs the state its speaker's previous one left) in one onnxruntime call."""

    def __init__(self, load: Callable[[], Any] = shared_model, *, gate: bool = True) -> None:
        self._load = load
        self.gate = gate  # skip silent windows (False: every window goes to the model, for the bench's "before")
        self._cond = threading.Condition()
        self._pending: dict[SpeakerStream, deque[np.ndarray]] = {}
        self._thread: threading.Thread | None = None
        self.problem: str | None = None  # why the model cannot score (then every frame is unvoiced), if it cannot
        self.calls = 0
        self.windows = 0

    def stream(self, threshold: float) -> SpeakerStream:
        return SpeakerStream(self, threshold)

    def submit(self, stream: SpeakerStream, windows: list[np.ndarray]) -> None:
        with self._cond:
            self._pending.setdefault(stream, deque()).extend(windows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="silero-vad", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, stream: SpeakerStream) -> None:
        with self._cond:
            self._pending.pop(stream, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = [(stream, q.popleft()) for stream, q in self._pending.items()]
                self._pending = {stream: q for stream, q in self._pending.items() if q}
            probabilities = self._score([s for s, _ in batch], [w for _, w in batch])
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[SpeakerStream, float]]] = {}
            for (stream, _), p in zip(batch, probabilities, strict=True):
                by_loop.setdefault(stream.loop, []).append((stream, p))
            for loop, scored in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting for these
                    loop.call_soon_threadsafe(_deliver, scored)

    def _score(self, streams: list[SpeakerStream], windows: list[np.ndarray]) -> list[float]:
        try:
            probabilities = infer(self._load(), [s.state for s in streams], windows)
        except Exception as exc:  # every frame unvoiced, in order, until the model answers again; never a crash
            if self.problem is None:
                self.problem = f"Silero VAD failed: {type(exc).__name__}: {exc}"
                log.error("vad.failed", error=self.problem, speakers=len(streams))
            return [0.0] * len(streams)
        if self.problem is not None:
            log.info("vad.recovered", was=self.problem)
            self.problem = None
        self.calls += 1
        self.windows += len(windows)
        return probabilities


def _deliver(scored: list[tuple[SpeakerStream, float]]) -> None:
    for stream, p in scored:
        stream.scored(p)


shared_batcher = load_once(VadBatcher)

"""``python -m bench profile``: where one bot's CPU and memory go, and what each candidate cut saves.

One person in a local room asks Luna a question every 6 s and she answers with 2.5 s of clicks on a tone (the
scale scenario's load for one bot). Each variant is a service of its own in this process with its own Chromium,
and the variants take turns (A B A B …), so they are measured in the same run under the same conditions. Over a
steady window the profile reads, per thread, the CPU time of Luna's Chromium processes (the kernel's
``/proc/<pid>/task/<tid>/schedstat``, named by ``comm``: Chromium names its threads), of her Playwright driver
and of this process (the service's event loop); then, in a second window, cProfile on the event loop's thread
(timer: that thread's CPU clock) splits the service's share by what the code does. Memory: PSS of Luna's
Chromium processes. Audio is checked in the same windows: the frames Python received from the person, and at
the person's ear the replies, their underruns and their Python → ear latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import functools
import json
import os
import pstats
import re
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import BrowserContext, Route
from threadpoolctl import threadpool_limits

from bench import signals as sg
from bench.harness import Rig, _descendants, _parent, _read, hears, memory_mb, until
from bench.instant import ReplyAudio
from bench.scenarios import SETTLE_S, _answered, _click_latency, _gaps_at_ear, _loop, _reply, _wav, ms
from luna_voice.bots import pipeline, session
from luna_voice.bots.host import CHROMIUM_ARGS
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bots.session import PageSession
from luna_voice.bridge import protocol as bp
from luna_voice.config import Settings
from luna_voice.conversation.core import Conversation
from luna_voice.conversation.pacing import Pacer
from luna_voice.hearing import turn_model
from luna_voice.hearing.vad import SpeakerVad, VadBatcher, Voice, VoiceDetector
from luna_voice.providers.offline._shared import load_once

PERIOD_S = 6.0  # the person asks this often
REPLY_S = 2.5
SAY_EVERY_S = 12.0  # with a muted listener: the app has Luna say something this often (silent 80 % of the time)


@dataclass(frozen=True)
class Variant:
    """Luna as of one step of the cuts: Chromium's flags, and page modules served as they were before a cut."""

    name: str
    chromium_args: list[str]
    old_modules: Callable[[], dict[str, str]] | None = None  # page path → the module's old source
    vad_on_loop: bool = False  # Silero per speaker on the event loop's thread, as before the batcher
    vad_gate: bool = True  # silent windows skip the model (False: every window is scored, as before the gate)
    served: set[str] = field(default_factory=set)  # old modules the page asked for: a route missed is an error
    muted_guest: bool = False  # a second person in the room, muted all along (most people in a meeting are)
    blas_threads: int = turn_model.BLAS_THREADS  # numpy's OpenBLAS pool (its default before: one per core)
    # The core's clock wanted every 20 ms while anyone spoke, and Luna's lead refilled a frame at a time (before).
    frame_wakeups: bool = False
    bridge_deflate: bool = False  # the bridge's WebSocket with permessage-deflate (as before)
    playback_frames: int = pipeline.PLAYBACK_FRAMES_PER_MESSAGE  # per bridge message (1 before; old pages need it)

    @contextlib.contextmanager
    def python(self) -> Iterator[None]:
        """The Python side as of this rung, while its service runs (one process: patched for its window only)."""
        saved = Conversation.next_deadline, Pacer.__init__, session.BRIDGE_DEFLATE, pipeline.PLAYBACK_FRAMES_PER_MESSAGE
        deadline, pacer_init, _, _ = saved

        def every_frame(core: Conversation, now: float) -> float | None:
            due = deadline(core, now)
            if any(ep.speaking for ep in core._endpointers.values()):
                due = min(due or now + 1, now + core.cfg.endpoint.frame_ms / 1000)
            return due

        def frame_at_a_time(pacer: Pacer[Any], **kw: Any) -> None:
            pacer_init(pacer, **{**kw, "refill_s": 0.0})

        if self.frame_wakeups:
            Conversation.next_deadline, Pacer.__init__ = every_frame, frame_at_a_time  # type: ignore[method-assign]
        session.BRIDGE_DEFLATE, pipeline.PLAYBACK_FRAMES_PER_MESSAGE = self.bridge_deflate, self.playback_frames
        try:
            yield
        finally:
            Conversation.next_deadline, Pacer.__init__, session.BRIDGE_DEFLATE, pipeline.PLAYBACK_FRAMES_PER_MESSAGE = (
                saved  # type: ignore[assignment]
            )

    listener_muted: bool = False  # Carol listens muted (nobody is captured); Luna says a reply every SAY_EVERY_S

    async def prepare(self, context: BrowserContext, _url: str) -> None:
        for module, body in self.old_modules().items() if self.old_modules else ():
            await context.route(f"**/bot/{module}", _serve(body, module, self.served))

    def host(self) -> dict[str, Any]:
        return {"args": self.chromium_args, "prepare_context": self.prepare}

    def new_vad(self) -> Callable[[], VoiceDetector] | None:
        threshold = Settings.model_fields["vad_threshold"].default
        if self.vad_on_loop:
            return lambda: SpeakerVad(threshold, gate=self.vad_gate)
        return None if self.vad_gate else lambda: ungated_batcher().stream(threshold)


ungated_batcher = load_once(lambda: VadBatcher(gate=False))


def _serve(body: str, module: str, served: set[str]) -> Callable[[Route], Awaitable[None]]:
    async def serve(route: Route) -> None:  # one parameter: Playwright passes the request to a second
        served.add(module)
        await route.fulfill(content_type="text/javascript", body=body)

    return serve


# The page before its worklets had channels of their own to the socket worker (every capture frame and every
# playback message crossed its main thread), read from git history when a rung needs it: no copy is committed.
OLD_PAGE_COMMIT = "6ca20b4"
_REPO = Path(__file__).resolve().parent.parent
# Playwright's routes see neither a worklet's module request nor a shared worker's script request, so the old
# bot.js loads its worklets, and the old worker-socket.js its worker, from blobs of what the page fetched.
_WORKLET_BLOB = """async function oldWorklet(name) {
  const source = await (await fetch(new URL(`./audio/relayed-${name}`, import.meta.url))).text();
  const protocol = JSON.stringify(new URL("./protocol.js", import.meta.url).href);
  return URL.createObjectURL(new Blob([source.replace('"../protocol.js"', protocol)], { type: "text/javascript" }));
}
"""


def _git_show(path: str, commit: str = OLD_PAGE_COMMIT) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise SystemExit(f"profile: the old page needs git history ({commit}:{path}): {detail}") from None
    return out.stdout


def _patched(source: str, old: str, new: str) -> str:
    """``source`` with ``old`` replaced once; the old module must still read as expected, or the rung would lie."""
    if source.count(old) != 1:
        raise SystemExit(f"profile: the old page module no longer has {old!r} once")
    return source.replace(old, new)


@functools.cache
def relayed() -> dict[str, str]:
    """Page path → source of the relaying page's modules (bot.js, its worklets, the socket and its worker)."""
    bot = _git_show("bot_page/bot.js")
    for name in ("capture-worklet.js", "playback-worklet.js"):
        line = f'await ctx.audioWorklet.addModule(new URL("./audio/{name}", import.meta.url));'
        bot = _patched(bot, line, f'await ctx.audioWorklet.addModule(await oldWorklet("{name}"));')
    bot = _patched(bot, "// --- audio graph", _WORKLET_BLOB + "\n// --- audio graph")
    worker = json.dumps(_git_show("bot_page/lib/socket-worker.js"))
    socket = _patched(
        _git_show("bot_page/lib/worker-socket.js"),
        'new SharedWorker(new URL("./socket-worker.js", import.meta.url), { name })',
        f'new SharedWorker(URL.createObjectURL(new Blob([{worker}], {{ type: "text/javascript" }})), {{ name }})',
    )
    return {
        "bot.js": bot,
        "audio/relayed-capture-worklet.js": _git_show("bot_page/audio/capture-worklet.js"),
        "audio/relayed-playback-worklet.js": _git_show("bot_page/audio/playback-worklet.js"),
        "lib/worker-socket.js": socket,
    }


def page_socket() -> dict[str, str]:
    """... and before that, the bridge WebSocket on the page itself, where Playwright reports each frame."""
    return {
        **relayed(),
        "lib/worker-socket.js": "export class WorkerSocket extends WebSocket { constructor(url) { super(url); } }",
    }


# Pages that captured people in WebAudio (a muted media element and a capture worklet each, their 16 kHz PCM sent
# as frame kind 1, since retired): with her voice in a playback worklet too, and then with her voice from a worker.
WEBAUDIO_VOICE_COMMIT = "473cc20"
WEBAUDIO_CAPTURE_COMMIT = "7271a9d"


@functools.cache
def webaudio_page(commit: str) -> dict[str, str]:
    """Page path → source of the modules of the page at ``commit`` that differ today: its bot.js with its worklets
    from blobs, its audio sleep, and its socket worker, loaded from a blob (routes miss it), with the wire
    constants of its own day inline: the current protocol.js has no kind 1."""
    show = functools.partial(_git_show, commit=commit)
    bot = show("bot_page/bot.js")
    worklets = {}
    for name in ("capture-worklet.js", "playback-worklet.js"):
        line = f'await ctx.audioWorklet.addModule(new URL("./audio/{name}", import.meta.url));'
        if line in bot:
            bot = _patched(bot, line, f'await ctx.audioWorklet.addModule(await oldWorklet("{name}"));')
            worklets[f"audio/webaudio-{name}"] = show(f"bot_page/audio/{name}")
    anchor = "// --- audio graph" if "// --- audio graph" in bot else "// --- capture graph"
    bot = _patched(bot, anchor, _WORKLET_BLOB.replace("relayed-", "webaudio-") + "\n" + anchor)
    wire = re.findall(r"export const (\w+) = (.+);", show("bot_page/protocol.js"))
    inline = "const wire = {" + ", ".join(f"{name}: {value}" for name, value in wire) + "};"
    worker = json.dumps(
        _patched(show("bot_page/lib/socket-worker.js"), 'import * as wire from "../protocol.js";', inline)
    )
    socket = _patched(
        show("bot_page/lib/worker-socket.js"),
        'new SharedWorker(new URL("./socket-worker.js", import.meta.url), { name, type: "module" })',
        f'new SharedWorker(URL.createObjectURL(new Blob([{worker}], {{ type: "text/javascript" }})), {{ name }})',
    )
    return {
        **worklets,
        "bot.js": bot,
        "lib/worker-socket.js": socket,
        "lib/audio-sleep.js": show("bot_page/lib/audio-sleep.js"),
    }


def webaudio_voice() -> dict[str, str]:
    return webaudio_page(WEBAUDIO_VOICE_COMMIT)


def webaudio_capture() -> dict[str, str]:
    return webaudio_page(WEBAUDIO_CAPTURE_COMMIT)


def hear_pcm_capture() -> None:
    """The rungs that serve an old page send 16 kHz PCM (kind 1, retired from the wire): this process's service
    takes it straight to the pipeline, as the service did then. Only the profile does this; the encoded page's
    frames (kind 3) go the shipped way."""
    if getattr(bp.decode_audio, "pcm_too", False):
        return
    decode, on_audio = bp.decode_audio, PageSession._on_audio

    def decode_audio(data: bytes) -> bp.AudioFrame:
        if len(data) > bp.HEADER.size and data[1] == 1:
            _version, kind, participant, seq, ts = bp.HEADER.unpack_from(data)
            return bp.AudioFrame(kind, participant, seq, ts, data[bp.HEADER.size :])
        return decode(data)

    def _on_audio(self: PageSession, frame: bp.AudioFrame) -> None:
        if frame.kind != 1:
            return on_audio(self, frame)
        if (pid := self._pids.get(frame.participant)) is not None:
            self._feed(pid, [(frame.timestamp_ms, frame.payload)])
        return None

    decode_audio.pcm_too = True  # type: ignore[attr-defined]
    bp.decode_audio = decode_audio  # type: ignore[assignment]
    PageSession._on_audio = _on_audio  # type: ignore[method-assign]


def unmuted() -> dict[str, str]:
    """The local room's adapter without the microphone state: every person captured, muted or not. (The static
    route ignores the query, which keeps this route from serving itself.)"""
    return {
        "rooms/local.js": 'import { createRoom as live } from "./local.js?as-shipped";\n'
        "export const createRoom = (config, handlers) => live(config, { ...handlers, audioTrack: (t) =>"
        " t.track && handlers.audioTrack({ ...t, enabled: true }) });\n"
    }


def awake() -> dict[str, str]:
    """Luna's page (her voice in WebAudio) with her AudioContext running all the time, as before it slept while she
    is silent."""
    sleepless = "export class AudioSleep { speaking() {} wake() {} update() {} close() {} }\n"
    return {**webaudio_voice(), "lib/audio-sleep.js": sleepless}


# Chromium's flags before the cuts: one --disable-features of our own, which replaced Playwright's list and left
# each bot's context an omnibox WebUI renderer and the browser a spare renderer.
OLD_CHROMIUM_ARGS = [
    "--disable-features=WebRtcHideLocalIpsWithMdns" if a.startswith("--disable-features=") else a for a in CHROMIUM_ARGS
]

# Each step adds one cut, so the profile shows what each saves; the bench's --compare runs the first and last.
# Flag sets measured and dropped are listed in bench/README.md ("Profile").
CORES = os.cpu_count() or 1
_OLD = {"frame_wakeups": True, "bridge_deflate": True, "playback_frames": 1}
VARIANTS = [
    Variant("before", OLD_CHROMIUM_ARGS, page_socket, vad_on_loop=True, vad_gate=False, blas_threads=CORES, **_OLD),
    Variant("+worker socket", OLD_CHROMIUM_ARGS, relayed, vad_on_loop=True, vad_gate=False, blas_threads=CORES, **_OLD),
    Variant("+one renderer", CHROMIUM_ARGS, relayed, vad_on_loop=True, vad_gate=False, blas_threads=CORES, **_OLD),
    Variant("+batched VAD", CHROMIUM_ARGS, relayed, vad_gate=False, blas_threads=CORES, **_OLD),  # Silero off the loop
    Variant("+silence gate", CHROMIUM_ARGS, relayed, blas_threads=CORES, **_OLD),  # silent windows skip the model
    # audio off the page's main thread
    Variant("+direct worklets", CHROMIUM_ARGS, webaudio_voice, blas_threads=CORES, **_OLD),
    # Smart Turn's matmuls without OpenBLAS's spinning worker
    Variant("+one BLAS thread", CHROMIUM_ARGS, webaudio_voice, **_OLD),
    # the core asks for the clock only when something is due; Luna's lead is topped up 100 ms at a time
    Variant("+fewer wake-ups", CHROMIUM_ARGS, webaudio_voice, bridge_deflate=True, playback_frames=1),
    # no permessage-deflate on the bridge
    Variant("+bridge without deflate", CHROMIUM_ARGS, webaudio_voice, playback_frames=1),
    Variant("+larger playback messages", CHROMIUM_ARGS, webaudio_voice),  # a refill's frames in one bridge message
    Variant("+voice from a worker", CHROMIUM_ARGS, webaudio_capture),  # her track written by a worker
    # each person's Opus packets forwarded as received, decoded in Python: no AudioContext renders anything
    Variant("+encoded capture (after)", CHROMIUM_ARGS),
    # the same Luna with a muted second person: captured as before, then dropped while muted
    Variant("muted guest captured", CHROMIUM_ARGS, lambda: {**webaudio_voice(), **unmuted()}, muted_guest=True),
    Variant("+muted guest dropped", CHROMIUM_ARGS, webaudio_voice, muted_guest=True),
    # a muted listener (nobody captured) and Luna speaking now and then: her audio awake all along, then asleep
    # while she is silent, then her voice from a worker, then the encoded capture (what ships)
    Variant("muted listener, audio awake", CHROMIUM_ARGS, awake, listener_muted=True),
    Variant("+audio sleeps", CHROMIUM_ARGS, webaudio_voice, listener_muted=True),
    Variant("+voice from a worker, muted listener", CHROMIUM_ARGS, webaudio_capture, listener_muted=True),
    Variant("+encoded capture, muted listener (after)", CHROMIUM_ARGS, listener_muted=True),
]


def chosen(only: str | None) -> list[Variant]:
    """The variants whose names contain one of ``only``'s comma-separated words (all without it)."""
    words = [w.strip().lower() for w in only.split(",")] if only else []
    picked = [v for v in VARIANTS if not words or any(w in v.name.lower() for w in words)]
    if not picked:
        raise SystemExit(f"no profile variant matches {only!r}: {[v.name for v in VARIANTS]}")
    return picked


# ------------------------------------------------------------------------------------------ processes, threads
def _kind(argv: list[str]) -> str:
    """What a process of Luna's is: Chromium's own ``--type`` (utilities by their service), or the driver."""
    if not argv:  # a process that exited while its cmdline was read (or a zombie): nothing of Luna's to count
        return "exited"
    if os.path.basename(argv[0]) == "node":
        return "playwright driver"
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    kind = flags.get("type")
    if kind is None:
        return "browser"
    if kind == "utility":
        sub = flags.get("utility-sub-type", "?")
        return f"utility: {sub.split('.')[0]}"  # network.mojom.NetworkService → network
    return {"gpu-process": "gpu"}.get(kind, kind)


def _thread(comm: str) -> str:
    """Chromium numbers pooled threads (``ThreadPoolForeg``, ``V8 DefaultWorke``…); one row per name."""
    return re.sub(r"[\d#/]+$", "", comm.strip()) or comm.strip()


def _cpu_ns(pid: int, tid: int) -> int:
    stat = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
    return int(stat[0]) if stat else 0


def _argv(pid: int) -> list[str]:
    """Chromium rewrites its child processes' titles into one space-separated string, so split on both."""
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ").split()


def luna_tree(driver: int) -> dict[int, str]:
    """A service's Luna processes: its Playwright driver and the Chromium under it, each with its kind."""
    return {pid: _kind(_argv(pid)) for pid in {driver} | _descendants(driver)}


def python_threads() -> dict[int, str]:
    """This process's threads by what they do (Python 3.11 does not name its threads for the kernel, so they
    are all ``python`` in ``comm``): the event loop, the VAD batcher, Smart Turn's executor, ``asyncio_`` (the
    default executor: ``to_thread``), and ``python (native)`` for threads Python did not start."""
    names = {t.native_id: _thread(t.name) for t in threading.enumerate() if t.native_id is not None}  # silero-vad
    names[threading.main_thread().native_id or 0] = "event loop"
    executor = getattr(turn_model.shared_analyzer(), "_executor", None)
    for t in getattr(executor, "_threads", ()):
        names[t.native_id] = "smart-turn"
    return names


def threads(procs: dict[int, str]) -> dict[tuple[int, int], tuple[str, str, int]]:
    """(pid, tid) → (process kind, thread name, CPU ns so far)."""
    out = {}
    ours = python_threads()
    for pid, kind in procs.items():
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            if pid == os.getpid():
                name = ours.get(tid, "python (native)")
            else:
                name = _thread(_read(f"/proc/{pid}/task/{tid}/comm"))
            out[(pid, tid)] = (kind, name, _cpu_ns(pid, tid))
    return out


def cpu_by_thread(
    before: dict[tuple[int, int], tuple[str, str, int]],
    after: dict[tuple[int, int], tuple[str, str, int]],
    wall_s: float,
) -> dict[tuple[str, str], float]:
    """% of one core per (process kind, thread name) over the window; a thread born in it counts from zero."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for key, (kind, name, ns) in after.items():
        out[(kind, name)] += 100 * (ns - before.get(key, (kind, name, 0))[2]) / 1e9 / wall_s
    return dict(out)


def drivers() -> set[int]:
    """Playwright driver processes among this process's children (each host and the rig start one)."""
    kids = {p for p in _descendants(os.getpid()) if _parent(p) == os.getpid()}
    return {p for p in kids if _kind(_argv(p)) == "playwright driver"}


@contextlib.contextmanager
def vad_delays() -> Iterator[list[float]]:
    """Seconds from each capture frame's arrival in the pipeline to its VAD verdict reaching the core (the
    inference, plus the batcher's queue and the hop back to the loop when it runs off the loop)."""
    delays: list[float] = []
    arrived: dict[int, float] = {}
    frame, heard = Pipeline.frame, Pipeline._heard

    def timed_frame(self: Pipeline, pid: str, timestamp_ms: float, pcm: bytes) -> None:
        arrived[id(pcm)] = time.perf_counter()
        frame(self, pid, timestamp_ms, pcm)

    def timed_heard(self: Pipeline, pid: str, t_end: float, pcm: bytes, voice: Voice) -> None:
        if (t := arrived.pop(id(pcm), None)) is not None:
            delays.append(time.perf_counter() - t)
        heard(self, pid, t_end, pcm, voice)

    Pipeline.frame, Pipeline._heard = timed_frame, timed_heard  # type: ignore[method-assign]
    try:
        yield delays
    finally:
        Pipeline.frame, Pipeline._heard = frame, heard  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------- Python's share
_PY_PARTS = [  # (part, pattern on "file:function"); the first match wins
    ("VAD", r"webrtcvad|'is_speech'|silero|onnxruntime|hearing/vad"),
    ("core", r"luna_voice/conversation/"),
    ("pipeline", r"luna_voice/bots/pipeline"),
    ("bridge", r"luna_voice/bridge/|luna_voice/bots/bot\.py|aiohttp/(http_websocket|web_ws|_websocket)|websocket"),
    ("JSON", r"json|'loads'|'dumps'"),
    ("HTTP/API", r"aiohttp/|luna_voice/api/|yarl|multidict"),
    ("Playwright client", r"playwright/|greenlet|pyee"),
    ("bench", r"/bench/"),
    ("event loop", r"asyncio/|selectors|'poll'|'select'|'send'|'recv'|socket|_contextvars|'run' of"),
]


def python_parts(prof: cProfile.Profile) -> dict[str, float]:
    """Share of the profiled thread's CPU per part, by each function's own time."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    parts: dict[str, float] = defaultdict(float)
    for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        where = f"{file}:'{func}'".replace("\\", "/")
        part = next((p for p, pat in _PY_PARTS if re.search(pat, where)), "other")
        parts[part] += tottime
    total = sum(parts.values()) or 1.0
    return {p: v / total for p, v in sorted(parts.items(), key=lambda kv: -kv[1])}


# ---------------------------------------------------------------------------------------------------- the run
_REPLY = _reply(REPLY_S, seed=3, under=0.1)


async def _window(rig: Rig, variant: Variant, audio: ReplyAudio, browser: Any, window_s: float) -> dict[str, Any]:
    with variant.python():
        return await _measure(rig, variant, audio, browser, window_s)


@contextlib.contextmanager
def loop_passes() -> Iterator[list[int]]:
    """How many passes the event loop makes (each one ``select`` on its selector, whatever woke it)."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    select, count = selector.select, [0]

    def counted(timeout: float | None = None) -> Any:
        count[0] += 1
        return select(timeout)

    selector.select = counted
    try:
        yield count
    finally:
        del selector.select  # the class's method again


async def _measure(rig: Rig, variant: Variant, audio: ReplyAudio, browser: Any, window_s: float) -> dict[str, Any]:
    """A fresh service with the variant's Chromium (alone, so PSS splits shared pages only among its own
    processes and the person's), one person in one room, then a /proc window and a cProfile window."""
    known = drivers()
    turn_model.shared_analyzer()  # loading it limits BLAS for the process; the variant then sets its own
    threadpool_limits(variant.blas_threads, user_api="blas")
    svc = await rig.service(audio, host=variant.host(), new_vad=variant.new_vad())
    (driver,) = drivers() - known
    room = "profile-" + re.sub(r"[^a-z0-9]+", "-", variant.name).strip("-")
    try:
        idle_pss = memory_mb(set(luna_tree(driver)))[1]
        await svc.summon(room)
        person = await rig.human(browser, svc, room, "Carol", mic=not variant.listener_muted)
        if variant.listener_muted:
            await until(lambda: _announced(svc, room, "Carol"), 30, "Carol at Luna's page")
        else:
            await hears(svc, room, "Carol")
        guest = await rig.human(browser, svc, room, "Dave", mic=False) if variant.muted_guest else None
        if guest is not None:  # announced, and his track negotiated (or not captured at all)
            await until(lambda: _announced(svc, room, "Dave"), 30, "Dave at Luna's page")
        await asyncio.sleep(SETTLE_S)
        t_rec = await person.start_recording()
        procs = {**luna_tree(driver), os.getpid(): "service (this process)"}
        pid, muted = svc.service.pid_of(room, "Carol") or "", svc.service.pid_of(room, "Dave") or ""
        seen = svc.service.frames_seen[room]

        frames0, muted0, t0, before = seen[pid], seen[muted], time.monotonic(), threads(procs)
        sayer = asyncio.ensure_future(_say_every(svc, room, SAY_EVERY_S)) if variant.listener_muted else None
        with vad_delays() as delays, loop_passes() as passes:
            await asyncio.sleep(window_s)
        wall, after = time.monotonic() - t0, threads(procs)
        frames, muted_frames = seen[pid] - frames0, seen[muted] - muted0
        tree = luna_tree(driver)
        pss = memory_mb(set(tree))[1]
        pss_by_kind = {k: memory_mb({p for p, kind in tree.items() if kind == k})[1] for k in set(tree.values())}

        prof = cProfile.Profile(time.thread_time_ns, 1e-9)  # type: ignore[call-arg]
        prof.enable()
        await asyncio.sleep(window_s / 2)
        prof.disable()

        if sayer is not None:
            sayer.cancel()
        ear = await person.stop_recording(t_rec)
        status = await svc.dismiss(room)
        await person.close()
        if guest is not None:
            await guest.close()
    finally:
        await svc.close()
        rig.services.remove(svc)
    reply_s = len(_REPLY) / sg.MIC_RATE
    silent, total, lengths = _gaps_at_ear(ear, reply_s)
    lat = _click_latency(_answered(status, ear, reply_s, 1.5), _REPLY, ear).ravel()
    return {
        "cpu": cpu_by_thread(before, after, wall),
        "python_parts": python_parts(prof),
        "python_top": _top(prof),
        "pss_mb": pss,
        "pss_by_kind_mb": pss_by_kind,
        "idle_pss_mb": idle_pss,
        "frames_per_s": frames / wall,
        "loop_passes_per_s": passes[0] / wall,
        "muted_frames_per_s": muted_frames / wall if guest is not None else float("nan"),
        "vad_delay_s": delays,
        "replies_heard": len(lengths),
        "underrun_pct": 100 * silent / total if total else float("nan"),
        "speaking_ms": ms(lat),
        "clicks_lost_pct": 100 * float(np.isnan(lat).mean()) if lat.size else float("nan"),
        "playback_gaps": status["stats"]["playback_gaps"],
    }


async def _say_every(svc: Any, room: str, period_s: float) -> None:
    """The app has Luna say something (the bench's reply audio) every ``period_s``, from the window's start."""
    while True:
        code, body = await svc.call("POST", f"/rooms/{room}/luna/say", json={"text": "Something to say."})
        if code != 202:
            raise RuntimeError(f"say in {room}: {code} {body}")
        await asyncio.sleep(period_s)


async def _announced(svc: Any, room: str, name: str) -> bool:
    return svc.service.pid_of(room, name) is not None


def _top(prof: cProfile.Profile, n: int = 15) -> list[list[Any]]:
    """The functions with the most own time, for reading the JSON."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [[f"{f}:{line}:{func}", calls, round(tt * 1000, 1)] for (f, line, func), (_c, calls, tt, _ct, _) in rows]


async def run(
    rig: Rig, audio: ReplyAudio, tmp: Path, *, rounds: int, window_s: float, variants: list[Variant]
) -> dict[str, Any]:
    audio.pcm = sg.to_int16(_REPLY)
    browser = await rig.browser(
        _wav(tmp, "profile", _loop(sg.speech("Luna, say something.", sg.MIC_RATE), PERIOD_S)), loop=True
    )
    hear_pcm_capture()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:  # A B B A: none always goes first
            runs[v.name].append(await _window(rig, v, audio, browser, window_s))
        for v in variants:
            if missed := set(v.old_modules() if v.old_modules else ()) - v.served:
                raise RuntimeError(f"{v.name}: the page never asked for {sorted(missed)}; the rung is not what it says")
    return {"variants": {v.name: {"chromium_args": v.chromium_args, **merge(runs[v.name])} for v in variants}}


def merge(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over a variant's windows (CPU per thread, Python's shares, memory, audio)."""
    keys = {k for w in windows for k in w["cpu"]}
    cpu = {k: float(np.mean([w["cpu"].get(k, 0.0) for w in windows])) for k in keys}
    parts = {k for w in windows for k in w["python_parts"]}
    lat = [w["speaking_ms"]["p50"] for w in windows]
    return {
        "cpu_by_thread": [[kind, name, pct] for (kind, name), pct in sorted(cpu.items(), key=lambda kv: -kv[1])],
        "python_parts": {p: float(np.mean([w["python_parts"].get(p, 0.0) for w in windows])) for p in parts},
        "pss_mb": float(np.mean([w["pss_mb"] for w in windows])),
        "pss_by_kind_mb": {
            k: float(np.mean([w["pss_by_kind_mb"].get(k, 0.0) for w in windows]))
            for k in {k for w in windows for k in w["pss_by_kind_mb"]}
        },
        "idle_pss_mb": float(np.mean([w["idle_pss_mb"] for w in windows])),
        "frames_per_s": float(np.mean([w["frames_per_s"] for w in windows])),
        "loop_passes_per_s": float(np.mean([w["loop_passes_per_s"] for w in windows])),
        "muted_frames_per_s": float(np.mean([w["muted_frames_per_s"] for w in windows])),
        "vad_delay_ms": ms([d for w in windows for d in w["vad_delay_s"]]),
        "replies_heard": sum(w["replies_heard"] for w in windows),
        "underrun_pct": float(np.nanmean([w["underrun_pct"] for w in windows])),
        "speaking_p50_ms": float(np.nanmean(lat)),
        "clicks_lost_pct": float(np.nanmean([w["clicks_lost_pct"] for w in windows])),
        "playback_gaps": sum(w["playback_gaps"] for w in windows),
        "windows": len(windows),
        "python_top": windows[-1]["python_top"],
    }


# ---------------------------------------------------------------------------------------------------- tables
def _pct(v: float) -> str:
    return f"{v:.1f}"


def report(result: dict[str, Any]) -> str:
    """Per process, then the busiest threads, then the service's parts, memory and the audio checks."""
    from bench.__main__ import table

    vs = result["variants"]
    names = list(vs)
    cpu = {n: {(k, t): p for k, t, p in vs[n]["cpu_by_thread"]} for n in names}
    kinds = sorted({k for n in names for k, _ in cpu[n]}, key=lambda k: -max(_sum(cpu[n], k) for n in names))
    proc_rows = [[k, *(_pct(_sum(cpu[n], k)) for n in names)] for k in kinds]
    proc_rows.append(["total", *(_pct(sum(cpu[n].values())) for n in names)])
    mem_kinds = sorted(
        {k for n in names for k in vs[n]["pss_by_kind_mb"]}, key=lambda k: -vs[names[0]]["pss_by_kind_mb"].get(k, 0)
    )
    mem = [
        ["PSS of Luna's processes with the bot, MB", *(f"{vs[n]['pss_mb']:.0f}" for n in names)],
        *([f"  {k}", *(f"{vs[n]['pss_by_kind_mb'].get(k, 0.0):.0f}" for n in names)] for k in mem_kinds),
        ["the same before the bot joined, MB", *(f"{vs[n]['idle_pss_mb']:.0f}" for n in names)],
        ["the bot's share (with − before), MB", *(f"{vs[n]['pss_mb'] - vs[n]['idle_pss_mb']:.0f}" for n in names)],
    ]
    top = sorted(
        {key for n in names for key, p in cpu[n].items() if p >= 0.3}, key=lambda key: -cpu[names[0]].get(key, 0)
    )
    thread_rows = [[f"{k} / {t}", *(_pct(cpu[n].get((k, t), 0.0)) for n in names)] for k, t in top]
    py = {n: cpu[n].get(("service (this process)", "event loop"), 0.0) for n in names}
    parts = sorted(
        {p for n in names for p in vs[n]["python_parts"]}, key=lambda p: -vs[names[0]]["python_parts"].get(p, 0)
    )
    py_rows = [[p, *(_pct(py[n] * vs[n]["python_parts"].get(p, 0.0)) for n in names)] for p in parts]
    audio = [
        ["capture frames/s from the person (50 expected)", *(f"{vs[n]['frames_per_s']:.1f}" for n in names)],
        ["... from the muted guest", *(f"{vs[n]['muted_frames_per_s']:.1f}" for n in names)],
        ["event loop passes/s (the bench's own included)", *(f"{vs[n]['loop_passes_per_s']:.0f}" for n in names)],
        [
            "frame → its VAD verdict in the core, p50 / p95 ms",
            *(f"{vs[n]['vad_delay_ms']['p50']:.2f} / {vs[n]['vad_delay_ms']['p95']:.2f}" for n in names),
        ],
        ["replies heard whole at the ear", *(str(vs[n]["replies_heard"]) for n in names)],
        ["underruns at the ear, %", *(f"{vs[n]['underrun_pct']:.3f}" for n in names)],
        ["reply clicks lost, %", *(f"{vs[n]['clicks_lost_pct']:.1f}" for n in names)],
        ["Python → ear p50, ms", *(f"{vs[n]['speaking_p50_ms']:.0f}" for n in names)],
        ["playback gaps (core)", *(str(vs[n]["playback_gaps"]) for n in names)],
    ]
    head = lambda first: [first, *(f"{n} % core" for n in names)]  # noqa: E731
    return "\n\n".join(
        [
            table(head("process"), proc_rows),
            table(head("process / thread (≥ 0.3 %)"), thread_rows),
            table(head("service event loop (cProfile)"), py_rows),
            table(["memory", *names], mem),
            table(["audio check", *names], audio),
        ]
    )


def _sum(cpu: dict[tuple[str, str], float], kind: str) -> float:
    return sum(p for (k, _), p in cpu.items() if k == kind)

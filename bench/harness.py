"""The bench's rig: the real service in this process (instant providers, plus a log of the audio Python received),
"human" Chromium pages whose microphone is a WAV file, recorders stamped with the wall clock, and process
accounting read from /proc (no psutil).

Clocks: page stamps (``performance.timeOrigin + performance.now()``) and Python's ``time.time()`` are the same
wall clock on one machine, so events on both sides subtract directly.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from bench.instant import ReplyAudio, instant_providers
from bench.signals import RATE, from_int16
from luna_voice.api.errors import AppRunner
from luna_voice.bots.host import CHROMIUM_ARGS, ChromiumHost
from luna_voice.config import Settings
from luna_voice.hearing.vad import VoiceDetector
from luna_voice.service import Service

CHROMIUM = Path("/usr/bin/chromium")
HUMAN_FLAG = "--use-fake-ui-for-media-stream"  # only human browsers have it: tells them apart in /proc

# Keeps the page's own microphone stream, so the bench can record what the "mouth" said, on the page's clock.
_KEEP_MIC = """(() => {
  const md = navigator.mediaDevices;
  if (!md) return;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => {
    const s = await gum(c);
    window.__benchMic = s;
    window.__benchMicAt = performance.timeOrigin + performance.now();
    return s;
  };
  // ... and its peer connections, for their receive statistics.
  const PC = window.RTCPeerConnection;
  window.__benchPcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new PC(...args);
    window.__benchPcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = PC.prototype;
})();"""

# The mean jitter-buffer delay of the loudest stream this page receives (the one the scenario measures).
_JITTER = """async () => {
  let best = null;
  for (const pc of window.__benchPcs) {
    (await pc.getStats()).forEach((r) => {
      if (r.type !== "inbound-rtp" || r.kind !== "audio" || !r.jitterBufferEmittedCount) return;
      const v = { energy: r.totalAudioEnergy || 0, ms: (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount };
      if (!best || v.energy > best.energy) best = v;
    });
  }
  return best && best.ms;
}"""

# Records the page's own microphone with the same capture worklet as the demo recorder.
_TAP_START = """async () => {
  const ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.audioWorklet.addModule("/bot/audio/capture-worklet.js");
  const node = new AudioWorkletNode(ctx, "luna-capture", { numberOfInputs: 1, outputChannelCount: [1] });
  const chunks = [];
  node.port.onmessage = ({ data }) => chunks.push(new Int16Array(data));
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);
  ctx.createMediaStreamSource(window.__benchMic).connect(node);
  window.__benchTap = { ctx, chunks };
  return performance.timeOrigin + performance.now();
}"""

_TAP_STOP = """() => {
  const { ctx, chunks } = window.__benchTap;
  ctx.close();
  const pcm = new Int16Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) { pcm.set(c, off); off += c.length; }
  const bytes = new Uint8Array(pcm.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}"""

_REC_START = "() => { lunaDemo.startRecording(); return performance.timeOrigin + performance.now(); }"

# Stamps every encoded audio frame a page sends or receives, in a worker (an RTCRtpScriptTransform on each sender
# and receiver, set when a track is added or a description applied), with the frame's RTP stream and timestamp,
# its audio level and Chromium's own capture and network-receive times. All times are wall-clock ms (the worker's
# timeOrigin + its performance.now(); the metadata's times count from that origin too). Only the bench installs
# it: what ships has no transform.
_FRAMES_WORKER = """
const rows = [];
onrtctransform = ({ transformer: t }) => {
  const send = t.options.side === "send";
  const o = performance.timeOrigin;
  t.readable.pipeThrough(new TransformStream({ transform(f, out) {
    const m = f.getMetadata();
    rows.push([send, m.synchronizationSource, m.rtpTimestamp, o + performance.now(),
      m.captureTime == null ? null : o + m.captureTime, m.receiveTime == null ? null : o + m.receiveTime,
      m.audioLevel == null ? null : m.audioLevel]);
    out.enqueue(f);
  } })).pipeTo(t.writable);
};
onmessage = ({ data: since, ports }) => ports[0].postMessage(rows.filter((r) => r[3] >= since));
"""

_FRAME_STAMPS = """(() => {
  if (!window.RTCRtpScriptTransform) return;
  let worker = null;
  const source = () => URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
  const w = () => worker || (worker = new Worker(source()));
  const hook = (pc) => {
    for (const t of pc.getTransceivers()) {
      if (t.sender.track && !t.sender.transform) t.sender.transform = new RTCRtpScriptTransform(w(), { side: "send" });
      if (RECEIVERS && !t.receiver.transform) t.receiver.transform = new RTCRtpScriptTransform(w(), { side: "recv" });
    }
  };
  const P = RTCPeerConnection.prototype;
  const addTrack = P.addTrack; // a sender's transform must be set before the first negotiation
  P.addTrack = function (...args) { const sender = addTrack.apply(this, args); hook(this); return sender; };
  for (const name of ["setLocalDescription", "setRemoteDescription"]) {
    const applied = P[name];
    P[name] = async function (...args) { const r = await applied.apply(this, args); hook(this); return r; };
  }
  window.__benchFrames = (since) => new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = ({ data }) => resolve(data);
    w().postMessage(since, [ch.port2]);
  });
})();""".replace("WORKER_SOURCE", json.dumps(_FRAMES_WORKER))


class FrameStamps(enum.Enum):
    """Which encoded frames a page stamps. A receiver's transform puts a worker between the network and the jitter
    buffer, and rows 1 and 3 came out higher with it (bench/README.md), so it is asked for only when the receiving
    side's legs are wanted (``--receiver-stamps``)."""

    SENT = "sent"
    ALL = "all"

    @property
    def script(self) -> str:
        return _FRAME_STAMPS.replace("RECEIVERS", "true" if self is FrameStamps.ALL else "false")

    @staticmethod
    async def read(page: Page, since: float) -> list[list[Any]]:
        """The encoded frames ``page`` stamped (its context has ``script``) from ``since`` (wall-clock s) on."""
        return await page.evaluate("(t) => __benchFrames(t)", 1000 * since)


@dataclass
class Recording:
    """16 kHz audio whose first sample was taken at ``t0`` (wall-clock s); later samples follow at the rate."""

    x: np.ndarray
    t0: float

    def times(self, idx: np.ndarray) -> np.ndarray:
        return self.t0 + np.asarray(idx) / RATE


async def until(predicate: Callable[[], Awaitable[Any]], limit: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + limit
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(step)
    return value


class BenchService(Service):
    """The real service, counting the capture frames Python receives per room and speaker; in the rooms named in
    ``frame_logs`` it also keeps each frame: (arrival wall-clock s, page stamp ms, participant id, pcm)."""

    def __init__(
        self,
        settings: Settings,
        audio: ReplyAudio,
        host: ChromiumHost | None = None,
        new_vad: Callable[[], VoiceDetector] | None = None,
    ) -> None:
        super().__init__(settings, providers=instant_providers(audio), host=host, audio_tap=self._tap, new_vad=new_vad)
        self.frame_logs: dict[str, list[tuple[float, float, str, bytes]]] = {}
        self.frames_seen: dict[str, Counter[str]] = defaultdict(Counter)

    def _tap(self, room_id: str, pid: str, timestamp_ms: float, pcm: bytes) -> None:
        self.frames_seen[room_id][pid] += 1
        log = self.frame_logs.get(room_id)
        if log is not None:
            log.append((time.time(), timestamp_ms, pid, pcm))

    def pid_of(self, room: str, name: str) -> str | None:
        """The participant id Luna's page announced for ``name`` in ``room``."""
        status = self.status(room) or {"participants": []}
        return next((p["id"] for p in status["participants"] if p["name"] == name), None)


@dataclass
class Running:
    service: BenchService
    url: str
    runner: web.AppRunner
    http: aiohttp.ClientSession
    startup_s: float  # runner set-up, which launches Luna's Chromium
    stamping: tuple[str, FrameStamps] | None = None  # the room whose bot page stamps frames, while summoned
    stamped: dict[str, BrowserContext] = field(default_factory=dict)  # room → its stamped bot page's context

    async def prepare(self, context: BrowserContext) -> None:
        """Runs on each new bot page's context (the host's hook): adds the frame stamps to the room asking."""
        if self.stamping is not None:
            room, _frames = self.stamping
            # Her sent frames only: her receivers carry her own capture transform (bot_page/lib/receivers.js),
            # which takes every frame they receive; a second transform would replace it.
            await context.add_init_script(FrameStamps.SENT.script)
            self.stamped[room] = context

    async def luna_frames(self, room: str, since: float) -> list[list[Any]]:
        """The encoded frames Luna's page in ``room`` sent and received from ``since`` (wall-clock s) on."""
        return await FrameStamps.read(self.stamped[room].pages[0], since)

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def summon(
        self, room: str, policy: str = "auto", *, frames: FrameStamps | None = None
    ) -> tuple[float, dict[str, Any]]:
        """POST, then wait until Luna joined; returns the POST's wall-clock time and her status. ``frames``: her
        page stamps its encoded frames (``luna_frames``)."""
        posted = time.time()
        self.stamping = None if frames is None else (room, frames)
        try:
            return posted, await self._summon(room, policy)
        finally:
            self.stamping = None  # her page's context was made by then

    async def _summon(self, room: str, policy: str) -> dict[str, Any]:
        code, body = await self.call("POST", f"/rooms/{room}/luna", json={"backend": "local", "policy": policy})
        if code not in (200, 201):
            raise RuntimeError(f"summon {room}: {code} {body}")

        async def joined() -> dict[str, Any] | None:
            _, b = await self.call("GET", f"/rooms/{room}/luna")
            if b["state"] in ("ended", "failed"):
                raise RuntimeError(f"Luna did not join {room}: {b['sub_code']} {b['reason']}")
            return b if b["state"] == "joined" else None

        return await until(joined, 60, f"Luna to join {room}", step=0.02)

    async def dismiss(self, room: str) -> dict[str, Any]:
        return (await self.call("DELETE", f"/rooms/{room}/luna"))[1]

    async def close(self) -> None:
        await self.http.close()
        await self.runner.cleanup()


@dataclass
class Human:
    """A person's page in the local demo room (``window.lunaDemo``), with a tap on its own microphone."""

    page: Page
    name: str

    async def mic_opened(self) -> float:
        """When the page's microphone opened: the fake device starts its WAV file then (wall-clock s)."""
        return await until(lambda: self.page.evaluate("window.__benchMicAt"), 30, f"{self.name}'s microphone") / 1000

    async def start_tap(self) -> float:
        return await self.page.evaluate(_TAP_START) / 1000

    async def stop_tap(self, t0: float) -> Recording:
        return Recording(from_int16(base64.b64decode(await self.page.evaluate(_TAP_STOP))), t0)

    async def start_recording(self) -> float:
        """Record what this person hears (everyone else, mixed)."""
        return await self.page.evaluate(_REC_START) / 1000

    async def jitter_buffer_ms(self) -> float | None:
        """How long the audio this page hears loudest waited in its jitter buffer, on average (WebRTC stats)."""
        return await self.page.evaluate(_JITTER)

    async def stop_recording(self, t0: float) -> Recording:
        rec = await self.page.evaluate("lunaDemo.stopRecording()")
        return Recording(from_int16(base64.b64decode(rec["pcm"])), t0)

    async def frames(self, since: float) -> list[list[Any]]:
        """The encoded frames this page stamped from ``since`` (wall-clock s) on (it joined with ``frames``)."""
        return await FrameStamps.read(self.page, since)

    async def close(self) -> None:
        await self.page.context.close()


@dataclass
class Rig:
    pw: Playwright | None = None
    services: list[Running] = field(default_factory=list)
    browsers: list[Browser] = field(default_factory=list)

    async def __aenter__(self) -> Rig:
        self.pw = await async_playwright().start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_browsers()
        for s in reversed(self.services):
            await s.close()
        if self.pw is not None:
            await self.pw.stop()

    async def close_browsers(self) -> None:
        """Close the people's browsers, so the next scenario neither pays for nor counts them."""
        while self.browsers:
            await self.browsers.pop().close()

    async def service(
        self,
        audio: ReplyAudio,
        host: dict[str, Any] | None = None,
        new_vad: Callable[[], VoiceDetector] | None = None,
        **overrides: Any,
    ) -> Running:
        """The whole service on a free loopback port, ICE kept to 127.0.0.1; ``host`` holds ChromiumHost options
        (other flags, a context hook) and ``new_vad`` a VAD per speaker, when a scenario compares them."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # No greeting: it would be the first thing Luna says, and the scenarios time her answers.
        base: dict[str, Any] = {"host": "127.0.0.1", "port": port, "local_ice": "loopback", "max_bots": 8}
        base["greeting"] = ""
        settings = Settings(_env_file=None, **{**base, **overrides})  # type: ignore[call-arg]
        options = dict(host or {})
        inner = options.pop("prepare_context", None)
        running: Running | None = None

        async def prepare(context: BrowserContext, url: str) -> None:
            if inner is not None:
                await inner(context, url)
            if running is not None:
                await running.prepare(context)

        chromium = ChromiumHost(settings.chromium_path, prepare_context=prepare, **options)
        service = BenchService(settings, audio, chromium, new_vad)
        runner = AppRunner(service.app())
        started = time.perf_counter()
        await runner.setup()
        startup = time.perf_counter() - started
        await web.TCPSite(runner, "127.0.0.1", port).start()
        running = Running(service, f"http://127.0.0.1:{port}", runner, aiohttp.ClientSession(), startup)
        self.services.append(running)
        return running

    async def browser(self, wav: Path | None, *, loop: bool = False) -> Browser:
        """A person's Chromium; its microphone plays ``wav`` from the moment a page opens it (no device: silent)."""
        assert self.pw is not None
        args = [*CHROMIUM_ARGS, HUMAN_FLAG]
        if wav is not None:
            args += [
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}{'' if loop else '%noloop'}",
            ]
        browser = await self.pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        self.browsers.append(browser)
        return browser

    async def human(
        self,
        browser: Browser,
        svc: Running,
        room: str,
        name: str,
        *,
        mic: bool = True,
        frames: FrameStamps | None = None,
    ) -> Human:
        """A person joins ``room`` on the demo page at once, with browser processing off (recorded speech);
        ``mic=False``: joins muted; ``frames``: the page stamps its encoded frames (``Human.frames``)."""
        context = await browser.new_context()
        await context.add_init_script(_KEEP_MIC)
        if frames is not None:
            await context.add_init_script(frames.script)
        page = await context.new_page()
        await page.goto(f"{svc.url}/demo/rooms/{room}?name={name}&autojoin=1&processing=0{'' if mic else '&mic=0'}")
        return Human(page, name)


async def hears(svc: Running, room: str, name: str, frames: int = 25) -> None:
    """Wait until Python has received ``frames`` capture frames from ``name`` (their WebRTC link is up)."""

    async def flowing() -> bool:
        pid = svc.service.pid_of(room, name)
        return pid is not None and svc.service.frames_seen[room][pid] >= frames

    await until(flowing, 30, f"audio from {name} in {room}")


# ------------------------------------------------------------------------------------------ /proc accounting
_TICK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else 0


def _descendants(root: int) -> set[int]:
    parents = {int(p): _parent(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    out, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def chromium_pids() -> tuple[set[int], set[int]]:
    """Luna's Chromium processes with the Playwright driver that runs them (the service's child, part of her
    cost), and the humans' Chromium processes, among this process's descendants."""
    mine = _descendants(os.getpid())
    luna: set[int] = set()
    humans: set[int] = set()
    for pid in mine:
        argv = _read(f"/proc/{pid}/cmdline").split("\0")
        if os.path.basename(argv[0]) == "chromium" and not any(a.startswith("--type=") for a in argv):
            tree = {pid} | _descendants(pid)
            (humans if HUMAN_FLAG in argv else luna).update(tree)
            if HUMAN_FLAG not in argv:
                luna.add(_parent(pid))
    return luna, humans


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def memory_mb(pids: set[int]) -> tuple[float, float]:
    """(RSS, PSS) summed over ``pids``. PSS splits shared pages between Chromium's processes instead of counting
    them once per process, so it is the fairer sum; RSS is given because it is what people usually quote."""
    kb = {"Rss:": 0, "Pss:": 0}
    for pid in pids:
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            key = line.split(" ", 1)[0]
            if key in kb:
                kb[key] += int(line.split()[1])
    return kb["Rss:"] / 1024, kb["Pss:"] / 1024

"""``python -m bench pacing``: how evenly a track reaches WebRTC's encoder, by how it is produced.

Row 3's excess over the floor sat in the listener's jitter buffer: Luna's stream waited there about twice as long
as a microphone's. Her track is a ``MediaStreamAudioDestinationNode`` of the page's AudioContext, so the render
callbacks decide when her audio reaches WebRTC. This probe sends one track per variant through a loopback pair
of peer connections in one Chromium page (launched with Luna's flags): the fake microphone, and a tone rendered
by AudioContexts at several rates and latency hints. On the sender it stamps each encoded Opus frame as it
leaves the encoder (an encoded-insertable-streams transform), so the intervals show the pacing; on the receiver
it reads ``inbound-rtp``: jitter and the average jitter-buffer delay. Variants take turns (A B … B A).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Route

from bench import signals as sg
from bench.harness import Rig

_BOT_PAGE = Path(__file__).resolve().parent.parent / "bot_page"
_ORIGIN = "http://127.0.0.1:9"  # answered by the route below, never by a socket: a secure context for worklets

# Each variant's track: "mic" (Chromium's fake device, 10 ms chunks on a timer) or a context's options.
VARIANTS: dict[str, dict[str, Any]] = {
    "fake microphone (floor)": {"mic": True},
    "context 48 kHz, interactive (Luna's before)": {"sampleRate": 48_000, "latencyHint": "interactive"},
    # her track now: a MediaStreamTrackGenerator that a dedicated worker writes on her frame clock
    "generator written by a worker (Luna's)": {"generator": True},
    "context 48 kHz, playback": {"sampleRate": 48_000, "latencyHint": "playback"},
    "context 48 kHz, no output device": {"sampleRate": 48_000, "sinkId": {"type": "none"}},
    "context 44.1 kHz, interactive": {"sampleRate": 44_100, "latencyHint": "interactive"},
    "context 32 kHz, interactive": {"sampleRate": 32_000, "latencyHint": "interactive"},
    "context 16 kHz, interactive": {"sampleRate": 16_000, "latencyHint": "interactive"},
}


_PAGE = """<!doctype html><script>
window.probe = async (opts, seconds) => {
  let track, ctx;
  if (opts.generator) {
    track = new MediaStreamTrackGenerator({kind: "audio"});
    const tone = `${opts.generator}
      let writer, clock;
      const tick = () => {
        for (const [k] of clock.due(performance.now())) {
          const pcm = new Float32Array(960);
          for (let i = 0; i < 960; i++) pcm[i] = 0.5 * Math.sin(2 * Math.PI * 440 * (k * 960 + i) / 48000);
          const data = {format: "f32-planar", sampleRate: 48000, numberOfChannels: 1, numberOfFrames: 960};
          writer.write(new AudioData({...data, timestamp: k * 20000, data: pcm})).catch(() => {});
        }
        setTimeout(tick, Math.ceil(clock.next - performance.now()));
      };
      onmessage = ({data}) => { writer = data.getWriter(); clock = new FrameClock(performance.now(), 20); tick(); };`;
    const worker = new Worker(URL.createObjectURL(new Blob([tone], {type: "text/javascript"})));
    worker.postMessage(track.writable, [track.writable]);
    ctx = {close: async () => worker.terminate(), baseLatency: null};
  } else if (opts.mic) {
    const constraints = {echoCancellation: false, noiseSuppression: false, autoGainControl: false};
    track = (await navigator.mediaDevices.getUserMedia({audio: constraints})).getAudioTracks()[0];
  } else {
    ctx = new AudioContext(opts);
    const osc = new OscillatorNode(ctx, {frequency: 440});
    const dest = ctx.createMediaStreamDestination();
    dest.channelCount = 1;
    osc.connect(dest);
    osc.start();
    await ctx.resume();
    track = dest.stream.getAudioTracks()[0];
  }
  const tx = new RTCPeerConnection({encodedInsertableStreams: true});
  const rx = new RTCPeerConnection();
  tx.onicecandidate = (e) => e.candidate && rx.addIceCandidate(e.candidate);
  rx.onicecandidate = (e) => e.candidate && tx.addIceCandidate(e.candidate);
  const sender = tx.addTrack(track, new MediaStream([track]));
  const stamps = [];
  const {readable, writable} = sender.createEncodedStreams();
  const stamp = new TransformStream({transform(frame, out) { stamps.push(performance.now()); out.enqueue(frame); }});
  readable.pipeThrough(stamp).pipeTo(writable);
  rx.ontrack = (e) => { const sink = new Audio(); sink.muted = true; sink.srcObject = e.streams[0]; sink.play(); };
  await tx.setLocalDescription(); await rx.setRemoteDescription(tx.localDescription);
  await rx.setLocalDescription(); await tx.setRemoteDescription(rx.localDescription);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  let inbound = {};
  (await rx.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s; });
  tx.close(); rx.close(); track.stop(); if (ctx) await ctx.close();
  return {
    stamps,
    base_latency_s: ctx ? ctx.baseLatency : null,
    jitter_ms: 1000 * inbound.jitter,
    jitter_buffer_ms: 1000 * inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount,
    concealed_pct: 100 * inbound.concealedSamples / inbound.totalSamplesReceived,
  };
};
</script>"""


def _frame_clock() -> str:
    """Luna's frame clock as the playback worker has it (``bot_page/audio/playback.js``), for a worker blob."""
    source = (_BOT_PAGE / "audio" / "playback.js").read_text()
    return source[source.index("export class FrameClock") :].removeprefix("export ")


async def _page(route: Route) -> None:
    await route.fulfill(content_type="text/html", body=_PAGE)


def _intervals(stamps: list[float], skip_s: float = 2.0) -> np.ndarray:
    """Milliseconds between encoded frames, after the first ``skip_s`` (connection set-up)."""
    t = np.asarray(stamps)
    return np.diff(t[t >= t[0] + 1000 * skip_s]) if t.size else np.zeros(0)


async def run(rig: Rig, tmp: Path, *, rounds: int, seconds: float) -> dict[str, Any]:
    tone = sg.write_wav(tmp / "tone.wav", sg.tone(5.0, sg.MIC_RATE), sg.MIC_RATE)
    browser = await rig.browser(tone, loop=True)  # Luna's flags plus a fake microphone that plays the tone
    page = await (await browser.new_context()).new_page()
    await page.route(f"{_ORIGIN}/**", _page)
    await page.goto(f"{_ORIGIN}/pacing.html")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            options = VARIANTS[name]
            if "generator" in options:
                options = {**options, "generator": _frame_clock()}
            runs[name].append(await page.evaluate("([o, s]) => probe(o, s)", [options, seconds]))
    await browser.close()
    out = {}
    for name, windows in runs.items():
        gaps = np.concatenate([_intervals(w["stamps"]) for w in windows])
        out[name] = {
            "options": VARIANTS[name],
            "frames": int(gaps.size),
            "interval_ms": {q: float(np.percentile(gaps, p)) for q, p in (("p5", 5), ("p50", 50), ("p95", 95))},
            "off_20ms_pct": float(100 * np.mean(np.abs(gaps - 20) > 3)),
            "off_20ms_pct_by_window": [float(100 * np.mean(np.abs(_intervals(w["stamps"]) - 20) > 3)) for w in windows],
            "base_latency_ms": None if windows[0]["base_latency_s"] is None else 1000 * windows[0]["base_latency_s"],
            **{k: float(np.mean([w[k] for w in windows])) for k in ("jitter_ms", "jitter_buffer_ms", "concealed_pct")},
        }
    return {"variants": out}


def report(result: dict[str, Any]) -> str:
    from bench.__main__ import table

    rows = []
    for name, v in result["variants"].items():
        iv = v["interval_ms"]
        rows.append(
            [
                name,
                f"{iv['p5']:.1f} / {iv['p50']:.1f} / {iv['p95']:.1f}",
                f"{v['off_20ms_pct']:.0f} ({', '.join(f'{p:.0f}' for p in v['off_20ms_pct_by_window'])})",
                f"{v['jitter_ms']:.1f}",
                f"{v['jitter_buffer_ms']:.0f}",
                f"{v['concealed_pct']:.2f}",
                "" if v["base_latency_ms"] is None else f"{v['base_latency_ms']:.1f}",
            ]
        )
    head = [
        "track",
        "encoded frame interval p5/p50/p95, ms",
        "% off 20±3 ms (by window)",
        "rx jitter ms",
        "rx jitter buffer ms",
        "concealed %",
        "ctx baseLatency ms",
    ]
    return table(head, rows)

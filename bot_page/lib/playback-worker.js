// Dedicated worker that is Luna's voice: it writes her microphone track (a MediaStreamTrackGenerator's writable,
// transferred here by the page) a 20 ms frame at a time on a clock of its own, from her playback queue
// (../audio/playback.js): her PCM when there is some, silence otherwise, so the track's timeline never pauses (a
// listener's jitter buffer grows over a paused track). No AudioContext renders her: a context would cost a
// render thread, an output stream and the audio service (bench/README.md, "Luna's voice without WebAudio").
// The clock: frame k is due at start + k × 20 ms of performance.now(); each wake writes every frame that is due,
// so a late timer costs a pair of frames at once, never a stretched timeline, and nothing is written ahead.
// PCM, clear and duck come, and marks go, on a channel of its own to the bridge's shared worker (the page hands
// it one per bridge), so the page's main thread is not on her voice's path. Wire: ../protocol.js.
import { FrameClock, PlaybackQueue } from "../audio/playback.js";
import { PLAYBACK_FRAME_SAMPLES as FRAME, PLAYBACK_RATE as RATE } from "../protocol.js";

const FRAME_MS = (1000 * FRAME) / RATE;
const queue = new PlaybackQueue(RATE);
let bridge = null; // the socket worker's channel
let writer = null;
let clock = null;
const pcm = new Float32Array(FRAME); // each frame's samples (AudioData copies them)

function fromBridge(msg) {
  if (msg.type === "pcm") queue.push(msg.seq, new Int16Array(msg.buffer), performance.now() / 1000);
  else if (msg.type === "gain") queue.setGain(msg.gain);
  else if (msg.type === "clear") bridge.postMessage(queue.clear());
}

function tick() {
  for (const [index, at] of clock.due(performance.now())) {
    const said = queue.render(pcm, at / 1000);
    const frame = new AudioData({
      format: "f32-planar", sampleRate: RATE, numberOfChannels: 1, numberOfFrames: FRAME,
      timestamp: Math.round(index * FRAME_MS * 1000), data: pcm, // µs on her track's own timeline
    });
    writer.write(frame).catch(() => {}); // the page stopped her track: it is leaving
    for (const msg of said) bridge?.postMessage(msg);
  }
  setTimeout(tick, Math.ceil(clock.next - performance.now())); // whole ms: 19.7 would wake at 19, for nothing
}

onmessage = ({ data }) => {
  if (data.writable) {
    writer = data.writable.getWriter();
    clock = new FrameClock(performance.now(), FRAME_MS);
    tick();
  } else if (data.bridge) {
    bridge?.close();
    bridge = data.bridge;
    bridge.onmessage = ({ data: msg }) => fromBridge(msg);
  }
};

// Luna's playback queue, with no clock and no I/O of its own: lib/playback-worker.js renders it a 20 ms frame at
// a time into her microphone track, and tests drive it frame by frame (tests/test_playback_queue.py).
// Python sends speech ahead of real time and this queue holds it (30 s), so `clear` can drop everything queued at
// once. It reports which frames were actually rendered ("played" marks), so Python knows what the room heard.
// A "pcm" message may hold several consecutive frames (seq is the first one's; each is PLAYBACK_FRAME_SAMPLES but
// the last): each gets a mark of its own, so the marks say frame by frame what was rendered.
// Start rule: playback starts once PREBUFFER_S is queued, or START_WAIT_S after the first sample arrived.
// `gain` ducks the voice while someone may be interrupting her: a short linear ramp (no click), nothing dropped,
// so the marks still count every sample the room heard, quieter or not. Wire: ../protocol.js.
import { PLAYBACK_FRAME_SAMPLES as FRAME, PLAYBACK_RATE } from "../protocol.js";

const SECONDS = 30;
const PREBUFFER_S = 0.06; // wait for this much audio before starting, or ...
const START_WAIT_S = 0.1; // ... at most this long after the first sample arrived
const MARK_EVERY_S = 0.05;
const GAIN_RAMP_S = 0.01;

export class PlaybackQueue {
  constructor(rate = PLAYBACK_RATE) {
    this.rate = rate;
    this.size = Math.round(rate * SECONDS);
    this.buf = new Float32Array(this.size);
    this.read = 0; // absolute sample positions; index = pos % size
    this.write = 0;
    this.marks = []; // [endPosition, seq] in push order
    this.playing = false;
    this.firstAt = null;
    this.lastSeq = -1;
    this.lastReport = 0;
    this.overflowed = 0; // samples dropped because the queue was full, not yet reported
    this.gain = 1;
    this.targetGain = 1;
    this.gainStep = 1 / (GAIN_RAMP_S * rate);
  }

  /** Python's PCM (Int16Array) of frames seq, seq + 1, …, arriving at `now` (seconds). */
  push(seq, pcm, now) {
    const room = this.size - (this.write - this.read);
    const n = Math.min(pcm.length, room);
    this.overflowed += pcm.length - n;
    for (let i = 0; i < n; i++) this.buf[(this.write + i) % this.size] = pcm[i] / 0x8000;
    for (let at = 0, s = seq; at < pcm.length; at += FRAME, s = (s + 1) >>> 0) {
      this.marks.push([this.write + Math.min(at + FRAME, n), s]); // a frame cut by a full queue ends with it
    }
    this.write += n;
    if (this.firstAt === null) this.firstAt = now;
  }

  /** Ramp towards `gain` (clamped to 0..1) over GAIN_RAMP_S. */
  setGain(gain) {
    this.targetGain = Math.min(1, Math.max(0, Number(gain)));
  }

  /** Drops everything queued; the "cleared" message for Python. */
  clear() {
    const dropped = this.write - this.read;
    this.read = this.write;
    this.marks = [];
    this.playing = false;
    this.firstAt = null;
    return { type: "cleared", dropped_ms: (1000 * dropped) / this.rate };
  }

  /** Fills `out` (the block that starts at `now`, seconds) and returns the messages for Python it gives rise to. */
  render(out, now) {
    const said = [];
    if (this.overflowed) {
      const ms = Math.round((1000 * this.overflowed) / this.rate);
      said.push({ type: "log", level: "warn", message: `playback queue full: ${ms} ms of Luna's audio dropped` });
      this.overflowed = 0;
    }
    const queued = this.write - this.read;
    if (!this.playing && queued > 0) {
      const waited = now - this.firstAt;
      if (queued >= PREBUFFER_S * this.rate || waited >= START_WAIT_S) this.playing = true;
    }
    if (!this.playing) {
      out.fill(0);
      this.gain = this.targetGain; // nothing audible to ramp
      return said;
    }
    const n = Math.min(out.length, queued);
    for (let i = 0; i < n; i++) {
      if (this.gain !== this.targetGain) {
        const d = this.targetGain - this.gain;
        this.gain = Math.abs(d) <= this.gainStep ? this.targetGain : this.gain + Math.sign(d) * this.gainStep;
      }
      out[i] = this.gain * this.buf[(this.read + i) % this.size];
    }
    out.fill(0, n);
    this.read += n;
    while (this.marks.length && this.marks[0][0] <= this.read) this.lastSeq = this.marks.shift()[1];
    if (this.read === this.write) {
      this.playing = false;
      this.firstAt = null;
      this.lastReport = now;
      said.push({ type: "played", seq: this.lastSeq, idle: true });
    } else if (now - this.lastReport >= MARK_EVERY_S) {
      this.lastReport = now;
      said.push({ type: "played", seq: this.lastSeq, idle: false });
    }
    return said;
  }
}

/** Her track's frame clock: frame k is due at `start` + k × `frameMs` (ms on one monotonic clock). */
export class FrameClock {
  constructor(start, frameMs) {
    this.start = start;
    this.frameMs = frameMs;
    this.written = 0; // frames handed out so far
  }

  /** The frames due at `now` and not handed out yet, as [index, start time]: all of them, so that a late wake
   * costs a few frames at once and never stretches the timeline; none ahead of its time. */
  due(now) {
    const out = [];
    for (; this.start + this.written * this.frameMs <= now; this.written++) {
      out.push([this.written, this.start + this.written * this.frameMs]);
    }
    return out;
  }

  /** When the next frame is due. */
  get next() {
    return this.start + this.written * this.frameMs;
  }
}

// Playback worklet: a ring buffer of PCM from Python, rendered into Luna's microphone track.
// Python sends speech ahead of real time and this worklet paces it, so `clear` can drop everything queued at
// once. It reports which frames were actually rendered ("played" marks), so Python knows what the room heard.
// PCM, clear and gain come, and marks go, on a channel of its own to the bridge's shared worker (the page hands it
// one per bridge), so the page's main thread is not on her voice's path.
// `gain` ducks the voice while someone may be interrupting her: a short linear ramp (no click), nothing dropped,
// so the marks still count every sample the room heard, quieter or not.
// The page hears on the node's own port when her queue gets audio ("speaking": true) and when it runs empty or is
// cleared (false): her context sleeps while she is silent (lib/audio-sleep.js). PCM posted while it sleeps is
// still queued here (Chromium delivers a worklet's port messages to a suspended context) and plays whole on wake.
// A "pcm" message may hold several consecutive frames (seq is the first one's; each is PLAYBACK_FRAME_SAMPLES but
// the last): each gets a mark of its own, so the marks say frame by frame what was rendered. Wire: ../protocol.js.
import { PLAYBACK_FRAME_SAMPLES as FRAME } from "../protocol.js";

const SECONDS = 30;
const PREBUFFER_S = 0.06; // wait for this much audio before starting, or ...
const START_WAIT_S = 0.1; // ... at most this long after the first sample arrived
const MARK_EVERY_S = 0.05;
const GAIN_RAMP_S = 0.01;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate * SECONDS);
    this.buf = new Float32Array(this.size);
    this.read = 0; // absolute sample positions; index = pos % size
    this.write = 0;
    this.marks = []; // [endPosition, seq] in push order
    this.playing = false;
    this.firstAt = null;
    this.lastSeq = -1;
    this.lastReport = 0;
    this.overflowed = 0;
    this.gain = 1;
    this.targetGain = 1;
    this.gainStep = 1 / (GAIN_RAMP_S * sampleRate);
    this.bridge = null; // the socket worker's channel
    this.port.onmessage = ({ data }) => {
      if (data.type !== "bridge") return;
      this.bridge?.close();
      this.bridge = data.port;
      this.bridge.onmessage = ({ data: msg }) => this.onMessage(msg);
    };
  }

  onMessage(msg) {
    if (msg.type === "pcm") {
      const pcm = new Int16Array(msg.buffer);
      if (this.write === this.read) this.port.postMessage({ speaking: true });
      const room = this.size - (this.write - this.read);
      const n = Math.min(pcm.length, room);
      if (n < pcm.length) this.overflowed += pcm.length - n;
      for (let i = 0; i < n; i++) this.buf[(this.write + i) % this.size] = pcm[i] / 0x8000;
      for (let at = 0, seq = msg.seq; at < pcm.length; at += FRAME, seq = (seq + 1) >>> 0) {
        this.marks.push([this.write + Math.min(at + FRAME, n), seq]); // a frame cut by a full buffer ends with it
      }
      this.write += n;
      if (this.firstAt === null) this.firstAt = currentTime;
    } else if (msg.type === "gain") {
      this.targetGain = Math.min(1, Math.max(0, Number(msg.gain)));
    } else if (msg.type === "clear") {
      const dropped = this.write - this.read;
      this.read = this.write;
      this.marks = [];
      this.playing = false;
      this.firstAt = null;
      this.bridge.postMessage({ type: "cleared", dropped_ms: (1000 * dropped) / sampleRate });
      this.port.postMessage({ speaking: false });
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const queued = this.write - this.read;
    if (!this.playing && queued > 0) {
      const waited = currentTime - this.firstAt;
      if (queued >= PREBUFFER_S * sampleRate || waited >= START_WAIT_S) this.playing = true;
    }
    if (this.playing) {
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
        this.bridge.postMessage({ type: "played", seq: this.lastSeq, idle: true });
        this.port.postMessage({ speaking: false });
        this.lastReport = currentTime;
        return true;
      }
    } else {
      out.fill(0);
      this.gain = this.targetGain; // nothing audible to ramp
    }
    if (this.playing && currentTime - this.lastReport >= MARK_EVERY_S) {
      this.bridge.postMessage({ type: "played", seq: this.lastSeq, idle: false });
      this.lastReport = currentTime;
    }
    return true;
  }
}

registerProcessor("luna-playback", PlaybackProcessor);

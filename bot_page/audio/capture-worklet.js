// Capture worklet: one instance per remote participant. Downmixes to mono, low-passes and resamples the
// context rate (48 kHz) to 16 kHz, and posts 20 ms Int16 frames (320 samples). On Luna's page (processorOptions
// {direct: true}) they go on a channel of their own to the bridge's shared worker (the page hands it one), which
// tags them with the participant and sends them: the page's main thread never sees a frame, and only hears, twice
// a second at most, that samples are not all zero (its watchdog for silent tracks). A person's page (demo.js)
// records them from the node's port. A muted participant yields zeros, so speech detection in Python sees
// silence rather than a stalled stream. Rates and frame size: ../protocol.js.
import { CAPTURE_FRAME_SAMPLES as FRAME, CAPTURE_RATE as OUT_RATE } from "../protocol.js";
const TAPS = 63;
const HEARD_EVERY_S = 0.5;

function lowpass(cutoff, rate) {
  // Windowed-sinc (Blackman) FIR, unity gain at DC.
  const h = new Float32Array(TAPS);
  const fc = cutoff / rate;
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const n = i - mid;
    const sinc = n === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * n) / (Math.PI * n);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < TAPS; i++) h[i] /= sum;
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor({ processorOptions } = {}) {
    super();
    this.direct = Boolean(processorOptions?.direct);
    this.out = this.direct ? null : this.port; // where frames go: on Luna's page, none until the channel comes
    this.step = sampleRate / OUT_RATE; // 3 at 48 kHz
    this.h = lowpass(OUT_RATE * 0.45, sampleRate);
    this.hist = new Float32Array(TAPS); // circular history of input samples
    this.pos = 0;
    this.phase = 0; // input samples until the next output sample
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
    this.nonzero = false; // a sample of this frame so far is not zero
    this.heardAt = -Infinity; // when the page was last told
    this.stopped = false; // the page stops a capture whose track was replaced or whose participant left
    this.port.onmessage = ({ data }) => {
      if (data === "stop") {
        this.stopped = true;
        if (this.direct) this.out?.close();
      } else if (data.type === "bridge") this.out = data.port;
    };
  }

  filtered() {
    let acc = 0;
    const { h, hist } = this;
    let j = this.pos;
    for (let i = 0; i < TAPS; i++) {
      j = j === 0 ? TAPS - 1 : j - 1;
      acc += h[i] * hist[j];
    }
    return acc;
  }

  process(inputs) {
    if (this.stopped) return false; // a processor keeps running (and posting zeros) until it returns false
    const input = inputs[0];
    const n = input.length ? input[0].length : 128;
    for (let k = 0; k < n; k++) {
      let x = 0;
      for (let c = 0; c < input.length; c++) x += input[c][k];
      if (input.length > 1) x /= input.length;
      this.hist[this.pos] = x;
      this.pos = (this.pos + 1) % TAPS;
      this.phase -= 1;
      if (this.phase <= 0) {
        this.phase += this.step;
        const y = Math.max(-1, Math.min(1, this.filtered()));
        this.frame[this.fill] = y < 0 ? y * 0x8000 : y * 0x7fff;
        if (this.frame[this.fill++] !== 0) this.nonzero = true;
        if (this.fill === FRAME) this.flush();
      }
    }
    return true;
  }

  flush() {
    if (this.direct && this.nonzero && currentTime - this.heardAt >= HEARD_EVERY_S) {
      this.port.postMessage("heard");
      this.heardAt = currentTime;
    }
    this.out?.postMessage(this.frame.buffer, [this.frame.buffer]); // none yet: dropped, as on a closed bridge
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
    this.nonzero = false;
  }
}

registerProcessor("luna-capture", CaptureProcessor);

// Capture worklet of a person's page (demo.js): it records what the person hears. Downmixes to mono, low-passes
// and resamples the context rate (48 kHz) to 16 kHz, and posts 20 ms Int16 frames (320 samples) on its port.
// Luna's page does not use it: it forwards the encoded frames and Python decodes them. Rates: ../protocol.js.
import { CAPTURE_FRAME_SAMPLES as FRAME, CAPTURE_RATE as OUT_RATE } from "../protocol.js";
const TAPS = 63;

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
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // 3 at 48 kHz
    this.h = lowpass(OUT_RATE * 0.45, sampleRate);
    this.hist = new Float32Array(TAPS); // circular history of input samples
    this.pos = 0;
    this.phase = 0; // input samples until the next output sample
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
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
        this.frame[this.fill++] = y < 0 ? y * 0x8000 : y * 0x7fff;
        if (this.fill === FRAME) this.flush();
      }
    }
    return true;
  }

  flush() {
    this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
  }
}

registerProcessor("luna-capture", CaptureProcessor);

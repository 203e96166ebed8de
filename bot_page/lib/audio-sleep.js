// Luna's AudioContext sleeps while she is silent and nothing else needs it. A running 48 kHz context costs about
// 6 % of a core even when it renders zeros: the AudioWorklet thread (375 render quanta a second), the renderer's
// output-device stream and the audio service behind it, and the Opus encoder and WebRTC threads that her track
// feeds (bench/README.md, "Luna's audio sleeps while she is silent"); in a meeting she is silent most of the time.
// What Chromium 156 does with a suspended context (checked, same section): the worklet's process() is not called,
// her track stays live and sends no packets (a listener conceals the gap, as after DTX), port messages still
// reach the worklet, and resume() takes 3–15 ms, after which she reaches a listener as fast as before.
//
// The rule, in one place: the context runs while her playback queue has audio (the worklet says so), for a
// hangover after it ran empty or was cleared (a duck or a next sentence may follow), for a while after Python says
// she is about to speak (`wake`: a reply was asked for, or a `say` is being synthesised), and whenever `needed()`
// says something else renders in it (capture worklets of people being heard). Otherwise it is suspended. PCM
// that arrives while it sleeps wakes it at once and plays whole: the worklet queues it and starts on the audio
// clock, so the first syllable and the "played" marks are as they would have been, only later by the resume.

const HANGOVER_MS = 1500; // after her queue ran empty: the next sentence of a reply, a duck ramp, a quick follow-up
const WAKE_MS = 15_000; // after `wake`: a reply engine's first sentence; past it, her PCM still wakes the context

export class AudioSleep {
  #ctx;
  #needed;
  #speaking = false;
  #wokenUntil = 0;
  #timer = null;
  #suspending = null;
  #closed = false;

  /** `needed()`: something else renders in the context; call `update()` whenever its answer may have changed. */
  constructor(ctx, needed) {
    this.#ctx = ctx;
    this.#needed = needed;
  }

  /** From the playback worklet: her queue got audio (true), or ran empty or was cleared (false). */
  speaking(on) {
    this.#speaking = on;
    if (on) this.#wokenUntil = 0; // the audio the wake announced is here: from now on the hangover rules
    this.update();
  }

  /** Python: she is about to speak. */
  wake() {
    this.#wokenUntil = performance.now() + WAKE_MS;
    this.update();
  }

  /** The page left its room: the context stays as it is from now on (the page is about to close). */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  update() {
    if (this.#closed) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#speaking || this.#needed()) {
      this.#resume();
    } else if (performance.now() < this.#wokenUntil) {
      this.#resume();
      this.#timer = setTimeout(() => this.update(), this.#wokenUntil - performance.now());
    } else {
      this.#timer = setTimeout(() => this.#sleep(), HANGOVER_MS);
    }
  }

  #resume() {
    // A suspend still under way finishes first; update() then runs again and resumes.
    if (this.#suspending || this.#ctx.state !== "suspended") return;
    this.#ctx.resume().catch(() => {}); // a context the autoplay policy holds stays suspended, as it was at load
  }

  #sleep() {
    if (this.#closed || this.#speaking || this.#needed() || this.#ctx.state !== "running") return;
    this.#suspending = this.#ctx.suspend().catch(() => {}).finally(() => {
      this.#suspending = null;
      this.update();
    });
  }
}

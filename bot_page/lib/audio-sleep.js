// Luna's AudioContext hosts only the capture worklets of people being heard (her voice is written by
// lib/playback-worker.js, without WebAudio), so it runs only while `needed()` says one renders in it, and is
// suspended otherwise: a running 48 kHz context costs its AudioWorklet thread, the renderer's output-device
// stream and the audio service behind it even when it renders nothing (bench/README.md, "Luna's audio sleeps
// while she is silent"). In a meeting where everyone is muted nobody is captured, and the context sleeps.
// resume() takes 3–15 ms in Chromium 156, well inside a capture's own start (its media element's play()).

export class AudioSleep {
  #ctx;
  #needed;
  #changing = null;
  #closed = false;

  /** `needed()`: something renders in the context; call `update()` whenever its answer may have changed. */
  constructor(ctx, needed) {
    this.#ctx = ctx;
    this.#needed = needed;
  }

  /** The page left its room: the context stays as it is from now on (the page is about to close). */
  close() {
    this.#closed = true;
  }

  update() {
    // A resume or suspend still under way finishes first; update() then runs again.
    if (this.#closed || this.#changing) return;
    const needed = this.#needed();
    if (needed && this.#ctx.state === "suspended") this.#change(this.#ctx.resume()); // autoplay may hold it
    else if (!needed && this.#ctx.state === "running") this.#change(this.#ctx.suspend());
  }

  #change(promise) {
    const done = () => (this.#changing = null);
    this.#changing = promise.then(() => (done(), this.update()), done); // a refusal is not retried in a loop
  }
}

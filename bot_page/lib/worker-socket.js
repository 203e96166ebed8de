// The bridge's WebSocket, held by a shared worker. Playwright reports every frame of every WebSocket on the pages
// it drives to its client (CDP Network events with the payload in base64): for the bridge that is about a hundred
// frames a second which Chromium, Playwright's driver and Python serialised for nothing (bench/README.md,
// "profile"). Playwright does not attach to shared workers, so a socket there costs only the hop between the page
// and the worker. WorkerSocket has the part of the WebSocket interface that bot.js uses, plus the wiring of the
// audio's own channels to the worker (capture and uncapture for each person's encoded frames from the receive
// worker, playback for the playback worker), which keeps audio off the main thread.

export class WorkerSocket {
  constructor(url, name) {
    this.readyState = WebSocket.CONNECTING;
    this.onopen = this.onclose = this.onerror = this.onmessage = null;
    const worker = new SharedWorker(new URL("./socket-worker.js", import.meta.url), { name, type: "module" });
    this.port = worker.port;
    this.port.onmessage = ({ data }) => this.#event(data);
    this.port.postMessage({ open: url });
  }

  #event(data) {
    if (typeof data === "string") {
      this.onmessage?.({ data });
    } else if (data.event === "open") {
      this.readyState = WebSocket.OPEN;
      this.onopen?.(new Event("open"));
    } else if (data.event === "error") {
      this.onerror?.(new Event("error"));
    } else if (data.event === "close") {
      this.readyState = WebSocket.CLOSED;
      this.onclose?.({ code: data.code, reason: data.reason });
    }
  }

  send(data) {
    if (this.readyState !== WebSocket.OPEN) throw new DOMException("the bridge is not open", "InvalidStateError");
    this.port.postMessage(data, data instanceof ArrayBuffer ? [data] : []);
  }

  /** Opus packets posted on `port` (a channel from the receive worker) go out as participant `index`'s. */
  capture(id, index, port) {
    this.port.postMessage({ capture: id, index, port }, [port]);
  }

  /** Closes capture `id`'s channel; sent before participant_left, on the same port, so no frame follows it. */
  uncapture(id) {
    this.port.postMessage({ uncapture: id });
  }

  /** Playback PCM, clear and duck go to `port` (the playback worker's channel); its marks come back on it. */
  playback(port) {
    this.port.postMessage({ playback: port }, [port]);
  }

  close(code, reason) {
    this.port.postMessage({ close: true, code, reason });
  }
}

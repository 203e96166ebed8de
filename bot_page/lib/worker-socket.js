// The bridge's WebSocket, held by a shared worker. Playwright reports every frame of every WebSocket on the pages
// it drives to its client (CDP Network events with the payload in base64): for the bridge that is about a hundred
// frames a second which Chromium, Playwright's driver and Python serialised for nothing (bench/README.md,
// "profile"). Playwright does not attach to shared workers, so a socket there costs only the hop between the page
// and the worker. WorkerSocket has the part of the WebSocket interface that bot.js uses.

export class WorkerSocket {
  constructor(url, name) {
    this.readyState = WebSocket.CONNECTING;
    this.binaryType = "arraybuffer"; // the only type the worker delivers
    this.onopen = this.onclose = this.onerror = this.onmessage = null;
    const worker = new SharedWorker(new URL("./socket-worker.js", import.meta.url), { name });
    this.port = worker.port;
    this.port.onmessage = ({ data }) => this.#event(data);
    this.port.postMessage({ open: url });
  }

  #event(data) {
    if (typeof data === "string" || data instanceof ArrayBuffer) {
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

  close(code, reason) {
    this.port.postMessage({ close: true, code, reason });
  }
}

// bench/profile.py's "+worker socket" rung: lib/worker-socket.js and its shared worker as they were before the
// worklets got their own channels to the worker (the page's main thread relays every frame). The worker's source
// is inlined as a blob because Playwright's routes do not see a shared worker's script request.
const WORKER = `onconnect = ({ ports: [port] }) => {
  let ws = null;
  port.onmessage = ({ data }) => {
    if (data.open) {
      ws = new WebSocket(data.open);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => port.postMessage({ event: "open" });
      ws.onerror = () => port.postMessage({ event: "error" });
      ws.onclose = ({ code, reason }) => port.postMessage({ event: "close", code, reason });
      ws.onmessage = ({ data: msg }) => port.postMessage(msg, typeof msg === "string" ? [] : [msg]);
    } else if (data.close) {
      ws?.close(data.code, data.reason);
    } else if (ws?.readyState === WebSocket.OPEN) {
      ws.send(data);
    }
  };
};`;

export class WorkerSocket {
  constructor(url, name) {
    this.readyState = WebSocket.CONNECTING;
    this.binaryType = "arraybuffer";
    this.onopen = this.onclose = this.onerror = this.onmessage = null;
    const worker = new SharedWorker(URL.createObjectURL(new Blob([WORKER], { type: "text/javascript" })), { name });
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

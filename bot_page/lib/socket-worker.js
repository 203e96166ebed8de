// Shared worker behind lib/worker-socket.js: one WebSocket per connecting page. The page's strings and
// ArrayBuffers pass through to the socket, and the socket's open, error and close become {event} messages. The
// audio does not cross the page's main thread (where the RTK SDK, GC and everything else run): each person's
// capture (the receive worker's encoded Opus frames, lib/receive-worker.js) and the playback worker
// (playback-worker.js) have a MessageChannel of their own to this worker. Capture packets get their header here
// (kind 3: the RTP timestamp in the seq field, the page's receive time as the timestamp) and go out; playback PCM,
// `clear` and `duck` go straight to the playback worker, and its "played"/"cleared" marks (and a full queue's
// warning) go out as JSON. Frame layout: ../protocol.js.
import * as wire from "../protocol.js";

onconnect = ({ ports: [page] }) => {
  let ws = null;
  let playback = null; // the playback worker's channel
  const captures = new Map(); // capture id -> its channel from the receive worker
  const isOpen = () => ws?.readyState === WebSocket.OPEN;

  function capture(id, index, port) {
    captures.set(id, port);
    port.onmessage = ({ data: { rtp, t, data } }) => {
      if (!captures.has(id) || !isOpen()) return;
      const frame = new Uint8Array(wire.HEADER_BYTES + data.byteLength);
      const head = new DataView(frame.buffer);
      head.setUint8(wire.OFFSET_VERSION, wire.VERSION);
      head.setUint8(wire.OFFSET_KIND, wire.KIND_CAPTURE_OPUS);
      head.setUint16(wire.OFFSET_PARTICIPANT, index, true);
      head.setUint32(wire.OFFSET_SEQ, rtp >>> 0, true);
      head.setFloat64(wire.OFFSET_TIMESTAMP, t, true);
      frame.set(new Uint8Array(data), wire.HEADER_BYTES);
      ws.send(frame.buffer);
    };
  }

  function uncapture(id) {
    captures.get(id)?.close(); // frames still queued on it are dropped: they must not follow participant_left
    captures.delete(id);
  }

  function fromBridge(msg) {
    if (typeof msg === "string") {
      const { type, gain } = JSON.parse(msg);
      if (type === "clear") playback?.postMessage({ type: "clear" });
      else if (type === "duck") playback?.postMessage({ type: "gain", gain });
      else page.postMessage(msg);
      return;
    }
    const view = new DataView(msg);
    if (msg.byteLength < wire.HEADER_BYTES || view.getUint8(wire.OFFSET_KIND) !== wire.KIND_PLAYBACK) return;
    const seq = view.getUint32(wire.OFFSET_SEQ, true);
    const buffer = msg.slice(wire.HEADER_BYTES);
    playback?.postMessage({ type: "pcm", seq, buffer }, [buffer]);
  }

  page.onmessage = ({ data }) => {
    if (data.open) {
      ws = new WebSocket(data.open);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => page.postMessage({ event: "open" });
      ws.onerror = () => page.postMessage({ event: "error" });
      ws.onclose = ({ code, reason }) => page.postMessage({ event: "close", code, reason });
      ws.onmessage = ({ data: msg }) => fromBridge(msg);
    } else if (data.close) {
      ws?.close(data.code, data.reason);
    } else if (data.playback) {
      playback?.close();
      playback = data.playback;
      playback.onmessage = ({ data: mark }) => isOpen() && ws.send(JSON.stringify(mark));
    } else if (data.capture !== undefined) {
      capture(data.capture, data.index, data.port);
    } else if (data.uncapture !== undefined) {
      uncapture(data.uncapture);
    } else if (isOpen()) {
      ws.send(data);
    }
  };
};

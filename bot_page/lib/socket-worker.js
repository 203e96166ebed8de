// Shared worker behind lib/worker-socket.js: one WebSocket per connecting page; strings and ArrayBuffers pass
// through unchanged both ways, and the socket's open, error and close become {event} messages.

onconnect = ({ ports: [port] }) => {
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
};

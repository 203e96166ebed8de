// The worker behind every remote person's RTCRtpScriptTransform on Luna's page. It takes each encoded Opus frame
// off the receiver and forwards its payload to the bridge's shared worker, which sends it to Python (kind 3,
// ../protocol.js); Python decodes. Frames are never written back, so Chromium neither decodes nor plays them:
// no jitter buffer (NetEq) work, no output stream, no capture worklet per person.
//
// Every remote audio receiver has one transform, for its life, with a key in its options (lib/receivers.js); the
// page attaches a port (a channel to the shared worker, tagged there with the participant) to a key while it
// wants that person heard, and detaches it when they mute, leave or their track is replaced. Frames of a key with
// no port are dropped. At most twice a second per key the page hears that frames arrive: its watchdog for deaf
// consumers.
const ports = new Map(); // key -> MessagePort to the shared worker
const HEARD_EVERY_MS = 500;

onmessage = ({ data }) => {
  if (data.attach !== undefined) {
    ports.get(data.attach)?.close();
    ports.set(data.attach, data.port);
  } else if (data.detach !== undefined) {
    ports.get(data.detach)?.close();
    ports.delete(data.detach);
  }
};

onrtctransform = async ({ transformer }) => {
  const { key } = transformer.options;
  const reader = transformer.readable.getReader();
  let heardAt = -Infinity;
  for (;;) {
    const { value: frame, done } = await reader.read();
    if (done) return;
    const port = ports.get(key);
    if (!port) continue;
    const now = performance.now();
    const { rtpTimestamp, receiveTime } = frame.getMetadata();
    // wall-clock ms when the packet reached the page (Chromium's own receive time, else now)
    const t = performance.timeOrigin + (receiveTime ?? now);
    port.postMessage({ rtp: rtpTimestamp, t, data: frame.data }, [frame.data]);
    if (now - heardAt >= HEARD_EVERY_MS) {
      heardAt = now;
      postMessage({ heard: key });
    }
  }
};

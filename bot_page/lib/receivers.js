// Every remote audio receiver's encoded frames, taken as they come off the network. An RTCRtpScriptTransform
// must be on a receiver from the task that made it: Chromium (156) short-circuits a receiver that has none by
// then, its frames go straight to its decoder, and a transform set later never sees a frame. So the
// RTCPeerConnection constructor is wrapped (the local room makes its connections itself, but in RealtimeKit the
// SDK's mediasoup-client makes them), and every audio receiver gets a transform (lib/receive-worker.js) where it
// is made: in addTrack and addTransceiver, and in the "track" event for those that applying a remote description
// makes. This module must load before any connection is made (bot.js imports it first). The transforms never
// hand frames back: Luna's page decodes and plays no one.
//
// A connection made with `encodedInsertableStreams` has its encoded frames taken by someone else: in RealtimeKit
// that is its e2ee module (index.es.js sets the option only when `modules.e2ee.enabled`). Its receivers get no
// transform and cannot be heard; captureOf says why.
const connections = new Set();
const keys = new WeakMap(); // RTCRtpReceiver -> the key of its transform in the worker
let nextKey = 1;
const worker = new Worker(new URL("./receive-worker.js", import.meta.url), { name: "luna-receive" });
const Native = window.RTCPeerConnection;

function take(pc, receiver) {
  if (receiver.track.kind !== "audio" || keys.has(receiver) || pc.getConfiguration().encodedInsertableStreams) return;
  const key = nextKey++;
  receiver.transform = new RTCRtpScriptTransform(worker, { key });
  keys.set(receiver, key);
}

window.RTCPeerConnection = class extends Native {
  constructor(...args) {
    super(...args);
    connections.add(this);
    this.addEventListener("track", ({ receiver }) => take(this, receiver));
  }

  addTrack(...args) {
    const sender = super.addTrack(...args);
    const transceiver = this.getTransceivers().find((t) => t.sender === sender);
    if (transceiver) take(this, transceiver.receiver);
    return sender;
  }

  addTransceiver(...args) {
    const transceiver = super.addTransceiver(...args);
    take(this, transceiver.receiver);
    return transceiver;
  }
};

/** The key of the transform on the receiver of remote track `track`, or {error} saying why there is none. */
export function captureOf(track) {
  for (const pc of connections) {
    if (pc.signalingState === "closed") {
      connections.delete(pc);
      continue;
    }
    const receiver = pc.getReceivers().find((r) => r.track === track);
    if (!receiver) continue;
    if (keys.has(receiver)) return { key: keys.get(receiver) };
    if (pc.getConfiguration().encodedInsertableStreams)
      return { error: "the room's connection is end-to-end encrypted (RealtimeKit e2ee), which takes the encoded " +
        "audio Luna forwards; Luna does not support e2ee meetings" };
    return { error: "its receiver has no transform (its track came without a track event)" };
  }
  return { error: "no WebRTC receiver carries the track" };
}

/** Frames of `key` go to `port` (a channel to the bridge's shared worker) from now on. */
export const attach = (key, port) => worker.postMessage({ attach: key, port }, [port]);
/** Frames of `key` are dropped from now on. */
export const detach = (key) => worker.postMessage({ detach: key });
/** `listener(key)` at most twice a second per key while its frames arrive. */
export const onHeard = (listener) => (worker.onmessage = ({ data }) => listener(data.heard));

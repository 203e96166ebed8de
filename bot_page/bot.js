// Luna's page. It joins a room through a room adapter (rooms/<backend>.js), forwards every other participant's
// encoded audio (Opus, as received: Python decodes it) over the bridge WebSocket, and plays what Python sends into
// Luna's microphone in the room: a MediaStreamTrackGenerator that a dedicated worker writes on a clock of its own
// (lib/playback-worker.js). The bridge protocol is documented in src/luna_voice/bridge/protocol.py, which
// generates ./protocol.js. Audio does not cross this page's main thread: the receive worker (each person's
// RTCRtpScriptTransform) and the playback worker have channels of their own to the bridge's shared worker
// (lib/socket-worker.js); only control messages (JSON) come here.
import * as receivers from "./lib/receivers.js"; // first: it must see every RTCPeerConnection made
import { WorkerSocket } from "./lib/worker-socket.js";
import * as wire from "./protocol.js";

// Config comes in the URL fragment (base64url JSON), which is never sent to a server or written to access logs.
const b64 = location.hash.slice(1).replace(/-/g, "+").replace(/_/g, "/");
const cfg = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
const statusEl = document.getElementById("status");
const participants = new Map(); // id -> {index, name, track, enabled, trackId, key, capture, heardAt}
let nextIndex = 1;
let nextCapture = 1; // ids of capture channels in the socket worker
let bridge;
let room;
let ended = false;

function send(obj) {
  if (bridge && bridge.readyState === WebSocket.OPEN) bridge.send(JSON.stringify(obj));
}

function log(level, message) {
  console[level === "error" ? "error" : "log"](message);
  send({ type: "log", level, message });
}

function setState(state, sub_code = null, reason = null) {
  if (ended) return; // left/failed is final: a join that returns after the room ended us must not say "joined"
  statusEl.textContent = state + (sub_code ? ` (${sub_code})` : "");
  send({ type: "room_state", state, sub_code, reason });
  if (state === "left" || state === "failed") {
    ended = true;
    for (const id of [...participants.keys()]) dropParticipant(id);
  }
}

// --- her voice --------------------------------------------------------------------------------------------
// Her microphone track, written by a worker of its own: no AudioContext renders her voice.
const micTrack = new MediaStreamTrackGenerator({ kind: "audio" });
const voice = new Worker(new URL("./lib/playback-worker.js", import.meta.url), { type: "module", name: "voice" });
voice.postMessage({ writable: micTrack.writable }, [micTrack.writable]);

// --- bridge -----------------------------------------------------------------------------------------------
function openBridge() {
  return new Promise((resolve, reject) => {
    bridge = new WorkerSocket(cfg.bridgeUrl, cfg.botId); // not a page WebSocket: see lib/worker-socket.js
    const { port1, port2 } = new MessageChannel(); // playback PCM, clear and duck in; "played"/"cleared" out
    voice.postMessage({ bridge: port1 }, [port1]);
    bridge.playback(port2);
    bridge.onopen = () => {
      bridge.send(JSON.stringify({
        type: "hello", token: cfg.token, backend: cfg.backend,
        playback_rate: wire.PLAYBACK_RATE, // her voice's rate (the worker's frames)
      }));
      resolve();
    };
    bridge.onerror = () => reject(new Error("bridge unreachable"));
    bridge.onclose = (ev) => {
      statusEl.textContent = `bridge closed ${ev.code} ${ev.reason}`;
      if (!ended && room) room.leave(); // Python is gone: do not stay in the room unattended
    };
    bridge.onmessage = ({ data }) => { // JSON only: the socket worker hands audio, clear and duck to the voice
      const msg = JSON.parse(data);
      if (msg.type === "leave") leave();
      else if (msg.type === "unmute" && room && room.unmute) room.unmute();
      else if (msg.type === "chat") chat(msg.text);
    };
  });
}

// --- per-participant capture: encoded frames off each person's receiver ------------------------------------
const heardByKey = new Map(); // receiver's key -> participant: their frames arrive (the room's watchdog reads it)
receivers.onHeard((key) => {
  const p = heardByKey.get(key);
  if (p) p.heardAt = performance.now();
});

function stopCapture(p) {
  if (p.capture) {
    bridge.uncapture(p.capture); // before participant_left, on the same port: no frame of theirs follows it
    receivers.detach(p.key);
    heardByKey.delete(p.key);
  }
  p.capture = p.key = p.trackId = null;
}

function participantJoined({ id, name }) {
  if (participants.has(id)) return participants.get(id);
  const p = { index: nextIndex++, id, name, track: null, enabled: true, trackId: null, heardAt: performance.now() };
  participants.set(id, p);
  send({ type: "participant_joined", index: p.index, id, name });
  return p;
}

// A person's audio track, and whether the room says their microphone is on (`enabled`; a null track keeps the
// last one). A muted person costs nothing: their frames are not forwarded (and a muted sender sends none);
// unmuting attaches again. A replaced track (device change, new consumer) detaches the old one first, so a person
// is never heard twice.
function audioTrack({ id, name, track, enabled = true }) {
  const p = participants.get(id) || participantJoined({ id, name });
  if (track) p.track = track;
  p.enabled = enabled !== false;
  attach(p);
}

function attach(p) {
  const track = p.enabled && p.track && p.track.readyState === "live" ? p.track : null;
  if (track && p.trackId === track.id) return;
  stopCapture(p);
  if (!track) return;
  const { key, error } = receivers.captureOf(track);
  if (error) {
    log("error", `cannot hear ${p.name}: ${error}`);
    return;
  }
  const { port1, port2 } = new MessageChannel(); // the frames' own way to the bridge
  p.trackId = track.id;
  p.key = key;
  p.capture = nextCapture++;
  heardByKey.set(key, p);
  bridge.capture(p.capture, p.index, port2);
  receivers.attach(key, port1);
}

function dropParticipant(id) {
  const p = participants.get(id);
  if (!p) return;
  stopCapture(p);
  participants.delete(id);
  send({ type: "participant_left", index: p.index, id });
}

// The chat mirror (LUNA_CHAT_MIRROR): a room that refuses the message (preset, length) costs a warning, no more.
async function chat(text) {
  try {
    if (!room || !room.chat) throw new Error(`the ${cfg.backend} room has no chat`);
    await room.chat(text);
  } catch (err) {
    log("warn", `chat message not posted: ${err && err.message ? err.message : err}`);
  }
}

async function leave() {
  if (ended) return;
  setState("left", "dismissed");
  try {
    await room.leave();
  } catch (err) {
    log("warn", `leave failed: ${err}`);
  }
}

// --- start ------------------------------------------------------------------------------------------------
try {
  await openBridge();
  setState("joining");
  const { createRoom } = await import(`./rooms/${cfg.backend}.js`);
  room = await createRoom(cfg.room, {
    participantJoined,
    participantLeft: ({ id }) => dropParticipant(id),
    audioTrack,
    state: (state, subCode, reason) => { if (!ended) setState(state, subCode, reason); },
    muted: ({ muted, reason }) => send({ type: "muted", muted, reason }),
    lastAudio: (id) => participants.get(id)?.heardAt, // when this person was last heard (or announced)
    log,
  });
  await room.join(micTrack);
  if (micTrack.readyState !== "live") throw new Error("Luna's microphone track is not live");
  setState("joined");
} catch (err) {
  setState("failed", "join_failed", String(err && err.message ? err.message : err));
}

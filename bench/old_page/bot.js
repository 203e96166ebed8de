// bench/profile.py serves this snapshot of bot_page/bot.js (as of commit 6ca20b4) for the rungs before the
// worklets had direct channels to the socket worker: every capture frame and playback message crosses the main thread.
// Luna's page. It joins a room through a room adapter (rooms/<backend>.js), captures every other participant's
// audio and streams it to Python over the bridge WebSocket, and plays what Python sends into a WebAudio graph
// whose MediaStreamDestination track is Luna's microphone in the room. The bridge protocol is documented in
// src/luna_voice/bridge/protocol.py, which generates ./protocol.js. The page builds its audio graph itself at
// load (no test hooks), so an AudioContext left suspended by the autoplay policy shows up here and not only in
// production.
import { WorkerSocket } from "./lib/worker-socket.js";
import * as wire from "./protocol.js";

// Config comes in the URL fragment (base64url JSON), which is never sent to a server or written to access logs.
const b64 = location.hash.slice(1).replace(/-/g, "+").replace(/_/g, "/");
const cfg = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
const statusEl = document.getElementById("status");
const participants = new Map(); // id -> {index, name, trackId, sink, source, node, seq}
let nextIndex = 1;
let bridge;
let room;
let ended = false;

const wallClockMs = () => performance.timeOrigin + performance.now();

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

// --- audio graph ------------------------------------------------------------------------------------------
const ctx = new AudioContext({ sampleRate: wire.PLAYBACK_RATE, latencyHint: "interactive" });
const silentOut = ctx.createGain();
silentOut.gain.value = 0;
silentOut.connect(ctx.destination); // keeps capture worklets pulled by the render graph
// (bench) the old worklets through a route: Playwright does not see a worklet's own module request, so fetch
// them here and load them as blobs, with their one import made absolute
async function relayedWorklet(name) {
  const source = await (await fetch(new URL(`./audio/relayed-${name}`, import.meta.url))).text();
  const protocol = JSON.stringify(new URL("./protocol.js", import.meta.url).href);
  const blob = new Blob([source.replace('"../protocol.js"', protocol)], { type: "text/javascript" });
  return URL.createObjectURL(blob);
}
await ctx.audioWorklet.addModule(await relayedWorklet("capture-worklet.js"));
await ctx.audioWorklet.addModule(await relayedWorklet("playback-worklet.js"));
const playback = new AudioWorkletNode(ctx, "luna-playback", { numberOfInputs: 0, outputChannelCount: [1] });
const mic = ctx.createMediaStreamDestination();
mic.channelCount = 1;
playback.connect(mic);
playback.connect(silentOut);
const micTrack = mic.stream.getAudioTracks()[0];
if (ctx.state !== "running") await ctx.resume().catch(() => {});
playback.port.onmessage = ({ data }) => send(data); // "played" marks and "cleared"

// --- bridge -----------------------------------------------------------------------------------------------
function openBridge() {
  return new Promise((resolve, reject) => {
    bridge = new WorkerSocket(cfg.bridgeUrl, cfg.botId); // not a page WebSocket: see lib/worker-socket.js
    bridge.binaryType = "arraybuffer";
    bridge.onopen = () => {
      bridge.send(JSON.stringify({
        type: "hello", token: cfg.token, backend: cfg.backend, audio_context: ctx.state,
        capture_rate: wire.CAPTURE_RATE, playback_rate: ctx.sampleRate, // Python refuses rates it does not use
      }));
      resolve();
    };
    bridge.onerror = () => reject(new Error("bridge unreachable"));
    bridge.onclose = (ev) => {
      statusEl.textContent = `bridge closed ${ev.code} ${ev.reason}`;
      if (!ended && room) room.leave(); // Python is gone: do not stay in the room unattended
    };
    bridge.onmessage = ({ data }) => {
      if (typeof data === "string") {
        const msg = JSON.parse(data);
        if (msg.type === "clear") playback.port.postMessage({ type: "clear" });
        else if (msg.type === "duck") playback.port.postMessage({ type: "gain", gain: msg.gain });
        else if (msg.type === "leave") leave();
        else if (msg.type === "unmute" && room && room.unmute) room.unmute();
        else if (msg.type === "chat") chat(msg.text);
        return;
      }
      const view = new DataView(data);
      if (data.byteLength < wire.HEADER_BYTES || view.getUint8(wire.OFFSET_KIND) !== wire.KIND_PLAYBACK) return;
      const seq = view.getUint32(wire.OFFSET_SEQ, true);
      const buffer = data.slice(wire.HEADER_BYTES);
      playback.port.postMessage({ type: "pcm", seq, buffer }, [buffer]);
    };
  });
}

// --- per-participant capture -------------------------------------------------------------------------------
function frameHeader(index, seq) {
  const head = new DataView(new ArrayBuffer(wire.HEADER_BYTES));
  head.setUint8(wire.OFFSET_VERSION, wire.VERSION);
  head.setUint8(wire.OFFSET_KIND, wire.KIND_CAPTURE);
  head.setUint16(wire.OFFSET_PARTICIPANT, index, true);
  head.setUint32(wire.OFFSET_SEQ, seq >>> 0, true);
  head.setFloat64(wire.OFFSET_TIMESTAMP, wallClockMs(), true);
  return head.buffer;
}

function stopCapture(p) {
  if (p.node) {
    // a disconnected worklet would go on posting frames of zeros under this participant's index
    p.node.port.onmessage = null;
    p.node.port.postMessage("stop");
    p.node.disconnect();
  }
  if (p.source) p.source.disconnect();
  if (p.sink) p.sink.srcObject = null;
  p.node = p.source = p.sink = null;
  p.trackId = null;
}

function participantJoined({ id, name }) {
  if (participants.has(id)) return participants.get(id);
  const p = { index: nextIndex++, id, name, seq: 0, trackId: null, attaching: Promise.resolve(), heardAt: performance.now() };
  participants.set(id, p);
  send({ type: "participant_joined", index: p.index, id, name });
  return p;
}

// Attaches run one after another per participant: two quick track swaps must not both finish (each after its
// `await sink.play()`) and leave two capture nodes for one person, who would then be heard twice.
function audioTrack({ id, name, track }) {
  const p = participants.get(id) || participantJoined({ id, name });
  p.attaching = p.attaching.then(() => attach(p, track));
  return p.attaching;
}

async function attach(p, track) {
  if (!track || p.trackId === track.id || participants.get(p.id) !== p) return;
  stopCapture(p); // the track was replaced (device change, reconnect): re-attach
  p.trackId = track.id;
  const stream = new MediaStream([track]);
  // Chromium gives WebAudio silence from a remote track unless a media element is also playing it.
  const sink = (p.sink = new Audio());
  sink.muted = true;
  sink.srcObject = stream;
  await sink.play().catch((err) => log("warn", `sink for ${p.name} refused to play: ${err}`));
  if (p.sink !== sink) return; // dropped while the sink started
  p.source = ctx.createMediaStreamSource(stream);
  p.node = new AudioWorkletNode(ctx, "luna-capture", { numberOfInputs: 1, outputChannelCount: [1] });
  p.node.port.onmessage = ({ data }) => {
    if (new Int16Array(data).some((v) => v !== 0)) p.heardAt = performance.now(); // for the room's watchdog
    if (!bridge || bridge.readyState !== WebSocket.OPEN) return;
    const frame = new Uint8Array(wire.HEADER_BYTES + data.byteLength);
    frame.set(new Uint8Array(frameHeader(p.index, p.seq++)), 0);
    frame.set(new Uint8Array(data), wire.HEADER_BYTES);
    bridge.send(frame.buffer);
  };
  p.source.connect(p.node);
  p.node.connect(silentOut);
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
  log("info", `audio context ${ctx.state} at ${ctx.sampleRate} Hz`);
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

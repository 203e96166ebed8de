// The human side of the local demo room: join with the microphone, see who is here, summon Luna, read the
// captions, and record what you hear. Scriptable as a person would use it (tests drive it this way):
//   ?name=NAME&autojoin=1[&processing=0][&mic=0 (join muted)]
//   window.lunaDemo.join() / leave() / participants() -> [{id, name, mic}] / summon(body) / dismiss()
//   window.lunaDemo.setMic(enabled)  (the "Mute microphone" button; the others, Luna included, are told)
//   window.lunaDemo.startRecording([name]) / stopRecording() -> {sampleRate, pcm}  (pcm: base64 int16 LE mono;
//     with a name, only that participant is recorded — e.g. "Luna")
//   window.lunaDemo.captions() -> the caption lines shown (Luna's chat messages, if mirrored, as "Luna (chat): …")
//   window.lunaDemo.say(text, interrupt) -> {say_id, state}  (the "Say…" box)
// When the service has an API token (LUNA_API_TOKEN), open the page as /demo/rooms/ID#token=TOKEN (the fragment
// never reaches a server or its logs) or paste the token when asked. The page then does what an app's browser
// client does: it calls the API with the token and joins the room with a single-use ticket it minted.
import { LocalRoom, attachSink } from "./lib/local-room.js";
import { CAPTURE_RATE, PLAYBACK_RATE } from "./protocol.js";

const roomId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
$("room").textContent = roomId;
$("name").value = params.get("name") || `guest-${Math.floor(Math.random() * 1000)}`;

// The operator's API token, if the service needs one: from the URL fragment once, then this tab's session.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has("token")) {
  sessionStorage.setItem("lunaToken", fragment.get("token"));
  history.replaceState(null, "", location.pathname + location.search); // out of the address bar and history
}
let token = sessionStorage.getItem("lunaToken");
const authHeaders = () => (token ? { Authorization: `Bearer ${token}` } : {});

async function authorizedFetch(url, init = {}) {
  let resp = await fetch(url, { ...init, headers: { ...(init.headers || {}), ...authHeaders() } });
  if (resp.status === 401) {
    const given = window.prompt("This Luna voice service needs its API token (LUNA_API_TOKEN):");
    if (!given) return resp;
    token = given.trim();
    sessionStorage.setItem("lunaToken", token);
    resp = await fetch(url, { ...init, headers: { ...(init.headers || {}), ...authHeaders() } });
  }
  return resp;
}

async function roomTicket() {
  const resp = await authorizedFetch(`/local/rooms/${encodeURIComponent(roomId)}/tickets`, { method: "POST" });
  const data = await resp.json();
  if (!resp.ok) throw new Error(`no room ticket: ${data.error.message}`);
  return data.ticket;
}

let room = null;
let ctx = null;
let recorder = null; // {node, chunks: Int16Array[]}
let recordBus = null;
const tiles = new Map(); // participant id -> {el, analyser}
const captions = new Map(); // key -> li
const status = (text) => ($("status").textContent = text);

function tile(id, name, kind) {
  if (tiles.has(id)) return tiles.get(id);
  const el = document.createElement("div");
  el.className = `tile ${kind}`;
  el.dataset.id = id;
  el.innerHTML = `<div class="avatar"></div><div class="name"></div><div class="meter"></div>`;
  el.querySelector(".avatar").textContent = (name || "?").slice(0, 1).toUpperCase();
  el.querySelector(".name").textContent = kind === "bot" ? `${name} (AI)` : name;
  $("grid").append(el);
  const t = { el, analyser: null };
  tiles.set(id, t);
  return t;
}

function dropTile(id) {
  const t = tiles.get(id);
  if (t) t.el.remove();
  tiles.delete(id);
}

function meterLoop() {
  const buf = new Float32Array(1024);
  for (const t of tiles.values()) {
    if (!t.analyser) continue;
    t.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    t.el.classList.toggle("speaking", rms > 0.01);
    t.el.querySelector(".meter").style.width = `${Math.min(100, rms * 400)}%`;
  }
  requestAnimationFrame(meterLoop);
}

async function micTrack() {
  const processing = params.get("processing") !== "0";
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    });
    return stream.getAudioTracks()[0];
  } catch (err) {
    status(`No microphone (${err.name}): you can listen but not speak.`);
    const dest = ctx.createMediaStreamDestination(); // silent track, so the others still see you
    return dest.stream.getAudioTracks()[0];
  }
}

async function join() {
  if (room) return room.id;
  ctx = ctx || new AudioContext({ sampleRate: PLAYBACK_RATE });
  await ctx.resume().catch(() => {});
  if (!recordBus) {
    await ctx.audioWorklet.addModule("/bot/audio/capture-worklet.js");
    recordBus = ctx.createGain();
  }
  const name = $("name").value.trim() || "guest";
  const ticket = await roomTicket();
  room = new LocalRoom({
    signalUrl: `${location.origin.replace(/^http/, "ws")}/local/rooms/${encodeURIComponent(roomId)}/signal`,
    name,
    ticket,
  });
  room.mic = micOn; // muted before joining: the track starts off and the others are told on join
  room.addEventListener("participant-joined", ({ detail }) =>
    tile(detail.id, detail.name, detail.kind).el.classList.toggle("muted", detail.mic === false),
  );
  room.addEventListener("participant-left", ({ detail }) => dropTile(detail.id));
  room.addEventListener("chat", ({ detail }) => chatCaption(detail.from, detail.text));
  room.addEventListener("mic", ({ detail }) => tiles.get(detail.participant.id)?.el.classList.toggle("muted", !detail.enabled));
  room.addEventListener("track", async ({ detail }) => {
    const { participant, stream } = detail;
    await attachSink(stream, { muted: false }); // you hear everyone through this element
    const source = ctx.createMediaStreamSource(stream);
    const t = tile(participant.id, participant.name, participant.kind);
    t.name = participant.name;
    t.source = source;
    t.analyser = ctx.createAnalyser();
    source.connect(t.analyser);
    source.connect(recordBus);
  });
  room.addEventListener("closed", ({ detail }) => {
    for (const id of [...tiles.keys()]) dropTile(id);
    room = null;
    toggle(false);
    // The hub says why when it closes the room on us (e.g. "service stopping").
    status(detail.expected || !detail.reason ? "Left the room." : `The room closed: ${detail.reason}.`);
  });
  const track = await micTrack();
  const id = await room.join(track);
  tile(id, `${name} (you)`, "self");
  toggle(true);
  status(`In the room as ${name}.`);
  return id;
}

function leave() {
  if (room) room.leave();
}

function toggle(joined) {
  $("join").disabled = joined;
  $("mic").disabled = !joined;
  $("leave").disabled = !joined;
}

function participants() {
  return room ? room.participants().map(({ id, name, mic }) => ({ id, name, mic })) : [];
}

let micOn = params.get("mic") !== "0"; // ?mic=0: join muted
function setMic(enabled) {
  micOn = !!enabled;
  if (room) room.setMic(micOn);
  $("mic").textContent = micOn ? "Mute microphone" : "Unmute microphone";
  $("mic").setAttribute("aria-pressed", String(!micOn));
}

// --- Luna: summon, dismiss, captions ------------------------------------------------------------------------
async function api(method, body, path = "") {
  const resp = await authorizedFetch(`/rooms/${encodeURIComponent(roomId)}/luna${path}`, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await resp.json();
  if (!resp.ok) {
    status(`Luna: ${data.error.message}`);
    throw new Error(data.error.message);
  }
  return data;
}

async function summon(body = { backend: "local" }) {
  const data = await api("POST", body);
  status(`Luna is ${data.state}.`);
  watch();
  return data;
}

const dismiss = () => api("DELETE");

async function say(text, interrupt = false) {
  const data = await api("POST", { text, interrupt }, "/say");
  status(`Luna will say it (${data.say_id}, ${data.state}).`);
  return data;
}

// The event stream, read with fetch rather than EventSource, which cannot send the Authorization header.
let watching = false;
async function watch() {
  if (watching) return;
  watching = true;
  try {
    // follow=room: the captions carry on with the room's next Luna after a dismiss and a new summon.
    const url = `/rooms/${encodeURIComponent(roomId)}/luna/events?follow=room`;
    const resp = await fetch(url, { headers: authHeaders() });
    if (resp.ok) {
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onEvent(JSON.parse(data));
        }
      }
    }
  } catch (err) {
    console.warn("event stream", err);
  }
  watching = false;
  setTimeout(watch, 2000); // not summoned yet, the stream ended, or the service restarted
}

function onEvent(ev) {
  if (ev.type === "turn") caption(ev.turn);
  else if (ev.type === "status") ev.status.turns.forEach(caption);
  else if (ev.type === "state") status(`Luna is ${ev.state}${ev.sub_code ? ` (${ev.sub_code})` : ""}.`);
  else if (ev.type === "closed") status(`Luna's events stopped: ${ev.reason}.`);
  else if (ev.type === "listen_only") status(ev.listen_only ? "Luna only listens until you say her name." : "Luna is back.");
}

function line(key) {
  if (!captions.has(key)) {
    const li = document.createElement("li");
    $("captions").append(li);
    captions.set(key, li);
  }
  return captions.get(key);
}

function chatCaption(from, text) {
  const li = document.createElement("li");
  li.className = "chat";
  li.innerHTML = `<span class="who"></span>: <span class="text"></span>`;
  li.querySelector(".who").textContent = `${from.name} (chat)`;
  li.querySelector(".who").classList.toggle("luna", from.kind === "bot");
  li.querySelector(".text").textContent = text;
  $("captions").append(li);
}

function caption(turn) {
  if (turn.kind && turn.kind !== "utterance") return speechCaption(turn);
  if (!turn.heard_text) return;
  const heard = line(`${turn.id}:heard`);
  heard.innerHTML = `<span class="who"></span>: <span class="text"></span> <span class="why"></span>`;
  heard.querySelector(".who").textContent = turn.speaker.name;
  heard.querySelector(".text").textContent = turn.heard_text;
  heard.querySelector(".why").textContent = turn.reason ? `(${turn.decision}: ${turn.reason})` : "";
  const said = turn.state === "speaking" || turn.state === "thinking" ? turn.reply_text : turn.spoken_text || turn.reply_text;
  if (said) {
    const reply = line(`${turn.id}:reply`);
    reply.innerHTML = `<span class="who luna">Luna</span>: <span class="text"></span>`;
    reply.querySelector(".text").textContent = said;
    reply.classList.toggle("interrupted", turn.interrupted);
    if (turn.interrupted) reply.title = "interrupted: only the part before the cut was heard";
  }
}

// Something Luna was given to say (greeting, say, goodbye): her line only, marked with its kind.
function speechCaption(turn) {
  const said = turn.state === "done" || turn.interrupted ? turn.spoken_text : turn.reply_text;
  if (!said) return;
  const li = line(`${turn.id}:reply`);
  li.innerHTML = `<span class="who luna">Luna</span> <span class="why"></span>: <span class="text"></span>`;
  li.querySelector(".why").textContent = `(${turn.kind})`;
  li.querySelector(".text").textContent = said;
  li.classList.toggle("interrupted", turn.interrupted);
}

// --- recorder: what this participant hears, mixed, 16 kHz -----------------------------------------------
function startRecording(only = null) {
  if (!recordBus) throw new Error("join the room first");
  let input = recordBus;
  if (only) {
    const t = [...tiles.values()].find((x) => x.name === only && x.source);
    if (!t) throw new Error(`nobody called ${only} is audible here`);
    input = t.source;
  }
  const node = new AudioWorkletNode(ctx, "luna-capture", { numberOfInputs: 1, outputChannelCount: [1] });
  const chunks = [];
  node.port.onmessage = ({ data }) => chunks.push(new Int16Array(data));
  input.connect(node);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);
  recorder = { node, chunks, input };
  $("rec").textContent = "Stop recording";
}

function stopRecording() {
  if (!recorder) return { sampleRate: CAPTURE_RATE, pcm: "" };
  recorder.input.disconnect(recorder.node);
  recorder.node.disconnect();
  const total = recorder.chunks.reduce((n, c) => n + c.length, 0);
  const pcm = new Int16Array(total);
  let off = 0;
  for (const c of recorder.chunks) {
    pcm.set(c, off);
    off += c.length;
  }
  recorder = null;
  $("rec").textContent = "Record what I hear";
  offerDownload(pcm);
  const bytes = new Uint8Array(pcm.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { sampleRate: CAPTURE_RATE, pcm: btoa(bin) };
}

function offerDownload(pcm) {
  const header = new DataView(new ArrayBuffer(44));
  const w = (o, s) => [...s].forEach((c, i) => header.setUint8(o + i, c.charCodeAt(0)));
  w(0, "RIFF"); header.setUint32(4, 36 + pcm.byteLength, true); w(8, "WAVEfmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, CAPTURE_RATE, true); header.setUint32(28, 2 * CAPTURE_RATE, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); w(36, "data"); header.setUint32(40, pcm.byteLength, true);
  const a = $("download");
  a.href = URL.createObjectURL(new Blob([header, pcm], { type: "audio/wav" }));
  a.download = `luna-demo-${roomId}.wav`;
  a.hidden = false;
}

$("join").onclick = () => join().catch((err) => status(String(err)));
$("leave").onclick = leave;
$("mic").onclick = () => setMic(!micOn);
$("summon").onclick = () => summon().catch(() => {});
$("dismiss").onclick = () => dismiss().catch(() => {});
$("rec").onclick = () => (recorder ? stopRecording() : startRecording());
$("say-form").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("say-text").value.trim();
  if (text) say(text, $("say-interrupt").checked).then(() => ($("say-text").value = "")).catch(() => {});
};

window.lunaDemo = {
  join, leave, participants, setMic, summon, dismiss, say, startRecording, stopRecording,
  captions: () => [...$("captions").querySelectorAll("li")].map((li) => li.textContent),
};
async function showEngines() {
  const ready = await (await fetch("/readyz")).json();
  const p = ready.providers;
  const demo = p.llm === "demo" ? " — the demo responder only repeats what it heard; it is not an AI" : "";
  $("engines").textContent = `Engines: hearing ${p.stt}, replies ${p.llm}, voice ${p.tts}${demo}.`;
}

setMic(micOn);
requestAnimationFrame(meterLoop);
showEngines().catch(() => {});
watch();
if (params.get("autojoin") === "1") join().catch((err) => status(String(err)));

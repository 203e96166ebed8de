// Room adapter for Cloudflare RealtimeKit (web SDK 2.0.2). Same interface as rooms/local.js:
//   createRoom(config, handlers) -> {join(track), leave(), unmute(), chat(text)}
//   config: {authToken, name?, baseURI?, watchdogMs?}
//   handlers: participantJoined, participantLeft, audioTrack({id, name, track, enabled}), state, log,
//             muted({muted, reason}), lastAudio(id)
// The SDK traps this adapter is shaped by (line numbers: dist/index.es.js 2.0.2):
// - it opens the microphone unless `defaults` says no;
// - it consumes audio only for the loudest peers unless we subscribe in MANUAL mode; every socket (re)join and
//   every rebuilt receive transport (l.22644) silently empties that subscription, and MANUAL never refills it;
// - it joins in ACTIVE_GRID, which subscribes video (l.18627), and per-participant video defaults to on (l.18684):
//   Luna would decode cameras and screen shares she never uses unless she unsubscribes them;
// - enableAudio swallows its failures; disableAudio (a host's mute, a preset change, leave) stops the custom track
//   it was given (l.14926, 16077), so the SDK only ever gets clones of Luna's playback track;
// - a second client for the same participant (re-init) shows up as another peer with Luna's own userId.

const SDK_URL = new URL("../node_modules/@cloudflare/realtimekit/dist/browser.js", import.meta.url);

// roomLeft states that end Luna's stay, with the reason Python shows. "disconnected" and "failed" are handled apart.
const LEFT_REASONS = {
  ended: "the meeting was ended for everyone",
  kicked: "a host removed Luna from the meeting",
  left: "RealtimeKit left the meeting",
  rejected: "the host declined Luna's request to join from the waiting room",
  "connected-meeting": "RealtimeKit moved Luna to another (breakout) meeting",
  stageLeft: "Luna was removed from the stage",
};
const WAITLISTED_REASON =
  "RealtimeKit put Luna in the waiting room: her preset has a waiting room; use a preset that bypasses it";
const OLD_CLIENT_LEAVE_MS = 5000; // how long a re-init waits for the dead client to leave
const WATCHDOG_MS = 30000; // a participant silent this long while others are heard is re-subscribed

function loadSdk() {
  if (window.RealtimeKitClient) return Promise.resolve(window.RealtimeKitClient);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = SDK_URL.href;
    script.onload = () =>
      window.RealtimeKitClient ? resolve(window.RealtimeKitClient) : reject(new Error("RealtimeKit SDK did not load"));
    script.onerror = () => reject(new Error(`could not load the RealtimeKit SDK from ${SDK_URL.pathname}`));
    document.head.append(script);
  });
}

/** Why `self.enableAudio(track)` left Luna silent: the SDK returns quietly in all of these cases. */
function notPublishedReason(self, track) {
  if (track.readyState !== "live") return "Luna's microphone track ended while RealtimeKit was publishing it";
  if (self.permissions?.canProduceAudio === "NOT_ALLOWED")
    return "Luna's preset does not allow producing audio (canProduceAudio NOT_ALLOWED)";
  if (self.stageStatus && self.stageStatus !== "ON_STAGE")
    return `Luna is not on stage (${self.stageStatus}), so RealtimeKit will not publish her microphone`;
  const published = self.audioTrack ? `track ${self.audioTrack.id}` : "no track";
  return `RealtimeKit did not publish Luna's microphone (audioEnabled=${self.audioEnabled}, publishing ${published})`;
}

const describe = (err) => (err && err.message ? err.message : String(err));
const withTimeout = (promise, ms) =>
  Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve("timeout"), ms))]);

export async function createRoom(config, handlers) {
  const RealtimeKitClient = await loadSdk();
  let meeting = null; // the current SDK client; replaced once when the SDK asks to be re-initialised
  let voice = null; // Luna's playback track: the SDK only ever gets clones, since disabling stops what it holds
  let reinitialised = false;
  let leaving = false;
  let muted = false; // someone else turned Luna's audio off
  const reported = new Set(); // peer ids announced to the page
  const watchdogMs = config.watchdogMs || WATCHDOG_MS;
  const resubscribed = new Map(); // peer id -> {at, tries}: the watchdog's re-subscriptions not yet answered
  const audioOff = new Set(); // peer ids whose audio is off (muted, or no consumer)
  const audioOnAt = new Map(); // peer id -> when their audio came back on: the watchdog counts silence from there

  // Another client of Luna's own participant (a re-initialised or stale page) is not a person in the meeting.
  const isLuna = (m, p) => !p || p.id === m.self.id || (!!m.self.userId && p.userId === m.self.userId);
  const people = (m) => [...m.participants.joined.values()].filter((p) => !isLuna(m, p));

  // MANUAL view mode; audio subscribed and video and screen-share video unsubscribed for each of `ids`, so Luna
  // hears everyone (not only the loudest few) and decodes no video. Every (re)join resets the SDK to ACTIVE_GRID
  // with video subscribed, and every rebuilt receive transport clears the audio, so this runs again then.
  async function subscribe(m, ids) {
    if (!ids.length) return;
    const hear = ids.filter((id) => !isLuna(m, m.participants.joined.get(id))); // not her own other client
    try {
      if (m.participants.viewMode !== "MANUAL") await m.participants.setViewMode("MANUAL");
      await m.participants.unsubscribe(ids, ["video", "screenshareVideo"]);
      if (hear.length) await m.participants.subscribe(hear, ["audio"]);
    } catch (err) {
      handlers.log("warn", `could not subscribe to the audio of ${ids.length} participant(s): ${describe(err)}`);
    }
  }

  // After a (re)join: peers that left while Luna was away get no participantLeft from the SDK (it clears its map
  // quietly), so drop them here; then subscribe to everyone present.
  async function sync(m) {
    const joined = m.participants.joined;
    for (const id of [...reported]) {
      if (!joined.get(id)) {
        reported.delete(id);
        handlers.participantLeft({ id });
      }
    }
    await subscribe(m, [...joined.keys()]);
  }

  function announce(p) {
    reported.add(p.id);
    handlers.participantJoined({ id: p.id, name: p.name });
    if (p.audioTrack) handlers.audioTrack({ id: p.id, name: p.name, track: p.audioTrack, enabled: p.audioEnabled });
  }

  // Luna's voice into the meeting: a fresh clone of the playback track each time, kept live by the page.
  async function publish(m) {
    const clone = voice.clone();
    await m.self.enableAudio(clone);
    if (m.self.audioEnabled !== true || m.self.audioTrack?.id !== clone.id) {
      const reason = notPublishedReason(m.self, clone);
      clone.stop();
      throw new Error(reason);
    }
  }

  function listen(m) {
    const current = () => m === meeting && !leaving;
    const joined = m.participants.joined;
    // A rejoin puts the SDK back in ACTIVE_GRID before it asks for consumers, which would then include video:
    // back to MANUAL at once (it does not refill the subscriptions; sync() does that after the rejoin).
    m.participants.on("viewModeChanged", ({ viewMode } = {}) => {
      if (!current() || viewMode === "MANUAL") return;
      m.participants.setViewMode("MANUAL").catch((err) => handlers.log("warn", `MANUAL view mode: ${describe(err)}`));
    });
    joined.on("participantJoined", (p) => {
      if (!current() || isLuna(m, p)) return;
      announce(p);
      if (m.self.roomState === "joined") subscribe(m, [p.id]); // during a (re)join, sync() subscribes everyone
    });
    joined.on("participantLeft", (p) => {
      if (!current() || !reported.has(p.id)) return;
      reported.delete(p.id);
      handlers.participantLeft({ id: p.id });
    });
    // Each participant's events are re-emitted on the map with the participant first. The track object can be
    // replaced (device change, new consumer); the page re-attaches when the track id changes. audioEnabled is
    // false while their producer is paused (they muted: the media node's producer-toggle broadcast, l.23903 →
    // setAudioEnabled, l.18498) or their consumer closed (l.19102, no track): the page captures nothing then.
    joined.on("audioUpdate", (p, { audioEnabled, audioTrack }) => {
      if (!current() || isLuna(m, p) || !(audioTrack || reported.has(p.id))) return;
      if (!audioEnabled) audioOff.add(p.id);
      else if (audioOff.delete(p.id)) audioOnAt.set(p.id, performance.now());
      handlers.audioTrack({ id: p.id, name: p.name, track: audioTrack || null, enabled: audioEnabled !== false });
    });
    // Luna never turns her own audio off while she stays, so audio going off is someone else: a host's mute or
    // mute-all, a preset change that removed audio, or the SDK's FORCE_MUTE_AUDIO.
    m.self.on("audioUpdate", ({ audioEnabled } = {}) => {
      // leaving (also when kicked or ended) takes her off stage before it disables her audio
      if (!current() || muted === !audioEnabled || m.self.stageStatus !== "ON_STAGE") return;
      muted = !audioEnabled;
      const reason = !muted
        ? null
        : m.self.permissions?.canProduceAudio !== "ALLOWED"
          ? "Luna's preset no longer allows audio"
          : "a host muted Luna";
      handlers.muted({ muted, reason });
    });
    m.self.on("roomJoined", ({ reconnected } = {}) => {
      if (!current() || !reconnected) return; // the first join is finished in connect()
      handlers.state("joined", null, null);
      sync(m);
      if (!muted && !m.self.audioEnabled) handlers.log("warn", notPublishedReason(m.self, voice));
    });
    // A receive transport that stayed disconnected or failed is rebuilt without a rejoin (no roomJoined): the
    // rebuild empties the audio subscriptions, so Luna would be deaf from then on.
    m.meta.on("mediaConnectionUpdate", ({ transport, state } = {}) => {
      if (!current() || transport !== "recv" || state !== "connected" || m.self.roomState !== "joined") return;
      sync(m);
    });
    m.self.on("waitlisted", () => {
      if (current()) handlers.state("left", "waitlisted", WAITLISTED_REASON);
    });
  }

  // "failed" (the SDK gave up reconnecting) is listened to only once the first join worked: an ICE failure in the
  // first join emits it from inside join(), which then fails on its own, and a re-init would race it.
  function listenForEnd(m) {
    m.self.on("roomLeft", ({ state } = {}) => {
      if (m !== meeting || leaving) return;
      if (state === "disconnected") handlers.state("reconnecting", "disconnected", "RealtimeKit is reconnecting");
      else if (state === "failed") reinitialise(m);
      else handlers.state("left", state, LEFT_REASONS[state] || `RealtimeKit left the room (${state})`);
    });
  }

  // Init, join and publish one SDK client. Throws with the reason when Luna did not end up audible in the room.
  async function connect() {
    const m = await RealtimeKitClient.init({
      authToken: config.authToken,
      defaults: { audio: false, video: false }, // never let the SDK open a microphone of its own
      ...(config.baseURI ? { baseURI: config.baseURI } : {}),
    });
    meeting = m;
    if (config.name) m.self.setName(config.name); // sent at socket join
    listen(m);
    try {
      await m.join();
      if (m.self.roomState === "waitlisted") throw new Error(WAITLISTED_REASON);
      if (m.self.roomState !== "joined") throw new Error(`RealtimeKit join ended in state ${m.self.roomState}`);
      await sync(m);
      if (!muted) await publish(m); // after a host's mute, a re-initialised Luna stays muted too
    } catch (err) {
      // Do not stay in the meeting (or its lobby) silent and half-joined; the page reports why.
      leaving = true;
      await m.leave().catch(() => {});
      throw err;
    }
    listenForEnd(m);
  }

  // "failed" means the SDK gave up reconnecting and must be initialised again; we try that once. The dead client
  // leaves first (bounded: its socket may be gone), or the room would see two Lunas and bill the ghost.
  async function reinitialise(old) {
    if (reinitialised) {
      handlers.state("failed", "disconnected", "RealtimeKit lost the connection again after re-initialising");
      return;
    }
    reinitialised = true;
    meeting = null;
    handlers.state("reconnecting", "failed", "RealtimeKit gave up reconnecting; initialising it again");
    const left = await withTimeout(
      old.leave().catch((err) => handlers.log("warn", `the failed RealtimeKit client did not leave: ${describe(err)}`)),
      OLD_CLIENT_LEAVE_MS,
    );
    if (left === "timeout") handlers.log("warn", "the failed RealtimeKit client did not leave in time; going on");
    if (leaving) return; // Python dismissed Luna meanwhile
    try {
      await connect();
    } catch (err) {
      handlers.state("failed", "disconnected", `RealtimeKit lost the connection and could not rejoin: ${describe(err)}`);
      return;
    }
    if (leaving) await meeting.leave(); // Python dismissed Luna while she was rejoining
    else handlers.state("joined", null, null);
  }

  // Guard for deafness we have no event for: a participant from whom no encoded audio frames arrived for
  // watchdogMs while someone else was heard is re-subscribed, with a warning. Someone who is really silent (a
  // hardware mute) would be re-subscribed again and again, so the wait doubles each time, up to 8 x watchdogMs,
  // until they are heard.
  async function watchdog() {
    const m = meeting;
    if (!m || leaving || m.self.roomState !== "joined") return;
    const now = performance.now();
    const heard = (id) => handlers.lastAudio(id) ?? now;
    const live = people(m).filter((p) => p.audioEnabled && reported.has(p.id));
    if (!live.some((p) => now - heard(p.id) < watchdogMs)) return; // nobody is heard: nothing to compare with
    for (const p of live) {
      const last = resubscribed.get(p.id);
      if (last && heard(p.id) > last.at) resubscribed.delete(p.id); // heard since the last re-subscribe
      const tries = resubscribed.get(p.id)?.tries ?? 0;
      const since = Math.max(heard(p.id), resubscribed.get(p.id)?.at ?? -Infinity, audioOnAt.get(p.id) ?? -Infinity);
      if (now - since < watchdogMs * Math.min(8, 2 ** tries)) continue;
      resubscribed.set(p.id, { at: now, tries: tries + 1 });
      const silentFor = Math.round((now - heard(p.id)) / 1000);
      handlers.log("warn", `no audio from ${p.name} for ${silentFor} s while others are heard; re-subscribing`);
      try {
        await m.participants.unsubscribe([p.id], ["audio"]);
        await new Promise((resolve) => setTimeout(resolve, 0)); // the SDK syncs its consumers on a 0 ms timer
        await m.participants.subscribe([p.id], ["audio"]);
      } catch (err) {
        handlers.log("warn", `could not re-subscribe ${p.name}: ${describe(err)}`);
      }
    }
  }
  const watchdogTimer = setInterval(watchdog, Math.max(250, watchdogMs / 4));

  return {
    async join(track) {
      voice = track;
      await connect();
    },
    /** Luna speaks again after someone else muted her: a fresh clone, if her preset still allows audio. */
    async unmute() {
      if (!muted || leaving || !meeting) return;
      try {
        await publish(meeting);
      } catch (err) {
        handlers.log("warn", `Luna could not unmute herself: ${describe(err)}`);
      }
    },
    // The SDK refuses (throws) when the preset may not send public text chat or the text is over its limit.
    async chat(text) {
      if (!meeting) throw new Error("not in the meeting");
      await meeting.chat.sendTextMessage(text.slice(0, meeting.chat.maxTextLimit));
    },
    async leave() {
      if (leaving) return;
      leaving = true;
      clearInterval(watchdogTimer);
      if (meeting) await meeting.leave();
    },
  };
}

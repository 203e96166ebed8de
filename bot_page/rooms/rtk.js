// Room adapter for Cloudflare RealtimeKit (web SDK 2.0.2). Same interface as rooms/local.js:
//   createRoom(config, handlers) -> {join(micTrack), leave()}
//   config: {authToken, name?, baseURI?}
// The SDK traps this adapter is shaped by: it opens the microphone unless `defaults` says no; it consumes audio only
// for the loudest peers unless we subscribe in MANUAL mode, and every (re)join silently resets that; enableAudio
// swallows its failures; and disableAudio (also called by leave) stops the custom track it was given.

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

export async function createRoom(config, handlers) {
  const RealtimeKitClient = await loadSdk();
  let meeting = null; // the current SDK client; replaced once when the SDK asks to be re-initialised
  let micTrack = null;
  let reinitialised = false;
  let leaving = false;
  const reported = new Set(); // peer ids announced to the page

  const describe = (err) => (err && err.message ? err.message : String(err));

  // MANUAL view mode and an explicit audio subscription, so Luna hears everyone and not only the loudest few.
  // Every socket (re)join resets the SDK to ACTIVE_GRID and clears the subscriptions, so this runs again then.
  async function subscribe(m, ids) {
    if (!ids.length) return;
    try {
      if (m.participants.viewMode !== "MANUAL") await m.participants.setViewMode("MANUAL");
      await m.participants.subscribe(ids, ["audio"]);
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
    if (p.audioTrack) handlers.audioTrack({ id: p.id, name: p.name, track: p.audioTrack });
  }

  function listen(m) {
    const current = () => m === meeting && !leaving;
    const joined = m.participants.joined;
    joined.on("participantJoined", (p) => {
      if (!current()) return;
      announce(p);
      if (m.self.roomState === "joined") subscribe(m, [p.id]); // during a (re)join, sync() subscribes everyone
    });
    joined.on("participantLeft", (p) => {
      if (!current()) return;
      reported.delete(p.id);
      handlers.participantLeft({ id: p.id });
    });
    // Each participant's events are re-emitted on the map with the participant first. The track object can be
    // replaced (device change, new consumer); the page re-attaches when the track id changes.
    joined.on("audioUpdate", (p, { audioTrack }) => {
      if (current() && audioTrack) handlers.audioTrack({ id: p.id, name: p.name, track: audioTrack });
    });
    m.self.on("roomJoined", ({ reconnected } = {}) => {
      if (!current() || !reconnected) return; // the first join is finished in connect()
      handlers.state("joined", null, null);
      sync(m);
      if (m.self.audioTrack?.id !== micTrack.id) handlers.log("warn", notPublishedReason(m.self, micTrack));
    });
    m.self.on("waitlisted", () => {
      if (current()) handlers.state("left", "waitlisted", WAITLISTED_REASON);
    });
    m.self.on("roomLeft", ({ state } = {}) => {
      if (!current()) return;
      if (state === "disconnected") handlers.state("reconnecting", "disconnected", "RealtimeKit is reconnecting");
      else if (state === "failed") reinitialise();
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
      await m.self.enableAudio(micTrack);
      if (m.self.audioEnabled !== true || m.self.audioTrack?.id !== micTrack.id) {
        throw new Error(notPublishedReason(m.self, micTrack));
      }
    } catch (err) {
      // Do not stay in the meeting (or its lobby) silent and half-joined; the page reports why.
      leaving = true;
      await m.leave().catch(() => {});
      throw err;
    }
  }

  // "failed" means the SDK gave up reconnecting and must be initialised again; we try that once. The dead client
  // is dropped, not left: leaving would disable (and so stop) the microphone track the new client publishes.
  async function reinitialise() {
    if (reinitialised) {
      handlers.state("failed", "disconnected", "RealtimeKit lost the connection again after re-initialising");
      return;
    }
    reinitialised = true;
    meeting = null;
    handlers.state("reconnecting", "failed", "RealtimeKit gave up reconnecting; initialising it again");
    try {
      await connect();
    } catch (err) {
      handlers.state("failed", "disconnected", `RealtimeKit lost the connection and could not rejoin: ${describe(err)}`);
      return;
    }
    if (leaving) await meeting.leave(); // Python dismissed Luna while she was rejoining
    else handlers.state("joined", null, null);
  }

  return {
    async join(track) {
      micTrack = track;
      await connect();
    },
    async leave() {
      if (leaving) return;
      leaving = true;
      if (meeting) await meeting.leave();
    },
  };
}

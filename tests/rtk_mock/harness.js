// Test-only init script for Luna's page (Playwright's context.add_init_script; production never loads it).
//
// It puts the RealtimeKit SDK's own offline mock (@cloudflare/realtimekit/mock, setupStubs) under the real SDK
// that rooms/rtk.js loads, and gives the test a "server" side to drive it. setupStubs replaces window.WebSocket
// with a mock socket bound to an in-page mock socket server (window.RTK_MOCK_SERVER) that answers the SDK's
// join requests, window.RTCPeerConnection with a stub that "connects" at once, and window.fetch with one that
// answers {} to everything. The test (tests/test_rtk_page.py) serves the mock module with a few documented fixes.
//
// The stubs go in when the page calls RealtimeKitClient.init, not at page load: they replace window.WebSocket,
// and the page opens its real bridge to Python (a WebSocket) before it loads the SDK.
//
// On top of the mock, the harness plays the media server (SFU) where the mock is silent, through the SDK's own
// socket and transport paths: it answers consume requests (recording which producers the SDK asked for) and
// delivers a track for each audio consumer as the receive transport's "track" event; it can flip the stub
// peer connections' ICE state, and push media broadcasts (a host muting Luna, a participant muting themselves).
//
// A delivered track is as real as a media server's: the tone (or recording) is sent through a loopback pair of
// real RTCPeerConnections, Opus-encoded, and what is delivered is the receiving connection's remote track, whose
// RTCRtpReceiver has encoded frames. The pair is made with the constructor the page had before the stubs went in
// (the page's own, which registers every connection), as the SDK's own connection would be. A silent producer's
// loopback sends no packets at all: a consumer that delivers nothing.
//
// window.__rtkMockParams (set by the test in an earlier init script):
//   {mockParticipants: [{peerId, displayName, stageStatus, producerStates?: [{producerId, kind, hz?, audioUrl?, …}]}],
//    rest: {"/path": json body}, waitlisted: bool, failDuringJoin: bool}
(() => {
  const params = window.__rtkMockParams;
  const realFetch = window.fetch.bind(window); // the mock replaces fetch; speech files come through the real one
  const NODE_MODULES = new URL("/bot/node_modules/", location.href);
  const record = (window.__rtkHarness = {
    inits: [], // the options the page passed to RealtimeKitClient.init
    meetings: [], // the clients init returned
    requests: [], // {url, authorization} of the SDK's HTTP requests
    joins: [], // the SDK's socket join requests, decoded: {peerId, displayName}
    consumes: [], // producers the SDK asked the media server to consume: {peerId, producerId}
    pcs: [], // every (stub) RTCPeerConnection the SDK made, oldest first; `recv` marks receive transports
    delivered: [], // tracks the harness delivered to receive transports: {producerId, kind, trackId}
    chats: [], // the SDK's public chat messages, decoded: {payloadType (0 = text), text}
    getUserMedia: 0,
  });

  const mediaDevices = navigator.mediaDevices;
  if (mediaDevices) {
    const getUserMedia = mediaDevices.getUserMedia.bind(mediaDevices);
    mediaDevices.getUserMedia = (constraints) => {
      record.getUserMedia += 1;
      return getUserMedia(constraints);
    };
  }

  // --- the socket protocol: message.v1.SocketMessage {event=1 uint32, id=2 string, payload=3 bytes} ------------
  // Event numbers and message layouts are the SDK 2.0.2's (dist/index.es.js): socket room events are
  // (0 << 16) + n, plugin events (2 << 16) + n, media-node events 0x03000000 | n.
  const EVENTS = { joinRoom: 3, leaveRoom: 4, kick: 30, kickAll: 31, waitingRoomRequestDenied: 37 };
  const MEDIA = { consume: 0x03000000 | 3, joinRoom: 0x03000000 | 16, peerProducerToggleBroadcast: 0x03000000 | 28 };
  const KIND = { audio: 0, video: 1 }; // media.ProducerKind
  const CHAT_TO_ROOM = (1 << 16) + 1; // chat events are (1 << 16) + n; sendMessageToRoom is 1
  let pb; // @protobuf-ts/runtime, loaded with the mock

  function fields(bytes) {
    const reader = new pb.BinaryReader(bytes);
    const out = {};
    while (reader.pos < reader.len) {
      const [no, type] = reader.tag();
      if (type === pb.WireType.Varint) out[no] = reader.uint32();
      else if (type === pb.WireType.LengthDelimited) (out[no] ||= []).push(reader.bytes());
      else reader.skip(type);
    }
    return out;
  }
  const first = (list) => (list ? list[0] : undefined);
  const text = (bytes) => (bytes ? new TextDecoder().decode(bytes) : undefined);
  const LD = () => pb.WireType.LengthDelimited;

  // socket.room.Peer {peer_id=1, user_id=2, display_name=3, stage_type=4 (1 = ON_STAGE), waitlisted=8}
  function peerInfo({ peerId, name = "", userId = `user-${peerId}` }) {
    const peer = new pb.BinaryWriter().tag(1, LD()).string(peerId).tag(2, LD()).string(userId);
    peer.tag(3, LD()).string(name).tag(4, pb.WireType.Varint).int32(1);
    return new pb.BinaryWriter().tag(1, LD()).bytes(peer.finish()).finish(); // socket.room.PeerInfoResponse {peer=1}
  }

  // media.ProducerState {producer_id=1, kind=2, pause=3, screen_share=4, app_data=5}
  function producerState({ producerId, kind, pause = false, screenShare = false }) {
    const w = new pb.BinaryWriter().tag(1, LD()).string(producerId).tag(2, pb.WireType.Varint).int32(KIND[kind]);
    return w.tag(3, pb.WireType.Varint).bool(pause).tag(4, pb.WireType.Varint).bool(screenShare).tag(5, LD()).string("{}").finish();
  }

  function push(event, payload) {
    const message = new pb.BinaryWriter().tag(1, pb.WireType.Varint).uint32(event);
    message.tag(3, pb.WireType.LengthDelimited).bytes(payload);
    const bytes = message.finish();
    window.RTK_MOCK_SERVER.emit("message", bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }

  // A remote track as a browser receives it: `source` (null: a sender with no track, so no packets) sent through a
  // loopback pair of real peer connections.
  let PeerConnection = null; // the page's RTCPeerConnection, taken before the stubs replace it
  const loopbacks = []; // every pair, so a test can count them
  async function loopback(source) {
    const tx = new PeerConnection();
    const rx = new PeerConnection();
    loopbacks.push({ tx, rx });
    if (source) tx.addTrack(source, new MediaStream([source]));
    else tx.addTransceiver("audio", { direction: "sendonly" });
    const received = new Promise((resolve) => (rx.ontrack = ({ track }) => resolve(track)));
    const described = async (pc) => { // the description with all its candidates (no trickling between the two)
      await pc.setLocalDescription();
      if (pc.iceGatheringState !== "complete") {
        await new Promise((resolve) => pc.addEventListener("icegatheringstatechange", () =>
          pc.iceGatheringState === "complete" && resolve()));
      }
      return pc.localDescription;
    };
    await rx.setRemoteDescription(await described(tx));
    await tx.setRemoteDescription(await described(rx));
    const track = await received;
    return { track, close: () => (tx.close(), rx.close()) };
  }

  // What the media server hands the SDK for a consumed audio producer: a tone, different per producer, or
  // silence until the test makes the participant say their recording (audioUrl, server.speak).
  const tones = new Map(); // producerId -> {ctx, out, recording?}
  function toneTrack(producerId, hz, audioUrl) {
    if (!tones.has(producerId)) {
      const ctx = new AudioContext({ sampleRate: 48000 });
      const out = ctx.createMediaStreamDestination();
      const entry = { ctx, out };
      if (audioUrl) {
        entry.recording = realFetch(audioUrl)
          .then((r) => r.arrayBuffer())
          .then((data) => ctx.decodeAudioData(data));
      } else if (hz) {
        const osc = new OscillatorNode(ctx, { frequency: hz });
        osc.connect(out);
        osc.start();
      } // hz 0: a microphone that sends nothing at all
      tones.set(producerId, entry);
    }
    return hz || audioUrl ? tones.get(producerId).out.stream.getAudioTracks()[0].clone() : null;
  }

  // The media server's answer to a consume request (media.edge.ConsumePeersRequest {requests=1
  // [{producing_peer_id=1, producer_id=3}]}): media.edge.ConsumePeerResponse {status=1, consumer_ids_map=2
  // {map=1 <producer_id, media.ConsumerState {consumer_id=1, producer_state=2, producer_track=3 {track_id=1,
  // producer_id=2, stream_id=3}}>}}. Each audio consumer's track then arrives as the receive transport's "track"
  // event, keyed by the stream id as the transceiver's mid, as a browser's RTCPeerConnection would deliver it.
  function answerConsume(payload) {
    const requests = (fields(payload)[1] || []).map((r) => fields(r));
    const map = new pb.BinaryWriter();
    const tracks = [];
    for (const request of requests) {
      const peerId = text(first(request[1]));
      const producerId = text(first(request[3]));
      record.consumes.push({ peerId, producerId });
      const producer = findProducer(peerId, producerId);
      if (!producer) continue;
      const streamId = `stream-${producerId}-${record.consumes.length}`;
      const track = new pb.BinaryWriter().tag(1, LD()).string(`track-${producerId}`).tag(2, LD()).string(producerId);
      track.tag(3, LD()).string(streamId);
      const state = new pb.BinaryWriter().tag(1, LD()).string(`consumer-${streamId}`);
      state.tag(2, LD()).bytes(producerState(producer)).tag(3, LD()).bytes(track.finish());
      const entry = new pb.BinaryWriter().tag(1, LD()).string(producerId).tag(2, LD()).bytes(state.finish());
      map.tag(1, LD()).bytes(entry.finish());
      tracks.push({ producer, streamId });
    }
    const response = new pb.BinaryWriter().tag(1, pb.WireType.Varint).bool(true).tag(2, LD()).bytes(map.finish());
    setTimeout(() => deliver(tracks), 0); // after the SDK has read the answer and waits for the tracks
    return response.finish();
  }

  function findProducer(peerId, producerId) {
    const peer = (params.mockParticipants || []).find((p) => p.peerId === peerId);
    const state = peer && (peer.producerStates || []).find((s) => s.producerId === producerId);
    if (!state) return undefined;
    const kind = state.kind === 1 ? "video" : "audio";
    return { producerId, kind, screenShare: !!state.screenShare, hz: state.hz, audioUrl: state.audioUrl };
  }

  async function deliver(tracks) {
    const pc = record.pcs.filter((p) => p.recv).at(-1);
    for (const { producer, streamId } of tracks) {
      if (producer.kind !== "audio") continue; // no video is ever made here: a video consumer is the failure
      const { track, close } = await loopback(toneTrack(producer.producerId, producer.hz, producer.audioUrl));
      const receiver = { track, getStats: async () => new Map(), getSynchronizationSources: () => [] };
      const transceiver = { mid: streamId, receiver, stop() {}, direction: "recvonly" };
      record.delivered.push({ producerId: producer.producerId, kind: track.kind, trackId: track.id });
      pc.tracks.push(track);
      pc.loopbacks.push(close);
      pc.emit("track", { track, transceiver, streams: [] });
    }
  }

  const sockets = []; // the server's side of each SDK socket

  // What the test can make the server do. Each goes through the SDK's own socket or transport handling.
  record.server = {
    // A peer joining or leaving is also in (or out of) the room's peer list a rejoin reads (getRoomPeersInfo).
    peerJoined: (peerId, name, userId) => {
      params.mockParticipants.push({ peerId, displayName: name, stageStatus: 1, ...(userId ? { userId } : {}) });
      push(EVENTS.joinRoom, peerInfo({ peerId, name, userId }));
    },
    peerLeft: (peerId) => {
      const at = params.mockParticipants.findIndex((p) => p.peerId === peerId); // in place: the mock holds this list
      if (at >= 0) params.mockParticipants.splice(at, 1);
      push(EVENTS.leaveRoom, peerInfo({ peerId }));
    },
    kick: () => push(EVENTS.kick, peerInfo({ peerId: "" })),
    kickAll: () => push(EVENTS.kickAll, peerInfo({ peerId: "" })),
    waitlistDenied: () => push(EVENTS.waitingRoomRequestDenied, new Uint8Array(0)),
    dropSocket: () => {
      for (const socket of sockets.splice(0)) socket.close({ code: 4000, reason: "the test drops the connection" });
    },
    // A host mutes Luna: the media node broadcasts her audio producer paused, initiated by another peer
    // (media.edge.PeerProducerToggleBroadcastResponse {participant_id=1, producer_state=2, initiator=3}).
    hostMutes: (initiator = "peer-host") => {
      const self = record.meetings.at(-1).self;
      const state = producerState({ producerId: "producer-id", kind: "audio", pause: true });
      const w = new pb.BinaryWriter().tag(1, LD()).string(self.id).tag(2, LD()).bytes(state).tag(3, LD()).string(initiator);
      push(MEDIA.peerProducerToggleBroadcast, w.finish());
    },
    // A participant mutes or unmutes their microphone: the media node broadcasts their audio producer paused or
    // resumed, initiated by themselves (the same PeerProducerToggleBroadcastResponse as hostMutes).
    peerMic: (peerId, enabled) => {
      const state = producerState({ producerId: `${peerId}-mic`, kind: "audio", pause: !enabled });
      const w = new pb.BinaryWriter().tag(1, LD()).string(peerId).tag(2, LD()).bytes(state).tag(3, LD()).string(peerId);
      push(MEDIA.peerProducerToggleBroadcast, w.finish());
    },
    // A participant says their recording once, on the microphone the SDK consumes.
    speak: async (peerId) => {
      const { ctx, out, recording } = tones.get(`${peerId}-mic`);
      const source = new AudioBufferSourceNode(ctx, { buffer: await recording });
      source.connect(out);
      source.start();
    },
    // A remote track of a tone at `hz`, through its own loopback (for a test that swaps a participant's track).
    remoteTrack: async (hz) => {
      const ctx = new AudioContext({ sampleRate: 48000 });
      const out = ctx.createMediaStreamDestination();
      const osc = new OscillatorNode(ctx, { frequency: hz });
      osc.connect(out);
      osc.start();
      return (await loopback(out.stream.getAudioTracks()[0])).track;
    },
    loopbacks: () => loopbacks.map(({ tx, rx }) => [tx.connectionState, rx.connectionState]),
    // The newest receive transport's ICE state changes (the browser's iceconnectionstatechange).
    recvIce: (state) => {
      const pc = record.pcs.filter((p) => p.recv).at(-1);
      pc.iceConnectionState = state;
      pc.emit("iceconnectionstatechange");
    },
  };

  function recordJoins(server) {
    server.on("connection", (socket) => {
      sockets.push(socket);
      socket.on("message", (data) => {
        if (typeof data === "string") return;
        const message = fields(new Uint8Array(data));
        if (message[1] === CHAT_TO_ROOM && message[3]) {
          const chat = fields(first(message[3])); // socket.chat.SendChatMessageToRoomRequest {payload_type=1, payload=2}
          record.chats.push({ payloadType: chat[1] ?? 0, text: text(first(chat[2])) });
        }
        if (message[1] !== EVENTS.joinRoom || !message[3]) return;
        const peer = fields(first(fields(first(message[3]))[1])); // socket.room.JoinRoomRequest {peer=1}
        record.joins.push({ peerId: text(first(peer[1])), displayName: text(first(peer[3])) });
      });
    });
  }

  // Requests the mock has no answer for come here (see MOCK_FIXES in the test); an empty payload is what the
  // mock gives otherwise.
  window.__rtkMockAnswer = (request) => {
    if (request.event === MEDIA.consume) return answerConsume(request.payload);
    if (request.event === MEDIA.joinRoom && params.failDuringJoin) {
      // What the SDK's ROOM_NODE_FAILED handler does (l.24414), while its first media join is in flight.
      const self = record.meetings.at(-1).self;
      self.roomState = "failed";
      self.emit("roomLeft", { state: "failed" });
    }
    return new Uint8Array(0);
  };

  // --- HTTP: the mock's fetch answers {}, which 2.0.2's init cannot use for the participant's details and the
  // ICE servers; those paths get the test's server-shaped answers (params.rest).
  function answer(mockFetch) {
    return (input, init) => {
      const url = new URL(String(input instanceof Request ? input.url : input));
      const headers = new Headers(init && init.headers);
      record.requests.push({ url: url.host + url.pathname, authorization: headers.get("authorization") });
      const body = params.rest[url.pathname];
      if (body === undefined) return mockFetch(input, init);
      const json = { "content-type": "application/json" };
      return Promise.resolve(new Response(JSON.stringify(body), { status: 200, headers: json }));
    };
  }

  // The stub peer connection, recorded; the one the SDK listens to for "track" events is a receive transport.
  function recordPeerConnections() {
    const Stub = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends Stub {
      constructor(...args) {
        super(...args);
        record.pcs.push(this);
        // The stub never stores a remote description; the SDK reads the current one (its mids) to close consumers.
        this.remoteDescription = { type: "offer", sdp: "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" };
        this.tracks = []; // delivered remote tracks end when their peer connection closes, as in a browser
        this.loopbacks = []; // ... and their loopbacks close with it
        const close = this.close.bind(this);
        this.close = () => {
          for (const track of this.tracks) track.stop();
          for (const closeLoopback of this.loopbacks) closeLoopback();
          return close();
        };
        const add = this.addEventListener;
        this.addEventListener = (type, listener) => {
          if (type === "track") this.recv = true;
          return add.call(this, type, listener);
        };
      }
    };
  }

  async function installStubs() {
    pb = await import(new URL("@protobuf-ts/runtime/build/es2015/index.js", NODE_MODULES));
    const mock = await import(new URL("@cloudflare/realtimekit/dist/ClientMock.es.js", NODE_MODULES));
    // The SDK's first request (participant details) carries its peer id in the tracing-id header. The mock
    // server must answer the socket join with that id, or the SDK would take Luna for another participant.
    window.fetch = (input, init) => {
      const peerId = new Headers(init && init.headers).get("tracing-id");
      PeerConnection = window.RTCPeerConnection;
      mock.setupStubs({ peerId, mockParticipants: params.mockParticipants });
      recordPeerConnections();
      recordJoins(window.RTK_MOCK_SERVER);
      window.fetch = answer(window.fetch);
      return window.fetch(input, init);
    };
  }

  let client;
  // browser.js declares `var RealtimeKitClient = …` at global scope: with this accessor already on window the
  // declaration keeps it and the assignment calls the setter, so the real client class passes through here.
  Object.defineProperty(window, "RealtimeKitClient", {
    configurable: true,
    get: () => client,
    set: (real) => {
      client = real;
      const init = real.init.bind(real);
      real.init = async (options) => {
        record.inits.push(JSON.parse(JSON.stringify(options)));
        await installStubs();
        const meeting = await init(options);
        record.meetings.push(meeting);
        return meeting;
      };
    },
  });
})();

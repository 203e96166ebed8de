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
// window.__rtkMockParams (set by the test in an earlier init script):
//   {mockParticipants: [{peerId, displayName, stageStatus}], rest: {"/path": json body}, waitlisted: bool}
(() => {
  const params = window.__rtkMockParams;
  const NODE_MODULES = new URL("/bot/node_modules/", location.href);
  const record = (window.__rtkHarness = {
    inits: [], // the options the page passed to RealtimeKitClient.init
    meetings: [], // the clients init returned
    requests: [], // {url, authorization} of the SDK's HTTP requests
    joins: [], // the SDK's socket join requests, decoded: {peerId, displayName}
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
  // (0 << 16) + n, plugin events (2 << 16) + n.
  const EVENTS = { joinRoom: 3, leaveRoom: 4, kick: 30, kickAll: 31, waitingRoomRequestDenied: 37 };
  let pb; // @protobuf-ts/runtime, loaded with the mock

  function fields(bytes) {
    const reader = new pb.BinaryReader(bytes);
    const out = {};
    while (reader.pos < reader.len) {
      const [no, type] = reader.tag();
      if (type === pb.WireType.Varint) out[no] = reader.uint32();
      else if (type === pb.WireType.LengthDelimited) out[no] = reader.bytes();
      else reader.skip(type);
    }
    return out;
  }
  const text = (bytes) => (bytes ? new TextDecoder().decode(bytes) : undefined);

  // socket.room.Peer {peer_id=1, user_id=2, display_name=3, stage_type=4 (1 = ON_STAGE), waitlisted=8}
  function peerInfo({ peerId, name = "" }) {
    const LD = pb.WireType.LengthDelimited;
    const peer = new pb.BinaryWriter().tag(1, LD).string(peerId).tag(2, LD).string(`user-${peerId}`);
    peer.tag(3, LD).string(name).tag(4, pb.WireType.Varint).int32(1);
    return new pb.BinaryWriter().tag(1, LD).bytes(peer.finish()).finish(); // socket.room.PeerInfoResponse {peer=1}
  }

  function push(event, payload) {
    const message = new pb.BinaryWriter().tag(1, pb.WireType.Varint).uint32(event);
    message.tag(3, pb.WireType.LengthDelimited).bytes(payload);
    const bytes = message.finish();
    window.RTK_MOCK_SERVER.emit("message", bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }

  const sockets = []; // the server's side of each SDK socket

  // What the test can make the server do. Each goes through the SDK's own socket handling.
  record.server = {
    peerJoined: (peerId, name) => push(EVENTS.joinRoom, peerInfo({ peerId, name })),
    peerLeft: (peerId) => push(EVENTS.leaveRoom, peerInfo({ peerId })),
    kick: () => push(EVENTS.kick, peerInfo({ peerId: "" })),
    kickAll: () => push(EVENTS.kickAll, peerInfo({ peerId: "" })),
    waitlistDenied: () => push(EVENTS.waitingRoomRequestDenied, new Uint8Array(0)),
    dropSocket: () => {
      for (const socket of sockets.splice(0)) socket.close({ code: 4000, reason: "the test drops the connection" });
    },
  };

  function recordJoins(server) {
    server.on("connection", (socket) => {
      sockets.push(socket);
      socket.on("message", (data) => {
        if (typeof data === "string") return;
        const message = fields(new Uint8Array(data));
        if (message[1] !== EVENTS.joinRoom || !message[3]) return;
        const peer = fields(fields(message[3])[1]); // socket.room.JoinRoomRequest {peer=1}
        record.joins.push({ peerId: text(peer[1]), displayName: text(peer[3]) });
      });
    });
  }

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

  async function installStubs() {
    pb = await import(new URL("@protobuf-ts/runtime/build/es2015/index.js", NODE_MODULES));
    const mock = await import(new URL("@cloudflare/realtimekit/dist/ClientMock.es.js", NODE_MODULES));
    // The SDK's first request (participant details) carries its peer id in the tracing-id header. The mock
    // server must answer the socket join with that id, or the SDK would take Luna for another participant.
    window.fetch = (input, init) => {
      const peerId = new Headers(init && init.headers).get("tracing-id");
      mock.setupStubs({ peerId, mockParticipants: params.mockParticipants });
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

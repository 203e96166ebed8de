// Room adapter for the local room (our WebRTC mesh on loopback). Same interface as rooms/rtk.js:
//   createRoom(config, handlers) -> {join(micTrack), leave(), chat(text)}
//   handlers: participantJoined({id,name}), participantLeft({id}), audioTrack({id,name,track,enabled}),
//             state(state, subCode, reason), log(level, message)
// `enabled` is false while the person's microphone is muted (the hub's peer_mic); track null keeps the last one.
import { LocalRoom } from "../lib/local-room.js";

export async function createRoom(config, handlers) {
  const room = new LocalRoom({
    signalUrl: config.signalUrl, name: config.name, kind: "bot", iceFilter: config.iceFilter, ticket: config.ticket,
  });
  room.addEventListener("participant-joined", ({ detail }) => handlers.participantJoined(detail));
  room.addEventListener("participant-left", ({ detail }) => handlers.participantLeft(detail));
  room.addEventListener("track", ({ detail }) =>
    handlers.audioTrack({
      id: detail.participant.id, name: detail.participant.name, track: detail.track, enabled: detail.enabled,
    }),
  );
  room.addEventListener("mic", ({ detail }) =>
    handlers.audioTrack({ id: detail.participant.id, name: detail.participant.name, track: null, enabled: detail.enabled }),
  );
  room.addEventListener("closed", ({ detail }) => {
    if (!detail.expected) handlers.state("left", "room_ended", `local room hub closed (${detail.code})`);
  });
  return {
    join: (micTrack) => room.join(micTrack),
    leave: async () => room.leave(),
    chat: async (text) => room.chat(text),
  };
}

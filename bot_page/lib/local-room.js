// Local room: a WebRTC mesh on loopback, signalled through the service's hub (/local/rooms/{id}/signal).
// Used by Luna's page (through rooms/local.js) and by the human demo page. It knows nothing of Luna.
//
// Hub protocol (JSON over WebSocket): we send {type:"join", name, kind, ticket?, mic}; the hub answers
// {type:"welcome", id, peers:[{id,name,kind}], ice} and then relays {type:"peer_joined"|"peer_left", peer} and
// {type:"signal", from, data}. The newcomer makes the offer to every peer already there, so a pair never
// negotiates from both ends at once. When the service has an API token, `ticket` (a single-use room ticket from
// POST /local/rooms/{id}/tickets) is required, and the hub closes with 4401 without one.
// Chat: we send {type:"chat", text}; everyone else gets {type:"chat", from, text} and this emits a "chat" event
// {from: {id, name, kind}, text}.
// Microphone: setMic(enabled) turns our track off or on and sends {type:"mic", enabled}; everyone else gets
// {type:"peer_mic", peer} and this emits a "mic" event {participant, enabled}. Peers carry `mic` (true unless
// muted) in welcome and peer_joined too, so a newcomer knows who is muted, as RealtimeKit's audioEnabled says.

export class LocalRoom extends EventTarget {
  constructor({ signalUrl, name, kind = "human", iceFilter = null, ticket = null }) {
    super();
    this.signalUrl = signalUrl;
    this.ticket = ticket;
    this.name = name;
    this.kind = kind;
    this.iceFilter = iceFilter; // "loopback" keeps only 127.0.0.1 candidates; otherwise the hub's choice
    this.id = null;
    this.peers = new Map(); // id -> {id, name, kind, mic, pc, stream}
    this.ws = null;
    this.localTrack = null;
    this.mic = true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  participants() {
    return [...this.peers.values()].map(({ id, name, kind, mic }) => ({ id, name, kind, mic }));
  }

  join(localTrack) {
    this.localTrack = localTrack;
    if (localTrack) localTrack.enabled = this.mic;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.signalUrl);
      this.ws = ws;
      let welcomed = false;
      ws.onopen = () =>
        ws.send(JSON.stringify({ type: "join", name: this.name, kind: this.kind, ticket: this.ticket, mic: this.mic }));
      ws.onerror = () => {
        if (!welcomed) reject(new Error(`cannot reach the local room hub at ${this.signalUrl}`));
      };
      ws.onclose = (ev) => {
        for (const id of [...this.peers.keys()]) this.dropPeer(id);
        this.emit("closed", { code: ev.code, reason: ev.reason, expected: this.leaving === true });
        if (!welcomed) reject(new Error(`local room hub closed the connection (${ev.code} ${ev.reason})`));
      };
      // Handle messages strictly in order: an ICE candidate must not race the description it belongs to.
      let queue = Promise.resolve();
      ws.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        queue = queue.then(() => handle(msg)).catch((err) => console.error("local room signal failed", err));
      };
      const handle = async (msg) => {
        if (msg.type === "welcome") {
          welcomed = true;
          this.id = msg.id;
          this.iceFilter = this.iceFilter || msg.ice;
          for (const peer of msg.peers) {
            this.addPeer(peer);
            await this.call(peer.id);
          }
          resolve(this.id);
        } else if (msg.type === "peer_joined") {
          this.addPeer(msg.peer);
        } else if (msg.type === "peer_left") {
          this.dropPeer(msg.peer.id);
        } else if (msg.type === "signal") {
          await this.onSignal(msg.from, msg.data);
        } else if (msg.type === "chat") {
          this.emit("chat", { from: msg.from, text: msg.text });
        } else if (msg.type === "peer_mic") {
          const peer = this.peers.get(msg.peer.id);
          if (peer && peer.mic !== msg.peer.mic) {
            peer.mic = msg.peer.mic;
            this.emit("mic", { participant: { id: peer.id, name: peer.name, kind: peer.kind }, enabled: peer.mic });
          }
        }
      };
    });
  }

  chat(text) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error("not in the local room");
    this.ws.send(JSON.stringify({ type: "chat", text }));
  }

  // Muted, nothing is sent (as RealtimeKit pauses a muted producer, so the others receive no packets), the
  // microphone stays open for the unmute, and the others are told.
  setMic(enabled) {
    if (this.mic === !!enabled) return;
    this.mic = !!enabled;
    if (this.localTrack) this.localTrack.enabled = this.mic;
    for (const { pc } of this.peers.values()) this.sendTrack(pc);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "mic", enabled: this.mic }));
  }

  sendTrack(pc) {
    const sender = pc.getSenders().find((s) => s.track === this.localTrack || s.track === null);
    if (sender && this.localTrack) sender.replaceTrack(this.mic ? this.localTrack : null).catch(() => {});
  }

  leave() {
    this.leaving = true;
    if (this.ws) this.ws.close(1000, "left");
  }

  addPeer({ id, name, kind, mic = true }) {
    if (this.peers.has(id)) return this.peers.get(id);
    const pc = new RTCPeerConnection({ iceServers: [] });
    const peer = { id, name, kind, mic, pc, stream: null };
    this.peers.set(id, peer);
    if (this.localTrack) pc.addTrack(this.localTrack, new MediaStream([this.localTrack]));
    else pc.addTransceiver("audio", { direction: "recvonly" });
    if (!this.mic) this.sendTrack(pc);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && this.keepCandidate(candidate.candidate)) {
        this.send(id, { candidate: candidate.toJSON() });
      }
    };
    pc.ontrack = ({ track, streams }) => {
      peer.stream = streams[0] || new MediaStream([track]);
      this.emit("track", { participant: { id, name, kind }, track, stream: peer.stream, enabled: peer.mic });
    };
    pc.onconnectionstatechange = () => this.emit("connection", { id, state: pc.connectionState });
    this.emit("participant-joined", { id, name, kind });
    return peer;
  }

  dropPeer(id) {
    const peer = this.peers.get(id);
    if (!peer) return;
    this.peers.delete(id);
    peer.pc.close();
    this.emit("participant-left", { id: peer.id, name: peer.name, kind: peer.kind });
  }

  keepCandidate(line) {
    if (this.iceFilter !== "loopback" || !line) return true;
    return / 127\.0\.0\.1 /.test(line);
  }

  send(to, data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "signal", to, data }));
    }
  }

  async call(id) {
    const { pc } = this.peers.get(id);
    await pc.setLocalDescription(await pc.createOffer());
    this.send(id, { sdp: pc.localDescription.toJSON() });
  }

  async onSignal(from, data) {
    const peer = this.peers.get(from);
    if (!peer) return;
    const { pc } = peer;
    if (data.sdp) {
      await pc.setRemoteDescription(data.sdp);
      if (data.sdp.type === "offer") {
        await pc.setLocalDescription(await pc.createAnswer());
        this.send(from, { sdp: pc.localDescription.toJSON() });
      }
    } else if (data.candidate && this.keepCandidate(data.candidate.candidate)) {
      try {
        await pc.addIceCandidate(data.candidate);
      } catch (err) {
        console.warn("ICE candidate refused", err);
      }
    }
  }
}

// Chromium only feeds a remote WebRTC track to WebAudio while a media element is playing it.
export async function attachSink(stream, { muted = true } = {}) {
  const el = new Audio();
  el.muted = muted;
  el.srcObject = stream;
  try {
    await el.play();
  } catch (err) {
    console.warn("audio element refused to play", err);
  }
  return el;
}

// GENERATED from src/luna_voice/bridge/protocol.py by `python -m luna_voice.bridge.protocol`; do not edit.
// The bridge's wire contract as the page sees it (tests/test_wire_contract.py checks it is current).
export const VERSION = 1;
export const KIND_PLAYBACK = 2;
export const KIND_CAPTURE_OPUS = 3;
export const HEADER_BYTES = 16;
export const OFFSET_VERSION = 0;
export const OFFSET_KIND = 1;
export const OFFSET_PARTICIPANT = 2;
export const OFFSET_SEQ = 4;
export const OFFSET_TIMESTAMP = 8;
export const CAPTURE_RATE = 16000;
export const PLAYBACK_RATE = 48000;
export const CAPTURE_FRAME_SAMPLES = 320;
export const PLAYBACK_FRAME_SAMPLES = 960;
export const MAX_FRAME_BYTES = 65536;

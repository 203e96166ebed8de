"""A person's Opus packets, as the page forwards them, into the pipeline's frames: TOC parsing, order, gaps (loss
and DTX), a new stream after a track swap, and junk (``bridge.opus_stream``, ``bridge.capture``, real libopus)."""

from __future__ import annotations

import numpy as np
import pytest

from luna_voice.bridge import opus_stream as os_
from luna_voice.bridge.capture import Capture
from luna_voice.bridge.opus_av import OpusDecoder
from opus_packets import OpusSender, tone

FRAME = os_.OUT_FRAME_BYTES


class Counted:
    """The real decoder, counting how many were made (a fresh one per RTP stream)."""

    made = 0

    def __new__(cls) -> OpusDecoder:  # type: ignore[misc]
        Counted.made += 1
        return OpusDecoder()


def run(capture: Capture, packets: list[tuple[int, bytes]], t0: float = 0.0) -> list[tuple[float, bytes]]:
    """Feed packets as they would arrive in real time: one per 20 ms, the page stamp in ms on the same clock."""
    out = []
    for k, (rtp, payload) in enumerate(packets):
        now = t0 + (k + 1) * 0.02
        out += capture.packet(rtp, payload, now * 1000, now)
    return out


def rms(frames: list[tuple[float, bytes]]) -> np.ndarray:
    return np.array([np.sqrt(np.mean(np.frombuffer(f, np.int16).astype(float) ** 2)) for _, f in frames])


@pytest.mark.parametrize(
    ("toc", "samples"),
    [
        (bytes([15 << 3]), 960),  # hybrid fullband 20 ms, one frame: what Chromium sends
        (bytes([3 << 3]), 2880),  # SILK narrowband 60 ms
        (bytes([31 << 3 | 1]), 1920),  # CELT 20 ms, two frames
        (bytes([16 << 3 | 3, 4]), 480),  # CELT 2.5 ms, four frames (code 3)
    ],
)
def test_packet_length_comes_from_the_toc_byte(toc, samples):
    assert os_.packet_samples(toc + b"\x00" * 20) == samples


@pytest.mark.parametrize(
    "payload",
    [b"", bytes([16 << 3 | 3]), bytes([16 << 3 | 3, 0]), bytes([3 << 3 | 3, 3]), bytes([15 << 3]) * 1501],
)
def test_payloads_that_cannot_be_opus_are_junk(payload):
    with pytest.raises(os_.OpusJunk):
        os_.packet_samples(payload)


def test_an_empty_payload_is_skipped_not_junk():
    capture = Capture(OpusDecoder)
    (rtp, payload), *_ = OpusSender().packets(tone(0.02))
    assert capture.packet(rtp, b"", 20.0, 0.02) == [] and capture.due() is None
    assert len(capture.packet(rtp, payload, 20.0, 0.02)) == 1


def test_a_packet_libopus_refuses_is_junk_and_the_stream_goes_on():
    sender = OpusSender()
    packets = sender.packets(tone(0.2))
    capture = Capture(OpusDecoder)
    run(capture, packets[:3])
    with pytest.raises(os_.OpusJunk):  # code 3, padding flag set, its length missing: RFC 6716 §3.2.5
        capture.packet(packets[3][0], bytes([15 << 3 | 3, 0x41]), 80.0, 0.08)
    assert capture.packet(packets[4][0], packets[4][1], 100.0, 0.1)


def test_a_stream_in_order_becomes_20_ms_frames_stamped_on_the_page_clock():
    capture = Capture(OpusDecoder)
    frames = run(capture, OpusSender().packets(tone(1.0)))
    assert len(frames) == 50
    assert all(len(f) == FRAME for _, f in frames)
    stamps = np.array([t for t, _ in frames])
    assert np.diff(stamps) == pytest.approx(20.0) and stamps[-1] == pytest.approx(1000.0, abs=1.5)
    level = rms(frames[5:])
    assert np.all(level > 0.3 * 32767 / np.sqrt(2) * 0.7), level.min()  # the tone, not silence


def test_longer_packets_are_cut_into_20_ms_frames_stamped_back_from_their_arrival():
    capture = Capture(OpusDecoder)
    (rtp0, first), (rtp1, second) = OpusSender(frame_ms=60).packets(tone(0.12))
    assert capture.packet(rtp0, first, 1000.0, 1.0) and len(capture.packet(rtp1, second, 1060.0, 1.06)) == 3
    stamps = [
        t for t, _ in capture.packet(rtp1 + 2880, OpusSender(frame_ms=60).packets(tone(0.06))[0][1], 1120.0, 1.12)
    ]
    assert stamps == pytest.approx([1080.0, 1100.0, 1120.0], abs=1.5)


def test_lost_packets_become_silence_and_time_keeps_its_length():
    packets = OpusSender().packets(tone(1.0))
    capture = Capture(OpusDecoder)
    kept = packets[:20] + packets[25:]  # 100 ms lost
    frames = []
    for rtp, payload in kept:
        k = packets.index((rtp, payload))
        frames += capture.packet(rtp, payload, (k + 1) * 20.0, (k + 1) * 0.02)
    assert len(frames) == 50
    level = rms(frames)
    assert np.sum(level < 50) == 5, level.round()  # the gap, as silent frames
    assert np.all(level[25:] > 1000)


def test_a_late_or_duplicated_packet_is_dropped():
    packets = OpusSender().packets(tone(0.4))
    capture = Capture(OpusDecoder)
    swapped = [*packets[:5], packets[6], packets[5], *packets[7:], packets[10]]
    frames = run(capture, swapped)
    assert capture.dropped_late == 2  # packet 5 came after 6; packet 10 twice
    assert len(frames) == 20  # 19 packets, and 20 ms of silence where packet 5 was missing when 6 came


def test_a_new_rtp_stream_gets_a_fresh_decoder():
    Counted.made = 0
    capture = Capture(Counted)
    run(capture, OpusSender(rtp0=5_000_000).packets(tone(0.2)))
    assert Counted.made == 1
    frames = run(capture, OpusSender(rtp0=1_000).packets(tone(0.2)), t0=0.2)  # swapped track: timestamps jump back
    assert Counted.made == 2 and len(frames) >= 9
    run(capture, OpusSender(rtp0=2_000_000_000).packets(tone(0.2)), t0=0.4)  # ... or far ahead
    assert Counted.made == 3


def test_silence_is_filled_while_nothing_arrives_then_stops():
    """A sender in DTX sends (nearly) nothing: tick makes the speaker's time pass; after PAUSE_S with no packet at
    all (a muted sender), it stops."""
    capture = Capture(OpusDecoder)
    packets = OpusSender().packets(tone(0.2))
    frames = run(capture, packets)  # the last arrives at 0.2 s
    assert capture.due() == pytest.approx(0.2 + os_.SLACK_S + os_.FILL_STEP_S)
    assert capture.tick(0.2 + os_.SLACK_S) == []  # not yet a gap
    filled = capture.tick(0.5)
    assert (
        len(filled) == 12 and rms(filled[1:]).max() == 0
    )  # (the resampler's last 1 ms of tone goes first)  # (0.5 - 0.2 - 0.06) s, in 40 ms steps
    assert [t for t, _ in filled][-1] == pytest.approx(200.0 + 240.0)
    assert len(capture.tick(10.0)) == 40 - 12 and capture.due() is None  # 0.8 s, then it stops
    # speech resumes 10 s later (a long DTX pause or a mute): a fresh decoder, no back-filled silence
    later = OpusSender(rtp0=packets[-1][0] + 960 + 48_000 * 10).packets(tone(0.1))
    assert len(run(capture, later, t0=10.2)) == 5
    assert len(frames) == 10


def test_a_packet_that_arrives_inside_filled_silence_is_played():
    packets = OpusSender().packets(tone(0.4))
    capture = Capture(OpusDecoder)
    run(capture, packets[:10])
    assert len(capture.tick(0.35)) == 4  # packets 10.. are late: 80 ms of silence filled
    late = capture.packet(packets[10][0], packets[10][1], 360.0, 0.36)
    assert capture.dropped_late == 0 and len(late) == 1 and rms(late)[0] > 1000


def test_a_dtx_senders_packet_every_400_ms_keeps_its_time_passing():
    sender = OpusSender(dtx=True)
    speech = sender.packets(tone(0.2))
    quiet = sender.packets(bytes(2 * 16_000))  # a second of silence: the encoder's DTX packets (a few bytes)
    capture = Capture(OpusDecoder)
    run(capture, speech)  # the last arrives at 0.2 s
    filled = capture.tick(0.6)
    rtp, payload = quiet[19]  # WebRTC sends one DTX packet every 400 ms: the one for 0.2-0.6 s
    assert len(payload) <= 3
    filled += capture.packet(rtp, payload, 600.0, 0.6)
    filled += capture.tick(1.3)  # more than PAUSE_S since speech, not since the last packet
    assert capture.due() is not None
    # to 1.3 s less the slack, silence (libopus decodes the DTX packet after the gap as a short fade of the tone)
    assert len(filled) == 52 and np.sum(rms(filled) < 50) >= 50

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
    """A sender that stopped (a mute, a long DTX pause) sends nothing: tick makes the speaker's time pass, from
    SLACK_S after the last packet reached the page; after PAUSE_S of fill it stops."""
    capture = Capture(OpusDecoder)
    packets = OpusSender().packets(tone(0.2))
    frames = run(capture, packets)  # the last arrives at 0.2 s
    assert capture.due() == pytest.approx(0.2 + os_.SLACK_S + os_.FILL_STEP_S)
    assert capture.tick(0.2 + os_.SLACK_S) == []  # not yet a gap
    filled = capture.tick(0.2 + os_.SLACK_S + 0.25)  # whole 40 ms steps
    assert len(filled) == 12 and rms(filled[1:]).max() == 0  # 240 ms (the resampler's last 1 ms of tone first)
    assert [t for t, _ in filled][-1] == pytest.approx(200.0 + 240.0)
    assert len(capture.tick(10.0)) == 40 - 12 and capture.due() is None  # 0.8 s, then it stops
    # speech resumes 10 s later (a long DTX pause or a mute): a fresh decoder, no back-filled silence
    later = OpusSender(rtp0=packets[-1][0] + 960 + 48_000 * 10).packets(tone(0.1))
    assert len(run(capture, later, t0=10.2)) == 5
    assert len(frames) == 10


def test_a_late_burst_neither_lengthens_the_timeline_nor_delays_later_audio():
    """What broke the first encoded capture: the page -> Python path stalls (a busy loop, a loaded machine), then
    delivers the packets the page received meanwhile all at once. A tick that runs before the burst is read must
    not take the stall for a gap: the slack is measured from the page's receive stamps, not from Python's arrival
    times. Every packet is heard once, in order, and the audio after the burst keeps its place on the page's
    clock."""
    packets = OpusSender().packets(tone(1.0))
    capture = Capture(OpusDecoder)
    frames = run(capture, packets[:10])  # on time: one per 20 ms, the last at 0.2 s
    for stall in (0.08, 0.16, 0.24):  # a hiccup of the page -> Python path, the tick's timer firing first
        frames += capture.tick(0.2 + stall)
    assert frames == run(Capture(OpusDecoder), packets[:10])  # nothing filled
    for k in range(10, 22):  # the page received these one per 20 ms; Python reads them at 0.44 s, all at once
        frames += capture.packet(packets[k][0], packets[k][1], (k + 1) * 20.0, 0.44)
    frames += run(capture, packets[22:], t0=0.44)  # and on time again
    assert capture.dropped_late == 0 and len(frames) == 50  # one second of audio is one second of frames
    stamps = np.array([t for t, _ in frames])
    assert np.diff(stamps) == pytest.approx(20.0) and stamps[-1] == pytest.approx(1000.0, abs=1.5)
    assert np.all(rms(frames[5:]) > 1000)  # no silence anywhere: the tone throughout


def test_a_packet_whose_time_was_filled_is_dropped_never_played_after_the_fill():
    """A sender that really went quiet for longer than the slack, then packets that the page received in that
    time turn up (or a stall longer than the slack): the filled silence stands, they are dropped, and the packets
    after them land where their RTP timestamps say, not after the fill."""
    packets = OpusSender().packets(tone(1.0))
    capture = Capture(OpusDecoder)
    frames = run(capture, packets[:10])  # the last at 0.2 s
    now = 0.2 + os_.SLACK_S + 0.09
    frames += capture.tick(now)  # 80 ms filled (whole 40 ms steps): packets 10-13's time
    for k in range(10, 16):
        frames += capture.packet(packets[k][0], packets[k][1], (k + 1) * 20.0, now)
    assert capture.dropped_late == 4
    frames += run(capture, packets[16:], t0=0.32)
    assert len(frames) == 50  # the timeline is the packets' own: not one frame longer
    level = rms(frames)
    assert np.sum(level[10:14] < 50) == 4 and np.all(level[14:] > 1000), level.round()  # 80 ms, and only those


def test_a_dtx_senders_packet_every_400_ms_keeps_its_time_passing():
    """WebRTC sends one DTX packet every 400 ms while a speaker is silent: the fill keeps their time passing,
    SLACK_S behind the page's clock, so the next DTX packet lands after it, not inside it."""
    sender = OpusSender(dtx=True)
    speech = sender.packets(tone(0.2))
    quiet = sender.packets(bytes(2 * 16_000))  # a second of silence: the encoder's DTX packets (a few bytes)
    capture = Capture(OpusDecoder)
    run(capture, speech)  # the last arrives at 0.2 s
    filled = capture.tick(0.6)  # 0.4 s without a packet: the fill runs SLACK_S behind
    rtp, payload = quiet[19]  # the DTX packet for 0.2-0.6 s
    assert len(payload) <= 3
    filled += capture.packet(rtp, payload, 600.0, 0.6)  # is not late: the fill did not reach its time
    assert capture.dropped_late == 0
    filled += capture.tick(0.6 + os_.SLACK_S + 0.41)  # then nothing: 0.4 s more, less the slack
    assert capture.due() is not None
    # 0.8 s of silence (libopus decodes the DTX packet after the gap as a short fade of the tone)
    assert len(filled) == 40 and np.sum(rms(filled) < 50) >= 38


def test_a_sender_whose_rtp_clock_stood_still_while_muted_is_heard_from_its_first_packet():
    """Chromium's sender does not advance its RTP timestamps while muted: after the unmute they go on from the
    mute, inside the time filled meanwhile. The page's stamps show the packets are not late (they reached the page
    long after their timestamps' place), so the stream resumes, the gap measured by the page's clock."""
    sender = OpusSender()
    capture = Capture(OpusDecoder)
    frames = run(capture, sender.packets(tone(0.2)))  # the last at 0.2 s, then the mute
    frames += capture.tick(2.0)  # PAUSE_S filled
    later = sender.packets(tone(0.2))  # unmuted at 2.0 s: timestamps right after the first 0.2 s
    resumed = run(capture, later, t0=2.0)
    assert capture.dropped_late == 0 and len(resumed) == 10 + (2.0 - 0.2 - os_.PAUSE_S) / 0.02
    assert np.all(rms(resumed[-9:]) > 1000)  # every packet after the unmute heard
    assert [t for t, _ in resumed][-1] == pytest.approx(2200.0, abs=1.5)

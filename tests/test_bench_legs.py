"""The bench's leg analysis (bench/legs.py) on a synthetic stream whose every delay is known: it must find each
click's own sample from the RTP timestamps, however late the source says it was, and split the rest."""

from __future__ import annotations

import numpy as np
import pytest
from bench import legs
from bench import signals as sg

SSRC, RTP0, T0 = 1234, 2**32 - 5 * 960, 1_700_000_000.0  # the RTP timestamps wrap inside the stream


def _stream(
    positions: np.ndarray, late_s: float, ear_s: float, *, receivers: bool
) -> tuple[list[list[object]], list[list[object]], np.ndarray, np.ndarray]:
    """Frames of a 48 kHz track whose sample 0 was taken at T0 (RTP timestamp RTP0 + 10 ms of samples); each frame
    leaves the encoder 1-4 ms after its last sample. Clicks at ``positions`` (samples); the source claims them
    ``late_s`` after they were taken, the ear hears them ``ear_s`` after."""
    rng = np.random.default_rng(3)
    start = 480  # the sent audio's sample 0 sits half a frame into the stream
    loud = {int((start + p) // 960) for p in positions}
    sent, received = [], []
    for k in range(int((start + positions.max()) // 960) + 10):
        rtp = (RTP0 + k * 960) % 2**32
        last = T0 + ((k + 1) * 960 - start) / 48_000
        out = last + rng.uniform(0.001, 0.004)
        level = 0.3 if k in loud else 0.0
        sent.append([True, SSRC, rtp, 1000 * out, 1000 * (last - 0.010), None, level])
        if receivers:
            received.append([False, SSRC, rtp, 1000 * (out + 0.002), None, 1000 * (out + 0.001), level])
    taken = T0 + positions / 48_000
    return sent, received, taken + late_s, np.full(len(positions), ear_s - late_s)


@pytest.mark.parametrize("receivers", [True, False])
def test_each_click_is_timed_from_its_own_sample(receivers: bool) -> None:
    positions = np.round(np.cumsum(np.random.default_rng(1).uniform(0.22, 0.42, 20)) * 48_000)
    sent, received, src, total = _stream(positions, late_s=0.031, ear_s=0.080, receivers=receivers)

    stamps = legs.per_click(src, total, sent, received, positions, np.zeros(len(src)))
    summary = legs.summary(stamps)

    assert summary["n"] == 20
    assert summary["receiver_n"] == (20 if receivers else 0)
    # -31 ms plus the fastest encode (1 ms here), by which the sample clock runs late; 20 clicks place the
    # stream's start to within about a millisecond (each click says only which 20 ms frame holds it).
    assert -32 <= summary["source→sample"] <= -28
    assert 77 <= summary["sample→ear"] <= 81
    assert 0 < summary["sample→encoded"] < 21
    if receivers:
        assert summary["encoded→transform"] == pytest.approx(2, abs=0.01)


def test_clicks_in_separate_replies_are_placed_per_reply() -> None:
    """Row 3: each reply starts anywhere in the stream, so each has its own start; a click's place counts from
    its reply's first sample."""
    reply = np.array([1000.0, 12_000.0, 30_000.0, 41_000.0])
    positions = np.concatenate([reply, reply + 250_000.5])  # the second reply 5.2 s on, off the frame grid
    sent, received, src, total = _stream(positions, late_s=-0.005, ear_s=0.070, receivers=True)
    place = np.concatenate([reply, reply])
    turn = np.repeat([0, 1], len(reply))

    summary = legs.summary(legs.per_click(src, total, sent, received, place, turn))

    assert summary["n"] == 8
    assert 3 <= summary["source→sample"] <= 9  # 5 + 1 ms; four clicks per reply place it less tightly


def test_a_listener_faster_than_the_speaker_s_own_recorder_is_still_matched() -> None:
    """Row 2 times Luna from the speaker's recorder, which hears the microphone tens of ms late; encoded capture
    can beat it. Those clicks must be found at their negative lag, not paired with later ones or lost."""
    src = 7.0 + np.cumsum(np.random.default_rng(1).uniform(0.15, 0.45, 60))
    heard = src - 0.02
    assert not np.allclose(sg.match_lag(src, heard), -0.02)  # the old matcher: lost, or paired with later clicks
    assert np.allclose(sg.match_lag(src, heard, min_lag=-0.2), -0.02)

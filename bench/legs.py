"""Where a one-way latency goes, leg by leg, from the encoded frames the pages stamped (``harness.FrameStamps``).

A click is found in the sender's encoded frames by its audio level (the RTP audio level of the frame's raw PCM, so
Opus's look-ahead does not move it): the loudest frame of each run of loud ones. The RTP timestamps count the sent
track's samples, so the clicks' known places in the sent audio (the speaker's WAV, Luna's reply) pin down each
click's own sample on the stream's clock. Per click, every time on the shared wall clock:

- source: the speaker's own recorder (row 1), or when Python meant the click to play (row 3);
- sample: when the click's sample was taken into the sent stream (the microphone's, or her page's render);
- capture: the capture time Chromium gave the frame holding it;
- encoded: the frame left the Opus encoder (the sender's transform saw it);
- received, transform (with receiver stamps): its packet reached the listener's network stack (Chromium's receive
  time), and the listener's transform saw the frame on its way to the jitter buffer;
- ear: the click at the listener's recorder.

Legs on either side of a frame depend on where the click sits inside its 20 ms; their sum does not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import signals as sg

LOUD = 0.05  # audio level (linear, 1 = 0 dBov) of a frame holding a click; silence is ~0, a click's frame ~0.3
EARLY_S = 0.5  # matching allows a frame stamp this much before its click's source time
RTP_RATE = 48_000  # Opus's RTP clock: one tick per sample of the sent track
RTP_FRAME = 960  # a 20 ms frame
STAMPS = ("source", "sample", "capture", "encoded", "received", "transform", "ear")  # per click, along the path


@dataclass(frozen=True)
class Frames:
    """One page's stamped frames of one direction: RTP stream, timestamp, and wall-clock seconds."""

    ssrc: np.ndarray
    rtp: np.ndarray
    out: np.ndarray  # the transform saw it (sender: left the encoder; receiver: on its way to the jitter buffer)
    capture: np.ndarray  # sender only: Chromium's capture time (NaN elsewhere)
    receive: np.ndarray  # receiver only: the packet's arrival at the network stack (NaN elsewhere)
    level: np.ndarray

    @staticmethod
    def of(rows: list[list[Any]], sent: bool) -> Frames:
        mine = [r for r in rows if bool(r[0]) == sent]
        col = lambda i: np.array([np.nan if r[i] is None else r[i] for r in mine], float)  # noqa: E731
        ms = lambda i: col(i) / 1000  # noqa: E731
        return Frames(col(1), col(2), ms(3), ms(4), ms(5), col(6))

    def stream(self, ssrc: float) -> Frames:
        keep = self.ssrc == ssrc
        order = np.argsort(self.out[keep], kind="stable")
        pick = lambda a: a[keep][order]  # noqa: E731
        return Frames(*(pick(a) for a in (self.ssrc, self.rtp, self.out, self.capture, self.receive, self.level)))


def click_frames(f: Frames) -> np.ndarray:
    """Indices of the loudest frame of each run of consecutive loud frames (one per click)."""
    loud = np.flatnonzero(np.nan_to_num(f.level) > LOUD)
    out: list[int] = []
    for k in loud:
        if out and (f.rtp[k] - f.rtp[out[-1]]) % 2**32 == RTP_FRAME:
            if f.level[k] > f.level[out[-1]]:
                out[-1] = int(k)
            continue
        out.append(int(k))
    return np.array(out, int)


def sample_clock(f: Frames) -> tuple[np.ndarray, float]:
    """The sender's RTP timestamps unwrapped, and the wall-clock s of RTP sample 0: a frame leaves the encoder
    after its last sample was taken, so the earliest (out − last sample) over the stream is the clock's offset
    (late by the shortest encode, well under a millisecond)."""
    rtp = f.rtp[0] + (f.rtp - f.rtp[0]) % 2**32
    return rtp, float(np.min(f.out - (rtp + RTP_FRAME) / RTP_RATE))


def _start(lo: np.ndarray) -> float:
    """RTP timestamp of a group's position 0 from each click's (frame start − position): a click lies inside its
    frame, so the start is in [lo, lo + 960) for every click; the middle of where they overlap."""
    if np.ptp(lo) < RTP_FRAME:
        return float(lo.max() + lo.min() + RTP_FRAME) / 2
    return float(np.median(lo) + RTP_FRAME / 2)  # a click matched to a neighbouring frame: the middle of the rest


def per_click(
    src: np.ndarray,
    total: np.ndarray,
    sent: list[list[Any]],
    received: list[list[Any]],
    positions: np.ndarray,
    groups: np.ndarray,
) -> np.ndarray:
    """Wall-clock s of each stamp (columns, in ``STAMPS`` order) per click (rows; NaN where not found). ``src``:
    the clicks' source times; ``total``: their latency to the ear (the row's, NaN where lost); ``sent`` and
    ``received``: the sender's and the listener's stamped frames, of the one stream both saw; ``positions``: each
    click's place in the sent audio, in 48 kHz samples from the start of its ``groups`` (a WAV, a reply), which
    the stream's RTP timestamps count, so the "sample" stamp is when the click's own sample was taken."""
    tx, rx = Frames.of(sent, True), Frames.of(received, False)
    out = np.full((len(src), len(STAMPS)), np.nan)
    common = set(tx.ssrc.tolist()) & set(rx.ssrc.tolist())
    if not tx.ssrc.size or len(common) > 1:
        return out
    # Without receiver stamps, the sender's longest stream: each peer's encoder takes the same track.
    streams, counts = np.unique(tx.ssrc, return_counts=True)
    ssrc = common.pop() if common else float(streams[counts.argmax()])
    tx, rx = tx.stream(ssrc), rx.stream(ssrc)
    clicks = click_frames(tx)
    if not clicks.size:
        return out
    rtp, zero = sample_clock(tx)
    early = src - EARLY_S  # a frame may leave the encoder before its click reaches the speaker's own recorder
    lag = sg.match_lag(early, tx.out[clicks])
    at_rx = {int(r): i for i, r in enumerate(rx.rtp)}
    frame = np.full(len(src), -1)
    for i in np.flatnonzero(np.isfinite(lag)):
        frame[i] = clicks[int(np.argmin(np.abs(tx.out[clicks] - (early[i] + lag[i]))))]
    for g in np.unique(groups):
        mine = np.flatnonzero((groups == g) & (frame >= 0))
        if not mine.size:
            continue
        start = _start(rtp[frame[mine]] - positions[mine])
        for i in mine:
            k = frame[i]
            j = at_rx.get(int(tx.rtp[k]))
            rx_receive, rx_out = (rx.receive[j], rx.out[j]) if j is not None else (np.nan, np.nan)
            sample = zero + (start + positions[i]) / RTP_RATE
            out[i] = [src[i], sample, tx.capture[k], tx.out[k], rx_receive, rx_out, src[i] + total[i]]
    return out


def summary(stamps: np.ndarray) -> dict[str, Any]:
    """p50 ms from each stamp to the next, and over the legs the table shows: source → sample (how late the
    click's sample was taken against its source time), sample → encoded, encoded → ear, which the receiver's stamps
    split into encoded → transform (the network and the hop to the listener's transform) and transform → ear;
    n: clicks found in the sent frames, receiver_n: also in the received ones."""
    p50 = lambda a, b: sg.pct(1000 * (stamps[:, STAMPS.index(b)] - stamps[:, STAMPS.index(a)]), 50)  # noqa: E731
    legs = [("source", "sample"), ("sample", "encoded"), ("encoded", "transform"), ("transform", "ear")]
    return {
        "n": int(np.isfinite(stamps[:, STAMPS.index("sample")]).sum()),
        "receiver_n": int(np.isfinite(stamps[:, STAMPS.index("transform")]).sum()),
        "steps_p50_ms": {f"{a}→{b}": p50(a, b) for a, b in itertools.pairwise(STAMPS)},
        **{f"{a}→{b}": p50(a, b) for a, b in [*legs, ("source", "encoded"), ("encoded", "ear"), ("sample", "ear")]},
        "source→ear": p50("source", "ear"),
    }

"""Signals the benchmark plays and the analysis of what comes out: click trains, tones, speech; click times,
silences, lags and similarity. Pure numpy (float32 in -1..1); no I/O except writing WAV files and espeak-ng."""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

RATE = 16_000  # analysis rate: what the bridge carries and what the recorders return
MIC_RATE = 48_000  # rate of the WAV files the fake microphones play, and of Luna's playback


def click(rate: int) -> np.ndarray:
    """A 5 ms Hann-windowed 2 kHz burst: short enough to time to a millisecond, tonal enough to survive Opus."""
    n = int(rate * 0.005)
    t = np.arange(n) / rate
    return (0.9 * np.hanning(n) * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)


def click_offsets(n: int, seed: int, start: float = 0.01, lo: float = 0.22, hi: float = 0.42) -> np.ndarray:
    """Click times (s) with random intervals: unlike a periodic train, only the true lag lines them all up."""
    gaps = np.random.default_rng(seed).uniform(lo, hi, n - 1)
    return start + np.concatenate([[0.0], np.cumsum(gaps)])


def click_train(offsets: np.ndarray, rate: int, tail_s: float = 0.1) -> np.ndarray:
    """Clicks centred on ``offsets`` (s; the first at least 3 ms in)."""
    c = click(rate)
    out = np.zeros(int((offsets[-1] + tail_s) * rate) + len(c), np.float32)
    for t in offsets:
        start = round(t * rate) - len(c) // 2
        assert start >= 0, "the first click needs room before its centre"
        out[start : start + len(c)] += c
    return out


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    fade = int(0.01 * rate)
    x[:fade] *= np.linspace(0, 1, fade)
    x[-fade:] *= np.linspace(1, 0, fade)
    return x.astype(np.float32)


def speech(text: str, rate: int, peak: float = 0.3) -> np.ndarray:
    """``text`` spoken by espeak-ng, trimmed of silence and scaled to ``peak`` (quieter than the clicks)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
        pcm, src_rate = read_wav(path)
    x = soxr.resample(pcm, src_rate, rate)
    voiced = np.flatnonzero(np.abs(x) > 0.01)
    x = x[voiced[0] : voiced[-1] + 1]
    return (x * (peak / np.abs(x).max())).astype(np.float32)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as r:
        assert r.getsampwidth() == 2 and r.getnchannels() == 1, f"{path}: not 16-bit mono"
        return np.frombuffer(r.readframes(r.getnframes()), "<i2").astype(np.float32) / 32768, r.getframerate()


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(x))
    return path


def to_int16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def from_int16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


# ---------------------------------------------------------------------------------------------------- analysis
def click_peaks(x: np.ndarray, rate: int = RATE, rel: float = 0.25, refractory_s: float = 0.1) -> np.ndarray:
    """Sample indices of click centres: maxima of the 2 ms energy envelope above ``rel`` of the loudest one."""
    if len(x) == 0:
        return np.zeros(0, int)
    win = max(1, int(rate * 0.002))
    env = np.convolve(x.astype(np.float64) ** 2, np.ones(win) / win, mode="same")
    above = np.flatnonzero(env > rel * env.max()) if env.max() > 1e-5 else np.zeros(0, int)
    peaks: list[int] = []
    for run in np.split(above, np.flatnonzero(np.diff(above) > 1) + 1):
        if not run.size:
            continue
        top = int(run[np.argmax(env[run])])
        if peaks and top - peaks[-1] < refractory_s * rate:
            if env[top] > env[peaks[-1]]:
                peaks[-1] = top
        else:
            peaks.append(top)
    return np.array(peaks, int)


def match_lag(
    src: np.ndarray, rcv: np.ndarray, max_lag: float = 3.0, tol: float = 0.06, min_lag: float = 0.0
) -> np.ndarray:
    """Latency of each source event (s; NaN where it was not received), between ``min_lag`` and ``max_lag``.
    A negative ``min_lag`` is for a source timed later than the event itself (a recorder of the speaker's own
    microphone hears it tens of ms after the microphone took it, and a fast path can beat that).

    Anchor: the (source, received) pair whose latency also explains the most of the two source events on
    either side (within 20 ms); random click intervals make a wrong pair explain almost none. From there the
    match walks forwards and backwards, pairing each source event with the received one nearest to the last
    latency, within ``tol``: a latency that drifts (a jitter buffer filling or draining) is followed, not lost.
    """
    out = np.full(len(src), np.nan)
    if not len(src) or not len(rcv):
        return out
    padded = np.concatenate([[-np.inf], np.sort(rcv), [np.inf]])
    d = rcv[None, :] - src[:, None]
    score = np.zeros(d.shape)
    for off in (-2, -1, 1, 2):
        k = np.arange(len(src)) + off
        valid = (k >= 0) & (k < len(src))
        t = src[np.clip(k, 0, len(src) - 1)][:, None] + d
        i = np.searchsorted(padded, t)
        gap = np.minimum(t - padded[i - 1], padded[i] - t)
        score += valid[:, None] & (gap < 0.02)
    score[(d < min_lag) | (d > max_lag)] = -1
    anchor, j = np.unravel_index(np.argmax(score), d.shape)
    if score[anchor, j] < 0:
        return out
    for order in (range(anchor, len(src)), range(anchor - 1, -1, -1)):
        cur = d[anchor, j]
        for i in order:
            near = int(np.argmin(np.abs(d[i] - cur)))
            if abs(d[i, near] - cur) <= tol:
                out[i] = cur = d[i, near]
    return out


def frame_rms(x: np.ndarray, rate: int = RATE, frame_s: float = 0.005) -> np.ndarray:
    n = int(rate * frame_s)
    m = len(x) // n
    return np.sqrt((x[: m * n].astype(np.float64).reshape(m, n) ** 2).mean(axis=1))


def onsets(x: np.ndarray, rate: int = RATE, quiet_before_s: float = 0.5, threshold: float = 0.01) -> np.ndarray:
    """Start times (s from the first sample) of sounds that follow at least ``quiet_before_s`` of quiet."""
    frame_s = 0.005
    active = frame_rms(x, rate, frame_s) > threshold
    need = int(quiet_before_s / frame_s)
    out, quiet = [], need
    for i, a in enumerate(active):
        if a and quiet >= need:
            out.append(i * frame_s)
        quiet = 0 if a else quiet + 1
    return np.array(out)


def ncc(ref: np.ndarray, sig: np.ndarray) -> float:
    """Best normalised cross-correlation of ``ref`` against any window of ``sig`` (1.0: identical shape)."""
    if len(sig) < len(ref) or not len(ref):
        return float("nan")
    n = 1 << int(np.ceil(np.log2(len(sig) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(sig, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(sig) - len(ref) + 1]
    energy = np.concatenate([[0.0], np.cumsum(sig.astype(np.float64) ** 2)])
    window = energy[len(ref) :] - energy[: len(energy) - len(ref)]
    norm = np.sqrt(np.maximum(window, 1e-12) * float(np.sum(ref.astype(np.float64) ** 2)))
    return float(np.max(corr / norm))


def pct(values: np.ndarray | list[float], q: float) -> float:
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    return float(np.percentile(v, q)) if v.size else float("nan")

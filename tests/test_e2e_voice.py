"""Luna's voice without WebAudio, in the local room: her microphone track is written by a worker, and people
reach Python encoded (tests/test_bot_page_cost.py), so her page makes no AudioContext and no AudioWorkletNode at
all. A ``say`` is heard whole, from the first syllable (the same voiced span as the words' own audio), with every
sample marked played."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from playwright.async_api import BrowserContext, Page

from luna_voice.bots.host import ChromiumHost
from luna_voice.config import Settings
from luna_voice.providers.base import PIPELINE_RATE
from luna_voice.providers.offline.piper_tts import OfflineTTS
from roomtools import human_page, luna_quiet_at, record_luna, until

pytestmark = pytest.mark.browser

# Chinese goes to espeak-ng, which says it the same way every time (Piper draws new durations per run): the
# listener's recording can be held against the words' own audio, synthesised here.
SAID = "会议室已经订好了。"  # one sentence: one synthesis, as below
FRAME = PIPELINE_RATE // 50  # 20 ms

# In Luna's page, before its own scripts: every AudioContext and every AudioWorkletNode made.
WATCH_AUDIO = """(() => {
  const seen = (window.__audio = { contexts: 0, worklets: [] });
  const Context = window.AudioContext, Node = window.AudioWorkletNode;
  window.AudioContext = class extends Context {
    constructor(...args) {
      super(...args);
      seen.contexts += 1;
    }
  };
  window.AudioWorkletNode = class extends Node {
    constructor(ctx, name, options) {
      super(ctx, name, options);
      seen.worklets.push(name);
    }
  };
})();"""


def voiced_span_s(pcm: np.ndarray, threshold: float = 0.02) -> float:
    """From the first to the last 20 ms frame louder than ``threshold`` (RMS, full scale 1.0), in seconds."""
    n = len(pcm) // FRAME
    frames = pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME) / 32768
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    return float((loud[-1] - loud[0] + 1) * 0.02) if loud.size else 0.0


async def test_her_voice_is_heard_whole_with_no_webaudio_on_her_page(start_service, launch_human):
    pages: list[Page] = []

    async def watch(context: BrowserContext, _url: str) -> None:
        await context.add_init_script(script=WATCH_AUDIO)

        def on_page(page: Page) -> None:  # a function: Playwright cannot wrap a builtin method as a handler
            pages.append(page)

        context.on("page", on_page)

    host = ChromiumHost(Settings(_env_file=None).chromium_path, prepare_context=watch)
    svc = await start_service(greeting="", host=host)  # she says only the test's words
    status, _ = await svc.call("POST", "/rooms/sleep/luna", json={"backend": "local"})
    assert status == 201

    async def joined() -> bool:
        return (await svc.call("GET", "/rooms/sleep/luna"))[1]["state"] == "joined"

    await until(joined, 30, "Luna to join the local room")
    alice = await human_page(launch_human, svc.url, "sleep", "Alice", None)
    await alice.evaluate("lunaDemo.setMic(false)")  # a muted listener
    (luna,) = pages

    await record_luna(alice)
    status, said = await svc.call("POST", "/rooms/sleep/luna/say", json={"text": SAID})
    assert status == 202, said

    async def spoken() -> dict | None:
        turns = (await svc.call("GET", "/rooms/sleep/luna"))[1]["turns"]
        return next((t for t in turns if t["kind"] == "say" and t["state"] == "done"), None)

    turn = await until(spoken, 30, "Luna to say it", step=0.2)
    await luna_quiet_at(alice)
    rec = await alice.evaluate("lunaDemo.stopRecording()")
    assert turn["spoken_text"] == turn["reply_text"] and turn["played_audio_s"] == turn["reply_audio_s"], turn

    words = OfflineTTS(sample_rate=PIPELINE_RATE).synthesize(SAID)
    reference = b"".join([chunk async for chunk in words if isinstance(chunk, bytes)])
    heard = np.frombuffer(base64.b64decode(rec["pcm"]), np.int16)
    want = voiced_span_s(np.frombuffer(reference, np.int16))
    got = voiced_span_s(heard)
    assert abs(got - want) <= 0.06, f"the listener heard {got:.2f} s of voice from {want:.2f} s of her words"

    seen = await luna.evaluate("window.__audio")
    assert seen == {"contexts": 0, "worklets": []}, seen  # nothing renders her voice, nor captures anyone

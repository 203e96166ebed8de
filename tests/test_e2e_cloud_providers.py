"""A spoken turn in the local room through all three real cloud clients — openai (realtime transcription),
the BotSession HTTP/SSE contract, and the Azure Speech SDK — each pointed at a local fake of its service."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from fakes.azure_usp import FakeAzureTts
from fakes.botsession import FakeBotSession, Reply, serve
from fakes.openai_audio import FakeOpenAIAudio
from luna_voice.providers.azure_tts import billable_characters
from luna_voice.providers.base import PIPELINE_RATE
from roomtools import active_seconds, human_page, luna_quiet_at, speech_file, until

pytestmark = pytest.mark.browser

HEARD = "Luna，明天的 weather 怎么样？"
ANSWER = ("明天是晴天。", "Sunny, around 20 degrees.")


async def test_a_turn_through_openai_botsession_and_azure(start_service, launch_human, tmp_path):
    stt = FakeOpenAIAudio(script=lambda req: HEARD if req.duration_s > 0.5 else "")
    app = FakeBotSession(token="bs-token")
    app.script(Reply(deltas=ANSWER, input_tokens=120, output_tokens=30))
    async with stt, FakeAzureTts(key="az-key") as tts, serve(app.app()) as app_url:
        svc = await start_service(
            stt_provider="openai",
            openai_api_key="sk-test-key",
            openai_base_url=stt.base_url,
            llm_provider="botsession",
            botsession_url=f"{app_url}/luna/reply",
            botsession_token="bs-token",
            tts_provider="azure",
            azure_speech_key="az-key",
            azure_speech_endpoint=tts.endpoint,
        )
        assert (await svc.call("GET", "/readyz"))[1]["providers"] == {
            "stt": "openai",
            "llm": "botsession",
            "tts": "azure",
        }
        assert (await svc.call("POST", "/rooms/cloud/luna"))[0] == 201

        async def joined():
            return (await svc.call("GET", "/rooms/cloud/luna"))[1]["state"] == "joined"

        await until(joined, 30, "Luna to join")
        wav = speech_file(tmp_path, "Hello, what will the weather be tomorrow?", lead_silence_s=4.0)
        page = await human_page(launch_human, svc.url, "cloud", "Mei", wav)
        await page.evaluate("lunaDemo.startRecording()")

        async def answered():
            turns = (await svc.call("GET", "/rooms/cloud/luna"))[1]["turns"]
            return next((t for t in turns if t["state"] == "done"), None)

        turn = await until(answered, 60, "Luna's answer", step=0.5)
        await luna_quiet_at(page)  # the end of her voice has crossed WebRTC into Mei's page
        rec = await page.evaluate("lunaDemo.stopRecording()")

    # OpenAI heard the person's audio at its rate with the current model, participant names in the prompt and
    # the keywords, and the audience's languages as hints, none forced.
    transcription = max(stt.requests, key=lambda r: r.duration_s)  # a noise blip may come first; it is dropped
    assert transcription.transport == "realtime" and transcription.duration_s > 1.0
    assert transcription.model == "gpt-live-transcribe"
    assert "Mei" in (transcription.prompt or "") and "Mei" in (transcription.keywords or [])
    assert transcription.languages == ["zh", "en"] and transcription.language is None
    assert turn["stt_final_after_ms"] is not None and turn["stt_final_after_ms"] >= 0
    # BotSession got the transcript with who said it, and Luna spoke its reply through Azure.
    request = app.requests[0].json
    assert request["text"] == HEARD and request["speaker_name"] == "Mei"
    assert turn["heard_text"] == HEARD and turn["reply_text"] == "".join(ANSWER)
    spoken = [s.text for s in tts.synthesises if s.text]  # a startup probe may send an empty request
    assert spoken == [ANSWER[0], ANSWER[1].strip()]
    assert tts.synthesises[0].voice == "zh-CN-XiaoxiaoNeural"
    # What Luna really said reached the app's history.
    assert app.spoken and app.spoken[0].json["spoken_text"] == turn["spoken_text"]
    # Mei heard Azure's audio for about as long as it lasted, and the turn is metered and priced.
    heard = np.frombuffer(base64.b64decode(rec["pcm"]), dtype=np.int16)
    assert active_seconds(heard, PIPELINE_RATE) >= 0.6 * turn["reply_audio_s"] > 0
    usage = turn["usage"]
    assert usage["stt_seconds"] > 1.0 and usage["llm_input_tokens"] == 120 and usage["llm_output_tokens"] == 30
    assert usage["tts_characters"] == sum(billable_characters(t) for t in spoken)  # hanzi billed twice
    assert turn["cost_usd"] > 0

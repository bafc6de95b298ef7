"""``doctor`` for OpenAI and Deepgram against their emulators on loopback: each step, what a failure says."""

from __future__ import annotations

import trio

from bridge._config import Config
from bridge._doctor_agents import check_deepgram, check_openai
from bridge._secret import Secret
from bridge.agents._settings import DeepgramSettings, OpenAISettings
from bridge.agents.deepgram import DEFAULT_API_KEY as DEEPGRAM_KEY
from bridge.agents.deepgram import DeepgramAgentServer
from bridge.agents.openai import DEFAULT_API_KEY as OPENAI_KEY
from bridge.agents.openai import OpenAIRealtimeServer

LIMIT_S = 15.0


async def test_openai_is_checked_up_to_session_updated_reading_back_pcmu(nursery):
    good = await nursery.start(OpenAIRealtimeServer().serve)
    static = await nursery.start(OpenAIRealtimeServer(keep_output_pcm=True).serve)
    with trio.fail_after(LIMIT_S):
        ok = await check_openai(Config(openai=OpenAISettings(url=good.url, api_key=Secret(OPENAI_KEY))))
        wrong_key = await check_openai(
            Config(openai=OpenAISettings(url=good.url, api_key=Secret("sk-wrong")))
        )
        pcm = await check_openai(Config(openai=OpenAISettings(url=static.url, api_key=Secret(OPENAI_KEY))))
    assert ok.ok and "session.updated" in ok.what
    assert not wrong_key.ok and "HTTP 401" in wrong_key.what and "API key" in wrong_key.what
    assert "sk-wrong" not in wrong_key.what
    assert not pcm.ok and "step 'session.updated'" in pcm.what and "output_format" in pcm.what


async def test_deepgram_is_checked_up_to_settings_applied(nursery):
    good = await nursery.start(DeepgramAgentServer().serve)
    busy = await nursery.start(DeepgramAgentServer(reject_status=503).serve)
    mute = await nursery.start(DeepgramAgentServer(send_welcome=False).serve)
    with trio.fail_after(LIMIT_S):
        ok = await check_deepgram(
            Config(deepgram=DeepgramSettings(url=good.url, api_key=Secret(DEEPGRAM_KEY)))
        )
        refused = await check_deepgram(
            Config(deepgram=DeepgramSettings(url=busy.url, api_key=Secret(DEEPGRAM_KEY)))
        )
        silent = await check_deepgram(
            Config(deepgram=DeepgramSettings(url=mute.url, api_key=Secret(DEEPGRAM_KEY))), timeout_s=1.0
        )
    assert ok.ok and "SettingsApplied" in ok.what
    assert not refused.ok and "HTTP 503" in refused.what
    assert not silent.ok and "no answer within 1 s" in silent.what and "session set-up" in silent.what

"""Which agent answers: ``AGENT``, a call's ``agent`` parameter, ``POST /calls``/``call`` fields, the demo.

Real server on loopback, the real emulators of Speakr and OpenAI Realtime, the emulated Twilio caller.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
from e2e_helpers import speechlike, start_agent, start_bridge

from bridge._config import load_config
from bridge._demo import run_demo
from bridge._errors import ConfigError
from bridge._legs import UPLINK_FRAME_BYTES
from bridge._outbound import CallRequestError, call_request_from_params, parse_call_request
from bridge._secret import Secret
from bridge.agents._settings import OpenAISettings
from bridge.agents.openai import DEFAULT_API_KEY, OpenAIRealtimeServer
from bridge.emulators import TwilioCaller

LIMIT_S = 30.0


async def start_openai(nursery: trio.Nursery) -> OpenAIRealtimeServer:
    server = OpenAIRealtimeServer()
    await nursery.start(server.serve)
    return server


async def one_call(stream_url: str, **params: str) -> None:
    caller = TwilioCaller(
        stream_url=stream_url, audio=speechlike(1.0, 8000, seed=3), speed=4.0, hangup_after_s=1.5,
        custom_parameters=params,
    )
    await caller.run()


async def test_a_calls_agent_parameter_picks_the_backend_for_that_call_only(nursery):
    speakr = await start_agent(nursery)
    openai = await start_openai(nursery)
    settings = OpenAISettings(url=openai.url, api_key=Secret(DEFAULT_API_KEY))
    bridge = await start_bridge(nursery, speakr_ws_url=speakr.url, openai=settings)
    with trio.fail_after(LIMIT_S):
        await one_call(bridge.stream_url, agent="openai", system_prompt="Be brief.")
        await bridge.wait_idle()
        assert len(openai.sessions) == 1 and len(speakr.sessions) == 0
        assert openai.sessions[0].session.get("instructions") == "Be brief."
        await one_call(bridge.stream_url)  # no parameter: AGENT (speakr)
        await bridge.wait_idle()
    assert len(openai.sessions) == 1 and len(speakr.sessions) == 1
    assert bridge.metric("bridge_frames_total", {"direction": "openai_out"}) > 0
    assert bridge.metric("bridge_frames_total", {"direction": "speakr_out"}) > 0


async def test_a_goal_is_added_to_the_instructions(nursery):
    openai = await start_openai(nursery)
    bridge = await start_bridge(
        nursery, agent="openai", openai=OpenAISettings(url=openai.url, api_key=Secret(DEFAULT_API_KEY))
    )
    with trio.fail_after(LIMIT_S):
        await one_call(bridge.stream_url, goal="Book a table for two at 8 pm.")
        await bridge.wait_idle()
    instructions = openai.sessions[0].session.get("instructions")
    assert instructions.startswith("You are a helpful assistant")
    assert "Book a table for two at 8 pm." in instructions


async def test_an_unknown_agent_parameter_is_counted_and_the_configured_backend_answers(nursery):
    speakr = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=speakr.url)
    with trio.fail_after(LIMIT_S):
        await one_call(bridge.stream_url, agent="skynet")
        await bridge.wait_idle()
    assert len(speakr.sessions) == 1
    assert bridge.metric("bridge_protocol_errors_total", {"peer": "twilio", "kind": "unknown_agent"}) == 1


def test_agent_and_the_backends_settings_are_validated_by_name() -> None:
    config = load_config(
        {"AGENT": "Deepgram", "DEEPGRAM_API_KEY": "dg-secret", "OPENAI_VOICE": "cedar",
         "AGENT_SYSTEM_PROMPT": "Speak French.", "SPEAKR_SYSTEM_PROMPT": "Speak English."},
        dotenv_path=None,
    )
    assert config.agent == "deepgram" and config.openai.voice == "cedar"
    assert config.system_prompt == "Speak French."  # the agent-neutral name wins
    assert "dg-secret" not in repr(config) and "dg-secret" not in repr(config.deepgram)
    for env, culprit in (
        ({"AGENT": "watson"}, "AGENT"),
        ({"OPENAI_REALTIME_URL": "https://api.openai.com/v1/realtime"}, "OPENAI_REALTIME_URL"),
        ({"DEEPGRAM_AGENT_URL": "agent.deepgram.com"}, "DEEPGRAM_AGENT_URL"),
        ({"OPENAI_VOICE": "a voice; with spaces"}, "OPENAI_VOICE"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(env, dotenv_path=None)
        assert culprit in str(caught.value)


def test_outbound_requests_take_agent_and_goal() -> None:
    request = parse_call_request({"to": "+14155550100", "agent": "openai", "goal": "Order two pizzas."})
    assert request.settings == {"agent": "openai", "goal": "Order two pizzas."}
    assert call_request_from_params("+14155550100", ["agent=deepgram"]).settings == {"agent": "deepgram"}
    cascade = parse_call_request(
        {"to": "+14155550100", "agent": "cascade", "greeting": "Hi, it's Ada.", "idle_checkin_s": 6,
         "idle_hangup_s": 4.5, "max_call_s": 0}
    )
    assert cascade.settings == {
        "agent": "cascade", "greeting": "Hi, it's Ada.", "idle_checkin_s": 6.0, "idle_hangup_s": 4.5,
        "max_call_s": 0.0,
    }
    typed = call_request_from_params("+14155550100", ["idle_checkin_s=7.5"])
    assert typed.settings == {"idle_checkin_s": 7.5}
    for body, field in (
        ({"to": "+14155550100", "agent": "watson"}, "agent"),
        ({"to": "+14155550100", "agent": 3}, "agent"),
        ({"to": "+14155550100", "goal": ""}, "goal"),
        ({"to": "+14155550100", "goal": "x" * 2001}, "goal"),
        ({"to": "+14155550100", "goal": "bad\x00char"}, "goal"),
        ({"to": "+14155550100", "greeting": ""}, "greeting"),
        ({"to": "+14155550100", "idle_checkin_s": "8"}, "idle_checkin_s"),  # JSON: a number, not a string
        ({"to": "+14155550100", "idle_hangup_s": -1}, "idle_hangup_s"),
        ({"to": "+14155550100", "max_call_s": 1e9}, "max_call_s"),
        ({"to": "+14155550100", "max_call_s": True}, "max_call_s"),
    ):
        with pytest.raises(CallRequestError) as caught:
            parse_call_request(body)
        assert caught.value.field == field
    with pytest.raises(CallRequestError):
        call_request_from_params("+14155550100", ["agent=watson"])


@pytest.mark.parametrize("agent", ["openai", "deepgram"])
async def test_the_demo_runs_a_healthy_offline_call_with_each_backend(tmp_path: Path, agent: str) -> None:
    with trio.fail_after(60):
        result = await run_demo(output_path=tmp_path / "call.wav", speed=4.0, agent_name=agent)
    assert result.healthy, result.problems
    # μ-law passthrough in 32 ms messages: every caller byte, re-cut only
    assert result.frames[f"{agent}_out"] == math.ceil(result.frames["twilio_in"] * 160 / UPLINK_FRAME_BYTES)
    assert result.barge_in["clear"] >= 1  # the bundled sample interrupts the agent
    assert f"{agent} (the bundled offline emulator)" in result.summary()


async def test_the_cascade_demo_holds_its_scripted_conversation_and_the_agent_ends_it(tmp_path: Path) -> None:
    with trio.fail_after(90):
        result = await run_demo(output_path=tmp_path / "call.wav", speed=2.0, agent_name="cascade")
    assert result.healthy, result.problems
    assert result.bridge_end_reasons.keys() == {"end_call"}  # the agent's goodbye, then end_call
    assert result.barge_in["clear"] >= 1  # the caller cut into the menu
    text = "\n".join(result.turns)
    assert "Just a large pepperoni, please." in text and "[interrupted: the history keeps only this]" in text
    assert "the conversation, with each turn's latency by stage" in result.summary()

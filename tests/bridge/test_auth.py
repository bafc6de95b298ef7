"""End to end: who may open an agent session (TWILIO_AUTH_TOKEN, PUBLIC_URL, per-call stream tokens).

A real Hypercorn bridge on loopback between the Twilio caller emulator (or a bare HTTP/WebSocket client
playing an attacker) and the Speakr agent emulator. Each refusal is checked where it matters: the agent
emulator must never see a session for a stream that was not authorised (an agent session costs money
and gives a stranger a voice agent).
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio_websocket
from e2e_helpers import RunningBridge, speechlike, start_agent, start_bridge
from twilio.request_validator import RequestValidator

from bridge import _twilio
from bridge._config import Secret
from bridge.emulators import SpeakrAgentServer, TwilioCaller

TOKEN = "tok-auth-test-0123456789abcdef"
PUBLIC_URL = "https://abc.ngrok.example"
ELSEWHERE = "https://elsewhere.example"
SPEED = 5.0
LIMIT_S = 20
#: A refused stream must be closed promptly, not after some start timeout.
REFUSAL_BOUND_S = 2.0


def voice_form(call_sid: str) -> dict[str, str]:
    """The form Twilio posts to the voice webhook."""
    return {
        "CallSid": call_sid,
        "AccountSid": "AC" + "1" * 32,
        "From": "+15005550006",
        "To": "+15005550001",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


async def post(
    url: str, form: dict[str, str], signature: str | None = None, host: str | None = None
) -> httpx.Response:
    headers = {}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    if host is not None:
        headers["Host"] = host
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.post(url, data=form, headers=headers)


def read_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` url and parameters of a TwiML answer (asserts there is one)."""
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter")}
    return stream.get("url", ""), params


async def issue_token(bridge: RunningBridge, call_sid: str) -> str:
    """Play Twilio's signed webhook for ``call_sid``; return the bridge_token its TwiML carries."""
    form = voice_form(call_sid)
    response = await post(bridge.voice_url, form, sign(bridge.voice_url, form))
    assert response.status_code == 200, response.text
    _, params = read_stream(response.text)
    return params["bridge_token"]


async def secured_bridge(nursery: trio.Nursery, **config: object) -> tuple[SpeakrAgentServer, RunningBridge]:
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url, twilio_auth_token=Secret(TOKEN), **config)
    return agent, bridge


def call_sid(n: int) -> str:
    return f"CA{n:032x}"


# --- webhooks ------------------------------------------------------------------------------------


async def test_voice_webhook_refuses_every_request_without_a_valid_signature(nursery):
    agent, bridge = await secured_bridge(nursery)
    form = voice_form(call_sid(1))
    good = sign(bridge.voice_url, form)
    tampered = {**form, "From": "+15005559999"}
    with trio.fail_after(LIMIT_S):
        refused = {
            "missing": await post(bridge.voice_url, form),
            "empty": await post(bridge.voice_url, form, ""),
            "wrong token": await post(bridge.voice_url, form, sign(bridge.voice_url, form, "not-the-token")),
            "another url": await post(bridge.voice_url, form, sign(ELSEWHERE + "/twilio/voice", form)),
            "params tampered": await post(bridge.voice_url, tampered, good),
            "garbage": await post(bridge.voice_url, form, "!!not base64!!"),
        }
        accepted = await post(bridge.voice_url, form, good)
    for case, response in refused.items():
        assert response.status_code == 403, case
        assert "<Connect" not in response.text and "bridge_token" not in response.text, case
    assert accepted.status_code == 200
    read_stream(accepted.text)
    assert agent.sessions == []


async def test_status_callback_refuses_every_request_without_a_valid_signature(nursery):
    _, bridge = await secured_bridge(nursery)
    url = bridge.base_url + "/twilio/status"
    form = {"CallSid": call_sid(2), "AccountSid": "AC" + "1" * 32, "CallStatus": "completed"}
    with trio.fail_after(LIMIT_S):
        missing = await post(url, form)
        wrong = await post(url, form, sign(url, form, "not-the-token"))
        tampered = await post(url, {**form, "CallStatus": "busy"}, sign(url, form))
        good = await post(url, form, sign(url, form))
    assert (missing.status_code, wrong.status_code, tampered.status_code) == (403, 403, 403)
    assert good.status_code == 204


async def test_behind_a_proxy_signatures_are_checked_against_public_url(nursery):
    agent, bridge = await secured_bridge(nursery, public_url=PUBLIC_URL)
    public_voice = PUBLIC_URL + "/twilio/voice"
    form = voice_form(call_sid(3))
    with trio.fail_after(LIMIT_S):
        # Twilio signs the public URL; the request reaches us with the tunnel's (or our own) Host.
        as_is = await post(bridge.voice_url, form, sign(public_voice, form))
        other_host = await post(bridge.voice_url, form, sign(public_voice, form), host="internal-lb:8080")
        forged = await post(
            bridge.voice_url, form, sign(public_voice, form, "not-the-token"), host="abc.ngrok.example"
        )
    assert as_is.status_code == 200, as_is.text
    assert other_host.status_code == 200, other_host.text
    assert forged.status_code == 403
    url, params = read_stream(other_host.text)
    assert url == "wss://abc.ngrok.example/twilio/stream"
    # The stream's upgrade, signed by Twilio for the public wss:// URL, is accepted on the local socket.
    token = params["bridge_token"]
    signature = sign(url, {})
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(
            bridge.stream_url, extra_headers=[(b"X-Twilio-Signature", signature.encode())]
        ) as ws:
            await ws.send_message(_twilio.connected_message())
            await ws.send_message(
                _twilio.start_message(
                    stream_sid="MZ" + "3" * 32, call_sid=call_sid(3), account_sid="AC" + "1" * 32,
                    custom_parameters={"bridge_token": token},
                )
            )
            session = await agent.wait_for_session(1)
            await session.wait_start()
    assert agent.sessions[0].start_params is not None


async def test_voice_twiml_carries_a_per_call_bridge_token_and_a_plain_stream_url(nursery):
    _, bridge = await secured_bridge(nursery)
    answers = []
    with trio.fail_after(LIMIT_S):
        for n in (4, 5):
            form = voice_form(call_sid(n))
            response = await post(bridge.voice_url, form, sign(bridge.voice_url, form))
            assert response.status_code == 200
            answers.append(response.text)
    tokens = []
    for twiml in answers:
        url, params = read_stream(twiml)
        parts = urlsplit(url)
        assert parts.scheme == "ws" and parts.path == "/twilio/stream"
        assert parts.query == "" and "?" not in url  # Twilio strips or refuses a query string
        assert set(params) == {"bridge_token"} and params["bridge_token"]
        tokens.append(params["bridge_token"])
        # After </Connect>, the fallback the caller hears when we close the stream.
        root = ElementTree.fromstring(twiml)
        children = [child.tag for child in root]
        assert children.index("Say") > children.index("Connect")
    assert tokens[0] != tokens[1]


# --- streams -------------------------------------------------------------------------------------

REFUSALS = ["missing", "forged", "another_call_sid", "reused", "expired"]
REASONS = {
    "missing": "missing_token",
    "forged": "bad_token",
    "another_call_sid": "bad_token",
    "reused": "reused_token",
    "expired": "expired_token",
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_stream_without_a_valid_bridge_token_is_closed_before_any_agent_session(nursery, case):
    ttl = 1.0 if case == "expired" else 300.0
    agent, bridge = await secured_bridge(nursery, bridge_token_ttl_s=ttl)
    sid = call_sid(10)
    audio = speechlike(1.0, 8000, seed=60)
    with trio.fail_after(LIMIT_S):
        token = await issue_token(bridge, sid)
        caller_sid = sid
        if case == "missing":
            params: dict[str, str] = {}
        elif case == "forged":
            params = {"bridge_token": f"{int(time.time()) + 300}." + "ab" * 32}
        elif case == "another_call_sid":
            params, caller_sid = {"bridge_token": token}, call_sid(11)
        elif case == "expired":
            await trio.sleep(ttl + 0.2)  # the expiry has whole-second resolution: past it for sure
            params = {"bridge_token": token}
        else:  # reused: the first stream with it is served, the second is not
            params = {"bridge_token": token}
            first = await TwilioCaller(
                stream_url=bridge.stream_url, call_sid=sid, custom_parameters=params, audio=audio,
                speed=SPEED, hangup_after_s=0.6,
            ).run()
            assert first.outcome == "hung_up"
            served = await agent.wait_for_session(1)
            await served.closed.wait()
            assert served.start_params is not None
            await bridge.wait_idle()
        sessions_before = len(agent.sessions)
        record = await TwilioCaller(
            stream_url=bridge.stream_url, call_sid=caller_sid, custom_parameters=params, audio=audio,
            speed=SPEED, hangup_after_s=3.0,
        ).run()
        await bridge.wait_idle()
    assert record.outcome == "bridge_closed", (record.outcome, record.error)
    closed = record.events_of("closed")[-1]
    assert record.start_wall_s is not None and closed.wall_s - record.start_wall_s < REFUSAL_BOUND_S
    # Not one byte of this stream reached an agent: no connection was even opened for it.
    assert len(agent.sessions) == sessions_before
    reason = REASONS[case]
    assert bridge.metric("bridge_calls_ended_total", {"reason": f"refused_{reason}"}) == 1
    assert bridge.metric("bridge_calls_rejected_total", {"reason": reason}) == 1


async def test_stream_upgrade_with_a_wrong_signature_is_refused(nursery):
    agent, bridge = await secured_bridge(nursery)
    with trio.fail_after(LIMIT_S):
        records = []
        for n, signer in ((20, "not-the-token"), (21, None)):
            sid = call_sid(n)
            token = await issue_token(bridge, sid)
            if signer is None:  # right token, but signed for another URL
                signature = sign(ELSEWHERE.replace("https", "wss") + "/twilio/stream", {})
                records.append(await _upgrade_signed(bridge, sid, token, signature))
            else:
                records.append(
                    await TwilioCaller(
                        stream_url=bridge.stream_url, call_sid=sid, auth_token=signer,
                        custom_parameters={"bridge_token": token}, speed=SPEED, hangup_after_s=1.0,
                    ).run()
                )
        await bridge.wait_idle()
    wrong_token = records[0]
    assert wrong_token.outcome == "connect_failed" and wrong_token.rejected_status == 403, wrong_token.error
    assert records[1] == 403
    assert agent.sessions == []
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "bad_signature"}) == 2


async def _upgrade_signed(bridge: RunningBridge, sid: str, token: str, signature: str) -> int | None:
    """Open the stream with this upgrade signature; the HTTP status it was refused with, None if accepted."""
    try:
        async with trio_websocket.open_websocket_url(
            bridge.stream_url, extra_headers=[(b"X-Twilio-Signature", signature.encode())]
        ) as ws:
            await ws.send_message(_twilio.connected_message())
            await ws.send_message(
                _twilio.start_message(
                    stream_sid="MZ" + "2" * 32, call_sid=sid, account_sid="AC" + "1" * 32,
                    custom_parameters={"bridge_token": token},
                )
            )
            with trio.move_on_after(1.0):
                await ws.get_message()
            return None
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code
    except trio_websocket.ConnectionClosed:
        return None


async def test_a_correctly_signed_call_works_end_to_end(nursery):
    agent, bridge = await secured_bridge(nursery)
    audio = speechlike(1.5, 8000, seed=61)
    caller = TwilioCaller(
        webhook_url=bridge.voice_url, auth_token=TOKEN, audio=audio, speed=SPEED, hangup_after_s=2.0
    )
    with trio.fail_after(LIMIT_S):
        record = await caller.run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
        await bridge.wait_idle()
    assert record.webhook_status == 200
    assert record.outcome == "hung_up", record.error
    assert "bridge_token" in record.custom_parameters
    assert session.start_params is not None
    assert session.received_audio[: len(record.sent_pcm)] == record.sent_pcm
    assert bridge.metric("bridge_calls_ended_total", {"reason": "twilio_stop"}) == 1
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "bad_signature"}) == 0


async def test_without_an_auth_token_calls_work_and_a_warning_is_logged(nursery, caplog):
    caplog.set_level(logging.WARNING)
    agent = await start_agent(nursery)
    bridge = await start_bridge(nursery, speakr_ws_url=agent.url)
    warnings = [
        r for r in caplog.records
        if r.name.startswith("bridge")
        and r.levelno >= logging.WARNING
        and "TWILIO_AUTH_TOKEN" in r.getMessage()
    ]
    assert warnings, caplog.text
    audio = speechlike(1.0, 8000, seed=62)
    with trio.fail_after(LIMIT_S):
        record = await TwilioCaller(
            webhook_url=bridge.voice_url, audio=audio, speed=SPEED, hangup_after_s=1.5
        ).run()
        session = await agent.wait_for_session(1)
        await session.closed.wait()
    assert record.outcome == "hung_up", record.error
    assert session.received_audio[: len(record.sent_pcm)] == record.sent_pcm

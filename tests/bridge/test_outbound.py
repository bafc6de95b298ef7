"""Outbound calls: POST /calls, GET /calls/<sid>, status tracking, the hang-up hook and the `call` command.

End-to-end tests run a real bridge (Hypercorn on 127.0.0.1, listening on a socket bound before the app is
built, so PUBLIC_URL is the bridge's own address), the Speakr agent emulator and the stand-in of Twilio's REST
API, which plays Twilio's side of each call it is asked to place (signed status callbacks, then the stream).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
from e2e_helpers import start_agent
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from bridge import _twilio
from bridge._call import CallSettings
from bridge._call_command import add_call_parser, call_command
from bridge._config import Config, Secret
from bridge._errors import ConfigError
from bridge._metrics import Metrics
from bridge._outbound import (
    NONCE_PARAMETER,
    TWIML_MAX_CHARS,
    CallRequest,
    CallRequestError,
    OutboundCalls,
    call_request_from_params,
    parse_call_request,
    prepare_call,
    token_subject,
)
from bridge._server import hypercorn_config
from bridge._tokens import CallTokens
from bridge.app import BridgeState, create_app
from bridge.emulators._twilio_rest_api import TwilioRestApi

LIMIT_S = 20
API_TOKEN = "api-token-0123456789abcdef"
FROM = "+15005550006"
ACCOUNT = "AC" + "c" * 32
AUTH = "0123456789abcdef0123456789abcdef"


def offline_config(**extra: Any) -> Config:
    values: dict[str, Any] = dict(
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=Secret(AUTH),
        twilio_from_number=FROM,
        public_url="https://bridge.example.com",
        bridge_api_token=Secret(API_TOKEN),
    )
    values.update(extra)
    return Config(**values)


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url", ""), {
        p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter")
    }


# --- validation, TwiML and tokens: no sockets -------------------------------------------------------------


def test_a_full_request_is_validated_into_typed_settings():
    call = parse_call_request(
        {
            "to": "+14155550100",
            "from": "+14155550111",
            "system_prompt": "Be brief.",
            "voice_id": "ada",
            "temperature": 1,
            "threshold": 0.5,
            "silenceDuration": 800,
            "prefixPadding": 0.25,
            "metadata": {"crm_id": 42, "tags": ["a"]},
        }
    )
    assert (call.to, call.from_) == ("+14155550100", "+14155550111")
    assert call.settings == {
        "system_prompt": "Be brief.",
        "voice_id": "ada",
        "temperature": 1.0,
        "threshold": 0.5,
        "silenceDuration": 800,
        "prefixPadding": 0.25,
    }
    assert type(call.settings["temperature"]) is float and type(call.settings["silenceDuration"]) is int
    assert call.metadata == {"crm_id": 42, "tags": ["a"]}
    assert parse_call_request({"to": "+14155550100"}) == CallRequest("+14155550100")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "to"),
        ({"to": "4155550100"}, "to"),
        ({"to": "+1 415 555 0100"}, "to"),
        ({"to": "+04155550100"}, "to"),
        ({"to": "+1234567890123456"}, "to"),
        ({"to": 14155550100}, "to"),
        ({"to": "+14155550100", "from": "+1"}, "from"),
        ({"to": "+14155550100", "temperature": 2.5}, "temperature"),
        ({"to": "+14155550100", "temperature": "0.5"}, "temperature"),
        ({"to": "+14155550100", "temperature": True}, "temperature"),
        ({"to": "+14155550100", "threshold": -0.1}, "threshold"),
        ({"to": "+14155550100", "silenceDuration": 800.5}, "silenceDuration"),
        ({"to": "+14155550100", "silenceDuration": 10}, "silenceDuration"),
        ({"to": "+14155550100", "prefixPadding": None}, "prefixPadding"),
        ({"to": "+14155550100", "voice_id": "no spaces"}, "voice_id"),
        ({"to": "+14155550100", "voice_id": 7}, "voice_id"),
        ({"to": "+14155550100", "system_prompt": "   "}, "system_prompt"),
        ({"to": "+14155550100", "system_prompt": "x" * 8001}, "system_prompt"),
        ({"to": "+14155550100", "system_prompt": "bell \x07 char"}, "system_prompt"),
        ({"to": "+14155550100", "metadata": [1, 2]}, "metadata"),
        ({"to": "+14155550100", "metadata": {"blob": "x" * 3000}}, "metadata"),
        ({"to": "+14155550100", "api_key": "x"}, "api_key"),
        ({"to": "+14155550100", "sessionId": "x"}, "sessionId"),
        ([], None),
    ],
)
def test_each_invalid_input_is_refused_naming_its_field(body: Any, field: str | None):
    with pytest.raises(CallRequestError) as caught:
        parse_call_request(body)
    assert caught.value.field == field
    assert caught.value.as_json() == {"error": caught.value.message, "field": field}


def test_shell_parameters_are_text_converted_and_checked():
    call = call_request_from_params(
        "+14155550100",
        ["voice_id=ada", "temperature=0.3", "silenceDuration=700", "from=+14155550111", "system_prompt=a=b"],
    )
    assert call.settings == {
        "voice_id": "ada",
        "temperature": 0.3,
        "silenceDuration": 700,
        "system_prompt": "a=b",
    }
    assert call.from_ == "+14155550111"
    for params, field in (
        (["colour=red"], "colour"),
        (["novalue"], None),
        (["temperature=hot"], "temperature"),
        (["voice_id=a", "voice_id=b"], "voice_id"),
        (["from=0800"], "from"),
    ):
        with pytest.raises(CallRequestError) as caught:
            call_request_from_params("+14155550100", params)
        assert caught.value.field == field, params
    with pytest.raises(CallRequestError):
        call_request_from_params("0800 123", [])


def test_the_twiml_carries_the_settings_and_a_token_the_stream_check_accepts():
    config = offline_config()
    call = CallRequest(
        "+14155550100",
        None,
        {
            "voice_id": "ada",
            "temperature": 0.3,
            "silenceDuration": 700,
            "system_prompt": 'Say "hi" & <wave>\nthen listen.',
        },
    )
    prepared = prepare_call(config, call)
    assert (prepared.to, prepared.from_) == ("+14155550100", FROM)
    assert prepared.status_callback == "https://bridge.example.com/twilio/status"
    url, params = stream_of(prepared.twiml)
    assert url == "wss://bridge.example.com/twilio/stream"
    assert {k: params[k] for k in ("voice_id", "temperature", "silenceDuration", "system_prompt")} == {
        "voice_id": "ada",
        "temperature": "0.3",
        "silenceDuration": "700",
        "system_prompt": 'Say "hi" & <wave>\nthen listen.',
    }
    assert AUTH not in prepared.twiml and AUTH not in repr(prepared)
    # The app's token check (same key: derived from the auth token) accepts it once, for this nonce only.
    tokens = CallTokens(AUTH)
    call_sid = "CA" + "d" * 32
    assert tokens.redeem(call_sid, params[CallTokens.PARAMETER]) == "bad_token"  # not bound to a CallSid
    subject = token_subject(call_sid, params)
    assert subject == f"outbound:{params[NONCE_PARAMETER]}"
    assert tokens.redeem(subject, params[CallTokens.PARAMETER]) is None
    assert tokens.redeem(subject, params[CallTokens.PARAMETER]) == "reused_token"
    other = prepare_call(config, call)
    _, other_params = stream_of(other.twiml)
    assert other_params[NONCE_PARAMETER] != params[NONCE_PARAMETER]
    assert tokens.redeem(subject, other_params[CallTokens.PARAMETER]) == "bad_token"  # tokens are per nonce
    # Inbound streams (no nonce) are still checked against their CallSid.
    assert token_subject(call_sid, {"bridge_token": "x"}) == call_sid
    assert token_subject(call_sid, {NONCE_PARAMETER: "../not-hex"}) == call_sid


def test_a_prompt_past_twilios_twiml_limit_is_refused_with_the_overflow():
    config = offline_config()
    base = len(prepare_call(config, CallRequest("+14155550100", None, {"system_prompt": "x"})).twiml)
    fits = "x" * (TWIML_MAX_CHARS - base + 1)
    assert (
        len(prepare_call(config, CallRequest("+14155550100", None, {"system_prompt": fits})).twiml)
        == TWIML_MAX_CHARS
    )
    with pytest.raises(CallRequestError) as caught:
        prepare_call(config, CallRequest("+14155550100", None, {"system_prompt": fits + "x"}))
    assert caught.value.field == "system_prompt" and "at least 1 characters" in caught.value.message
    quoted = '"' * (len(fits) // 6 + 1)  # &quot; is 6 characters of TwiML
    with pytest.raises(CallRequestError):
        prepare_call(config, CallRequest("+14155550100", None, {"system_prompt": quoted}))


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"public_url": None}, "PUBLIC_URL"),
        ({"twilio_account_sid": None}, "TWILIO_ACCOUNT_SID"),
        ({"twilio_auth_token": Secret("")}, "TWILIO_AUTH_TOKEN"),
        ({"twilio_from_number": "0800 FLOWERS"}, "TWILIO_FROM_NUMBER"),
    ],
)
def test_what_is_not_configured_is_named(change: dict[str, Any], variable: str):
    with pytest.raises(ConfigError) as caught:
        prepare_call(offline_config(**change), CallRequest("+14155550100"))
    assert caught.value.variable == variable
    assert AUTH not in str(caught.value)


def test_without_any_caller_id_from_is_required():
    with pytest.raises(CallRequestError) as caught:
        prepare_call(offline_config(twilio_from_number=None), CallRequest("+14155550100"))
    assert caught.value.field == "from"
    assert prepare_call(
        offline_config(twilio_from_number=None), CallRequest("+14155550100", "+14155550111")
    ).from_


# --- the status registry: no sockets ----------------------------------------------------------------------


def status_form(sid: str, status: str, seq: int, **extra: str) -> dict[str, str]:
    return {
        "CallSid": sid,
        "CallStatus": status,
        "SequenceNumber": str(seq),
        "Direction": "outbound-api",
        "To": "+14155550100",
        "From": FROM,
        "Timestamp": "Tue, 31 Aug 2010 20:36:28 +0000",
        **extra,
    }


def test_status_callbacks_are_ordered_deduplicated_and_bounded():
    outbound = OutboundCalls(offline_config(), Metrics(), max_calls=3)
    sid = "CA" + "1" * 32
    for form in (
        status_form(sid, "initiated", 0),
        status_form(sid, "ringing", 1),
        status_form(sid, "ringing", 1),
        status_form(sid, "in-progress", 2),
        status_form(sid, "completed", 4, CallDuration="17"),
        status_form(sid, "ringing", 3),
    ):  # a late stray must not move a finished call back
        outbound.record_status(form)
    view = outbound.view(sid)
    assert view is not None
    assert [e["status"] for e in view["history"]] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
        "ringing",
    ]
    assert view["status"] == view["end_status"] == "completed"
    assert view["source"] == "status_callback" and view["to"] == "+14155550100"
    assert view["durations"]["call_duration_s"] == 17
    assert view["durations"]["ring_s"] is not None and view["durations"]["talk_s"] is not None
    assert view["history"][0]["twilio_timestamp"] == "Tue, 31 Aug 2010 20:36:28 +0000"
    # Inbound calls, stream events and garbage are not ours.
    outbound.record_status({**status_form("CA" + "2" * 32, "ringing", 0), "Direction": "inbound"})
    outbound.record_status({"CallSid": sid, "StreamEvent": "stream-started"})
    outbound.record_status(status_form("CAnot-a-sid", "ringing", 0))
    outbound.record_status(status_form("CA" + "3" * 32, "exploded", 0))
    assert outbound.view("CA" + "2" * 32) is None and outbound.view("CA" + "3" * 32) is None
    # Bounded: the oldest call is forgotten first.
    for digit in "4567":
        outbound.record_status(status_form("CA" + digit * 32, "initiated", 0))
    assert outbound.view(sid) is None and outbound.view("CA" + "4" * 32) is None
    assert all(outbound.view("CA" + d * 32) is not None for d in "567")


# --- a real bridge with PUBLIC_URL = its own address ------------------------------------------------------


@dataclass
class Bridge:
    base_url: str
    app: QuartTrio
    state: BridgeState
    outbound: OutboundCalls

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def wire(app: QuartTrio) -> OutboundCalls:
    """The lead's wiring of outbound calls, done here until create_app does it (then create_app's is used).

    Mirrors the lines handed to the lead: the blueprint, record_status from the signed /twilio/status route,
    and the stream check that knows outbound tokens. The hang-up hook lives in serve_stream and cannot be
    wired from outside: the test that needs it is skipped until then.
    """
    state = app.extensions["bridge"]
    existing = getattr(state, "outbound", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    outbound = OutboundCalls(state.config, state.metrics)
    app.register_blueprint(outbound.blueprint())

    @app.after_request
    async def record_status(response: Response) -> Response:
        if (
            request.path == "/twilio/status" and response.status_code == 204
        ):  # the route checked the signature
            outbound.record_status((await request.form).to_dict())
        return response

    tokens = state.tokens
    if tokens is not None:

        def authorize_start(start: _twilio.Start) -> str | None:
            params = start.custom_parameters
            return tokens.redeem(token_subject(start.call_sid, params), params.get(CallTokens.PARAMETER))

        state.authorize_start = authorize_start
    return outbound


#: True once create_app wires outbound calls itself (state.outbound) and the runner has the hang-up hook.
LEAD_WIRED = hasattr(BridgeState(Config()), "outbound") and "hangup" in CallSettings.__dataclass_fields__


async def start_bridge(nursery: trio.Nursery, **config: Any) -> Bridge:
    """A bridge whose PUBLIC_URL is its own address: the socket is bound before the app is built."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config.setdefault("public_url", base_url)
    app = create_app(Config(**config))
    outbound = wire(app)
    hyper = hypercorn_config()
    hyper.bind = [f"fd://{os.dup(sock.fileno())}"]
    sock.close()
    await nursery.start(partial(serve, app, hyper))
    return Bridge(base_url, app, app.extensions["bridge"], outbound)


async def start_api(nursery: trio.Nursery, **kwargs: Any) -> TwilioRestApi:
    api = TwilioRestApi(**kwargs)
    await nursery.start(api.serve)
    return api


def bridge_config(api: TwilioRestApi, agent_url: str | None, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        twilio_account_sid=api.account_sid,
        twilio_auth_token=Secret(api.auth_token),
        twilio_from_number=FROM,
        twilio_api_base_url=api.base_url,
        bridge_api_token=Secret(API_TOKEN),
        speakr_ws_url=agent_url,
    )
    values.update(extra)
    return values


async def post_call(
    bridge: Bridge, body: Any, token: str | None = API_TOKEN, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=bridge.base_url, timeout=10) as client:
        if isinstance(body, bytes):
            return await client.post(
                "/calls", content=body, headers={**headers, "Content-Type": "application/json"}
            )
        return await client.post("/calls", json=body, headers=headers, **kwargs)


async def get_call(bridge: Bridge, sid: str, token: str | None = API_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=bridge.base_url, timeout=10) as client:
        return await client.get(f"/calls/{sid}", headers=headers)


async def test_post_calls_places_the_call_with_the_documented_form_fields(nursery):
    api = await start_api(nursery, simulate=False)
    bridge = await start_bridge(nursery, **bridge_config(api, None))
    with trio.fail_after(LIMIT_S):
        answer = await post_call(
            bridge,
            {"to": "+14155550100", "voice_id": "ada", "temperature": 0.4, "metadata": {"ticket": "T-1"}},
        )
    assert answer.status_code == 201, answer.text
    sid = answer.json()["sid"]
    assert answer.json() == {"sid": sid, "status": "queued"} and answer.headers["Location"] == f"/calls/{sid}"
    [sent] = api.requests
    assert (sent.method, sent.path, sent.auth_user, sent.status) == (
        "POST",
        f"/2010-04-01/Accounts/{api.account_sid}/Calls.json",
        api.account_sid,
        201,
    )
    assert sent.form["To"] == ["+14155550100"] and sent.form["From"] == [FROM]
    assert sent.form["StatusCallback"] == [bridge.base_url + "/twilio/status"]
    assert sent.form["StatusCallbackMethod"] == ["POST"]
    assert sent.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert set(sent.form) == {
        "To",
        "From",
        "Twiml",
        "StatusCallback",
        "StatusCallbackMethod",
        "StatusCallbackEvent",
    }
    url, params = stream_of(sent.form["Twiml"][0])
    assert url == bridge.base_url.replace("http://", "ws://") + "/twilio/stream"
    assert set(params) == {"voice_id", "temperature", NONCE_PARAMETER, CallTokens.PARAMETER}
    assert (params["voice_id"], params["temperature"]) == ("ada", "0.4")
    async with trio.open_nursery():
        view = (await get_call(bridge, sid)).json()
    assert view["to"] == "+14155550100" and view["from"] == FROM and view["source"] == "api"
    assert view["settings"] == {"voice_id": "ada", "temperature": 0.4} and view["metadata"] == {
        "ticket": "T-1"
    }
    assert [e["status"] for e in view["history"]] == ["queued"] and view["end_status"] is None
    assert bridge.metric("bridge_outbound_calls_total", {"outcome": "placed"}) == 1


async def test_each_call_gets_its_own_settings_in_its_start_message_and_a_full_status_history(nursery):
    agent = await start_agent(nursery)
    api = await start_api(nursery, hangup_after_s=0.4, ring_s=0.1)
    bridge = await start_bridge(nursery, **bridge_config(api, agent.url))
    bodies = [
        {"to": "+14155550101", "voice_id": "ada", "temperature": 0.2, "system_prompt": "You sell flowers."},
        {"to": "+14155550102", "voice_id": "bob", "silenceDuration": 600, "threshold": 0.4},
    ]
    answers: dict[str, httpx.Response] = {}
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as both:
            for body in bodies:

                async def place(body: dict[str, Any] = body) -> None:
                    answers[body["voice_id"]] = await post_call(bridge, body)

                both.start_soon(place)
        sids = {voice: answer.json()["sid"] for voice, answer in answers.items()}
        for sid in sids.values():
            await api.calls[sid].ended.wait()
        sessions = [await agent.wait_for_session(n) for n in (1, 2)]
        starts = {(await s.wait_start())["voice_id"]: s.start_params for s in sessions}
        views = {voice: (await get_call(bridge, sid)).json() for voice, sid in sids.items()}
    defaults = Config()
    ada, bob = starts["ada"], starts["bob"]
    assert ada is not None and bob is not None
    assert (ada["temperature"], ada["system_prompt"]) == (0.2, "You sell flowers.")
    assert (ada["silenceDuration"], ada["threshold"]) == (defaults.silence_duration_ms, defaults.threshold)
    assert (bob["silenceDuration"], bob["threshold"]) == (600, 0.4)
    assert (bob["temperature"], bob["system_prompt"]) == (defaults.temperature, defaults.system_prompt)
    for voice, view in views.items():
        call = api.calls[sids[voice]]
        assert call.record is not None and call.record.connected and call.record.outcome == "hung_up"
        assert call.record.custom_parameters["voice_id"] == voice
        assert [e["status"] for e in view["history"]] == [
            "queued",
            "initiated",
            "ringing",
            "in-progress",
            "completed",
        ]
        assert view["end_status"] == "completed" and view["durations"]["call_duration_s"] == call.duration_s
        durations = view["durations"]
        assert 0.05 <= durations["ring_s"] < 2.0 and 0.3 <= durations["talk_s"] < 5.0, durations
        assert durations["queue_s"] >= 0 and durations["total_s"] >= durations["talk_s"]
        assert call.callbacks == [
            ("initiated", 204),
            ("ringing", 204),
            ("in-progress", 204),
            ("completed", 204),
        ]
    assert bridge.metric("bridge_outbound_call_ends_total", {"status": "completed"}) == 2
    assert bridge.metric("bridge_calls_rejected_total", {"reason": "bad_token"}) == 0


async def test_the_hangup_hook_completes_a_live_call_and_an_ended_call_is_not_an_error(nursery):
    agent = await start_agent(nursery)
    api = await start_api(nursery, hangup_after_s=None, max_call_s=15)
    bridge = await start_bridge(nursery, **bridge_config(api, agent.url))
    with trio.fail_after(LIMIT_S):
        sid = (await post_call(bridge, {"to": "+14155550100"})).json()["sid"]
        session = await agent.wait_for_session(1)
        await session.wait_start()
        await bridge.outbound.hangup(sid)  # what the call runner does after `end` has played out
        await api.calls[sid].ended.wait()
        await bridge.outbound.hangup(sid)  # too late: Twilio answers 21220
        await bridge.outbound.hangup("CA" + "e" * 32)  # a call Twilio does not know
        view = (await get_call(bridge, sid)).json()
    updates = [r for r in api.requests if r.path.endswith(f"/Calls/{sid}.json")]
    assert [(r.method, r.form, r.auth_user, r.status) for r in updates] == [
        ("POST", {"Status": ["completed"]}, api.account_sid, 200),
        ("POST", {"Status": ["completed"]}, api.account_sid, 400),
    ]
    assert api.calls[sid].completed_by_api and view["end_status"] == "completed"
    assert view["hangup"]["outcome"] == "already_ended"  # the last word on this call
    for outcome in ("completed", "already_ended", "not_found"):
        assert bridge.metric("bridge_outbound_hangups_total", {"outcome": outcome}) == 1, outcome


@pytest.mark.skipif(not LEAD_WIRED, reason="needs the wiring in create_app: state.outbound")
async def test_the_agents_end_hangs_up_the_outbound_call_after_play_out(nursery):
    async def say_goodbye_and_end(session: Any) -> None:
        await session.send_media(b"\x10\x00" * 2400)  # 100 ms at 24 kHz
        await session.end()

    agent = await start_agent(nursery, say_goodbye_and_end)
    api = await start_api(nursery, hangup_after_s=None, max_call_s=15)
    bridge = await start_bridge(nursery, **bridge_config(api, agent.url))
    with trio.fail_after(LIMIT_S):
        sid = (await post_call(bridge, {"to": "+14155550100"})).json()["sid"]
        await api.calls[sid].ended.wait()
        view = (await get_call(bridge, sid)).json()
    call = api.calls[sid]
    assert call.completed_by_api and call.record is not None and call.record.closed_by == "bridge"
    assert call.record.counters.bytes_received > 0  # the goodbye was sent before the hang-up
    assert view["end_status"] == "completed" and view["hangup"]["outcome"] == "completed"


async def test_requests_without_the_right_bearer_token_are_refused(nursery):
    api = await start_api(nursery, simulate=False)
    bridge = await start_bridge(nursery, **bridge_config(api, None))
    closed = await start_bridge(nursery, **bridge_config(api, None, bridge_api_token=Secret("")))
    body = {"to": "+14155550100"}
    with trio.fail_after(LIMIT_S):
        missing = await post_call(bridge, body, token=None)
        wrong = await post_call(bridge, body, token=API_TOKEN + "x")
        prefix = await post_call(bridge, body, token=API_TOKEN[:-1])
        async with httpx.AsyncClient(base_url=bridge.base_url) as client:
            basic = await client.post("/calls", json=body, auth=("user", API_TOKEN))
        get_wrong = await get_call(bridge, "CA" + "0" * 32, token="nope")
        disabled = await post_call(closed, body, token="anything")
        disabled_get = await get_call(closed, "CA" + "0" * 32, token=None)
    for answer in (missing, wrong, prefix, basic, get_wrong):
        assert answer.status_code == 401 and answer.json()["error"] == "missing or invalid bearer token"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    for answer in (disabled, disabled_get):
        assert answer.status_code == 503 and "BRIDGE_API_TOKEN is not set" in answer.json()["error"]
    assert api.requests == []  # nothing reached Twilio
    assert bridge.metric("bridge_outbound_calls_total", {"outcome": "unauthorized"}) == 4


async def test_invalid_requests_are_refused_with_a_clear_4xx_naming_the_field(nursery):
    api = await start_api(nursery, simulate=False)
    bridge = await start_bridge(nursery, **bridge_config(api, None))
    with trio.fail_after(LIMIT_S):
        answers = {
            "to": await post_call(bridge, {"to": "555-0100"}),
            "temperature": await post_call(bridge, {"to": "+14155550100", "temperature": 9}),
            "colour": await post_call(bridge, {"to": "+14155550100", "colour": "red"}),
            "metadata": await post_call(bridge, {"to": "+14155550100", "metadata": "x"}),
            "system_prompt": await post_call(bridge, {"to": "+14155550100", "system_prompt": "p" * 5000}),
        }
        not_json = await post_call(bridge, b"{to: +1}")
        too_large = await post_call(bridge, b"{" + b" " * 70_000 + b"}")
        unknown = await get_call(bridge, "CA" + "0" * 32)
    for field, answer in answers.items():
        assert answer.status_code == 422, (field, answer.text)
        assert answer.json()["field"] == field and answer.json()["error"]
    assert "4000" in answers["system_prompt"].json()["error"]
    assert not_json.status_code == 400 and not_json.json()["error"] == "the body must be a JSON object"
    assert too_large.status_code == 413
    assert unknown.status_code == 404 and unknown.json() == {"error": "no such call", "field": "sid"}
    assert api.requests == []
    assert bridge.metric("bridge_outbound_calls_total", {"outcome": "invalid"}) == 7


async def test_503_names_what_outbound_calls_lack(nursery):
    api = await start_api(nursery, simulate=False)
    no_public = await start_bridge(nursery, **bridge_config(api, None, public_url=None))
    no_sid = await start_bridge(nursery, **bridge_config(api, None, twilio_account_sid=None))
    with trio.fail_after(LIMIT_S):
        a = await post_call(no_public, {"to": "+14155550100"})
        b = await post_call(no_sid, {"to": "+14155550100"})
    assert a.status_code == 503 and a.json()["variable"] == "PUBLIC_URL" and "PUBLIC_URL" in a.json()["error"]
    assert b.status_code == 503 and b.json()["variable"] == "TWILIO_ACCOUNT_SID"
    assert api.requests == []


async def test_twilio_errors_become_502_with_twilios_code_and_no_credentials(nursery):
    api = await start_api(
        nursery,
        simulate=False,
        errors={"+15005550001": (400, 21211, "The 'To' number +15005550001 is not a valid phone number.")},
    )
    bridge = await start_bridge(nursery, **bridge_config(api, None))
    bad_creds = await start_bridge(nursery, **bridge_config(api, None, twilio_auth_token=Secret("9" * 32)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    unreachable = await start_bridge(nursery, **bridge_config(api, None, twilio_api_base_url=dead_url))
    with trio.fail_after(LIMIT_S):
        refused = await post_call(bridge, {"to": "+15005550001"})
        denied = await post_call(bad_creds, {"to": "+14155550100"})
        lost = await post_call(unreachable, {"to": "+14155550100"})
    assert refused.status_code == 502
    assert refused.json()["twilio"] == {
        "code": 21211,
        "status": 400,
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "message": "The 'To' number +15005550001 is not a valid phone number.",
    }
    assert refused.json()["error"].startswith("Twilio refused the call: The 'To' number")
    assert denied.status_code == 502 and denied.json()["twilio"]["code"] == 20003
    assert lost.status_code == 502 and lost.json()["error"].startswith("could not reach Twilio")
    for answer in (refused, denied, lost):
        assert api.auth_token not in answer.text and "9" * 32 not in answer.text
    assert bridge.metric("bridge_outbound_calls_total", {"outcome": "twilio_error"}) == 1
    assert unreachable.metric("bridge_outbound_calls_total", {"outcome": "twilio_unreachable"}) == 1


async def test_an_unanswered_call_ends_busy_with_its_ring_time(nursery):
    api = await start_api(nursery, outcomes={"+14155550199": "busy"}, ring_s=0.2)
    bridge = await start_bridge(nursery, **bridge_config(api, None))
    with trio.fail_after(LIMIT_S):
        sid = (await post_call(bridge, {"to": "+14155550199"})).json()["sid"]
        await api.calls[sid].ended.wait()
        view = (await get_call(bridge, sid)).json()
    assert [e["status"] for e in view["history"]] == ["queued", "initiated", "ringing", "busy"]
    assert view["status"] == view["end_status"] == "busy"
    assert view["durations"]["talk_s"] is None and view["durations"]["call_duration_s"] is None
    assert 0.15 <= view["durations"]["ring_s"] < 2.0
    assert bridge.metric("bridge_outbound_call_ends_total", {"status": "busy"}) == 1


async def test_secrets_never_reach_responses_or_log_lines(nursery, caplog):
    caplog.set_level(logging.DEBUG)
    agent = await start_agent(nursery)
    api = await start_api(nursery, hangup_after_s=0.2)
    bridge = await start_bridge(nursery, **bridge_config(api, agent.url))
    texts: list[str] = []
    with trio.fail_after(LIMIT_S):
        placed = await post_call(bridge, {"to": "+14155550100", "metadata": {"note": "private"}})
        texts.append(placed.text)
        texts.append((await post_call(bridge, {"to": "+14155550100"}, token="wrong")).text)
        texts.append((await post_call(bridge, {"to": "+14155550100", "temperature": -1})).text)
        await api.calls[placed.json()["sid"]].ended.wait()
        texts.append((await get_call(bridge, placed.json()["sid"])).text)
        await bridge.outbound.hangup(placed.json()["sid"])
    tokens = [r.field("Twiml") for r in api.requests if r.field("Twiml")]
    _, params = stream_of(tokens[0] or "")
    secrets_ = [api.auth_token, API_TOKEN, params[CallTokens.PARAMETER]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets_:
        assert all(secret not in text for text in texts)
        assert secret not in logged
    assert "private" not in logged  # metadata is the caller's, not the log's
    assert "bridge.outbound" in {r.name for r in caplog.records}


# --- the `call` command --------------------------------------------------------------------------------


@contextmanager
def api_in_a_thread(**kwargs: Any) -> Iterator[TwilioRestApi]:
    """The REST stand-in in its own thread and Trio run, for the command's own trio.run."""
    api = TwilioRestApi(simulate=False, **kwargs)
    ready = threading.Event()
    handle: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(api.serve)
            handle.append((trio.lowlevel.current_trio_token(), nursery.cancel_scope))
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield api
    finally:
        token, scope = handle[0]
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)


def run_command(number: str, params: list[str], config: Config) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = call_command(number, params, config=config, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_the_call_command_places_the_call_and_prints_its_sid():
    with api_in_a_thread(
        errors={"+15005550001": (400, 21211, "The 'To' number +15005550001 is not a valid phone number.")}
    ) as api:
        config = Config(
            twilio_account_sid=api.account_sid,
            twilio_auth_token=Secret(api.auth_token),
            twilio_from_number=FROM,
            twilio_api_base_url=api.base_url,
            public_url="https://bridge.example.com",
        )
        code, out, err = run_command("+14155550100", ["voice_id=ada", "temperature=0.3"], config)
        refused = run_command("+15005550001", [], config)
    assert code == 0, err
    sid = out.strip()
    assert sid in api.calls and f"{sid} queued" in err
    sent = api.requests[0]
    assert sent.auth_user == api.account_sid and sent.form["StatusCallback"] == [
        "https://bridge.example.com/twilio/status"
    ]
    assert sent.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    _, params = stream_of(sent.field("Twiml") or "")
    assert (params["voice_id"], params["temperature"]) == ("ada", "0.3") and NONCE_PARAMETER in params
    assert refused[0] == 1 and refused[1] == ""
    assert "21211" in refused[2] and "https://www.twilio.com/docs/errors/21211" in refused[2]
    assert api.auth_token not in err + refused[2]


def test_the_call_command_exits_2_for_bad_input_or_configuration_before_any_request():
    config = offline_config(twilio_api_base_url="http://127.0.0.1:9")  # nothing listens: no request is made
    cases = [
        ("0800 123", [], "(to)"),
        ("+14155550100", ["colour=red"], "(colour)"),
        ("+14155550100", ["temperature=hot"], "(temperature)"),
    ]
    for number, params, named in cases:
        code, out, err = run_command(number, params, config)
        assert (code, out) == (2, ""), err
        assert "invalid input" in err and named in err
    code, out, err = run_command("+14155550100", [], offline_config(public_url=None))
    assert code == 2 and "PUBLIC_URL" in err


def test_the_call_sub_command_parses_number_and_repeated_params():
    import argparse

    parser = argparse.ArgumentParser(prog="speakr-bridge")
    add_call_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["call", "+14155550100", "--param", "voice_id=ada", "--param", "from=+14155550111"]
    )
    assert (args.number, args.param) == ("+14155550100", ["voice_id=ada", "from=+14155550111"])
    assert callable(args.func)
    assert parser.parse_args(["call", "+14155550100"]).param is None


def test_responses_are_json_objects():
    # The error shape every 4xx/5xx of the API shares.
    exc = CallRequestError("to", "to is required")
    assert orjson.loads(orjson.dumps(exc.as_json())) == {"error": "to is required", "field": "to"}

"""The REST client (bridge._twilio_rest) against the local stand-in of Twilio's REST API, over real sockets.

Each test proves one behaviour of the client or of the stand-in it relies on; the stand-in's requests are
recorded, so what the client sends is checked field by field.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ElementTree

import pytest
import trio
from quart import request
from quart_trio import QuartTrio
from twilio.request_validator import RequestValidator

from bridge._config import Config, Secret
from bridge._errors import ConfigError
from bridge._server import serve_in_process
from bridge._twilio_rest import STATUS_CALLBACK_EVENTS, CallInfo, TwilioRest, TwilioRestError
from bridge.emulators._twilio_rest_api import TwilioRestApi

LIMIT_S = 15
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>hello</Say></Response>'


async def start_api(nursery: trio.Nursery, **kwargs: object) -> TwilioRestApi:
    api = TwilioRestApi(**kwargs)  # type: ignore[arg-type]
    await nursery.start(api.serve)
    return api


def client_for(api: TwilioRestApi, *, token: str | None = None, timeout_s: float = 5.0) -> TwilioRest:
    return TwilioRest(
        api.account_sid, Secret(token or api.auth_token), base_url=api.base_url, timeout_s=timeout_s
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_create_call_posts_the_documented_form_with_basic_auth(nursery):
    api = await start_api(nursery, simulate=False)
    with trio.fail_after(LIMIT_S):
        info = await client_for(api).create_call(
            to="+14155550100",
            from_="+15005550006",
            twiml=TWIML,
            status_callback="https://example.com/twilio/status",
        )
    assert isinstance(info, CallInfo) and info.sid.startswith("CA") and info.status == "queued"
    assert info.to == "+14155550100" and info.from_ == "+15005550006" and info.direction == "outbound-api"
    [sent] = api.requests
    assert (sent.method, sent.path, sent.status) == (
        "POST",
        f"/2010-04-01/Accounts/{api.account_sid}/Calls.json",
        201,
    )
    assert sent.auth_user == api.account_sid and sent.authenticated
    assert sent.form == {
        "To": ["+14155550100"],
        "From": ["+15005550006"],
        "Twiml": [TWIML],
        "StatusCallback": ["https://example.com/twilio/status"],
        "StatusCallbackMethod": ["POST"],
        "StatusCallbackEvent": list(STATUS_CALLBACK_EVENTS),
    }


async def test_bad_credentials_are_twilios_20003_and_the_error_never_shows_the_token(nursery):
    api = await start_api(nursery, simulate=False)
    wrong = "f" * 32
    with trio.fail_after(LIMIT_S), pytest.raises(TwilioRestError) as caught:
        await client_for(api, token=wrong).create_call(to="+14155550100", from_="+15005550006", twiml=TWIML)
    exc = caught.value
    assert (exc.status, exc.code, exc.twilio_message) == (401, 20003, "Authenticate")
    assert exc.more_info == "https://www.twilio.com/docs/errors/20003"
    assert not exc.unreachable
    assert (
        wrong not in str(exc) and wrong not in repr(exc) and wrong not in repr(client_for(api, token=wrong))
    )
    assert api.requests[0].auth_user == api.account_sid and not api.requests[0].authenticated


async def test_an_invalid_number_is_twilios_21211_with_its_message(nursery):
    api = await start_api(
        nursery,
        simulate=False,
        errors={"+15005550001": (400, 21211, "The 'To' number +15005550001 is not a valid phone number.")},
    )
    with trio.fail_after(LIMIT_S), pytest.raises(TwilioRestError) as caught:
        await client_for(api).create_call(to="+15005550001", from_="+15005550006", twiml=TWIML)
    assert (caught.value.status, caught.value.code) == (400, 21211)
    assert "+15005550001 is not a valid phone number" in caught.value.twilio_message
    assert caught.value.as_json() == {
        "code": 21211,
        "message": caught.value.twilio_message,
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }


async def test_complete_call_hangs_up_once_and_an_ended_call_is_not_an_error(nursery):
    api = await start_api(nursery, simulate=False)
    client = client_for(api)
    with trio.fail_after(LIMIT_S):
        info = await client.create_call(to="+14155550100", from_="+15005550006", twiml=TWIML)
        api.calls[info.sid].status = "in-progress"  # as if answered (simulation is off in this test)
        first = await client.complete_call(info.sid)
        second = await client.complete_call(info.sid)
        fetched = await client.fetch_call(info.sid)
    assert (first, second) == ("completed", "already_ended")
    assert fetched.status == "completed" and api.calls[info.sid].completed_by_api
    update = api.requests[1]
    assert (update.method, update.path) == (
        "POST",
        f"/2010-04-01/Accounts/{api.account_sid}/Calls/{info.sid}.json",
    )
    assert update.form == {"Status": ["completed"]} and update.status == 200
    assert api.requests[2].status == 400  # Twilio's 21220, taken as "already ended"


async def test_complete_call_never_raises_for_unknown_malformed_or_unreachable_calls(nursery):
    api = await start_api(nursery, simulate=False)
    unknown = "CA" + "0" * 32
    unreachable = TwilioRest(
        api.account_sid, Secret(api.auth_token), base_url=f"http://127.0.0.1:{closed_port()}"
    )
    with trio.fail_after(LIMIT_S):
        assert await client_for(api).complete_call(unknown) == "not_found"
        assert await client_for(api).complete_call("not-a-sid/../../x") == "failed"
        assert await unreachable.complete_call(unknown) == "failed"
    assert len(api.requests) == 1  # the malformed SID never reached the wire


async def test_a_slow_twilio_is_bounded_by_the_timeout(nursery):
    api = await start_api(nursery, simulate=False, response_delay_s=5.0)
    client = client_for(api, timeout_s=0.3)
    with trio.fail_after(LIMIT_S):
        t0 = trio.current_time()
        assert await client.complete_call("CA" + "1" * 32) == "failed"
        with pytest.raises(TwilioRestError) as caught:
            await client.create_call(to="+14155550100", from_="+15005550006", twiml=TWIML)
        elapsed = trio.current_time() - t0
    assert caught.value.unreachable and caught.value.status is None
    assert elapsed < 2.0


async def test_a_non_json_error_page_becomes_a_short_error(nursery):
    app = QuartTrio("proxy")

    @app.post("/2010-04-01/Accounts/<account>/Calls.json")
    async def page(account: str) -> tuple[str, int]:
        return "<html>" + "bad gateway " * 100 + "</html>", 502

    base = await nursery.start(serve_in_process, app)
    client = TwilioRest("AC" + "a" * 32, Secret("t" * 32), base_url=base)
    with trio.fail_after(LIMIT_S), pytest.raises(TwilioRestError) as caught:
        await client.create_call(to="+14155550100", from_="+15005550006", twiml=TWIML)
    assert caught.value.status == 502 and caught.value.code is None
    assert caught.value.twilio_message.startswith("HTTP 502: <html>bad gateway")
    assert len(caught.value.twilio_message) < 260


def test_from_config_names_the_missing_variable_and_repr_hides_the_token():
    with pytest.raises(ConfigError) as caught:
        TwilioRest.from_config(Config(twilio_auth_token=Secret("x" * 32)))
    assert caught.value.variable == "TWILIO_ACCOUNT_SID"
    with pytest.raises(ConfigError) as caught:
        TwilioRest.from_config(Config(twilio_account_sid="AC" + "b" * 32))
    assert caught.value.variable == "TWILIO_AUTH_TOKEN"
    with pytest.raises(ConfigError) as caught:
        TwilioRest.from_config(Config(twilio_account_sid="ACnope", twilio_auth_token=Secret("x" * 32)))
    assert caught.value.variable == "TWILIO_ACCOUNT_SID"
    client = TwilioRest.from_config(
        Config(
            twilio_account_sid="AC" + "b" * 32,
            twilio_auth_token=Secret("s3cr3t-token-value"),
            twilio_api_base_url="http://127.0.0.1:9",
        )
    )
    assert client.base_url == "http://127.0.0.1:9" and "s3cr3t-token-value" not in repr(client)


# --- the stand-in's own promises: signed callbacks, only the subscribed events ---------------------------


async def test_the_stand_in_posts_only_subscribed_events_signed_like_twilio(nursery):
    received: list[tuple[dict[str, str], str]] = []
    app = QuartTrio("status-sink")

    @app.post("/twilio/status")
    async def status() -> tuple[str, int]:
        form = await request.form
        received.append((form.to_dict(), request.headers.get("X-Twilio-Signature", "")))
        return "", 204

    sink = await nursery.start(serve_in_process, app)
    api = await start_api(nursery, outcomes={"+14155550199": "busy"}, ring_s=0.01)
    client = client_for(api)
    with trio.fail_after(LIMIT_S):
        all_events = await client.create_call(
            to="+14155550199", from_="+15005550006", twiml=TWIML, status_callback=sink + "/twilio/status"
        )
        only_end = await client.create_call(
            to="+14155550199",
            from_="+15005550006",
            twiml=TWIML,
            status_callback=sink + "/twilio/status",
            status_callback_events=(),
        )
        for sid in (all_events.sid, only_end.sid):
            await api.calls[sid].ended.wait()
    by_call = {
        sid: [form for form, _ in received if form["CallSid"] == sid]
        for sid in (all_events.sid, only_end.sid)
    }
    assert [f["CallStatus"] for f in by_call[all_events.sid]] == ["initiated", "ringing", "busy"]
    assert [f["SequenceNumber"] for f in by_call[all_events.sid]] == ["0", "1", "2"]
    assert [f["CallStatus"] for f in by_call[only_end.sid]] == ["busy"]
    validator = RequestValidator(api.auth_token)
    for form, signature in received:
        assert validator.validate(sink + "/twilio/status", form, signature)
        assert form["Direction"] == "outbound-api" and form["CallbackSource"] == "call-progress-events"
        assert "CallDuration" not in form  # never answered
    assert api.calls[all_events.sid].callbacks == [("initiated", 204), ("ringing", 204), ("busy", 204)]


def test_the_stand_in_reads_stream_parameters_like_twilio():
    from bridge.emulators._twilio_rest_api import _read_stream

    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h/twilio/stream">'
        '<Parameter name="voice_id" value="ada" />'
        '<Parameter name="system_prompt" value="a &quot;b&quot;&#10;c" />'
        "</Stream></Connect><Say>sorry</Say></Response>"
    )
    assert _read_stream(twiml) == ("wss://h/twilio/stream", {"voice_id": "ada", "system_prompt": 'a "b"\nc'})
    assert _read_stream("<Response><Say>x</Say></Response>") is None
    assert _read_stream("not xml") is None
    ElementTree.fromstring(twiml)  # the sample itself is well-formed

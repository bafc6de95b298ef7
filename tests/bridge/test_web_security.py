"""Sign-in and per-call tokens of the browser pages, against a real server over HTTP and WebSocket."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from e2e_helpers import RunningBridge, start_pair

from bridge import _twilio
from bridge._config import Secret
from bridge._web import CSP, SESSION_COOKIE, SESSION_TTL_S, WebAuth

API_TOKEN = "web-security-api-token-abcdef0123456789"
TWILIO_TOKEN = "web-security-twilio-auth-token"
PAGES = ["/phone", "/dashboard"]
DATA = [("GET", "/dashboard/calls"), ("GET", "/dashboard/events"), ("POST", "/phone/session")]


async def _bridge(nursery: trio.Nursery, **extra: Any) -> tuple[Any, RunningBridge]:
    config: dict[str, Any] = {
        "bridge_api_token": Secret(API_TOKEN),
        "twilio_auth_token": Secret(TWILIO_TOKEN),
    }
    config.update(extra)
    return await start_pair(nursery, **config)


async def _signed_in(client: httpx.AsyncClient) -> str:
    response = await client.post("/web/login", data={"token": API_TOKEN, "next": "dashboard"})
    assert response.status_code == 303
    assert response.headers["location"].endswith("/dashboard")
    return response.cookies[SESSION_COOKIE]


async def test_without_sign_in_nothing_about_calls_is_shown() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, bridge = await _bridge(nursery)
            async with httpx.AsyncClient(base_url=bridge.base_url) as client:
                for path in PAGES:
                    page = await client.get(path)
                    assert page.status_code == 401
                    assert 'data-testid="token"' in page.text and 'data-testid="login"' in page.text
                    assert 'data-testid="call-row"' not in page.text and "phone.js" not in page.text
                    assert page.headers["content-security-policy"] == CSP
                    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
                    assert "<script>" not in page.text  # modules from /web/ only: no inline script
                for method, path in DATA:
                    response = await client.request(method, path, json={})
                    assert response.status_code == 401, path
                    assert "CA" not in response.text
                wrong = await client.post("/web/login", data={"token": API_TOKEN + "x"})
                assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
                # no lease was reserved, no agent session opened
                assert await bridge.state.store.live_calls() == {}
            nursery.cancel_scope.cancel()


async def test_session_cookie_is_httponly_strict_short_lived_and_secure_behind_https() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, bridge = await _bridge(nursery)
            async with httpx.AsyncClient(base_url=bridge.base_url) as client:
                plain = await client.post("/web/login", data={"token": API_TOKEN})
                cookie = plain.headers["set-cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert f"Max-Age={SESSION_TTL_S}" in cookie and "Secure" not in cookie
                assert API_TOKEN not in cookie
                proxied = await client.post(
                    "/web/login", data={"token": API_TOKEN}, headers={"X-Forwarded-Proto": "https"}
                )
                assert "Secure" in proxied.headers["set-cookie"]
                client.cookies.set(SESSION_COOKIE, plain.cookies[SESSION_COOKIE])
                page = await client.get("/phone")
                assert page.status_code == 200 and 'data-testid="call"' in page.text
                assert (await client.get("/dashboard/calls")).status_code == 200
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["random", "other_key", "expired", "tampered"])
async def test_forged_or_expired_cookie_is_refused(kind: str) -> None:
    if kind == "random":
        cookie = "0123456789abcdef.AAAAAA.bm90LWEtc2lnbmF0dXJl"
    elif kind == "other_key":
        cookie = WebAuth("some-other-token").new_cookie()
    elif kind == "expired":
        auth = WebAuth(API_TOKEN)
        auth._signer.get_timestamp = lambda: int(time.time()) - SESSION_TTL_S - 60  # type: ignore[method-assign]
        cookie = auth.new_cookie()
    else:
        good = WebAuth(API_TOKEN).new_cookie()
        cookie = ("1" if good[0] != "1" else "2") + good[1:]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            agent, bridge = await _bridge(nursery)
            async with httpx.AsyncClient(
                base_url=bridge.base_url, cookies={SESSION_COOKIE: cookie}
            ) as client:
                for path in PAGES:
                    assert (await client.get(path)).status_code == 401
                for method, path in DATA:
                    assert (await client.request(method, path, json={})).status_code == 401
            assert agent.sessions == []
            nursery.cancel_scope.cancel()


async def _stream_start(bridge: RunningBridge, call_sid: str, parameters: dict[str, str]) -> int | None:
    """Open the Twilio stream route as the web phone does; the close code the bridge answers with."""
    stream_sid = "MZ" + "0" * 32
    async with trio_websocket.open_websocket_url(bridge.stream_url) as ws:
        await ws.send_message('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
        await ws.send_message(
            _twilio.start_message(
                stream_sid=stream_sid,
                call_sid=call_sid,
                account_sid="AC" + "0" * 32,
                custom_parameters=parameters,
            )
        )
        try:
            with trio.fail_after(5):
                while True:
                    await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code if closed.reason else None
    return None


async def test_stream_without_a_valid_per_call_token_is_refused() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent, bridge = await _bridge(nursery)
            async with httpx.AsyncClient(base_url=bridge.base_url) as client:
                await _signed_in(client)
                first = (await client.post("/phone/session", json={"prompt": "be brief"})).json()
                second = (await client.post("/phone/session", json={})).json()
            params = dict(first["parameters"])
            token = params.pop("bridge_token")
            assert API_TOKEN not in str(first) and TWILIO_TOKEN not in str(first)
            await _stream_start(bridge, first["call_sid"], params)  # no token
            await _stream_start(
                bridge, first["call_sid"], {**params, "bridge_token": second["parameters"]["bridge_token"]}
            )
            await _stream_start(bridge, first["call_sid"], {**params, "bridge_token": API_TOKEN})
            await bridge.wait_idle()
            assert bridge.metric("bridge_calls_rejected_total", {"reason": "missing_token"}) == 1
            assert bridge.metric("bridge_calls_rejected_total", {"reason": "bad_token"}) == 2
            assert agent.sessions == []  # no agent session was ever opened
            # the genuine token is admitted once, then it is used up
            nursery.start_soon(_stream_start, bridge, first["call_sid"], {**params, "bridge_token": token})
            session = await agent.wait_for_session()
            assert (await session.wait_start())["system_prompt"] == "be brief"  # the page's prompt
            assert len(agent.sessions) == 1
            # used up: the same token cannot open a second stream (a replay)
            await _stream_start(bridge, first["call_sid"], {**params, "bridge_token": token})
            assert bridge.metric("bridge_calls_rejected_total", {"reason": "reused_token"}) == 1
            assert len(agent.sessions) == 1
            nursery.cancel_scope.cancel()


async def test_no_secret_in_what_the_pages_serve() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, bridge = await _bridge(nursery, speakr_api_key=Secret("speakr-secret-key-xyz"))
            async with httpx.AsyncClient(base_url=bridge.base_url) as client:
                await _signed_in(client)
                served = [await client.get(p) for p in PAGES]
                for name in (
                    "common.js",
                    "phone.js",
                    "dashboard.js",
                    "capture-worklet.js",
                    "playback-worklet.js",
                    "style.css",
                ):
                    served.append(await client.get(f"/web/{name}"))
                served.append(await client.post("/phone/session", json={}))
                served.append(await client.get("/dashboard/calls"))
                assert (await client.get("/web/../app.py")).status_code == 404
                assert (await client.get("/web/nothing.js")).status_code == 404
            for response in served:
                assert response.status_code == 200, response.url
                for secret in (API_TOKEN, TWILIO_TOKEN, "speakr-secret-key-xyz"):
                    assert secret not in response.text, response.url
            nursery.cancel_scope.cancel()


async def test_pages_are_disabled_without_an_api_token() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, bridge = await start_pair(nursery)
            async with httpx.AsyncClient(base_url=bridge.base_url) as client:
                assert (await client.get("/phone")).status_code == 503
                assert (await client.post("/web/login", data={"token": ""})).status_code == 503
                assert (await client.post("/phone/session", json={})).status_code == 401
            nursery.cancel_scope.cancel()

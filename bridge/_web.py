"""The browser side: sign-in, the web phone (``GET /phone``) and the dashboard (``GET /dashboard``).

Theory of operation
-------------------
**Sign-in.** ``POST /web/login`` takes ``BRIDGE_API_TOKEN`` from a form and answers with a session
cookie: a random id and its issue time, signed (``itsdangerous``) with a key derived from the token, so
changing the token signs everyone out and no server state is kept (every worker and host checks it alike).
The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the request came over https (directly or
per ``X-Forwarded-Proto``), and valid for :data:`SESSION_TTL_S`. Without a valid cookie the pages show only
the sign-in form and every data endpoint answers 401; without ``BRIDGE_API_TOKEN`` the pages are disabled.

**The web phone** gets a per-call ticket from ``POST /phone/session``: a fresh CallSid with a reserved
admission lease and a ``bridge_token`` from the same machinery the voice webhook uses
(:meth:`BridgeState.reserve`, :class:`~bridge._tokens.CallTokens`). The page then speaks Twilio's Media
Stream protocol to ``/twilio/stream`` with the token in ``start.customParameters``: the very handler, the
admission and the metrics of a phone call. The API token never leaves the sign-in form.

**The dashboard** is pushed by Server-Sent Events from :class:`~bridge._dashboard.DashboardFeed`: a
snapshot on connect, then the rows that changed.

Pages are static HTML with ES modules from ``bridge/web`` (no inline script, no build step, nothing from
a CDN) and a strict Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Final

import orjson
import trio
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from quart import Response, request
from quart_trio import QuartTrio

from bridge._dashboard import WEB_ORIGIN_PARAMETER, DashboardFeed
from bridge._tokens import CallTokens
from bridge._twiml import STREAM_PATH

__all__ = ["register_web", "SESSION_COOKIE", "SESSION_TTL_S", "CSP"]

logger = logging.getLogger("bridge.web")

SESSION_COOKIE: Final = "bridge_session"
#: A sign-in lasts this long: a working session at a desk, short enough that a leaked cookie soon dies.
SESSION_TTL_S: Final = 3600
#: Pages may load only their own scripts, styles and sockets: no inline script, no CDN, no framing.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "media-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: Static files served from the package (nothing else under /web/ is).
_STATIC: Final = {
    "common.js": "text/javascript",
    "phone.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "capture-worklet.js": "text/javascript",
    "playback-worklet.js": "text/javascript",
    "style.css": "text/css",
}
#: An SSE comment this often keeps proxies from closing an idle dashboard stream.
SSE_KEEPALIVE_S: Final = 15.0
#: Longest prompt and agent name the phone page may send (the runner validates them again).
MAX_PROMPT_CHARS: Final = 2000
MAX_AGENT_CHARS: Final = 64
_PAGES: Final = {"phone", "dashboard"}


def _asset(name: str) -> bytes:
    return resources.files("bridge").joinpath("web", name).read_bytes()


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _json(body: Any, status: int = 200) -> Response:
    return _secure_headers(Response(orjson.dumps(body), status=status, mimetype="application/json"))


def _is_https() -> bool:
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip().lower()
    return proto in ("https", "wss")


class WebAuth:
    """Session cookies signed with a key derived from ``BRIDGE_API_TOKEN``."""

    def __init__(self, api_token: str) -> None:
        self._token = api_token
        key = hashlib.sha256(b"speakr-bridge web session:" + api_token.encode()).digest()
        self._signer = TimestampSigner(key, salt="bridge-session")

    def __repr__(self) -> str:
        return "WebAuth()"

    def token_matches(self, given: str) -> bool:
        return bool(self._token) and hmac.compare_digest(given.encode(), self._token.encode())

    def new_cookie(self) -> str:
        return self._signer.sign(secrets.token_hex(16)).decode()

    def valid(self, cookie: str | None) -> bool:
        if not cookie or len(cookie) > 200:
            return False
        try:
            self._signer.unsign(cookie, max_age=SESSION_TTL_S)
        except (SignatureExpired, BadSignature):
            return False
        return True


def register_web(app: QuartTrio, state: Any) -> DashboardFeed:
    """Add the browser routes to ``app`` (``state``: its BridgeState). Returns the dashboard feed."""
    config = state.config
    token = config.bridge_api_token.reveal()
    auth = WebAuth(token) if token else None
    feed = DashboardFeed(lambda: state.store, lambda: state.draining, state.metrics.dashboard_poll)

    @app.before_serving
    async def start_feed() -> None:
        app.nursery.start_soon(feed.run)

    def signed_in() -> bool:
        return auth is not None and auth.valid(request.cookies.get(SESSION_COOKIE))

    def page(name: str, status: int = 200) -> Response:
        html = _asset(f"{name}.html")
        return _secure_headers(Response(html, status=status, mimetype="text/html"))

    def gate(name: str) -> Response:
        if auth is None:
            return page("disabled", 503)
        if not signed_in():
            state.metrics.web.labels("web_" + name, "unauthorized").inc()
            return page("login", 401)
        return page(name)

    @app.get("/phone")
    async def phone_page() -> Response:
        return gate("phone")

    @app.get("/dashboard")
    async def dashboard_page() -> Response:
        return gate("dashboard")

    @app.get("/web/<name>")
    async def static_file(name: str) -> Response:
        mimetype = _STATIC.get(name)
        if mimetype is None:
            return _secure_headers(Response("not found", status=404, mimetype="text/plain"))
        response = Response(_asset(name), mimetype=mimetype)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.post("/web/login")
    async def login() -> Response:
        form = await request.form
        target = form.get("next", "phone")
        target = target if target in _PAGES else "phone"
        if auth is None:
            return page("disabled", 503)
        if not auth.token_matches(form.get("token", "")):
            state.metrics.web.labels("web_login", "bad_token").inc()
            logger.warning("web sign-in refused: wrong token")
            return page("login", 401)
        state.metrics.web.labels("web_login", "ok").inc()
        response = Response("", status=303, headers={"Location": f"/{target}"})
        response.set_cookie(
            SESSION_COOKIE,
            auth.new_cookie(),
            max_age=SESSION_TTL_S,
            httponly=True,
            secure=_is_https(),
            samesite="Strict",
            path="/",
        )
        return _secure_headers(response)

    @app.post("/web/logout")
    async def logout() -> Response:
        response = Response("", status=303, headers={"Location": "/phone"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
        return _secure_headers(response)

    @app.post("/phone/session")
    async def phone_session() -> Response:
        if not signed_in():
            return _json({"error": "sign in first"}, 401)
        body = await request.get_json(silent=True) or {}
        prompt = body.get("prompt", "") if isinstance(body, dict) else ""
        agent = body.get("agent", "") if isinstance(body, dict) else ""
        if not isinstance(prompt, str) or not isinstance(agent, str):
            return _json({"error": "prompt and agent must be strings"}, 400)
        if len(prompt) > MAX_PROMPT_CHARS or len(agent) > MAX_AGENT_CHARS:
            return _json({"error": "prompt or agent too long"}, 400)
        call_sid = "CA" + secrets.token_hex(16)
        refusal = await state.reserve(call_sid)
        if refusal is not None:
            state.metrics.calls_rejected.labels(refusal).inc()
            return _json({"error": f"no call now: {refusal}"}, 503)
        parameters = {WEB_ORIGIN_PARAMETER: "web"}
        if agent:
            parameters["agent"] = agent
        if prompt:
            parameters["system_prompt"] = prompt
        if state.tokens is not None:
            parameters[CallTokens.PARAMETER] = state.tokens.issue(call_sid)
        logger.info("[%s] web phone call issued", call_sid)
        return _json(
            {
                "call_sid": call_sid,
                "stream_sid": "MZ" + secrets.token_hex(16),
                "stream_path": STREAM_PATH,
                "parameters": parameters,
            }
        )

    @app.get("/dashboard/calls")
    async def dashboard_calls() -> Response:
        if not signed_in():
            return _json({"error": "sign in first"}, 401)
        return _json({"rows": feed.rows()})

    @app.get("/dashboard/events")
    async def dashboard_events() -> Response:
        if not signed_in():
            return _json({"error": "sign in first"}, 401)
        receive, unsubscribe = feed.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"data: " + orjson.dumps({"type": "snapshot", "rows": feed.rows()}) + b"\n\n"
                while True:
                    update: bytes | None = None
                    with trio.move_on_after(SSE_KEEPALIVE_S):  # no yield inside a cancel scope
                        try:
                            update = await receive.receive()
                        except trio.EndOfChannel:  # the server is draining
                            return
                    if update is None:
                        yield b": keepalive " + str(int(time.time())).encode() + b"\n\n"
                    else:
                        yield b"data: " + update + b"\n\n"
            finally:
                unsubscribe()

        response = Response(stream(), mimetype="text/event-stream")
        response.timeout = None
        response.headers["X-Accel-Buffering"] = "no"
        return _secure_headers(response)

    return feed

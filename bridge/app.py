"""The ASGI app: Twilio's webhooks, the Media Stream, health and metrics.

``create_app()`` returns a Quart-Trio app for Hypercorn's trio worker. HTTP
routes are thin Quart handlers. The Media Stream (``WS /twilio/stream``) is
served on a lean ASGI path wrapped around Quart's (``app.asgi_app``): Quart-Trio
never reports a websocket disconnect to its handler (it cancels it instead,
see STACK-NOTES.md) and adds a task hop per message; raw ASGI gives the call
runner an explicit ``websocket.disconnect`` and one await per message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from twilio.request_validator import RequestValidator

from bridge import _twilio
from bridge._amd import handle_amd_callback, watch_store
from bridge._call import CallSettings, run_call
from bridge._calls_api import calls_blueprint
from bridge._config import Config, load_config
from bridge._dashboard import LiveCall, publish_end, publish_start
from bridge._errors import CallEnded
from bridge._logging import configure_logging, register_secret
from bridge._metrics import STATUS_CALLBACK_STATUSES, Metrics, bounded_label
from bridge._outbound import OutboundCalls, token_subject
from bridge._recording import delete_old_recordings
from bridge._records import CALL_SID, CallRecords
from bridge._store import RENEW_EVERY_S, MemoryStore, Store, StoreUnavailable, open_store
from bridge._tokens import CallTokens
from bridge._twiml import STREAM_PATH, busy_twiml, connect_twiml, stream_url
from bridge._web import register_web

__all__ = ["create_app", "BridgeState", "STREAM_PATH", "RUNTIME_DIR_ENV"]

#: Set by ``serve`` for its workers: a fresh directory for the SQLite store (and the metrics files).
RUNTIME_DIR_ENV = "SPEAKR_BRIDGE_RUNTIME_DIR"

logger = logging.getLogger("bridge.app")

#: How often old recordings are looked for (RECORDINGS_MAX_AGE_DAYS is in days: hourly is plenty).
RETENTION_EVERY_S = 3600.0


#: Largest request body any HTTP route takes (Quart's MAX_CONTENT_LENGTH, default 16 MiB). Twilio's
#: webhook bodies are a few KB and ``POST /calls`` takes 64 KiB; the cap is enforced before a byte is
#: parsed: a declared Content-Length above it is refused with 413 at once, and a chunked body is cut
#: off as soon as it passes it. (A 16 MB form took 4 s of parsing, with the event loop blocked, to be
#: refused for its missing signature.)
MAX_BODY_BYTES = 64 * 1024
#: Time a request body may take to arrive in full (Quart's BODY_TIMEOUT, default 60 s), then the
#: handler answers 408 and its task ends. Twilio sends its few KB at once. (Hypercorn keeps the TCP
#: connection, and its file descriptor, while the client goes on trickling: the descriptor limit is
#: what bounds those; see bridge._server.raise_fd_limit and the README.)
BODY_TIMEOUT_S = 5

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BridgeState:
    """Process-wide state of one app: config, metrics, the store, admission, issued tokens.

    Admission (theory of operation): the voice webhook reserves a lease for its CallSid in the store
    (:meth:`reserve`) before it answers "connect", so a caller past ``MAX_CONCURRENT_CALLS`` hears the
    busy answer there. A stream is counted only at its ``start``, once its token is valid (or checks are
    off), by one atomic store step that uses the token up and claims the reservation, or takes a free slot
    when there is none (:meth:`admit`). Idle or unauthenticated sockets therefore hold no slot. Live leases
    are renewed by one task per process (:meth:`keep_leases`) and given back when the call ends. When the
    store cannot be reached, new calls fail closed (busy at the webhook, streams refused); calls already
    admitted go on (see ``_store.py``).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.active_calls = 0  # streams being served by this process (admitted or not yet)
        self.draining = False
        self.agent_url: str | None = config.agent_url()
        self.validator = (
            RequestValidator(config.twilio_auth_token.reveal()) if config.twilio_auth_token else None
        )
        self.tokens = (
            CallTokens(config.twilio_auth_token.reveal(), config.bridge_token_ttl_s)
            if config.twilio_auth_token
            else None
        )
        self.outbound = OutboundCalls(config, self.metrics)
        self.records = CallRecords(
            MemoryStore(),
            webhook_url=config.call_webhook_url,
            webhook_key=config.bridge_api_token.reveal(),
            registry=self.metrics.registry,
            recordings_dir=config.recordings_dir,
            default_agent=config.agent,
        )
        self.records.view = self.outbound.shared_view
        self.records.on_held = partial(watch_store, outbound=self.outbound)
        self.store: Store = MemoryStore()
        self.use_store(self.store)
        self.store_ok = True
        self.leases: set[str] = set()  # CallSids admitted by this process and still live
        self.calls_drained = trio.Event()
        self.end_all_calls = trio.Event()
        #: The app's lifespan nursery, where each stream's writer runs (see AsgiTwilioSocket).
        self.nursery: trio.Nursery | None = None

    def use_store(self, store: Store) -> None:
        store.record_max = self.config.call_records_max
        store.record_ttl_s = self.config.call_records_max_age_s
        self.store = self.outbound.store = self.records.store = store

    async def inbound_record(self, form: Any) -> None:
        """The voice webhook's step: start an inbound call's record with its numbers (best effort)."""
        call_sid = form.get("CallSid", "")
        if not CALL_SID.fullmatch(call_sid):
            return
        now = time.time()
        base = {
            "sid": call_sid, "to": form.get("To") or None, "from": form.get("From") or None,
            "created_at": now, "source": "inbound", "direction": "inbound",
        }
        try:
            if await self.store.record_create(call_sid, base):
                await self.store.record_event(call_sid, {"status": "in-progress", "at": now})
        except StoreUnavailable as exc:
            logger.warning("[%s] call record not started: %s", call_sid, exc)

    async def delete_old_recordings(self) -> None:
        """Apply RECORDINGS_MAX_AGE_DAYS now and every RETENTION_EVERY_S."""
        directory, days = self.config.recordings_dir, self.config.recordings_max_age_days
        if not directory or days <= 0:
            return
        while True:
            removed = await trio.to_thread.run_sync(delete_old_recordings, directory, days)
            if removed:
                logger.info("deleted %d recordings older than %g days", removed, days)
            await trio.sleep(RETENTION_EVERY_S)

    # --- admission -------------------------------------------------------------------

    def admission_refusal(self) -> str | None:
        """Why this process takes no new call now (it is draining), or None."""
        return "draining" if self.draining else None

    def store_failed(self, op: str, exc: StoreUnavailable) -> None:
        self.metrics.store_errors.labels(op).inc()
        if self.store_ok:
            self.store_ok = False
            self.metrics.store_up.set(0)
            logger.error(
                "store unreachable (%s): new calls get the busy answer until it is back: %s", op, exc
            )

    def store_answered(self) -> None:
        if not self.store_ok:
            self.store_ok = True
            self.metrics.store_up.set(1)
            logger.warning("store reachable again: taking new calls")

    async def reserve(self, call_sid: str) -> str | None:
        """The voice webhook's step: reserve a slot for ``call_sid``; why not, or None."""
        if self.draining:
            return "draining"
        try:
            ok = await self.store.reserve(call_sid, limit=self.config.max_concurrent_calls)
        except StoreUnavailable as exc:
            self.store_failed("reserve", exc)
            return "store_unavailable"
        self.store_answered()
        return None if ok else "busy"

    async def admit(self, start: _twilio.Start) -> str | None:
        """The stream's step at ``start``: check the token, then use it and take the slot atomically.

        While draining, only a stream whose webhook reserved a slot before the drain began is admitted
        (its caller was told "connect"; refusing it now would play the apology): a limit of 0 lets the
        store claim an existing reservation and take nothing else.
        """
        subject: str | None = None
        expiry = 0.0
        if self.tokens is not None:
            params = start.custom_parameters
            subject = token_subject(start.call_sid, params)
            refusal, expiry = self.tokens.verify(subject, params.get(CallTokens.PARAMETER))
            if refusal is not None:
                return refusal
        try:
            limit = 0 if self.draining else self.config.max_concurrent_calls
            refusal = await self.store.admit(
                start.call_sid, subject=subject, token_expiry=expiry, limit=limit
            )
        except StoreUnavailable as exc:
            self.store_failed("admit", exc)
            return "store_unavailable"
        self.store_answered()
        if refusal is None:
            self.leases.add(start.call_sid)
        elif refusal == "busy" and self.draining:
            refusal = "draining"
        return refusal

    async def release(self, call_sid: str) -> None:
        self.leases.discard(call_sid)
        try:
            with trio.CancelScope(shield=True):
                await self.store.release(call_sid)
        except StoreUnavailable as exc:  # the lease lapses by itself within LEASE_TTL_S
            self.store_failed("release", exc)

    async def keep_leases(self) -> None:
        """Renew this process's live leases every RENEW_EVERY_S, for as long as the app runs."""
        while True:
            await trio.sleep(RENEW_EVERY_S)
            if not self.leases:
                continue
            renewing = sorted(self.leases)
            try:
                await self.store.renew(renewing)
            except StoreUnavailable as exc:
                self.store_failed("renew", exc)
            else:
                self.store_answered()
            for call_sid in set(renewing) - self.leases:  # ended while the renewal was on its way
                await self.release(call_sid)

    async def run_store(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the server's store (REDIS_URL, else the runtime directory's SQLite), keep leases alive."""
        runtime_dir = os.environ.get(RUNTIME_DIR_ENV) or None
        redis_url = self.config.redis_url.reveal() or None
        if redis_url is None and runtime_dir is None:
            task_status.started()
            await self.keep_leases()
            return
        async with open_store(redis_url, runtime_dir) as store:
            self.use_store(store)
            logger.info("store: %s", store.describe())
            try:
                await store.ping()
            except StoreUnavailable as exc:
                self.store_failed("ping", exc)
            task_status.started()
            await self.keep_leases()


# --- URLs and signatures -----------------------------------------------------------


def _header(scope_headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in scope_headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def external_base(config: Config, scheme: str, host: str | None) -> str:
    """The public ``scheme://host`` of this server: PUBLIC_URL, else the request's."""
    if config.public_url:
        return config.public_url
    return f"{scheme}://{host or 'localhost'}"


def request_base() -> str:
    """The request's external base URL, honouring a proxy's X-Forwarded-* headers."""
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}"


def _twiml(twiml: str) -> Response:
    return Response(twiml, mimetype="text/xml")


# --- the app -------------------------------------------------------------------------


def create_app(config: Config | None = None) -> QuartTrio:
    """Build the app. Configuration is read once, here, unless one is given."""
    if config is None:
        config = load_config()
    configure_logging(config.log_format)
    for secret in config.secrets():
        register_secret(secret.reveal())
    app = QuartTrio("speakr-bridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    state = BridgeState(config)
    app.extensions["bridge"] = state
    app.register_blueprint(state.outbound.blueprint())
    app.register_blueprint(calls_blueprint(state.outbound, state.records))
    register_web(app, state)
    if not config.twilio_auth_token:
        logger.warning(
            "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked and anyone who can reach "
            "this server can open an agent session. Set it before taking real calls."
        )

    @app.before_serving
    async def start_store() -> None:
        await app.nursery.start(state.run_store)

    @app.before_serving
    async def keep_nursery() -> None:
        state.nursery = app.nursery

    @app.before_serving
    async def start_records() -> None:
        state.records.background = app.nursery
        app.nursery.start_soon(state.delete_old_recordings)

    @app.before_serving
    async def start_local_agent() -> None:
        if state.agent_url is None:
            from bridge.agents.speakr._local_agent import LocalAgentServer

            agent = LocalAgentServer()
            await app.nursery.start(agent.serve)
            state.agent_url = agent.url
            logger.info("SPEAKR_WS_URL unset: using the built-in local echo agent at %s", agent.url)

    async def signed(route: str) -> bool:
        """True when the request carries a valid X-Twilio-Signature (or checks are off)."""
        if state.validator is None:
            return True
        form = await request.form
        url = (config.public_url + request.full_path.rstrip("?")) if config.public_url else (
            request_base() + request.full_path.rstrip("?")
        )
        signature = request.headers.get("X-Twilio-Signature", "")
        ok = bool(signature) and state.validator.validate(url, form.to_dict(), signature)
        if not ok:
            state.metrics.webhooks.labels(route, "bad_signature").inc()
            logger.warning("%s: missing or invalid X-Twilio-Signature (403)", route)
        return ok

    @app.post("/twilio/voice")
    async def voice() -> Response | tuple[str, int]:
        if not await signed("voice"):
            return "invalid Twilio signature", 403
        form = await request.form
        call_sid = form.get("CallSid", "")
        refusal = await state.reserve(call_sid) if call_sid else state.admission_refusal()
        if refusal is not None:
            state.metrics.webhooks.labels("voice", refusal).inc()
            state.metrics.calls_rejected.labels(refusal).inc()
            logger.warning("[%s] call refused: %s", call_sid or "-", refusal)
            return _twiml(busy_twiml())
        await state.inbound_record(form)
        parameters = {}
        if state.tokens is not None and call_sid:
            parameters[CallTokens.PARAMETER] = state.tokens.issue(call_sid)
        state.metrics.webhooks.labels("voice", "ok").inc()
        logger.info("[%s] voice webhook: connecting stream", call_sid or "-")
        return _twiml(connect_twiml(stream_url(config.public_url or request_base()), parameters))

    @app.post("/twilio/status")
    async def status_callback() -> tuple[str, int]:
        if not await signed("status"):
            return "invalid Twilio signature", 403
        form = await request.form
        try:
            await state.outbound.record_status_shared(form)
        except StoreUnavailable as exc:
            state.store_failed("record", exc)
            return "call store unavailable", 503  # Twilio retries the callback
        status = form.get("StreamEvent") or form.get("CallStatus") or "unknown"
        state.metrics.status_callbacks.labels(bounded_label(status, STATUS_CALLBACK_STATUSES)).inc()
        state.metrics.webhooks.labels("status", "ok").inc()
        logger.info("[%s] status callback: %s", form.get("CallSid", "-"), status)
        return "", 204

    @app.post("/twilio/amd")
    async def amd_callback() -> tuple[str, int]:
        if not await signed("amd"):
            return "invalid Twilio signature", 403
        form = await request.form
        try:
            await handle_amd_callback(form, state.outbound, state.records)
        except StoreUnavailable as exc:
            state.store_failed("record", exc)
            return "call store unavailable", 503  # Twilio retries the callback
        state.metrics.webhooks.labels("amd", "ok").inc()
        return "", 204

    @app.get("/healthz")
    async def healthz() -> tuple[str, int]:
        return "ok\n", 200

    @app.get("/readyz")
    async def readyz() -> tuple[str, int]:
        # Only a drain makes a worker unready: during a store outage it still answers every webhook
        # (with the busy answer), which beats the load balancer having no backend at all.
        return ("draining\n", 503) if state.draining else ("ready\n", 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), mimetype="text/plain; version=0.0.4")

    quart_asgi = app.asgi_app

    async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == STREAM_PATH:
            await serve_stream(state, scope, receive, send)
        else:
            await quart_asgi(scope, receive, send)  # type: ignore[arg-type]

    app.asgi_app = asgi_app  # type: ignore[method-assign,assignment]
    return app


#: Messages queued for the caller before a send waits (a 100 ms piece of agent audio is two messages;
#: a ``continue`` may replay many at once).
TWILIO_OUTBOX_MESSAGES = 64
#: A caller whose socket takes nothing for this long is not reading: the call ends (``twilio_stalled``).
TWILIO_SEND_TIMEOUT_S = 5.0
#: After the call, how long the handler waits for the writer to deliver the queued messages and the
#: close frame before it returns anyway.
TWILIO_FLUSH_TIMEOUT_S = 1.0


class AsgiTwilioSocket:
    """The call runner's view of an accepted ASGI websocket.

    Theory of operation: the call never awaits Hypercorn's send itself. Hypercorn shields every
    socket write from cancellation and has no write timeout, so a caller that stops reading would
    hang whichever task wrote to it for ever, and with it the call, its agent session and the
    process's shutdown. Messages therefore go through a bounded outbox to :meth:`write_out`, a task
    that runs in the app's lifespan nursery, outside the request. A send that finds the outbox full
    for ``TWILIO_SEND_TIMEOUT_S`` ends the call (``twilio_stalled``). Closing closes the outbox: the
    writer sends what is queued and then the close frame. The handler waits for that at most
    ``TWILIO_FLUSH_TIMEOUT_S`` and returns: the call's slot and agent session are free whatever the
    caller does. A writer still stuck is freed when Hypercorn closes the connection (the peer goes
    away, or Hypercorn's graceful timeout at shutdown).
    """

    __slots__ = ("_receive", "_send", "closed", "_close_code", "_outbox", "_outbox_out", "written")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.closed = False
        self._close_code: int | None = None
        self._outbox, self._outbox_out = trio.open_memory_channel[str](TWILIO_OUTBOX_MESSAGES)
        self.written = trio.Event()

    async def receive(self) -> str | bytes:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    return text  # type: ignore[no-any-return]
                return message.get("bytes") or b""
            if kind == "websocket.disconnect":
                self.closed = True
                self._outbox.close()
                raise CallEnded("twilio_disconnect")

    async def send(self, text: str) -> None:
        if self.closed:
            raise CallEnded("twilio_disconnect")
        try:
            self._outbox.send_nowait(text)
            return
        except trio.WouldBlock:
            pass
        with trio.move_on_after(TWILIO_SEND_TIMEOUT_S):
            await self._outbox.send(text)
            return
        raise CallEnded("twilio_stalled")

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            self._close_code = code
            self._outbox.close()
        await trio.lowlevel.checkpoint()

    async def write_out(self) -> None:
        """The writer task: the only caller of the ASGI send once the stream is accepted."""
        try:
            async for text in self._outbox_out:
                await self._send({"type": "websocket.send", "text": text})
            if self._close_code is not None:
                await self._send({"type": "websocket.close", "code": self._close_code})
        except Exception:
            # The edge of a task in the app's nursery: nothing may escape it to the other calls.
            logger.exception("twilio writer failed")
        finally:
            self.written.set()

    async def finish(self) -> None:
        """After the call: let the writer deliver what is queued and the close frame, bounded."""
        self._outbox.close()
        with trio.move_on_after(TWILIO_FLUSH_TIMEOUT_S):
            await self.written.wait()


async def serve_stream(state: BridgeState, scope: Scope, receive: Receive, send: Send) -> None:
    """Accept (or refuse) one Twilio Media Stream, then run its call.

    The stream holds no slot until its ``start`` is admitted (:meth:`BridgeState.admit`); its lease is
    given back when the call ends, whichever way it ends.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    # A draining server still accepts the socket: a stream whose webhook reserved a slot before the
    # drain began is admitted at its start (see BridgeState.admit); any other is refused there.
    refusal = None
    if state.validator is not None:
        signature = _header(scope.get("headers", []), b"x-twilio-signature")
        if signature is not None:
            host = _header(scope.get("headers", []), b"host")
            base = external_base(state.config, "https" if scope.get("scheme") == "wss" else "http", host)
            if not state.validator.validate(stream_url(base), {}, signature):
                refusal = "bad_signature"
    if refusal is not None:
        state.metrics.calls_rejected.labels(refusal).inc()
        logger.warning("stream refused before accept: %s", refusal)
        await send({"type": "websocket.close", "code": 1008})
        return
    agent_url = state.agent_url
    if agent_url is None or state.nursery is None:  # the lifespan has not run
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept"})
    socket = AsgiTwilioSocket(receive, send)
    admitted: list[str] = []
    observer = state.records.observer()
    live = LiveCall()  # the dashboard's view of this call

    async def authorize(start: _twilio.Start) -> str | None:
        refusal = await state.admit(start)
        if refusal is None:
            admitted.append(start.call_sid)
            await state.records.begin(start, observer)
            await publish_start(state.store, start.call_sid, start.custom_parameters)
            live.call_sid = start.call_sid
        return refusal

    state.nursery.start_soon(socket.write_out)
    settings = CallSettings(
        config=state.config,
        metrics=state.metrics,
        agent_url=agent_url,
        authorize=authorize,
        shutdown=state.end_all_calls,
        hangup=state.outbound.hangup if state.outbound.rest_configured else None,
        observer=observer,
        observe=live.observe,
    )
    state.active_calls += 1
    result = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.publish, lambda: state.store)
            result = await run_call(socket, settings)
            nursery.cancel_scope.cancel()
    except Exception:
        # The call's edge: a bug in one call must not reach Hypercorn or other calls.
        state.metrics.calls_ended.labels("internal_error").inc()
        logger.exception("call failed with an internal error")
        await socket.close(1011)
    finally:
        observer.close_recording()  # already closed on every normal path; this covers a crash
        await state.records.finish(observer)
        for call_sid in admitted:
            await publish_end(state.store, call_sid, result)  # the dashboard's record, before the lease goes
            await state.release(call_sid)
        state.active_calls -= 1
        if state.active_calls == 0 and state.draining:
            state.calls_drained.set()
    await socket.finish()

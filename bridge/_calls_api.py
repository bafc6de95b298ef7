"""The calls API beyond placing calls: list records, fetch recordings, hang up and transfer live calls.

``GET /calls``, ``GET /calls/{sid}/recording.wav``, ``POST /calls/{sid}/hangup`` and ``POST
/calls/{sid}/transfer``, all behind ``Authorization: Bearer BRIDGE_API_TOKEN`` (CONTRACT.md). Records come
from the shared store, so any worker or host answers. Hang-up and transfer act through Twilio's REST API
(which reaches the call wherever its stream is served); a hang-up also ends the stream at once when this
process serves it, and is the only way to hang up without REST credentials (then only on the worker serving
the call).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Final

import orjson
import trio
from quart import Blueprint, Response, request
from twilio.twiml.voice_response import VoiceResponse

from bridge._errors import short_repr
from bridge._outbound import OutboundCalls, _iso, _json, _mask, _read_body
from bridge._recording import recording_path
from bridge._records import CALL_SID, CallRecords
from bridge._store import StoreUnavailable
from bridge._twilio_rest import TwilioRestError

__all__ = ["calls_blueprint", "dial_twiml"]

logger = logging.getLogger("bridge.calls_api")

#: ``GET /calls`` pages: default and largest page size, and how many records one request may read while
#: filtering (a filter that matches nothing must not scan the whole store).
PAGE_DEFAULT: Final = 50
PAGE_MAX: Final = 200
SCAN_MAX: Final = 2000
#: Bound on a REST request made for the API (hang-up, transfer).
CONTROL_TIMEOUT_S: Final = 10.0
#: Recording downloads are streamed in chunks of this size.
CHUNK_BYTES: Final = 64 * 1024
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_FILTER = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def dial_twiml(to: str) -> str:
    """``<Response><Dial>to</Dial></Response>``, built with the twilio package."""
    response = VoiceResponse()
    response.dial(to)
    return str(response)


def _since(raw: str) -> float:
    """``since`` as unix seconds: a number, or an ISO 8601 time (``Z`` allowed)."""
    try:
        return float(raw)
    except ValueError:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def calls_blueprint(outbound: OutboundCalls, records: CallRecords) -> Blueprint:
    bp = Blueprint("calls_api", __name__)

    def error(message: str, status: int, field: str | None = None) -> Response:
        return _json({"error": message, "field": field}, status)

    @bp.get("/calls")
    async def list_calls() -> Response:
        refusal = outbound._refusal()
        if refusal is not None:
            return refusal
        args = request.args
        status, agent = args.get("status"), args.get("agent")
        for name, value in (("status", status), ("agent", agent)):
            if value is not None and not _FILTER.fullmatch(value):
                return error(f"{name} must be a short lowercase name, got {short_repr(value)}", 422, name)
        try:
            since = _since(args["since"]) if "since" in args else None
        except ValueError:
            return error("since must be unix seconds or an ISO 8601 time", 422, "since")
        try:
            limit = int(args.get("limit", PAGE_DEFAULT))
            before = float(args["cursor"]) if "cursor" in args else None
        except ValueError:
            return error("limit must be a whole number and cursor the next_cursor of a page", 422, "limit")
        if not 1 <= limit <= PAGE_MAX:
            return error(f"limit must be between 1 and {PAGE_MAX}", 422, "limit")
        found: list[dict[str, Any]] = []
        scanned = 0
        next_cursor: float | None = None
        try:
            while len(found) < limit and scanned < SCAN_MAX:
                batch = await outbound.store.record_recent(limit=min(limit * 2, PAGE_MAX), before=before)
                if not batch:
                    next_cursor = None
                    break
                for sid, created in batch:
                    scanned += 1
                    before = next_cursor = created
                    if since is not None and created < since:
                        batch = []
                        next_cursor = None
                        break
                    view = await outbound.shared_view(sid)
                    if view is None:
                        continue
                    if status is not None and view["status"] != status:
                        continue
                    if agent is not None and view.get("agent") != agent:
                        continue
                    found.append(view)
                    if len(found) >= limit:
                        break
                if not batch:
                    break
        except StoreUnavailable as exc:
            logger.warning("GET /calls: %s", exc)
            return error("the call store is unavailable, try again", 503)
        return _json({"calls": found, "next_cursor": None if next_cursor is None else repr(next_cursor)}, 200)

    @bp.get("/calls/<sid>/recording.wav")
    async def recording(sid: str) -> Response:
        refusal = outbound._refusal()
        if refusal is not None:
            return refusal
        if not CALL_SID.fullmatch(sid):
            return error("no such call", 404, "sid")
        if not records.recordings_dir:
            return error("recordings are off: RECORDINGS_DIR is not set", 404)
        path = recording_path(records.recordings_dir, sid)
        try:
            handle = await trio.open_file(path, "rb")
        except FileNotFoundError:
            return error("no recording for this call", 404, "sid")
        size = (await trio.Path(path).stat()).st_size

        async def chunks() -> AsyncIterator[bytes]:
            async with handle:
                while chunk := await handle.read(CHUNK_BYTES):
                    yield chunk

        response = Response(chunks(), mimetype="audio/wav")
        response.headers["Content-Length"] = str(size)
        response.headers["Content-Disposition"] = f'attachment; filename="{sid}.wav"'
        return response

    async def live_record(sid: str) -> dict[str, Any] | Response:
        if not CALL_SID.fullmatch(sid):
            return error("no such call", 404, "sid")
        try:
            view = await outbound.shared_view(sid)
        except StoreUnavailable:
            return error("the call store is unavailable, try again", 503)
        if view is None and sid not in records.live:
            return error("no such call", 404, "sid")
        if view is not None and not view.get("live", False) and sid not in records.live:
            return error("the call has ended", 409, "sid")
        return view or {}

    async def store_event(sid: str, event: dict[str, Any]) -> None:
        try:
            await outbound.store.record_event(sid, event)
        except StoreUnavailable as exc:
            logger.warning("[%s] %s not recorded: %s", sid, event.get("kind"), exc)

    @bp.post("/calls/<sid>/hangup")
    async def hangup(sid: str) -> Response:
        refusal = outbound._refusal()
        if refusal is not None:
            return refusal
        found = await live_record(sid)
        if isinstance(found, Response):
            return found
        rest = outbound._rest
        local = records.live.get(sid)
        if rest is None and local is None:
            return error(
                "this call is served by another worker and Twilio REST credentials are not set", 409, "sid"
            )
        outcome = "ended_locally"
        if rest is not None:
            outcome = await rest.complete_call(sid, timeout_s=CONTROL_TIMEOUT_S)
        await store_event(
            sid, {"kind": "hangup", "hangup": {"at": _iso(time.time()), "outcome": outcome, "by": "api"}}
        )
        if local is not None:
            local.stop.set()
        logger.info("[%s] hung up through the API (%s)", sid, outcome)
        return _json({"sid": sid, "outcome": outcome}, 202)

    @bp.post("/calls/<sid>/transfer")
    async def transfer(sid: str) -> Response:
        refusal = outbound._refusal()
        if refusal is not None:
            return refusal
        body = await _read_body(4096)
        try:
            payload = orjson.loads(body or b"")
        except orjson.JSONDecodeError:
            return error('the body must be a JSON object {"to": "+1…"}', 400)
        to = payload.get("to") if isinstance(payload, dict) else None
        if not isinstance(to, str) or not _E164.fullmatch(to):
            return error(f"to must be an E.164 number such as +14155550100, got {short_repr(to)}", 422, "to")
        rest = outbound._rest
        if rest is None:
            return error("transfer needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN", 503)
        found = await live_record(sid)
        if isinstance(found, Response):
            return found
        twiml = dial_twiml(to)
        try:
            await rest.update_call(sid, {"Twiml": twiml}, timeout_s=CONTROL_TIMEOUT_S)
        except TwilioRestError as exc:
            logger.warning("[%s] transfer failed: %s", sid, exc)
            await store_event(
                sid,
                {
                    "kind": "transfer",
                    "transfer": {
                        "to": to,
                        "at": _iso(time.time()),
                        "outcome": "failed",
                        "error": exc.twilio_message,
                    },
                },
            )
            return _json(
                {
                    "error": f"Twilio refused the transfer: {exc.twilio_message}",
                    "field": None,
                    "twilio": exc.as_json(),
                },
                502,
            )
        await store_event(
            sid,
            {"kind": "transfer", "transfer": {"to": to, "at": _iso(time.time()), "outcome": "transferred"}},
        )
        logger.info("[%s] transferred to %s", sid, _mask(to))
        return _json({"sid": sid, "outcome": "transferred", "to": to}, 202)

    return bp

"""An OpenAI Realtime service (GA interface) on loopback: scriptable, recording everything.

Theory of operation
-------------------
:class:`OpenAIRealtimeServer` is a :class:`~bridge._loopback.LoopbackWebSocketServer`: every connection
runs inside a containment boundary, so whatever one connection does is recorded on its
:class:`RealtimeSession` and the server goes on.

The upgrade is checked as the service does: ``Authorization: Bearer <key>`` or HTTP 401 (and any status on
demand, a fault). Each accepted connection is one :class:`RealtimeSession` with three kinds of task in one
nursery:

- the receiver parses every client event with :mod:`bridge.agents.openai._service`, records it, and answers
  what the service answers at once: ``session.updated`` (or the ``error`` a GA session gives, beta names
  included), ``conversation.item.truncated``, errors for bad or unknown events. It also runs the server VAD
  (:class:`~bridge.agents.openai._emulator_vad.EnergyVad` on the decoded input, in input-audio time, never
  wall-clock): a start sends ``input_audio_buffer.speech_started`` (``audio_start_ms`` = onset minus the
  session's ``prefix_padding_ms``) and cancels the response in progress, as server VAD does; a stop sends
  ``speech_stopped``, ``committed``, the scripted transcription and starts a response.
- a response task per response sends the scripted :class:`Turn`: ``response.created``, the audio as
  ``response.output_audio.delta`` (``delta_ms`` each, as fast as the socket takes them unless ``pace_s``:
  the real service also runs ahead of real time), transcript deltas, the ``.done`` events, an ``end_call``
  function call when scripted, ``response.done``. It checks for a cancel before every delta (a send is never
  cancelled halfway: that would corrupt the stream), and one in flight at a time, like the service.
- the lifecycle task sends ``session.created`` and runs the script, if any; ``max_session_s`` expires the
  session as the service does (an ``error`` with code ``session_expired``, then a close).

Audio of the session's output format: ``audio/pcmu`` sends the scripted μ-law as it is (the bundled greeting
encoded to μ-law by default); a session left at ``audio/pcm`` (or forced there by ``keep_output_pcm``, a
fault) sends 24 kHz PCM16, as the real service does.

Waiters (:meth:`RealtimeSession.wait_until`, ...) wake on a "something changed" event replaced after every
record and raise :class:`SessionClosed` once the socket is closed, so every wait is bounded by the connection.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket

import codec
from bridge._errors import OpenAIProtocolError
from bridge._loopback import CLOSE_TIMEOUT_S, SessionClosed, SessionServer, WatchedSession, header
from bridge.agents.openai import _service as svc
from bridge.agents.openai._emulator_data import (
    DEFAULT_PREFIX_PADDING_MS,
    DEFAULT_SILENCE_DURATION_MS,
    PCM_BYTES_PER_MS,
    ULAW_BYTES_PER_MS,
    RealtimeEvent,
    SentResponse,
    Truncation,
    Turn,
    default_session,
    merge_session,
    reply_audio,
)
from bridge.agents.openai._emulator_vad import EnergyVad, VadStart
from bridge.agents.openai._wire import FORMAT_PCM, FORMAT_PCMU, PCM_RATE

__all__ = ["DEFAULT_API_KEY", "OpenAIRealtimeServer", "RealtimeSession", "SessionClosed"]

log = logging.getLogger("bridge.emulators.openai")

DEFAULT_API_KEY: Final = "sk-emulator-key"
WS_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # a fault test may send more than trio-websocket's 1 MiB
SESSION_EXPIRED_MESSAGE: Final = "Your session hit the maximum duration of 60 minutes."

Script = Callable[["RealtimeSession"], Awaitable[None]]

# The body of a refused upgrade, shaped like the service's (the key is never echoed).
_REJECT_BODIES: Final[dict[int, bytes]] = {
    401: b'{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_api_key"}}',
    429: b'{"error":{"message":"Rate limit reached.","type":"requests","param":null,'
    b'"code":"rate_limit_exceeded"}}',
}
_REJECT_BODY_OTHER: Final = b'{"error":{"message":"The server had an error.","type":"server_error"}}'



class RealtimeSession(WatchedSession[RealtimeEvent]):
    """One connection to the emulated service, as the client drove it, plus a script's helpers.

    Attributes:
        index: 0-based order of the connection on its server.
        path, query: the request path and its query parameters (``model`` among them).
        authorization_ok: the upgrade carried the expected bearer key.
        beta_header: the ``OpenAI-Beta`` header the client sent (a GA client sends none), or None.
        session: the session object as it now is.
        updates: every ``session.update``'s ``session`` object, in order, refused ones included.
        refused_updates: the problems of the refused ones.
        truncates, function_outputs, user_texts, items, responses: what happened, in order.
        speech: ``(kind, audio_ms, item_id)`` for each ``speech_started``/``speech_stopped`` sent.
        errors_sent: ``(code, message)`` of each ``error`` event sent.
        response_creates, response_cancels: counts of those client events.
        unknown_types: the types of client events the service does not know.
        protocol_errors: count of unreadable client frames by error kind.
        events: a timeline (:class:`RealtimeEvent`).
        close_code, close_reason, closed_by: how it ended (``"peer"``, ``"service"``, ``"drop"``).
        script_errors: exceptions of the script, as ``repr`` text.
        closed: set once the socket is closed.
    """

    closer = "service"

    def __init__(self, index: int, request_path: str, server: OpenAIRealtimeServer) -> None:
        parts = urlsplit(request_path)
        self.index = index
        self.path = parts.path
        self.query: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.authorization_ok = False
        self.beta_header: str | None = None
        self.session = default_session(index, self.query.get("model", "gpt-realtime"))
        self.updates: list[dict[str, Any]] = []
        self.refused_updates: list[svc.SessionProblem] = []
        self.truncates: list[Truncation] = []
        self.function_outputs: list[svc.FunctionCallOutput] = []
        self.user_texts: list[str] = []
        self.items: list[dict[str, Any]] = []
        self.responses: list[SentResponse] = []
        self.speech: list[tuple[str, int, str]] = []
        self.errors_sent: list[tuple[str | None, str]] = []
        self.response_creates = 0
        self.response_cancels = 0
        self.unknown_types: list[str] = []
        self.protocol_errors: dict[str, int] = {}
        self.events: list[RealtimeEvent] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None
        self.script_errors: list[str] = []
        self.closed = trio.Event()
        self._server = server
        self._appended = bytearray()
        self._appends = 0
        self._changed = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._ids = 0
        self._active: SentResponse | None = None
        self._turns_used = 0
        self._detector: EnergyVad | None = None  # made at the first append, for the input format's rate
        self._speech_item: str | None = None

    def __repr__(self) -> str:
        return (
            f"RealtimeSession(index={self.index}, path={self.path!r}, appended={len(self._appended)}, "
            f"responses={len(self.responses)}, truncates={len(self.truncates)}, closed_by={self.closed_by!r})"
        )

    # ------------------------------------------------------------------------------------------ recorded data

    @property
    def appended_audio(self) -> bytes:
        """Every ``input_audio_buffer.append``'s audio, base64-decoded and concatenated, in order."""
        return bytes(self._appended)

    @property
    def append_count(self) -> int:
        """How many appends arrived."""
        return self._appends

    @property
    def output_format(self) -> str:
        """The session's output format type, as it now is."""
        return str(self.session["audio"]["output"]["format"]["type"])

    @property
    def input_format(self) -> str:
        """The session's input format type, as it now is."""
        return str(self.session["audio"]["input"]["format"]["type"])

    def _event(self, kind: str, at: float, detail: str = "") -> RealtimeEvent:
        return RealtimeEvent(kind, at, detail)

    # ---------------------------------------------------------------------------------------------- waiting


    async def wait_updated(self, n: int = 1) -> dict[str, Any]:
        """Waits for the ``n``-th ``session.update``; returns the session as it then is."""
        await self.wait_until(lambda: len(self.updates) >= n, f"{n} session.update")
        return self.session

    async def wait_appended_bytes(self, n: int) -> None:
        """Waits until at least ``n`` bytes of caller audio have been appended."""
        await self.wait_until(lambda: len(self._appended) >= n, f"{n} appended bytes")

    async def wait_truncates(self, k: int = 1) -> list[Truncation]:
        """Waits until ``k`` truncates have arrived; returns them all."""
        await self.wait_until(lambda: len(self.truncates) >= k, f"{k} truncates")
        return self.truncates

    async def wait_function_outputs(self, k: int = 1) -> list[svc.FunctionCallOutput]:
        """Waits until ``k`` function-call outputs have arrived; returns them all."""
        await self.wait_until(lambda: len(self.function_outputs) >= k, f"{k} function outputs")
        return self.function_outputs

    async def wait_responses(self, k: int = 1, *, done: bool = True) -> list[SentResponse]:
        """Waits until ``k`` responses have started (and ended, when ``done``); returns them all."""

        def ready() -> bool:
            if len(self.responses) < k:
                return False
            return not done or all(r.done_wall_s is not None for r in self.responses[:k])

        await self.wait_until(ready, f"{k} responses")
        return self.responses

    # ---------------------------------------------------------------------------------------------- sending

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_emu{self.index}x{self._ids}"

    async def _send(self, text: str | bytes, kind: str | None = None, detail: str = "") -> None:
        if self._ws is None or self.closed.is_set():
            raise SessionClosed(f"session {self.index} is closed")
        if kind is not None:
            self.events.append(RealtimeEvent(kind, trio.current_time(), detail))
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise SessionClosed(f"session {self.index} closed while sending") from exc

    async def send_error(
        self, error_type: str, code: str | None, message: str, *, param: str | None = None
    ) -> None:
        """Sends an ``error`` event (the service's, or a scripted fault)."""
        self.errors_sent.append((code, message))
        await self._send(svc.error_message(error_type, code, message, param=param), "error", code or "")
        self._notify()

    async def send_raw(self, data: str | bytes) -> None:
        """Sends one frame verbatim (faults: garbage, binary frames, unknown or malformed events)."""
        await self._send(data, "raw", f"{type(data).__name__} of {len(data)}")

    async def expire(self) -> None:
        """Ends the session as the service does at its maximum duration: an ``error``, then a close."""
        self.events.append(RealtimeEvent("expired", trio.current_time()))
        await self.send_error("invalid_request_error", "session_expired", SESSION_EXPIRED_MESSAGE)
        await self.close(1000, "session expired")

    async def respond(self, turn: Turn | None = None, *, trigger: str = "client") -> SentResponse:
        """Runs one response now (the next scripted turn by default) and returns it once it has ended."""
        response = self._start_response(turn or self._next_turn(), trigger)
        await self.wait_until(lambda: response.done_wall_s is not None, "the response's end")
        return response

    # -------------------------------------------------------------------------------------------- responses

    def _next_turn(self) -> Turn:
        turns = self._server.turns
        turn = turns[min(self._turns_used, len(turns) - 1)]
        self._turns_used += 1
        return turn

    def _start_response(self, turn: Turn, trigger: str) -> SentResponse:
        if self._nursery is None:
            raise SessionClosed(f"session {self.index} is not running")
        response = SentResponse(
            self._new_id("resp"), self._new_id("item"), trigger, self.output_format, trio.current_time()
        )
        self.responses.append(response)
        self._active = response
        self._nursery.start_soon(self._run_response, response, turn)
        self._notify()
        return response

    async def _run_response(self, response: SentResponse, turn: Turn) -> None:
        try:
            await self._send_response(response, turn)
        except SessionClosed:
            pass
        finally:
            if response.done_wall_s is None:
                response.done_wall_s = trio.current_time()
            if self._active is response:
                self._active = None
            self._notify()

    async def _send_response(self, response: SentResponse, turn: Turn) -> None:
        rid, item = response.response_id, response.item_id
        server = self._server
        await self._send(svc.response_created_message(rid))
        await self._send(
            svc.server_event_message(
                "response.output_item.added",
                {
                    "response_id": rid,
                    "output_index": 0,
                    "item": {
                        "id": item,
                        "object": "realtime.item",
                        "type": "message",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    },
                },
            )
        )
        audio = reply_audio(turn, response.output_format)
        per_ms = ULAW_BYTES_PER_MS if response.output_format == FORMAT_PCMU else PCM_BYTES_PER_MS
        step = max(1, server.delta_ms * per_ms)
        pieces = [audio[i : i + step] for i in range(0, len(audio), step)]
        words = turn.reply.split(" ")
        per_piece = max(1, math.ceil(len(words) / max(1, len(pieces))))
        for n, piece in enumerate(pieces):
            if response.cancel_requested:
                break
            chunk = words[n * per_piece : (n + 1) * per_piece]
            if chunk:
                text = (" " if n else "") + " ".join(chunk)
                await self._send(svc.transcript_delta_message(rid, item, text))
            response.audio += piece
            response.deltas += 1
            await self._send(svc.audio_delta_message(rid, item, piece))
            self._notify()
            if server.pace_s > 0:
                with trio.move_on_after(server.pace_s):
                    await response.wake.wait()
        if response.cancel_requested:
            response.status = "cancelled"
            await self._send(
                svc.response_done_message(
                    rid, "cancelled", status_details={"type": "cancelled", "reason": "turn_detected"}
                )
            )
            return
        await self._send(svc.audio_done_message(rid, item))
        await self._send(svc.transcript_done_message(rid, item, turn.reply))
        output: list[Any] = [
            {"id": item, "type": "message", "role": "assistant", "status": "completed", "content": []}
        ]
        if turn.end_call:
            call_item = self._new_id("item")
            response.call_id = self._new_id("call")
            await self._send(
                svc.function_call_arguments_done_message(
                    rid, call_item, response.call_id, "end_call", turn.end_call_arguments, output_index=1
                )
            )
            output.append(
                {
                    "id": call_item,
                    "type": "function_call",
                    "status": "completed",
                    "name": "end_call",
                    "call_id": response.call_id,
                    "arguments": turn.end_call_arguments,
                }
            )
        response.status = "completed"
        await self._send(svc.response_done_message(rid, "completed", output=output))

    # ---------------------------------------------------------------------------------------- client events

    def _bad_message(self, kind: str, detail: str) -> None:
        self.protocol_errors[kind] = self.protocol_errors.get(kind, 0) + 1
        self.events.append(RealtimeEvent("bad_message", trio.current_time(), kind))
        log.debug("openai session %d: bad client message (%s): %s", self.index, kind, detail)

    async def _on_message(self, data: str | bytes) -> None:
        now = trio.current_time()
        try:
            event = svc.parse_client_event(data)
        except OpenAIProtocolError as exc:
            self._bad_message(exc.kind, exc.detail)
            await self.send_error(
                "invalid_request_error", "invalid_request", f"Invalid client event: {exc.kind}"
            )
            return
        if isinstance(event, svc.AppendAudio):
            self._appended += event.audio
            self._appends += 1
            await self._vad(event.audio)
        elif isinstance(event, svc.SessionUpdate):
            await self._on_session_update(event.session)
        elif isinstance(event, svc.TruncateItem):
            await self._on_truncate(event, now)
        elif isinstance(event, svc.UserText):
            self.user_texts.append(event.text)
            self.events.append(RealtimeEvent("user_text", now))
        elif isinstance(event, svc.FunctionCallOutput):
            self.function_outputs.append(event)
            self.events.append(RealtimeEvent("function_call_output", now, event.call_id))
        elif isinstance(event, svc.CreateItem):
            self.items.append(event.item)
            self.events.append(RealtimeEvent("item", now))
        elif isinstance(event, svc.ResponseCreate):
            self.response_creates += 1
            self.events.append(RealtimeEvent("response.create", now))
            if self._active is not None:
                await self.send_error(
                    "invalid_request_error",
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {self._active.response_id}.",
                )
            else:
                self._start_response(self._next_turn(), "client")
        elif isinstance(event, svc.ResponseCancel):
            self.response_cancels += 1
            self.events.append(RealtimeEvent("response.cancel", now))
            if self._active is None:
                await self.send_error(
                    "invalid_request_error",
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found.",
                )
            else:
                self._cancel_active()
        else:
            self.unknown_types.append(event.type)
            self.events.append(RealtimeEvent("unknown", now, event.type[:60]))
            await self.send_error(
                "invalid_request_error",
                "invalid_value",
                f"Invalid value: '{event.type[:60]}'. Supported values are client event types.",
                param="type",
            )

    async def _on_session_update(self, session: dict[str, Any]) -> None:
        self.updates.append(session)
        self.events.append(RealtimeEvent("session.update", trio.current_time()))
        problem = svc.session_update_problem(session)
        if problem is None and self._server.refuse_update is not None:  # fault: a value the service refuses
            problem = svc.SessionProblem(
                self._server.refuse_update, "Invalid value in session.update (scripted fault).", "session"
            )
        if problem is not None:
            self.refused_updates.append(problem)
            await self.send_error("invalid_request_error", problem.code, problem.message, param=problem.param)
            return
        merge_session(self.session, session)
        for direction in ("input", "output"):
            fmt = self.session["audio"][direction]["format"]
            if fmt.get("type") == FORMAT_PCM:
                fmt["rate"] = PCM_RATE
            else:
                fmt.pop("rate", None)
        if self._server.keep_output_pcm:  # fault: the service ignores the requested output format
            self.session["audio"]["output"]["format"] = {"type": FORMAT_PCM, "rate": PCM_RATE}
        await self._send(svc.session_updated_message(self.session), "session.updated", self.output_format)

    async def _on_truncate(self, event: svc.TruncateItem, now: float) -> None:
        sent = next((r for r in self.responses if r.item_id == event.item_id), None)
        item_ms = sent.audio_ms if sent is not None else None
        accepted = item_ms is not None and event.content_index == 0 and event.audio_end_ms <= item_ms
        self.truncates.append(
            Truncation(event.item_id, event.content_index, event.audio_end_ms, now, item_ms, accepted)
        )
        self.events.append(RealtimeEvent("truncate", now, f"{event.item_id} {event.audio_end_ms}"))
        if accepted:
            await self._send(
                svc.item_truncated_message(event.item_id, event.content_index, event.audio_end_ms)
            )
        elif item_ms is None:
            await self.send_error(
                "invalid_request_error",
                "invalid_value",
                f"Item with item_id '{event.item_id[:60]}' not found.",
                param="item_id",
            )
        else:
            await self.send_error(
                "invalid_request_error",
                "invalid_value",
                f"Audio content of {item_ms:.0f}ms is already shorter than {event.audio_end_ms}ms.",
                param="audio_end_ms",
            )
        self._notify()

    def _cancel_active(self) -> None:
        active = self._active
        if active is not None and not active.cancel_requested:
            active.cancel_requested = True
            active.wake.set()

    # ------------------------------------------------------------------------------------------- server VAD

    async def _vad(self, audio: bytes) -> None:
        detection = self.session["audio"]["input"].get("turn_detection")
        if not isinstance(detection, dict):
            return  # turn detection off: the client commits and asks for responses itself
        if self.input_format == FORMAT_PCMU:
            pcm, rate = codec.ulaw_decode(audio), 8000
        elif self.input_format == FORMAT_PCM:
            pcm, rate = audio, PCM_RATE
        else:
            return  # audio/pcma: not emulated
        if self._detector is None or self._detector.rate != rate:
            position = self._detector.position_ms if self._detector is not None else 0
            server = self._server
            self._detector = EnergyVad(
                rate, threshold_dbfs=server.vad_threshold_dbfs, start_ms=server.vad_start_ms
            )
            self._detector.position_ms = position
        silence = detection.get("silence_duration_ms")
        for event in self._detector.feed(
            pcm, silence if type(silence) is int else DEFAULT_SILENCE_DURATION_MS
        ):
            if isinstance(event, VadStart):
                await self._speech_started(event.onset_ms, detection)
            else:
                await self._speech_stopped(event.end_ms, detection)

    async def _speech_started(self, onset_ms: int, detection: dict[str, Any]) -> None:
        prefix = detection.get("prefix_padding_ms")
        audio_start_ms = max(0, onset_ms - (prefix if type(prefix) is int else DEFAULT_PREFIX_PADDING_MS))
        item = self._speech_item = self._new_id("item")
        self.speech.append(("started", audio_start_ms, item))
        await self._send(svc.speech_started_message(audio_start_ms, item), "speech_started", item)
        if detection.get("interrupt_response", True) is not False:
            self._cancel_active()  # server VAD cancels the response; only the client knows what was heard
        self._notify()

    async def _speech_stopped(self, end_ms: int, detection: dict[str, Any]) -> None:
        item, self._speech_item = self._speech_item or self._new_id("item"), None
        self.speech.append(("stopped", end_ms, item))
        await self._send(svc.speech_stopped_message(end_ms, item), "speech_stopped", item)
        await self._send(
            svc.server_event_message(
                "input_audio_buffer.committed", {"previous_item_id": None, "item_id": item}
            )
        )
        turn = self._next_turn()
        if self.session["audio"]["input"].get("transcription"):
            await self._send(svc.input_transcript_message(item, turn.transcript))
        if detection.get("create_response", True) is not False and self._active is None:
            self._start_response(turn, "vad")
        self._notify()

    # ---------------------------------------------------------------------------------------------- running

    async def _receive_loop(self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope) -> None:
        try:
            while True:
                await self._on_message(await ws.get_message())
                self._notify()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            self._record_close(reason.code if reason else None, reason.reason if reason else None, "peer")
        except SessionClosed:
            pass
        finally:
            self.closed.set()
            self._notify()
            if not self._closing:
                scope.cancel()

    async def _lifecycle(self) -> None:
        server = self._server
        try:
            if server.send_session_created:
                await self._send(svc.session_created_message(self.session), "session.created")
            if server.script is not None:
                await server.script(self)
            if server.max_session_s is not None:
                with trio.move_on_after(server.max_session_s):
                    await self.closed.wait()
                if not self.closed.is_set():
                    await self.expire()
        except SessionClosed:
            return
        except Exception as exc:  # noqa: BLE001 -- a script is test code: record it, never kill the server
            self.script_errors.append(repr(exc))
            self.events.append(RealtimeEvent("script_error", trio.current_time(), type(exc).__name__))
            log.warning("openai session %d: script failed: %r", self.index, exc)
            await self.close(1011, "emulator script failed")
            return
        await self.closed.wait()

    async def _run(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop, ws, nursery.cancel_scope)
            nursery.start_soon(self._lifecycle)


class OpenAIRealtimeServer(SessionServer[RealtimeSession]):
    """An OpenAI Realtime (GA) WebSocket service on loopback, one :class:`RealtimeSession` per connection.

    Args:
        script: run on each session after ``session.created``; None: the session answers by itself (VAD
            turns, ``response.create``) until the client closes.
        api_key: the key ``Authorization: Bearer`` must carry (else HTTP 401).
        turns: the scripted answers, used in order; the last is repeated.
        delta_ms: audio per ``response.output_audio.delta``, in ms.
        pace_s: pause between deltas (0: as fast as the socket takes them, like the real service).
        vad_threshold_dbfs: a 20 ms frame above this RMS level is voiced.
        vad_start_ms: voiced audio needed before ``speech_started``.
        keep_output_pcm: fault: ignore the requested output format (the session stays at ``audio/pcm``).
        refuse_update: fault: answer every ``session.update`` with an ``error`` of this code instead of
            ``session.updated``, as the service does for a value it does not take (an unknown voice, say).
        send_session_created: fault when false.
        max_session_s: expire each session after this long (``session_expired``), as the service does.
        reject_status: fault: refuse every upgrade with this HTTP status (e.g. 429, 503).
        host, port, handshake_timeout_s: as for :class:`~bridge._loopback.LoopbackWebSocketServer`.
    """

    kind = "OpenAI Realtime emulator"
    #: The class of each connection's session: a benchmark may subclass it to time what it sees.
    session_class: type[RealtimeSession] = RealtimeSession

    def __init__(
        self,
        script: Script | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        turns: Sequence[Turn] = (Turn(),),
        delta_ms: int = 100,
        pace_s: float = 0.0,
        vad_threshold_dbfs: float = -40.0,
        vad_start_ms: int = 60,
        keep_output_pcm: bool = False,
        refuse_update: str | None = None,
        send_session_created: bool = True,
        max_session_s: float | None = None,
        reject_status: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        if not turns:
            raise ValueError("turns must not be empty")
        if delta_ms <= 0 or pace_s < 0 or vad_start_ms <= 0:
            raise ValueError(
                "need delta_ms > 0, pace_s >= 0, vad_start_ms > 0; "
                f"got {delta_ms!r}, {pace_s!r}, {vad_start_ms!r}"
            )
        super().__init__(
            host=host,
            port=port,
            max_message_size=WS_MAX_MESSAGE_BYTES,
            handshake_timeout_s=handshake_timeout_s,
        )
        self.script = script
        self.api_key = api_key
        self.turns = tuple(turns)
        self.delta_ms = delta_ms
        self.pace_s = pace_s
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.vad_start_ms = vad_start_ms
        self.keep_output_pcm = keep_output_pcm
        self.refuse_update = refuse_update
        self.send_session_created = send_session_created
        self.max_session_s = max_session_s
        self.reject_status = reject_status
        self.rejected: list[int] = []  # the HTTP status of each refused upgrade

    def __repr__(self) -> str:  # the key is a secret, even a test one
        return f"OpenAIRealtimeServer(port={self._port!r}, sessions={len(self.sessions)})"

    @property
    def url(self) -> str:
        """The service's WebSocket URL, as ``OPENAI_REALTIME_URL`` takes it."""
        return self.url_for("/v1/realtime?model=gpt-realtime")

    async def handle(self, index: int, request: trio_websocket.WebSocketRequest | None) -> None:
        if request is None:
            self.failed_handshakes += 1
            return
        status = self.reject_status
        if status is None and header(request, "authorization") != f"Bearer {self.api_key}":
            status = 401
        if status is not None:
            self.rejected.append(status)
            await request.reject(status, body=_REJECT_BODIES.get(status, _REJECT_BODY_OTHER))
            return
        session = self.session_class(len(self.sessions), request.path, self)
        session.authorization_ok = True
        session.beta_header = header(request, "openai-beta")
        self.add_session(session)
        try:
            try:
                ws = await request.accept()
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                session._record_close(
                    reason.code if reason else None, reason.reason if reason else None, "peer"
                )
                return
            log.debug("openai session %d connected path=%s", session.index, session.path)
            await session._run(ws)
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await ws.aclose()
        finally:
            session.closed.set()
            session._notify()

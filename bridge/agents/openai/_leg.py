"""The OpenAI Realtime agent leg (GA): μ-law both ways, items as segments, truncation from the marks.

Theory of operation
-------------------
The session opens once the call has started. The bridge sends its ``session.update`` at once (a
:class:`~bridge.agents.openai._handshake.Handshake`: ``audio/pcmu`` both ways, server VAD, input
transcription, ``end_call``; instructions from the call's ``system_prompt`` or ``AGENT_SYSTEM_PROMPT``, plus
its ``goal``; voice from ``OPENAI_VOICE``) and waits for ``session.updated``. Only when that reads back
``audio/pcmu`` is the session usable: :meth:`OpenAILeg.wait_sendable` lets the sender go and
:meth:`~bridge._legs.CallPort.ready` releases the caller's held audio. Any other format (a session left at
24 kHz ``audio/pcm`` would be loud static as μ-law), or an ``error`` answering the update, hands the caller to
the fallback; so does a later ``session.updated`` that changes the output format.

Uplink: caller audio arrives as Twilio's μ-law, 160 bytes a frame, and goes out as it is in
``input_audio_buffer.append``. A DTMF key becomes a user text item and a ``response.create``.

Downlink: each assistant item is one segment keyed by its ``item_id``. Every ``response.output_audio.delta``
grows it (its bytes go to Twilio exactly as they came) and ``response.output_audio.done`` closes it. A delta
of an item already done is dropped and counted (a closed segment would otherwise start again under its key).

Barge-in: the service's VAD says ``input_audio_buffer.speech_started``. The service cancels its response by
itself but cannot know what the caller heard; the ledger can. The leg clears Twilio at once and, for each item
the clear cut short, sends ``conversation.item.truncate`` with ``audio_end_ms`` = the milliseconds of it the
caller heard (confirmed by marks, plus the piece in flight timed with the handset's learned playout delay),
so the model's context loses exactly the words nobody heard. Deltas of a cut item still arriving afterwards
are dropped by the ledger (a segment cleared while open is dead). ``speech_stopped`` starts the turn-latency
clock.

Transcripts of both sides come from ``conversation.item.input_audio_transcription.completed`` (caller) and
``response.output_audio_transcript.done`` (agent). ``error`` events are counted by code
(``bridge_agent_errors_total{agent="openai"}``) and logged, thinned; ``session_expired`` ends the call in the
fallback. ``end_call``: its output is sent, then the call ends once the audio already sent has played.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, ClassVar, Final

import trio
import trio_websocket

from bridge._legs import (
    UPLINK_FRAME_BYTES,
    CallPort,
    Capabilities,
    Digit,
    UplinkItem,
    WebSocketAgentLeg,
    instructions,
)
from bridge._metrics import bounded_label
from bridge.agents.openai._handshake import Handshake, HandshakeState
from bridge.agents.openai._wire import (
    DEFAULT_MAX_AUDIO_BYTES,
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCall,
    InputTranscript,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    append_audio_message,
    function_call_output_message,
    parse_server_event,
    response_create_message,
    truncate_message,
    user_text_message,
)

if TYPE_CHECKING:
    from bridge._call import CallSettings

__all__ = ["OPENAI_ERROR_CODES", "OPENAI_MAX_MESSAGE_CHARS", "OpenAILeg"]

#: Largest service frame parsed: the biggest delta we accept (1 MB decoded) as base64, plus room for the
#: envelope. Larger frames are dropped and counted before any JSON work; the call goes on.
OPENAI_MAX_MESSAGE_CHARS: Final = 4 * ((DEFAULT_MAX_AUDIO_BYTES + 2) // 3) + 64 * 1024

#: ``bridge_agent_errors_total{agent="openai",code}``: the error codes (or, without a code, types) the
#: Realtime service is known to send. Anything else is counted as ``other`` (and still logged with its text):
#: a label taken from a peer would let it grow ``/metrics`` without bound.
OPENAI_ERROR_CODES: Final = frozenset({
    "session_expired", "invalid_api_key", "invalid_value", "invalid_type", "invalid_request",
    "invalid_request_error", "invalid_event", "unknown_parameter", "missing_required_parameter",
    "conversation_already_has_active_response", "response_cancel_not_active", "rate_limit_exceeded",
    "insufficient_quota", "server_error", "model_not_found", "input_audio_buffer_commit_empty",
    "response_failed",
})

#: Items remembered as finished (their audio done): a later delta for one is dropped, not played anew.
FINISHED_ITEMS_KEPT: Final = 64

#: What the bridge answers to ``end_call`` (the model sees it in its context).
END_CALL_OUTPUT: Final = '{"ok":true,"result":"the call is being hung up"}'
#: What it answers to a function it never offered.
UNKNOWN_FUNCTION_OUTPUT: Final = '{"ok":false,"error":"no such function"}'


def dtmf_text(digit: str) -> str:
    """The user message a DTMF key becomes."""
    return f"The caller pressed the key {digit!r} on the phone's keypad."


class OpenAILeg(WebSocketAgentLeg):
    max_message_chars = OPENAI_MAX_MESSAGE_CHARS
    capabilities: ClassVar[Capabilities] = Capabilities(
        name="openai", uplink_pcm=False, uplink_frame_bytes=UPLINK_FRAME_BYTES, takes_text=True
    )

    def __init__(self, call: CallPort, settings: CallSettings) -> None:
        super().__init__(call)
        self.settings = call.config.openai
        self.handshake = Handshake(instructions=self.instructions(), voice=self.settings.voice)
        #: Set once the session has answered the update (either way): the sender may go, or give up.
        self.configured = trio.Event()
        self.finished_items: OrderedDict[str, None] = OrderedDict()

    # --- set-up ---------------------------------------------------------------------------------

    def instructions(self) -> str:
        """The call's ``system_prompt`` (else the configured one), and its ``goal`` when it has one."""
        return instructions(self.call.parameters, self.call.config.system_prompt)

    def url(self) -> str:
        return self.settings.url

    def headers(self) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {self.settings.api_key.reveal()}")]

    async def wait_sendable(self) -> bool:
        await self.configured.wait()
        ws = self.ws
        if ws is None or not self.handshake.ready:
            return False
        self.arm_writable(ws)
        return True

    # --- uplink ---------------------------------------------------------------------------------

    async def send(self, item: UplinkItem) -> None:
        if type(item) is bytes:
            if item:
                await self.send_text(append_audio_message(item))
        elif type(item) is Digit:
            self.call.log_event(logging.INFO, "dtmf", "dtmf %s sent to openai as text", item.digit)
            await self.send_text(user_text_message(dtmf_text(item.digit)))
            await self.send_text(response_create_message())

    # --- downlink -------------------------------------------------------------------------------

    def count_agent_error(self, code: str) -> None:
        self.call.metrics.agent_errors.labels("openai", bounded_label(code, OPENAI_ERROR_CODES)).inc()

    async def refuse(self, reason: str, detail: str) -> None:
        """The session is not one we can forward: log it, count it, the caller hears the fallback."""
        call = self.call
        call.log.error("openai session refused (%s): %s", reason, detail)
        call.metrics.calls_rejected.labels(reason).inc()
        self.configured.set()  # the sender gives up (the handshake is not ready)
        await call.give_up(reason)

    async def session(self, ws: trio_websocket.WebSocketConnection) -> None:
        call = self.call
        handshake = self.handshake
        parse = parse_server_event
        play = call.play
        finished = self.finished_items
        await ws.send_message(handshake.initial_message())
        receive = self.receive_event
        while True:
            event = await receive(ws, parse)
            if type(event) is AudioDelta:  # the hot path first
                item = event.item_id
                if not handshake.ready:
                    call.count_error("audio_before_ready", "agent audio before session.updated: dropped")
                    continue
                if item in finished:
                    call.count_error("audio_after_done", f"delta of done item {item[:60]!r} dropped")
                    continue
                if event.audio:
                    await play(item, event.audio)
            elif type(event) is AudioDone:
                item = event.item_id
                if item not in finished:
                    finished[item] = None
                    if len(finished) > FINISHED_ITEMS_KEPT:
                        finished.popitem(last=False)
                    await call.close_segment(item)
            elif type(event) is SpeechStarted:
                await self.barge_in(ws)
            elif type(event) is SpeechStopped:
                call.caller_stopped()
            elif type(event) is InputTranscript:
                call.transcript("caller", event.transcript)
            elif type(event) is TranscriptDone:
                call.transcript("agent", event.transcript)
            elif type(event) is FunctionCall:
                if await self.function_call(ws, event):
                    return
            elif type(event) is ErrorEvent:
                if await self.error(event):
                    return
            elif type(event) is ResponseDone:
                if event.status == "failed":
                    self.count_agent_error("response_failed")
                    call.log_event(logging.WARNING, "response_failed", "openai response %.60s failed",
                                   event.response_id, errors=True)
            elif type(event) is SessionCreated:
                handshake.receive(event)
                if handshake.session_id:
                    call.name_session(handshake.session_id)
            elif type(event) is SessionUpdated:
                if not handshake.done:
                    if handshake.receive(event) is HandshakeState.READY:
                        call.name_session(handshake.session_id)
                        call.log.info("openai session updated: audio/pcmu both ways")
                        self.configured.set()
                        call.ready()
                    else:
                        await self.refuse("agent_bad_format", handshake.detail)
                        return
                elif event.output_format is not None and not event.output_format.is_pcmu:
                    await self.refuse("agent_bad_format", f"output format changed to {event.output_format!r}")
                    return

    async def barge_in(self, ws: trio_websocket.WebSocketConnection) -> None:
        """The caller spoke over the agent: clear Twilio now, tell the model what each cut item was heard."""
        call = self.call
        interrupted = await call.clear()
        if not interrupted:
            return  # nothing was playing: the caller simply took a turn
        call.barge_in("clear")
        for cut in interrupted:
            if type(cut.key) is str and cut.key:  # ours, and a name the service can take back
                await ws.send_message(truncate_message(cut.key, cut.heard_ms))
                call.log_event(
                    logging.INFO, "truncate", "openai item %.60s truncated at %d ms (%d ms cleared)",
                    cut.key, cut.heard_ms, cut.cleared_ms,
                )

    async def function_call(self, ws: trio_websocket.WebSocketConnection, event: FunctionCall) -> bool:
        """Answer a function call; True when it ended the call (``end_call``)."""
        call = self.call
        if event.name == "end_call":
            await ws.send_message(function_call_output_message(event.call_id, END_CALL_OUTPUT))
            call.log.info("openai end_call: %.200s", event.arguments)
            await call.finish("end_call")
            return True
        call.log_event(logging.WARNING, "unknown_function", "openai called unknown function %.60r",
                       event.name)
        await ws.send_message(function_call_output_message(event.call_id, UNKNOWN_FUNCTION_OUTPUT))
        await ws.send_message(response_create_message())
        return False

    async def error(self, event: ErrorEvent) -> bool:
        """An ``error`` event: counted and logged; True when it ended the call."""
        call = self.call
        self.count_agent_error(event.label)
        call.agent_info(event.label, event.message)
        if not self.handshake.done:
            self.handshake.receive(event)  # an error answering our update: the session is not usable
            await self.refuse("agent_refused", f"{event.label}: {event.message[:200]}")
            return True
        if event.code == "session_expired":
            call.log.error("openai session expired: %.200s", event.message)
            await call.give_up("agent_session_expired")
            return True
        return False

    async def close(self) -> None:
        self.configured.set()  # a sender still waiting gives up
        await super().close()

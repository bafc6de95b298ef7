"""The Deepgram Voice Agent leg (v1): μ-law both ways untouched, ``UserStartedSpeaking`` clears, ``end_call``.

Theory of operation
-------------------
The session opens once the call has started (``Authorization: Token <key>``, never logged). Deepgram says
``Welcome``; the receiver answers with the v1 ``Settings`` (μ-law 8 kHz both ways, no container: no
transcoding anywhere; the call's prompt and goal; ``end_call`` as a client-side function). Deepgram answers
``SettingsApplied``: only then may the sender write caller audio (:meth:`DeepgramLeg.wait_sendable`), and the
held preroll is released (:meth:`~bridge._legs.CallPort.ready`). Caller audio goes out as binary frames of 160
bytes (20 ms, Twilio's own frames, untouched); a DTMF key goes out as ``InjectUserMessage``. While no caller
audio flows (a stalled line, the wait for ``SettingsApplied``) a small task in the session's own nursery sends
``KeepAlive`` every :attr:`DeepgramLeg.keepalive_interval_s`, so the service never times the session out.

Downlink: one segment per agent answer, keyed by a counter. A new key opens at each ``AgentStartedSpeaking``,
or at audio that arrives when no answer is open (the greeting, an injected answer); binary audio is played
under the open key; ``AgentAudioDone`` closes it ("the last byte was *sent*": the ledger's marks tell when it
has played). An answer still open when the next one starts is closed first.

Barge-in: ``UserStartedSpeaking`` clears Twilio and the ledger when something of an answer is still unplayed
(the ledger's :meth:`~bridge._ledger.PlaybackLedger.heard_ms` is known only for unfinished segments), and is
then counted as a ``clear``; a caller who starts speaking while the agent is silent costs nothing. The answer
that was being sent is over for the leg: binary audio that still comes is dropped and counted
(``agent_after_barge_in``) until a sign of the next answer (``AgentStartedSpeaking``, ``AgentThinking``, the
caller's ``ConversationText``). The ledger would drop late audio under the old key as well (a segment cleared
while open is dead), but it cannot know an answer whose first audio had not arrived yet: so nothing of the old
answer plays after ``UserStartedSpeaking``.

Turn latency: Deepgram reports ``total_latency`` in ``AgentStartedSpeaking`` (source ``agent``). The end of
the caller's turn (:meth:`~bridge._legs.CallPort.caller_stopped`, source ``bridge``) is the first of the
caller's ``ConversationText`` and ``AgentThinking`` after a ``UserStartedSpeaking``: Deepgram has no "user
stopped" message, and its transcript of the turn is sent when its end-of-turn detection fires.

Bad input is counted and dropped (the wire raises typed errors); unknown message types are counted as dropped
and logged once per type; ``Warning``/``Error`` are counted by code. The agent asking for ``end_call`` gets
its ``FunctionCallResponse``, then the call finishes after the audio already sent has played.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Final

import trio
import trio_websocket

from bridge._errors import CallEnded
from bridge._legs import (
    UPLINK_FRAME_BYTES,
    AgentClosed,
    CallPort,
    Capabilities,
    Digit,
    UplinkItem,
    WebSocketAgentLeg,
    instructions,
)
from bridge._metrics import bounded_label
from bridge.agents.deepgram import _client_wire as client_wire
from bridge.agents.deepgram import _wire as wire

if TYPE_CHECKING:
    from bridge._call import CallSettings

__all__ = ["DEEPGRAM_CODES", "DeepgramLeg"]

#: ``bridge_agent_errors_total{agent="deepgram", code}``: the ``Error``/``Warning`` codes Deepgram documents
#: (lower-cased), plus ``unknown`` for a blank one. Any other code is counted as ``other`` (and logged,
#: throttled): a label taken from a peer must not grow ``/metrics`` without bound.
DEEPGRAM_CODES: Final = frozenset({
    "internal_server_error", "client_message_timeout", "unparsable_client_message", "failed_to_think",
    "think_request_failed", "prompt_too_long", "inject_agent_message_during_user_speech",
    "inject_agent_message_during_agent_speech", "settings_already_applied", "unknown",
})
#: Unknown message types logged per call (each once); past this many distinct ones, they are only counted.
UNKNOWN_TYPES_LOGGED: Final = 16
#: What the bridge answers to the agent's ``end_call``.
END_CALL_RESULT: Final = "The call is ending now."
#: What a client-side function the bridge never offered gets (the agent must not wait for it forever).
UNKNOWN_FUNCTION_RESULT: Final = "Error: this function is not available."
#: The prompt when the configured one is blank.
DEFAULT_PROMPT: Final = "You are a helpful assistant."
#: Longest session id (Deepgram's ``request_id``, a UUID) put on the call's log lines.
MAX_SESSION_ID_CHARS: Final = 64


class DeepgramLeg(WebSocketAgentLeg):
    capabilities: ClassVar[Capabilities] = Capabilities(
        name="deepgram", uplink_pcm=False, uplink_frame_bytes=UPLINK_FRAME_BYTES, takes_text=True
    )
    #: Send ``KeepAlive`` after this long without sending the service anything (it times out after ~10 s).
    keepalive_interval_s: ClassVar[float] = 5.0

    def __init__(self, call: CallPort, settings: CallSettings) -> None:
        super().__init__(call)
        self.deepgram = call.config.deepgram
        prompt = instructions(call.parameters, call.config.system_prompt)
        # Deepgram's Settings need a prompt; a blank configured one would make the call fail, not the agent.
        self.agent_settings = client_wire.AgentSettings(prompt=prompt if prompt.strip() else DEFAULT_PROMPT)
        self.settings_sent = trio.Event()
        self.applied = trio.Event()
        self.keepalives_sent = 0
        self._last_sent = 0.0  # when we last sent the service anything (KeepAlive timing)
        self._answers = 0  # the last segment key used
        self._key: int | None = None  # the open answer's segment key
        self._dropping = False  # after a barge-in, until the next answer: binary audio is the old answer's
        self._caller_turn = False  # UserStartedSpeaking seen, the end of the caller's turn not yet
        self._unknown_types: set[str] = set()
        self._agent_latency = call.metrics.turn_latency.labels(self.name, "agent")

    def url(self) -> str:
        return self.deepgram.url

    def headers(self) -> list[tuple[str, str]]:
        return [("Authorization", f"Token {self.deepgram.api_key.reveal()}")]

    # --- the sender ---------------------------------------------------------------------------

    async def wait_sendable(self) -> bool:
        await self.applied.wait()
        ws = self.ws
        if ws is None or ws.closed is not None:
            return False
        self.arm_writable(ws)
        return True

    async def send(self, item: UplinkItem) -> None:
        if type(item) is bytes:
            await self.send_text(item)
            self._last_sent = trio.current_time()
        elif type(item) is Digit:
            # The service takes text as if the caller had said it; a bare "5" would read as speech.
            text = f"(The caller pressed the {item.digit} key.)"
            await self.send_text(client_wire.inject_user_message(text))
            self._last_sent = trio.current_time()
            self.call.log_event(logging.INFO, "dtmf_sent", "dtmf %s sent to deepgram", item.digit)

    async def _keep_alive(self) -> None:
        """Once the settings are sent: ``KeepAlive`` whenever nothing went out for a keep-alive interval."""
        await self.settings_sent.wait()
        interval = self.keepalive_interval_s
        message = client_wire.keep_alive_message()
        while True:
            due = self._last_sent + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            try:
                await self.send_text(message)
            except AgentClosed:
                return  # the receiver sees the same close
            self._last_sent = trio.current_time()
            self.keepalives_sent += 1

    # --- the receiver -------------------------------------------------------------------------

    async def session(self, ws: trio_websocket.WebSocketConnection) -> None:
        # Both ends of the session are caught inside the nursery and raised again outside it, bare: trio
        # would wrap them in an ExceptionGroup that WebSocketAgentLeg does not look into.
        closed: trio_websocket.CloseReason | None = None
        gone = False
        ended: str | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive)
            try:
                await self._receive(ws)
            except trio_websocket.ConnectionClosed as exc:
                gone, closed = True, exc.reason
            except CallEnded as exc:
                ended = exc.reason
            nursery.cancel_scope.cancel()
        if gone:
            raise trio_websocket.ConnectionClosed(closed)
        if ended is not None:
            raise CallEnded(ended)

    async def _receive(self, ws: trio_websocket.WebSocketConnection) -> None:
        parse = wire.parse_event
        receive = self.receive_event
        while True:
            event = await receive(ws, parse)
            if type(event) is wire.AgentAudio:
                await self._agent_audio(event.audio)
            elif await self._control(event):
                return

    async def _agent_audio(self, audio: bytes) -> None:
        call = self.call
        if self._dropping:
            call.metrics.dropped.labels("agent_after_barge_in").inc()
            call.log_event(logging.INFO, "after_barge_in", "deepgram audio of an interrupted answer dropped")
            return
        if not audio:
            return
        key = self._key
        if key is None:
            key = await self._open_answer()
        await call.play(key, audio)

    async def _open_answer(self) -> int:
        """A new answer starts: close the one still open, if any, and open a new segment key."""
        if self._key is not None:
            await self.call.close_segment(self._key)
        self._answers += 1
        self._key = self._answers
        self._dropping = False
        return self._key

    async def _close_answer(self) -> None:
        if self._key is not None:
            await self.call.close_segment(self._key)
            self._key = None

    def _end_of_caller_turn(self) -> None:
        self._dropping = False  # the next audio is a new answer's
        if self._caller_turn:
            self._caller_turn = False
            self.call.caller_stopped()

    async def _barge_in(self) -> None:
        """``UserStartedSpeaking``: nothing of the answer being played or sent may play after it."""
        call = self.call
        self._caller_turn = True
        if self._key is not None:
            # Whatever else comes of this answer is dropped here. The ledger would drop it too under the old
            # key (a segment cleared while open is dead), but not for an answer whose audio had not begun.
            self._dropping = True
            self._key = None
        if call.playing:
            call.barge_in("clear")
            await call.clear()

    async def _control(self, event: wire.DeepgramEvent) -> bool:
        """One control message; True when the call is over (``end_call``)."""
        call = self.call
        kind = type(event)
        if kind is wire.UserStartedSpeaking:
            await self._barge_in()
        elif kind is wire.AgentStartedSpeaking:
            assert isinstance(event, wire.AgentStartedSpeaking)
            self._end_of_caller_turn()
            self._agent_latency.observe(event.total_latency)
            call.log.debug(
                "deepgram latency: total %.0f ms (tts %.0f ms, llm %.0f ms)",
                event.total_latency * 1000, event.tts_latency * 1000, event.ttt_latency * 1000,
            )
            await self._open_answer()
        elif kind is wire.AgentAudioDone:
            await self._close_answer()
        elif kind is wire.ConversationText:
            assert isinstance(event, wire.ConversationText)
            if event.role == "user":
                self._end_of_caller_turn()
                call.transcript("caller", event.content)
            else:
                call.transcript("agent", event.content)
        elif kind is wire.AgentThinking:
            self._end_of_caller_turn()
        elif kind is wire.FunctionCallRequest:
            assert isinstance(event, wire.FunctionCallRequest)
            return await self._function_calls(event)
        elif kind is wire.AgentWarning or kind is wire.AgentError:
            assert isinstance(event, wire.AgentWarning | wire.AgentError)
            label = "warning" if kind is wire.AgentWarning else "error"
            call.metrics.agent_errors.labels(self.name, bounded_label(event.kind, DEEPGRAM_CODES)).inc()
            call.agent_info(label, f"{event.code}: {event.description}")
        elif kind is wire.Welcome:
            assert isinstance(event, wire.Welcome)
            await self._welcome(event)
        elif kind is wire.SettingsApplied:
            self._settings_applied()
        elif kind is wire.Unknown:
            assert isinstance(event, wire.Unknown)
            self._unknown(event.type)
        else:
            # History, PromptUpdated, SpeakUpdated, InjectionRefused, the service's own function results.
            call.log_event(logging.DEBUG, "deepgram_other", "deepgram %s", kind.__name__)
        return False

    async def _welcome(self, event: wire.Welcome) -> None:
        call = self.call
        if self.settings_sent.is_set():
            call.count_error("second_welcome", "Welcome after the settings were sent")
            return
        call.name_session(event.request_id[:MAX_SESSION_ID_CHARS])
        try:
            await self.send_text(client_wire.settings_message(self.agent_settings))
        except AgentClosed:
            return  # the next receive sees the close
        self._last_sent = trio.current_time()
        self.settings_sent.set()
        call.log.info("deepgram settings sent (mulaw 8000 both ways, end_call offered)")

    def _settings_applied(self) -> None:
        call = self.call
        if not self.settings_sent.is_set():
            call.count_error("unexpected_event", "SettingsApplied before any Settings")
            return
        if self.applied.is_set():
            call.count_error("second_settings_applied", "SettingsApplied twice")
            return
        self.applied.set()
        call.ready()

    def _unknown(self, type_: str) -> None:
        call = self.call
        call.metrics.dropped.labels("agent_unknown_type").inc()
        if type_ not in self._unknown_types and len(self._unknown_types) < UNKNOWN_TYPES_LOGGED:
            self._unknown_types.add(type_)
            call.log.info("deepgram message of unknown type %.64r ignored", type_)

    async def _function_calls(self, event: wire.FunctionCallRequest) -> bool:
        """Answer the client-side calls; ``end_call`` then finishes the call. True when it did."""
        call = self.call
        ending = False
        for function in event.functions:
            if not function.client_side:
                continue  # the service runs it and reports the result itself
            if function.name == client_wire.END_CALL.name:
                result = END_CALL_RESULT
                ending = True
            else:
                call.count_error("unknown_function", f"the agent asked for {function.name[:64]!r}")
                result = UNKNOWN_FUNCTION_RESULT
            try:
                await self.send_text(
                    client_wire.function_call_response_message(function.id, function.name, result)
                )
            except AgentClosed:
                break  # gone: the agent asked to end, so the call still ends normally, not with the fallback
            self._last_sent = trio.current_time()
        if not ending:
            return False
        call.log.info("deepgram called end_call")
        await self._close_answer()
        await call.finish("end_call")
        return True

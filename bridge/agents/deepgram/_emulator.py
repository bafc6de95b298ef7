"""A Deepgram Voice Agent (v1) on loopback: the service's side of the wire, scriptable, recording everything.

Theory of operation
-------------------
:class:`DeepgramAgentServer` is a :class:`~bridge._loopback.LoopbackWebSocketServer`: each connection runs in
its own containment boundary. The upgrade must carry ``Authorization: Token <key>`` (else HTTP 401, as the
service answers); then one :class:`DeepgramSession` runs four tasks in one nursery:

- the *receiver* records every frame exactly (audio bytes, ``KeepAlive``, function responses, injected
  messages, protocol errors), runs the energy VAD on the caller's audio once the settings are applied, and
  turns what it saw into *decisions* on a small memory channel;
- the *conductor* acts on decisions one at a time, as the service does: ``SettingsApplied`` (then the
  greeting), ``UserStartedSpeaking`` at a speech onset, an answer after the caller's silence, an ``Error`` and
  a close for a message the service cannot parse. Each answer runs as a child task;
- the *watchdog* sends ``Error CLIENT_MESSAGE_TIMEOUT`` and closes when the client has sent nothing (no audio,
  no ``KeepAlive``) for ``idle_timeout_s``, as the service does after about 10 s;
- the *lifecycle* sends ``Welcome``, then runs the server's script (faults, function calls) once the settings
  are applied.

Barge-in is exact: every send of an answer happens under one lock, tagged with the answer's *generation*. A
speech onset takes the lock, bumps the generation and sends ``UserStartedSpeaking``; an answer of an older
generation finds out at its next send and stops. So not one byte of the old answer follows
``UserStartedSpeaking`` on the wire, and the old answer gets no ``AgentAudioDone``.

Waiters (:meth:`DeepgramSession.wait_until`, ...) wake on a "something changed" event replaced after each
record, and raise :class:`SessionClosed` once the socket is closed, so every wait is bounded by the
connection's life.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import orjson
import trio
import trio_websocket

import codec
from bridge._errors import DeepgramProtocolError
from bridge._loopback import CLOSE_TIMEOUT_S, SessionClosed, SessionServer, WatchedSession, header
from bridge.agents.deepgram import _client_wire as client_wire
from bridge.agents.deepgram import _wire as wire

__all__ = [
    "DEFAULT_API_KEY",
    "Answer",
    "DeepgramAgentServer",
    "DeepgramSession",
    "ReceivedAudio",
    "SessionClosed",
    "SessionEvent",
    "Turn",
    "speech_like_pcm",
]

log = logging.getLogger("bridge.emulators.deepgram")

#: The key the emulator accepts unless told another one.
DEFAULT_API_KEY: Final = "deepgram-emulator-key"
#: The service closes a session that has sent nothing for about 10 s.
DEFAULT_IDLE_TIMEOUT_S: Final = 10.0
#: 100 ms of μ-law 8 kHz per binary frame, sent 5x faster than real time: tests stay quick, and a barge-in
#: still lands while an answer is being sent.
DEFAULT_CHUNK_BYTES: Final = 800
DEFAULT_PACE_S: Final = 0.02
#: Energy VAD: 10 ms frames; loud at or above the threshold; speech starts after ONSET_FRAMES loud frames in a
#: row (ignores clicks) and the turn ends after ``silence_ms`` without a loud frame.
VAD_FRAME_MS: Final = 10
DEFAULT_THRESHOLD_DBFS: Final = -40.0
ONSET_FRAMES: Final = 3
DEFAULT_SILENCE_MS: Final = 400
#: Decisions waiting for the conductor; when full the receiver waits (backpressure, nothing dropped).
DECISION_QUEUE: Final = 16
#: Codes the service uses in its ``Error`` messages.
UNPARSABLE: Final = "UNPARSABLE_CLIENT_MESSAGE"
TIMEOUT: Final = "CLIENT_MESSAGE_TIMEOUT"

Script = Callable[["DeepgramSession"], Awaitable[None]]



@dataclass(frozen=True, slots=True)
class Turn:
    """What the emulated agent hears and says in one turn of the conversation.

    Attributes:
        user_text: the caller's transcript (``ConversationText`` role ``user``).
        answer_text: the agent's answer (``ConversationText`` role ``assistant``).
        answer_ms: length of the answer's audio.
        end_call: after the answer, ask the client to run its client-side ``end_call`` function.
    """

    user_text: str = "Hello, can you hear me?"
    answer_text: str = "Yes, I can hear you. How can I help?"
    answer_ms: int = 1500
    end_call: bool = False


@dataclass(frozen=True, slots=True)
class ReceivedAudio:
    """One binary frame of caller audio."""

    wall_s: float
    size: int


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A message sent (wire type: ``Welcome``, ``UserStartedSpeaking``, ...) or received (``KeepAlive``,
    ``Settings``, ``bad_message`` with the error kind as detail, ...), or a lifecycle step (``closed``,
    ``audio_before_settings_applied``, ``script_error``)."""

    kind: str
    wall_s: float
    detail: str = ""


@dataclass(slots=True)
class Answer:
    """One spoken answer (or the greeting): how much of its audio went out and how it ended."""

    text: str
    total_bytes: int
    sent_bytes: int = 0
    done: bool = False  # AgentAudioDone was sent
    interrupted: bool = False  # a barge-in stopped it
    chunks: list[int] = field(default_factory=list)


def speech_like_pcm(duration_ms: int, sample_rate: int) -> np.ndarray:
    """A deterministic speech-like signal (int16): a voiced 140 Hz buzz with harmonics, in 4 Hz syllables.

    Loud enough for any energy VAD (about -16 dBFS at the syllables' peaks), identical on every run.
    """
    n = sample_rate * duration_ms // 1000
    t = np.arange(n, dtype=np.float64) / sample_rate
    voiced = sum(np.sin(2 * math.pi * 140.0 * k * t) / k for k in (1, 2, 3, 5))
    syllables = 0.5 * (1.0 - np.cos(2 * math.pi * 4.0 * t))
    return np.round(voiced * syllables * 6000.0).astype(np.int16)


def _encode(pcm: np.ndarray, encoding: str) -> bytes:
    if encoding == "linear16":
        return pcm.astype("<i2").tobytes()
    if encoding == "mulaw":
        return codec.ulaw_encode(pcm.astype("<i2").tobytes())
    return b"\xd5" * len(pcm)  # alaw: the emulator speaks A-law silence (it has no A-law encoder)


class _EnergyVad:
    """Speech onset and end of turn from frame energy, in stream time (samples fed, never the wall clock)."""

    def __init__(self, sample_rate: int, threshold_dbfs: float, silence_ms: int) -> None:
        self.frame_samples = max(1, sample_rate * VAD_FRAME_MS // 1000)
        self.threshold_power = (32768.0**2) * 10 ** (threshold_dbfs / 10)
        self.silence_frames = max(1, silence_ms // VAD_FRAME_MS)
        self.speaking = False
        self._loud = 0
        self._quiet = 0
        self._pending = np.empty(0, dtype=np.float64)

    def feed(self, samples: np.ndarray) -> list[str]:
        """Returns the decisions (``"onset"``, ``"end"``) of the whole frames completed by ``samples``."""
        data = np.concatenate([self._pending, samples.astype(np.float64)])
        n = len(data) // self.frame_samples
        self._pending = data[n * self.frame_samples :]
        if not n:
            return []
        power = np.mean(np.square(data[: n * self.frame_samples].reshape(n, self.frame_samples)), axis=1)
        decisions: list[str] = []
        for loud in (power >= self.threshold_power).tolist():
            if not self.speaking:
                self._loud = self._loud + 1 if loud else 0
                if self._loud >= ONSET_FRAMES:
                    self.speaking, self._quiet = True, 0
                    decisions.append("onset")
            else:
                self._quiet = 0 if loud else self._quiet + 1
                if self._quiet >= self.silence_frames:
                    self.speaking, self._loud = False, 0
                    decisions.append("end")
        return decisions


class DeepgramSession(WatchedSession[SessionEvent]):
    """One connection to the emulated service, as the client drove it, plus what a script uses to drive it.

    Attributes:
        index: 0-based order of the connection on its server.
        path: the request path.
        settings: the accepted ``Settings``; ``settings_applied`` once ``SettingsApplied`` was sent.
        audio_frames, keepalives, function_responses, injected_user, injected_agent, answers, events: what
            happened, in order (``trio.current_time()`` stamps).
        audio_before_settings_applied: caller audio bytes that arrived before ``SettingsApplied`` (the client
            must send none; they are still recorded in :attr:`received_audio`).
        protocol_errors: count of unparsable messages by error kind.
        close_code, close_reason, closed_by: how it ended (``closed_by``: ``"peer"``, ``"agent"``,
            ``"drop"``); ``rejected_status`` when the upgrade was refused.
        errors: exceptions of the script, as ``repr`` text.
    """

    closer = "agent"

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.request_id = str(uuid.uuid4())
        self.settings: client_wire.SettingsRequest | None = None
        self.settings_applied = False
        self.audio_frames: list[ReceivedAudio] = []
        self.audio_before_settings_applied = 0
        self.keepalives: list[float] = []
        self.function_requests: list[wire.FunctionCall] = []
        self.function_responses: list[wire.FunctionCallResponse] = []
        self.injected_user: list[str] = []
        self.injected_agent: list[str] = []
        self.answers: list[Answer] = []
        self.events: list[SessionEvent] = []
        self.protocol_errors: dict[str, int] = {}
        self.turns_taken = 0
        self.rejected_status: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None
        self.errors: list[str] = []
        self.closed = trio.Event()
        self._audio = bytearray()
        self._sent_audio = bytearray()
        self._changed = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._closing = False
        self._send_lock = trio.Lock()
        self._generation = 0
        self._speaking: Answer | None = None
        self._last_message = trio.current_time()
        self._vad: _EnergyVad | None = None
        self._odd_byte = b""
        self._server: DeepgramAgentServer | None = None

    def __repr__(self) -> str:
        return (
            f"DeepgramSession(index={self.index}, settings_applied={self.settings_applied}, "
            f"audio={len(self._audio)} bytes, answers={len(self.answers)}, closed_by={self.closed_by!r})"
        )

    # ------------------------------------------------------------------------------------------ recorded data

    @property
    def received_audio(self) -> bytes:
        """Every caller audio byte, in order, exactly as received."""
        return bytes(self._audio)

    @property
    def sent_audio(self) -> bytes:
        """Every agent audio byte sent, in order."""
        return bytes(self._sent_audio)

    def _event(self, kind: str, at: float, detail: str = "") -> SessionEvent:
        return SessionEvent(kind, at, detail)

    # ---------------------------------------------------------------------------------------------- waiting


    async def wait_settings_applied(self) -> client_wire.SettingsRequest:
        """Waits until ``SettingsApplied`` was sent; returns the settings."""
        await self.wait_until(lambda: self.settings_applied, "SettingsApplied")
        assert self.settings is not None
        return self.settings

    async def wait_event(self, kind: str, count: int = 1) -> SessionEvent:
        """Waits for the ``count``-th event of ``kind``; returns it."""
        await self.wait_until(lambda: len(self.events_of(kind)) >= count, f"{count} x {kind}")
        return self.events_of(kind)[count - 1]

    async def wait_audio_bytes(self, n: int) -> None:
        """Waits until at least ``n`` bytes of caller audio have arrived."""
        await self.wait_until(lambda: len(self._audio) >= n, f"{n} audio bytes")

    async def wait_function_responses(self, n: int = 1) -> wire.FunctionCallResponse:
        """Waits for the ``n``-th ``FunctionCallResponse``; returns it."""
        await self.wait_until(lambda: len(self.function_responses) >= n, f"{n} function responses")
        return self.function_responses[n - 1]

    # ---------------------------------------------------------------------------------------------- sending

    async def _send_unlocked(self, data: str | bytes, kind: str | None, detail: str = "") -> None:
        if self._ws is None or self.closed.is_set():
            raise SessionClosed(f"session {self.index} is closed")
        if kind is not None:
            self.events.append(SessionEvent(kind, trio.current_time(), detail))
            self._notify()
        try:
            await self._ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise SessionClosed(f"session {self.index} closed while sending") from exc

    async def _send(
        self, data: str | bytes, kind: str | None, detail: str = "", *, generation: int = -1
    ) -> bool:
        """Sends one frame; with ``generation``, only if no barge-in came since (else returns False)."""
        async with self._send_lock:
            if generation >= 0 and generation != self._generation:
                return False
            await self._send_unlocked(data, kind, detail)
            return True

    async def send_raw(self, data: str | bytes) -> None:
        """Sends one frame verbatim (faults: garbage, unknown types, stray binary frames)."""
        await self._send(data, "raw", f"{type(data).__name__} of {len(data)}")

    async def send_unknown(self, type_: str = "FutureMessage") -> None:
        """Sends a message of a type the client does not know (it must log it and carry on)."""
        await self._send(orjson.dumps({"type": type_, "detail": "not in v1"}).decode(), type_)

    async def warning(self, description: str, code: str) -> None:
        """Sends ``Warning {description, code}``."""
        await self._send(wire.warning_message(description, code), "Warning", code)

    async def error(self, description: str, code: str) -> None:
        """Sends ``Error {description, code}`` (the session goes on unless the script closes it)."""
        await self._send(wire.error_message(description, code), "Error", code)

    async def request_function(
        self, name: str = "end_call", arguments: str = "{}", *, client_side: bool = True
    ) -> wire.FunctionCall:
        """Sends a ``FunctionCallRequest`` for one function; returns the call (its ``id`` is fresh)."""
        call = wire.FunctionCall(f"fc_{uuid.uuid4().hex[:12]}", name, arguments, client_side)
        self.function_requests.append(call)
        await self._send(wire.function_call_request_message([call]), "FunctionCallRequest", name)
        return call

    async def speak(self, turn: Turn, *, user_text: str | None = None) -> Answer:
        """Says ``turn.answer_text`` now (after the user's line when ``user_text`` is given); returns it."""
        if self._server is None or self.settings is None:
            raise SessionClosed(f"session {self.index} has no applied settings to speak with")
        return await self._answer(self._server, turn, user_text)

    # ------------------------------------------------------------------------------------ the agent's turns

    async def _interrupt(self, *, user_started_speaking: bool) -> None:
        """Stops the answer being sent (if any); with ``user_started_speaking``, says why on the wire."""
        async with self._send_lock:
            self._generation += 1
            if self._speaking is not None:
                self._speaking.interrupted = True
                self._speaking = None
            if user_started_speaking:
                await self._send_unlocked(wire.user_started_speaking_message(), "UserStartedSpeaking")

    async def _answer(self, server: DeepgramAgentServer, turn: Turn, user_text: str | None) -> Answer:
        """One answer: the transcript lines, the latencies, the audio in paced chunks, ``AgentAudioDone``."""
        assert self.settings is not None
        generation = self._generation
        output = self.settings.output
        audio = _encode(speech_like_pcm(turn.answer_ms, output.sample_rate), output.encoding)
        answer = Answer(turn.answer_text, len(audio))
        self.answers.append(answer)
        total, tts, ttt = server.latencies_s
        steps: list[tuple[str, str]] = []
        if user_text is not None:
            steps += [
                (wire.conversation_text_message("user", user_text), "ConversationText"),
                (wire.agent_thinking_message("Thinking about an answer."), "AgentThinking"),
                (wire.agent_started_speaking_message(total, tts, ttt), "AgentStartedSpeaking"),
            ]
        steps.append((wire.conversation_text_message("assistant", turn.answer_text), "ConversationText"))
        for text, kind in steps:
            if not await self._send(text, kind, generation=generation):
                answer.interrupted = True
                return answer
        self._speaking = answer
        for start in range(0, len(audio), server.chunk_bytes):
            chunk = audio[start : start + server.chunk_bytes]
            async with self._send_lock:
                if generation != self._generation:
                    answer.interrupted = True
                    return answer
                await self._send_unlocked(chunk, None)
                answer.sent_bytes += len(chunk)
                answer.chunks.append(len(chunk))
                self._sent_audio += chunk
            if server.pace_s > 0:
                await trio.sleep(server.pace_s)
        if not await self._send(wire.agent_audio_done_message(), "AgentAudioDone", generation=generation):
            answer.interrupted = True
            return answer
        answer.done = True
        if self._speaking is answer:
            self._speaking = None
        self._notify()
        if turn.end_call:
            if "end_call" in self.settings.client_side_functions:
                await self.request_function("end_call")
            else:
                self.events.append(SessionEvent("end_call_not_offered", trio.current_time()))
        return answer

    async def _conductor(
        self, server: DeepgramAgentServer, decisions: trio.MemoryReceiveChannel[tuple[str, str]]
    ) -> None:
        async with trio.open_nursery() as nursery:
            async for kind, detail in decisions:
                if kind == "settings":
                    if server.settings_delay_s > 0:
                        await trio.sleep(server.settings_delay_s)
                    self.settings_applied = True
                    await self._send(wire.settings_applied_message(), "SettingsApplied")
                    assert self.settings is not None
                    if self.settings.greeting:
                        nursery.start_soon(
                            self._answer, server, Turn(answer_text=self.settings.greeting), None
                        )
                elif kind == "unparsable":
                    await self.error(detail, UNPARSABLE)
                    await self.close(1000, UNPARSABLE)
                    return
                elif kind == "second_settings":
                    # The reference does not say what a second Settings gets; this code is the emulator's own.
                    await self.error(
                        "Settings were already applied to this session.", "SETTINGS_ALREADY_APPLIED"
                    )
                elif kind == "onset":
                    await self._interrupt(user_started_speaking=True)
                elif kind == "end":
                    turn = server.turn(self.turns_taken)
                    self.turns_taken += 1
                    nursery.start_soon(self._answer, server, turn, turn.user_text)
                elif kind == "inject_user":
                    await self._interrupt(
                        user_started_speaking=False
                    )  # a new user turn replaces the old answer
                    turn = server.turn(self.turns_taken)
                    self.turns_taken += 1
                    nursery.start_soon(self._answer, server, turn, detail)
                elif kind == "inject_agent":
                    vad_speaking = self._vad is not None and self._vad.speaking
                    if self._speaking is not None or vad_speaking:
                        await self._send(wire.injection_refused_message(detail), "InjectionRefused")
                    else:
                        nursery.start_soon(self._answer, server, Turn(answer_text=detail), None)
                elif kind == "prompt_updated":
                    await self._send(wire.prompt_updated_message(), "PromptUpdated")
                elif kind == "speak_updated":
                    await self._send(wire.speak_updated_message(), "SpeakUpdated")

    # ---------------------------------------------------------------------------------------------- running

    def _caller_samples(self, audio: bytes) -> np.ndarray | None:
        assert self.settings is not None
        encoding = self.settings.input.encoding
        if encoding == "mulaw":
            return np.frombuffer(codec.ulaw_decode(audio), dtype="<i2")
        if encoding == "linear16":
            data = self._odd_byte + audio
            self._odd_byte = data[len(data) & ~1 :]
            return np.frombuffer(data[: len(data) & ~1], dtype="<i2")
        return None  # other encodings are recorded, not analysed

    def _on_message(self, server: DeepgramAgentServer, data: str | bytes) -> list[tuple[str, str]]:
        now = trio.current_time()
        self._last_message = now
        try:
            msg = client_wire.parse_client_message(data)
        except DeepgramProtocolError as exc:
            self.protocol_errors[exc.kind] = self.protocol_errors.get(exc.kind, 0) + 1
            self.events.append(SessionEvent("bad_message", now, exc.kind))
            log.debug("deepgram session %d: unparsable (%s): %s", self.index, exc.kind, exc.detail)
            return [("unparsable", exc.detail)]
        if isinstance(msg, client_wire.CallerAudio):
            self.audio_frames.append(ReceivedAudio(now, len(msg.audio)))
            self._audio += msg.audio
            if not self.settings_applied:
                if not self.audio_before_settings_applied:
                    self.events.append(SessionEvent("audio_before_settings_applied", now))
                self.audio_before_settings_applied += len(msg.audio)
                return []
            assert self.settings is not None
            if self._vad is None:
                self._vad = _EnergyVad(
                    self.settings.input.sample_rate, server.threshold_dbfs, server.silence_ms
                )
            samples = self._caller_samples(msg.audio)
            return [] if samples is None else [(d, "") for d in self._vad.feed(samples)]
        if isinstance(msg, client_wire.SettingsRequest):
            self.events.append(SessionEvent("Settings", now))
            if self.settings is not None:
                return [("second_settings", "")]
            self.settings = msg
            return [("settings", "")]
        if isinstance(msg, client_wire.KeepAlive):
            self.keepalives.append(now)
            self.events.append(SessionEvent("KeepAlive", now))
        elif isinstance(msg, wire.FunctionCallResponse):
            self.function_responses.append(msg)
            self.events.append(SessionEvent("FunctionCallResponse", now, msg.name))
        elif isinstance(msg, client_wire.InjectUserMessage):
            self.injected_user.append(msg.content)
            self.events.append(SessionEvent("InjectUserMessage", now))
            return [("inject_user", msg.content)]
        elif isinstance(msg, client_wire.InjectAgentMessage):
            self.injected_agent.append(msg.message)
            self.events.append(SessionEvent("InjectAgentMessage", now))
            return [("inject_agent", msg.message)]
        elif isinstance(msg, client_wire.UpdatePrompt):
            self.events.append(SessionEvent("UpdatePrompt", now))
            return [("prompt_updated", "")]
        else:
            self.events.append(SessionEvent("UpdateSpeak", now))
            return [("speak_updated", "")]
        return []

    async def _receive_loop(
        self,
        server: DeepgramAgentServer,
        ws: trio_websocket.WebSocketConnection,
        decisions: trio.MemorySendChannel[tuple[str, str]],
        scope: trio.CancelScope,
    ) -> None:
        """Records until the socket closes; then ends the session unless the agent is closing it itself."""
        try:
            async with decisions:
                while True:
                    found = self._on_message(server, await ws.get_message())
                    self._notify()
                    for decision in found:
                        await decisions.send(decision)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            self._record_close(reason.code if reason else None, reason.reason if reason else None, "peer")
        finally:
            self.closed.set()
            self._notify()
            if not self._closing:
                scope.cancel()

    async def _watchdog(self, idle_timeout_s: float) -> None:
        while True:
            deadline = self._last_message + idle_timeout_s
            if trio.current_time() >= deadline:
                await self.error(
                    "We waited too long for a websocket message. Please ensure that you're sending binary "
                    "messages containing user speech.",
                    TIMEOUT,
                )
                await self.close(1000, TIMEOUT)
                return
            await trio.sleep_until(deadline)

    async def _lifecycle(self, server: DeepgramAgentServer) -> None:
        try:
            if server.send_welcome:
                await self._send(wire.welcome_message(self.request_id), "Welcome")
            if server.script is not None:
                await self.wait_settings_applied()
                await server.script(self)
        except SessionClosed:
            return
        except Exception as exc:  # noqa: BLE001 -- a script is test code: record its failure, never kill the server
            self.errors.append(repr(exc))
            self.events.append(SessionEvent("script_error", trio.current_time(), type(exc).__name__))
            log.warning("deepgram session %d: script failed: %r", self.index, exc)
            await self.close(1011, "agent script failed")

    async def _run(self, ws: trio_websocket.WebSocketConnection, server: DeepgramAgentServer) -> None:
        self._ws = ws
        self._server = server
        self._last_message = trio.current_time()
        send, receive = trio.open_memory_channel[tuple[str, str]](DECISION_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, server, ws, send, nursery.cancel_scope)
            nursery.start_soon(self._conductor, server, receive)
            nursery.start_soon(self._lifecycle, server)
            if server.idle_timeout_s is not None:
                nursery.start_soon(self._watchdog, server.idle_timeout_s)
            await self.closed.wait()
            nursery.cancel_scope.cancel()


class DeepgramAgentServer(SessionServer[DeepgramSession]):
    """A Deepgram Voice Agent (v1) on loopback, one :class:`DeepgramSession` per connection.

    Args:
        script: run on each session once ``SettingsApplied`` is sent, beside the turn-taking (faults,
            function calls, warnings); ``None``: turn-taking only.
        turns: what the agent hears and says, turn by turn (the last one repeats); default one :class:`Turn`.
        api_key: the key ``Authorization: Token <key>`` must carry (else HTTP 401).
        reject_status: fault: refuse every upgrade with this HTTP status.
        send_welcome: fault when false: never send ``Welcome``.
        settings_delay_s: wait this long before ``SettingsApplied``.
        idle_timeout_s: close a session that sent nothing for this long (``None``: never).
        chunk_bytes, pace_s: agent audio frame size and the pause between frames.
        threshold_dbfs, silence_ms: the VAD's speech level and the silence that ends a turn.
        latencies_s: ``(total, tts, ttt)`` reported in ``AgentStartedSpeaking``.
    """

    kind = "Deepgram Voice Agent emulator"

    def __init__(
        self,
        script: Script | None = None,
        *,
        turns: Sequence[Turn] = (Turn(),),
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        reject_status: int | None = None,
        send_welcome: bool = True,
        settings_delay_s: float = 0.0,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        pace_s: float = DEFAULT_PACE_S,
        threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
        silence_ms: int = DEFAULT_SILENCE_MS,
        latencies_s: tuple[float, float, float] = (0.9, 0.3, 0.6),
        handshake_timeout_s: float = 5.0,
    ) -> None:
        if not turns:
            raise ValueError("turns must not be empty")
        if chunk_bytes <= 0 or pace_s < 0 or settings_delay_s < 0:
            raise ValueError(f"bad pacing: chunk_bytes={chunk_bytes!r} pace_s={pace_s!r}")
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {idle_timeout_s!r}")
        if not api_key:
            raise ValueError("api_key must not be empty")
        super().__init__(host=host, port=port, handshake_timeout_s=handshake_timeout_s)
        self.script = script
        self.turns = tuple(turns)
        self._api_key = api_key
        self.reject_status = reject_status
        self.send_welcome = send_welcome
        self.settings_delay_s = settings_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.chunk_bytes = chunk_bytes
        self.pace_s = pace_s
        self.threshold_dbfs = threshold_dbfs
        self.silence_ms = silence_ms
        self.latencies_s = latencies_s

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"DeepgramAgentServer(sessions={len(self.sessions)}, api_key=<redacted>)"

    @property
    def url(self) -> str:
        """The agent URL, with the service's path: ``ws://127.0.0.1:PORT/v1/agent/converse``."""
        return self.url_for("/v1/agent/converse")

    def turn(self, index: int) -> Turn:
        """The scripted turn ``index`` (0-based); past the end, the last one again."""
        return self.turns[min(index, len(self.turns) - 1)]

    async def handle(self, index: int, request: trio_websocket.WebSocketRequest | None) -> None:
        if request is None:
            self.failed_handshakes += 1
            return
        session = DeepgramSession(len(self.sessions), request.path)
        self.add_session(session)
        try:
            await self._serve_session(request, session)
        except Exception as exc:
            session.errors.append(repr(exc))
            raise
        finally:
            session.closed.set()
            session._notify()

    async def _serve_session(
        self, request: trio_websocket.WebSocketRequest, session: DeepgramSession
    ) -> None:
        status = self.reject_status
        if status is None and header(request, "authorization") != f"Token {self._api_key}":
            status = 401
        if status is not None:
            session.rejected_status = status
            session._record_close(None, f"rejected with HTTP {status}", "agent")
            await request.reject(status)
            return
        try:
            ws = await request.accept()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            session._record_close(reason.code if reason else None, reason.reason if reason else None, "peer")
            return
        log.debug("deepgram session %d connected path=%s", session.index, session.path)
        await session._run(ws, self)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.aclose()

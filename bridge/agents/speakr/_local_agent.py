"""The built-in local agent: a Speakr-protocol echo agent with real turn-taking (``SPEAKR_WS_URL`` unset).

Theory of operation
-------------------
:class:`LocalAgentServer` is a :class:`~bridge._loopback.LoopbackWebSocketServer`, so each connection runs
inside a containment boundary: whatever one connection does (garbage HTTP, a TCP reset, an error of ours) is
logged and counted, and the server and its other sessions go on.

Each connection is one session, two tasks in one nursery, sharing the session's state (one Trio thread: no
locks):

- the *listener* receives. ``start`` -> ``ready`` and the greeting becomes the current *answer*; ``status``
  confirms a sent piece; caller audio goes to the :class:`~bridge._vad.TurnDetector` (time = samples received,
  so the decisions do not depend on how fast the audio arrives), whose decisions it acts on at once: barge-in
  -> ``pause``, back-channel -> ``continue``, interruption -> ``clear`` (the answer is dropped), utterance ->
  it is upsampled to 24 kHz and becomes the next answer.
- the *speaker* sends the current answer as ``media`` messages of irregular sizes (:data:`MEDIA_SIZES`, odd
  ones included), each with the start's ``sessionId`` and the next integer ``sequence_id``, paced on the wall
  clock at ``speech_pace`` times real time (``None``: as fast as the socket takes them), so the bridge really
  buffers ahead of playback. It sends nothing while paused.

The agent is *speaking* while it has an answer: until every piece of it was sent and confirmed by a
``status``, or it was cleared. A bridge that stops confirming cannot keep it speaking for ever: once
everything is sent, it waits at most the unconfirmed audio's duration + :data:`STATUS_GRACE_S` after the last
status, then takes it as played.

Bounds: an utterance is at most 15 s (the detector cuts it), at most one answer waits behind the current one
(the newest wins), messages over :data:`MAX_MESSAGE_BYTES` close the socket (1009), sent pieces are remembered
only until confirmed, and only the last :data:`RECENT_SESSIONS` sessions' summaries are kept. A malformed
message is logged and counted, never fatal; a bad ``start`` gets an ``info`` and the defaults. The agent never
ends a call on its own unless ``max_turns`` is set.
"""

from __future__ import annotations

import functools
import io
import logging
import uuid
import wave
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from itertools import cycle
from typing import Any, Final

import orjson
import trio
import trio_websocket

import codec
from bridge._errors import SpeakrProtocolError, short_repr
from bridge._loopback import CLOSE_TIMEOUT_S, LoopbackWebSocketServer
from bridge._vad import (
    SAMPLE_RATE,
    BackChannel,
    BargeIn,
    Interruption,
    SpeechStart,
    TurnDetector,
    Utterance,
    VadSettings,
)
from bridge.agents.speakr import _wire as _speakr

__all__ = [
    "DEFAULT_AGENT_PORT",
    "DEFAULT_SPEECH_PACE",
    "MEDIA_SIZES",
    "LocalAgentServer",
    "SessionStats",
    "greeting_pcm",
    "run_agent",
]

log = logging.getLogger("bridge.agent")

#: Port of ``speakr-bridge agent`` when none is given.
DEFAULT_AGENT_PORT: Final = 8765
#: Agent speech goes out at twice real time, so the bridge holds a second of it for every two sent.
DEFAULT_SPEECH_PACE: Final = 2.0
#: Agent speech is 24 kHz PCM16LE mono.
OUT_RATE: Final = 24000
#: Sizes of successive ``media`` messages, in bytes, cycled: irregular and partly odd (a sample straddles two
#: messages), as Speakr's are. 4801 bytes = 100 ms.
MEDIA_SIZES: Final = (4801, 2400, 7203, 961)
#: The bridge sends 512-byte frames and short JSON; anything much bigger is not a client of ours.
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: A connection must finish its WebSocket upgrade within this, and send ``start`` within START_TIMEOUT_S.
#: (trio-websocket 0.12 never gives up by itself on a request that is not HTTP: only this timeout ends it.)
HANDSHAKE_TIMEOUT_S: Final = 5.0
START_TIMEOUT_S: Final = 30.0
#: After ``end`` the bridge closes; if it does not within this, the agent does.
END_CLOSE_TIMEOUT_S: Final = 10.0
#: Once everything is sent: wait for statuses at most the unconfirmed audio's duration plus this.
STATUS_GRACE_S: Final = 3.0
#: Summaries of finished sessions kept for tests and the demo.
RECENT_SESSIONS: Final = 100
#: Protocol errors logged at WARNING per session; later ones at DEBUG (a broken client must not flood logs).
_WARN_ERRORS: Final = 5
_MAX_SESSION_ID_CHARS: Final = 128
_BYTES_PER_S: Final = 2 * OUT_RATE


@functools.cache
def greeting_pcm() -> bytes:
    """The bundled greeting (``bridge/data/agent_greeting.wav``) as PCM16LE 24 kHz mono.

    Raises:
        ValueError: the bundled file is not 24 kHz mono 16-bit (a packaging error).
    """
    data = resources.files("bridge").joinpath("data/agent_greeting.wav").read_bytes()
    with wave.open(io.BytesIO(data)) as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (OUT_RATE, 1, 2):
            raise ValueError(f"agent_greeting.wav must be 24 kHz mono 16-bit, got {shape!r}")
        frames: bytes = wav.readframes(wav.getnframes())
        return frames


@dataclass(slots=True)
class SessionStats:
    """What one session did; live while it runs, then kept in :attr:`LocalAgentServer.recent_sessions`.

    Attributes:
        index: 0-based order of the connection on its server.
        session_id: the start's ``sessionId`` (``None`` before ``start``).
        settings: the turn-taking settings in use (from ``start``, defaults where it was bad).
        turns: caller utterances answered; pauses, continues, clears: control messages sent.
        media_sent, audio_bytes_sent: ``media`` messages and their PCM bytes; messages_sent: every message.
        statuses: statuses that confirmed a piece; stale_statuses: for pieces unknown or already cleared;
            foreign_statuses: with another ``session_id``.
        frames_received, audio_bytes_received: caller audio; frames_before_start: audio before ``start``,
            ignored.
        truncated_utterances: utterances cut at the maximum length.
        protocol_errors: malformed messages by error kind.
        bad_start: the start was unusable or had bad values (the defaults were used).
        ended_by_agent: the agent sent ``end``; close_reason: how the connection ended.
    """

    index: int
    connected_s: float
    session_id: Any = None
    settings: VadSettings = field(default_factory=VadSettings)
    turns: int = 0
    pauses: int = 0
    continues: int = 0
    clears: int = 0
    media_sent: int = 0
    audio_bytes_sent: int = 0
    messages_sent: int = 0
    statuses: int = 0
    stale_statuses: int = 0
    foreign_statuses: int = 0
    frames_received: int = 0
    audio_bytes_received: int = 0
    frames_before_start: int = 0
    truncated_utterances: int = 0
    protocol_errors: dict[str, int] = field(default_factory=dict)
    bad_start: bool = False
    ended_by_agent: bool = False
    close_reason: str = ""
    closed_s: float | None = None

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self.closed_s is not None


class _Answer:
    """One thing the agent says: 24 kHz PCM, how much of it was sent, which pieces await a status."""

    __slots__ = ("clock_s", "kind", "offset", "outstanding", "pcm", "progress_s", "unconfirmed_bytes")

    def __init__(self, pcm: bytes, kind: str) -> None:
        self.pcm = pcm
        self.kind = kind  # "greeting" or "echo", for logs
        self.offset = 0
        self.outstanding: dict[int, int] = {}  # sequence_id -> bytes, sent and not yet confirmed
        self.unconfirmed_bytes = 0
        self.clock_s: float | None = None  # wall time at which offset 0 would have been sent at the pace
        self.progress_s = 0.0  # wall time of the last piece sent, status or continue

    @property
    def unsent(self) -> int:
        return len(self.pcm) - self.offset

    @property
    def done(self) -> bool:
        return self.unsent == 0 and not self.outstanding


class _Session:
    """One connection: the listener and the speaker of the module's theory of operation."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, stats: SessionStats, server: LocalAgentServer
    ) -> None:
        self._ws = ws
        self.stats = stats
        self._pace = server.speech_pace
        self._max_turns = server.max_turns
        self._greet = server.greeting
        self._status_grace_s = server.status_grace_s
        self.label = f"conn-{stats.index}"
        self._detector: TurnDetector | None = None
        self._answer: _Answer | None = None
        self._next_answer: _Answer | None = None
        self._paused = False
        self._ending = False
        self._next_sequence = 1
        self._sizes = cycle(MEDIA_SIZES)
        self._started = trio.Event()
        self._closed = trio.Event()
        self._wake = trio.Event()  # set on anything the speaker waits for; replaced once seen

    # -------------------------------------------------------------------------------------------- plumbing

    def _notify(self) -> None:
        self._wake.set()

    async def _wait(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    async def _send(self, text: str) -> None:
        await self._ws.send_message(text)
        self.stats.messages_sent += 1

    async def run(self) -> None:
        """Runs the session until the socket closes (or the agent ends it)."""
        try:
            await self._send(_speakr.initial_message())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen, nursery.cancel_scope)
                nursery.start_soon(self._speak, nursery.cancel_scope)
        except trio_websocket.ConnectionClosed as exc:  # sending initial
            self._record_close(exc)

    def _record_close(self, exc: trio_websocket.ConnectionClosed) -> None:
        if not self.stats.close_reason:
            reason = exc.reason
            self.stats.close_reason = f"{reason.code} {reason.reason or ''}".rstrip() if reason else "closed"
        self._closed.set()

    # -------------------------------------------------------------------------------------------- listener

    async def _listen(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await self._ws.get_message()
                await self._on_message(data)
        except trio_websocket.ConnectionClosed as exc:
            self._record_close(exc)
            log.info("agent %s: connection closed (%s)", self.label, self.stats.close_reason)
        finally:
            self._closed.set()
            if not self._ending:
                scope.cancel()

    async def _on_message(self, data: str | bytes) -> None:
        try:
            message = _speakr.parse_client_message(data)
        except SpeakrProtocolError as exc:
            await self._on_bad_message(data, exc)
            return
        if isinstance(message, _speakr.AudioFrame):
            await self._on_audio(message.pcm)
        elif isinstance(message, _speakr.Status):
            self._on_status(message)
        elif self.stats.session_id is None:
            await self._on_start(message.params)
        else:
            log.warning("agent %s: second start ignored", self.label)
            self._count_error("second_start")

    def _count_error(self, kind: str) -> None:
        errors = self.stats.protocol_errors
        errors[kind] = errors.get(kind, 0) + 1

    async def _on_bad_message(self, data: str | bytes, exc: SpeakrProtocolError) -> None:
        self._count_error(exc.kind)
        level = logging.WARNING if sum(self.stats.protocol_errors.values()) <= _WARN_ERRORS else logging.DEBUG
        log.log(level, "agent %s: ignored a bad message: %s", self.label, exc)
        if self.stats.session_id is None and _is_start_frame(data):
            await self._on_start({}, unusable=f"start message unusable ({exc.kind}); using the defaults")

    async def _on_start(self, params: dict[str, Any], unusable: str | None = None) -> None:
        problems = [] if unusable is None else [unusable]
        values: dict[str, Any] = {}
        for wire in ("threshold", "silenceDuration", "prefixPadding"):
            if wire in params:
                try:
                    values[wire] = _speakr.validate_field(wire, params[wire])
                except ValueError as exc:
                    problems.append(f"{exc}; using the default")
        session_id = params.get("sessionId")
        if type(session_id) is not str or not session_id or len(session_id) > _MAX_SESSION_ID_CHARS:
            if unusable is None:
                problems.append(f"sessionId must be a non-empty string, got {short_repr(session_id)}")
            session_id = f"local-{uuid.uuid4()}"
        defaults = VadSettings()
        settings = VadSettings(
            threshold=values.get("threshold", defaults.threshold),
            silence_ms=values.get("silenceDuration", defaults.silence_ms),
            prefix_padding_s=values.get("prefixPadding", defaults.prefix_padding_s),
        )
        self.stats.session_id = session_id
        self.stats.settings = settings
        self.label = session_id
        self._detector = TurnDetector(settings)
        self._started.set()
        log.info(
            "agent %s: start (threshold=%s silenceDuration=%s prefixPadding=%s)",
            session_id, settings.threshold, settings.silence_ms, settings.prefix_padding_s,
        )
        if problems:
            self.stats.bad_start = True
            for problem in problems:
                log.warning("agent %s: bad start: %s", session_id, problem)
            await self._send(_speakr.info_message({"code": "bad_start", "message": "; ".join(problems)}))
        await self._send(_speakr.ready_message())
        if self._greet:
            self._set_answer(_Answer(greeting_pcm(), "greeting"))

    def _on_status(self, status: _speakr.Status) -> None:
        if self.stats.session_id is None or status.session_id != self.stats.session_id:
            self.stats.foreign_statuses += 1
            log.debug("agent %s: status for another session %s", self.label, short_repr(status.session_id))
            return
        sequence = status.sequence_id
        if type(sequence) is str and sequence.isdecimal() and len(sequence) < 20:
            sequence = int(sequence)  # liberal: a bridge may have turned our ints into strings
        answer = self._answer
        size = None
        if answer is not None and type(sequence) is int:
            size = answer.outstanding.pop(sequence, None)
        if answer is None or size is None:
            self.stats.stale_statuses += 1
            log.debug("agent %s: status for unknown or cleared piece %s", self.label, short_repr(sequence))
            return
        answer.unconfirmed_bytes -= size
        answer.progress_s = trio.current_time()
        self.stats.statuses += 1
        self._notify()

    async def _on_audio(self, pcm: bytes) -> None:
        self.stats.frames_received += 1
        self.stats.audio_bytes_received += len(pcm)
        detector = self._detector
        if detector is None:
            self.stats.frames_before_start += 1
            return
        if self._ending:
            return
        for event in detector.feed(pcm, agent_speaking=self._answer is not None):
            if isinstance(event, BargeIn):
                self._paused = True
                self.stats.pauses += 1
                log.info("agent %s: caller speaks over the agent at %.2f s: pause", self.label, event.onset_s)
                await self._send(_speakr.pause_message())
            elif isinstance(event, BackChannel):
                self._paused = False
                self.stats.continues += 1
                log.info("agent %s: back-channel of %.2f s: continue", self.label, event.speech_s)
                if self._answer is not None:
                    self._answer.clock_s = None  # the pace restarts from now
                    self._answer.progress_s = trio.current_time()  # the bridge replays what was cut off
                await self._send(_speakr.continue_message())
                self._notify()
            elif isinstance(event, Interruption):
                self._paused = False
                self.stats.clears += 1
                dropped = self._answer.unsent if self._answer is not None else 0
                self._answer = self._next_answer = None
                log.info("agent %s: interrupted at %.2f s: clear (%d bytes unsent)", self.label, event.time_s,
                         dropped)
                await self._send(_speakr.clear_message())
                self._notify()
                await self._maybe_end()
            elif isinstance(event, SpeechStart):
                log.debug("agent %s: caller speaks at %.2f s", self.label, event.onset_s)
            elif isinstance(event, Utterance):
                await self._on_utterance(event)

    async def _on_utterance(self, utterance: Utterance) -> None:
        self.stats.turns += 1
        if utterance.truncated:
            self.stats.truncated_utterances += 1
        log.info(
            "agent %s: turn %d: heard %.2f s (%.2f..%.2f s%s); echoing it",
            self.label, self.stats.turns, utterance.end_s - utterance.start_s, utterance.start_s,
            utterance.end_s, ", cut at the maximum" if utterance.truncated else "",
        )
        resampler = codec.Resampler(SAMPLE_RATE, OUT_RATE)
        pcm = resampler.process(utterance.pcm) + resampler.flush()
        if pcm:
            self._set_answer(_Answer(pcm, "echo"))
        else:
            await self._maybe_end()

    def _set_answer(self, answer: _Answer) -> None:
        if self._answer is None:
            self._answer = answer
        else:
            if self._next_answer is not None:
                log.info("agent %s: dropped a waiting %s for a newer one", self.label, self._next_answer.kind)
            self._next_answer = answer
        self._notify()

    # -------------------------------------------------------------------------------------------- speaker

    async def _speak(self, scope: trio.CancelScope) -> None:
        try:
            with trio.move_on_after(START_TIMEOUT_S):
                await self._started.wait()
            if not self._started.is_set():
                log.warning("agent %s: no start within %.0f s; closing", self.label, START_TIMEOUT_S)
                self.stats.close_reason = "no start"
                await self._send(_speakr.info_message({"code": "no_start", "message": "no start message"}))
                await self._close(1008, "no start")
                return
            while not self._ending:
                await self._speak_step()
            with trio.move_on_after(END_CLOSE_TIMEOUT_S):
                await self._closed.wait()
            await self._close(1000, "agent ended the call")
        except trio_websocket.ConnectionClosed as exc:
            self._record_close(exc)
        finally:
            scope.cancel()

    async def _close(self, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._ws.aclose(code, reason)
        if not self.stats.close_reason:
            self.stats.close_reason = f"{code} {reason}"
        self._closed.set()

    async def _speak_step(self) -> None:
        """Sends one piece of the current answer when it may, or waits for something to change."""
        answer = self._answer
        if answer is None or self._paused:
            await self._wait()
            return
        if answer.done:
            self._finish_answer(answer)
            await self._maybe_end()
            return
        if answer.unsent == 0:  # all sent: wait for statuses, bounded
            timeout = answer.unconfirmed_bytes / _BYTES_PER_S + self._status_grace_s
            deadline = answer.progress_s + timeout
            with trio.move_on_at(deadline):
                await self._wait()
            if trio.current_time() >= deadline and self._answer is answer and not self._paused:
                log.warning(
                    "agent %s: %d pieces not confirmed within %.1f s; taking them as played",
                    self.label, len(answer.outstanding), timeout,
                )
                answer.outstanding.clear()
                answer.unconfirmed_bytes = 0
            return
        if self._pace is not None:
            now = trio.current_time()
            if answer.clock_s is None:
                answer.clock_s = now - answer.offset / _BYTES_PER_S / self._pace
            due = answer.clock_s + answer.offset / _BYTES_PER_S / self._pace
            if due > now:
                await trio.sleep_until(due)
                return  # paused, cleared or replaced meanwhile? look again
        await self._send_piece(answer)

    async def _send_piece(self, answer: _Answer) -> None:
        piece = answer.pcm[answer.offset : answer.offset + next(self._sizes)]
        sequence = self._next_sequence
        self._next_sequence += 1
        answer.offset += len(piece)
        answer.outstanding[sequence] = len(piece)
        answer.unconfirmed_bytes += len(piece)
        answer.progress_s = trio.current_time()
        self.stats.media_sent += 1
        self.stats.audio_bytes_sent += len(piece)
        await self._send(_speakr.media_message(self.stats.session_id, sequence, piece))

    def _finish_answer(self, answer: _Answer) -> None:
        log.info("agent %s: %s played (%.2f s)", self.label, answer.kind, len(answer.pcm) / _BYTES_PER_S)
        self._answer = self._next_answer
        self._next_answer = None

    async def _maybe_end(self) -> None:
        """With ``max_turns``: after that many turns, once the agent is silent, say ``end``."""
        if (
            self._max_turns is None
            or self._ending
            or self.stats.turns < self._max_turns
            or self._answer is not None
        ):
            return
        self._ending = True
        self.stats.ended_by_agent = True
        log.info("agent %s: %d turns done: end", self.label, self.stats.turns)
        await self._send(_speakr.end_message())
        self._notify()


def _is_start_frame(data: str | bytes) -> bool:
    """Whether an unparseable text frame was meant as ``start`` (then it gets the defaults, not silence)."""
    if not isinstance(data, str):
        return False
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return type(frame) is dict and (frame.get("type") or frame.get("event")) == "start"


class LocalAgentServer(LoopbackWebSocketServer):
    """The built-in echo agent: a Speakr-protocol WebSocket server that says back what the caller said.

    Used when ``SPEAKR_WS_URL`` is unset (``serve``, ``demo``) and by ``speakr-bridge agent``. It greets the
    caller, waits for the end of each caller turn (``silenceDuration``), then plays the turn back (with
    ``prefixPadding``) at 24 kHz; it pauses, continues or clears as the caller speaks over it.

    Args:
        host, port: where to listen; port 0 picks a free one (see :attr:`url`).
        speech_pace: how many times faster than real time agent speech is sent; ``None``: as fast as possible.
        max_turns: after this many caller turns (and the agent's answer), send ``end``; ``None``: never.
        greeting: speak the bundled greeting after ``ready``.
        status_grace_s: once an answer is all sent, how long past its unconfirmed audio's duration to wait for
            the statuses before taking it as played.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speech_pace: float | None = DEFAULT_SPEECH_PACE,
        max_turns: int | None = None,
        greeting: bool = True,
        status_grace_s: float = STATUS_GRACE_S,
    ) -> None:
        if speech_pace is not None and not speech_pace > 0:
            raise ValueError(f"speech_pace must be > 0 or None, got {speech_pace!r}")
        if max_turns is not None and (type(max_turns) is not int or max_turns < 1):
            raise ValueError(f"max_turns must be a positive int or None, got {max_turns!r}")
        if not 0 <= status_grace_s <= 600:
            raise ValueError(f"status_grace_s must be between 0 and 600, got {status_grace_s!r}")
        super().__init__(
            host=host, port=port, max_message_size=MAX_MESSAGE_BYTES, handshake_timeout_s=HANDSHAKE_TIMEOUT_S
        )
        self.speech_pace = speech_pace
        self.max_turns = max_turns
        self.greeting = greeting
        self.status_grace_s = status_grace_s
        self.active_sessions: dict[int, SessionStats] = {}
        self.recent_sessions: deque[SessionStats] = deque(maxlen=RECENT_SESSIONS)
        self._ended = 0
        self._session_ended = trio.Event()

    @property
    def url(self) -> str:
        """The agent's WebSocket URL, e.g. ``ws://127.0.0.1:PORT/``."""
        return self.url_for("/")

    async def serve(
        self, *, task_status: trio.TaskStatus[LocalAgentServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serves until cancelled. ``await nursery.start(agent.serve)`` returns once it is listening."""
        greeting_pcm()  # a packaging error shows now, not in the first call
        await super().serve(task_status=task_status)

    async def wait_sessions_ended(self, count: int = 1) -> SessionStats:
        """Waits until ``count`` sessions in all have ended; returns the latest one to end."""
        while self._ended < count:
            await self._session_ended.wait()
        return self.recent_sessions[-1]

    async def handle(self, index: int, request: trio_websocket.WebSocketRequest | None) -> None:
        """One connection (contained by the base class: nothing it does can end the server)."""
        stats = SessionStats(index=index, connected_s=trio.current_time())
        self.active_sessions[index] = stats
        try:
            ws = None
            if request is not None:
                with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                    ws = await request.accept()
            if ws is None:
                stats.close_reason = "no handshake"
            else:
                await _Session(ws, stats, self).run()
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await ws.aclose()
        except trio_websocket.ConnectionClosed as exc:  # during the upgrade
            stats.close_reason = stats.close_reason or f"closed during handshake ({exc.reason})"
        except Exception as exc:
            stats.close_reason = stats.close_reason or f"error: {type(exc).__name__}"
            raise
        finally:
            stats.closed_s = trio.current_time()
            del self.active_sessions[index]
            self.recent_sessions.append(stats)
            self._ended += 1
            self._session_ended.set()
            self._session_ended = trio.Event()

    def contained(self, exc: Exception) -> None:
        super().contained(exc)
        log.warning("agent: session failed, contained: %r", exc, exc_info=exc)


async def run_agent(
    host: str = "127.0.0.1",
    port: int = DEFAULT_AGENT_PORT,
    *,
    speech_pace: float | None = DEFAULT_SPEECH_PACE,
    max_turns: int | None = None,
    task_status: trio.TaskStatus[LocalAgentServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs the local echo agent alone until cancelled (``speakr-bridge agent``); prints its URL.

    Point a bridge at it with ``SPEAKR_WS_URL=<url>``.
    """
    server = LocalAgentServer(host=host, port=port, speech_pace=speech_pace, max_turns=max_turns)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        print(f"speakr-bridge local echo agent listening on {server.url}", flush=True)
        task_status.started(server)

"""The cascade agent leg: our VAD takes turns, then speech-to-text → streamed chat → speech per sentence.

Theory of operation
-------------------
There is no agent socket. :meth:`CascadeLeg.wait_sendable` makes the call ready at once; the caller's audio
(PCM16 8 kHz, 20 ms frames) comes to :meth:`CascadeLeg.send`, which feeds our
:class:`~bridge._vad.TurnDetector` and acts on its decisions *in the sender's own task*, so an interruption
reaches Twilio within the frame that decided it:

* onset while the agent talks (or thinks) → ``pause`` (Twilio ``clear``, unplayed audio kept aside);
  a back-channel (speech that stops before :data:`~bridge._vad.BARGE_IN_MS`) → ``continue`` (the ledger
  replays from the piece that was cut, ≤ 100 ms repeated); a real interruption → ``clear``: the answer's
  task is cancelled (its chat and speech requests with it), and the history keeps only what the caller
  heard (:meth:`~bridge.agents.cascade._history.Conversation.add_interrupted`, from the ledger's per-segment
  heard milliseconds);
* a likely end of turn (a shorter pause, :class:`~bridge._vad.LikelyEnd`) starts the answer early, *held*:
  it transcribes, asks the model and synthesises, but plays nothing; the caller going on
  (:class:`~bridge._vad.Resumed`) throws it away, the final end of turn releases it (counted both ways in
  ``bridge_cascade_early_starts_total``; the head start is kept per turn);
* the end of turn (:class:`~bridge._vad.Utterance`) → ``call.caller_stopped()`` (turn latency) and the answer.

:meth:`CascadeLeg.run` is the turn engine: one nursery holding the call's HTTP client, the timers and one
task per answer (:class:`_Turn`). An answer pipelines: the utterance goes to transcription as a WAV, the
transcript and the history to a streamed chat completion, each sentence (:class:`SentenceSplitter`) into a
channel read by the speaker, which streams its speech (PCM 24 kHz) through one
:class:`codec.DownlinkEncoder` per answer into the call, one ledger segment per sentence keyed
``(turn, index)``. So the first sentence plays while the model writes the next. The answer stays "speaking"
until its last segment is reported played (the leg asks for :class:`~bridge._ledger.SegmentPlayed`).

First words: the call's ``greeting`` parameter, else the model's. Goal (``goal`` parameter): added to the
system message; the model has ``end_call(achieved, summary)``, whose arguments go to the call's record
(``call.outcome``) before the call ends after its audio. Silence: after ``idle_checkin_s`` of quiet (no
caller speech, the agent silent) a check-in, after ``idle_hangup_s`` more a goodbye and ``idle_timeout``;
``max_call_s`` ends with a goodbye too (``max_duration``). Each is a per-call parameter over ``CASCADE_*``.

Failures: every :class:`CascadeError` is counted (``bridge_cascade_errors_total{stage,kind}``); a transient
one (connection, 429, 5xx, a broken stream) is retried once when nothing was said yet; otherwise the caller
hears a short apology, spoken by the TTS, or a pre-rendered two-tone chime when the TTS itself fails. An
empty transcript asks the caller to repeat. Never silence.

Per-call timings (per turn, by stage) are kept in :data:`RECENT_CALLS` for tests, the demo and benchmarks.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Hashable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np
import trio

import codec
from bridge._errors import CallEnded
from bridge._ledger import Interrupted, SegmentPlayed
from bridge._legs import AgentLeg, CallPort, Capabilities, Digit, UplinkItem, parameter
from bridge._vad import (
    SAMPLE_RATE,
    BackChannel,
    BargeIn,
    Interruption,
    LikelyEnd,
    Resumed,
    SpeechStart,
    TurnDetector,
    TurnEvent,
    TurnState,
    Utterance,
    VadSettings,
)
from bridge.agents.cascade._audio import encode_wav
from bridge.agents.cascade._chat import TextDelta, ToolCall
from bridge.agents.cascade._client import CascadeClient
from bridge.agents.cascade._errors import CascadeError
from bridge.agents.cascade._history import Conversation, SpokenSentence
from bridge.agents.cascade._sentences import SentenceSplitter
from bridge.agents.cascade._settings import CascadeSettings
from bridge.agents.speakr._wire import validate_field

if TYPE_CHECKING:
    from bridge._call import CallSettings

__all__ = [
    "APOLOGY",
    "CHECKIN",
    "END_CALL_TOOL",
    "RECENT_CALLS",
    "CascadeCallStats",
    "CascadeLeg",
    "TurnStats",
]

log = logging.getLogger("bridge.cascade")

CHECKIN: Final = "Are you still there?"
IDLE_GOODBYE: Final = "I haven't heard from you, so I'll hang up now. Goodbye!"
MAX_CALL_GOODBYE: Final = "We've reached the time limit for this call. Thank you, and goodbye!"
APOLOGY: Final = "Sorry, I'm having trouble on my end. Could you say that again?"
NOT_HEARD: Final = "Sorry, I didn't catch that. Could you say it again?"
END_CALL_GOODBYE: Final = "Goodbye!"
#: The likely end of turn: this much quiet inside the caller's turn (at most half the end-of-turn silence).
EARLY_SILENCE_MS: Final = 400
#: Bounds on the model's answer.
MAX_TOKENS: Final = 300
#: Transient failures, retried once when the caller has heard nothing of the answer yet.
RETRIED: Final = frozenset({"connect", "rate_limited", "http_5xx", "incomplete", "malformed"})
#: Calls whose per-turn timings are kept (:data:`RECENT_CALLS`).
RECENT_CALL_STATS: Final = 50
#: Extra wait, over the audio's own length, for the last segment of an answer to be reported played.
PLAYOUT_GRACE_S: Final = 2.0

END_CALL_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": (
            "Hang up. Call it once the conversation is over: the goal is met, refused or cannot be met, or "
            "the caller said goodbye. Say goodbye in your text first."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "achieved": {"type": "boolean", "description": "whether the call's goal was achieved"},
                "summary": {"type": "string", "description": "one line: what happened on the call"},
            },
            "required": ["achieved", "summary"],
        },
    },
}




def _chime() -> bytes:
    """The apology when the TTS itself fails: two falling tones (μ-law 8 kHz, 0.5 s), rendered once."""
    rate = SAMPLE_RATE
    pieces = []
    for freq in (660.0, 440.0):
        t = np.arange(rate * 200 // 1000) / rate
        ramp = np.minimum(1.0, np.minimum(np.arange(len(t)), len(t) - np.arange(len(t))) / 80)
        pieces += [(6000 * ramp * np.sin(2 * math.pi * freq * t)).astype("<i2"), np.zeros(rate // 20, "<i2")]
    return codec.ulaw_encode(np.concatenate(pieces).tobytes())


CHIME: Final = _chime()


@dataclass(slots=True)
class TurnStats:
    """One answer's story, times in ms from the end of the caller's turn (our VAD's final decision).

    ``kind``: ``reply`` (to an utterance), ``text`` (a key press), ``say`` (fixed words: greeting,
    check-in, goodbye), ``opening`` (the model's first words). Stage times: ``stt_ms`` the transcription's
    own time; ``llm_first_token_ms`` and ``llm_first_sentence_ms`` from the chat request;
    ``tts_first_byte_ms`` from the first sentence's speech request; ``first_audio_ms`` from the end of turn
    to the first audio sent to Twilio. ``early_ms``: how long before the end of turn the answer started.
    """

    index: int
    kind: str
    user_text: str = ""
    agent_text: str = ""
    heard_text: str | None = None  # set when interrupted
    interrupted: bool = False
    discarded: bool = False  # an early start the caller's going on threw away
    early_ms: float | None = None
    stt_ms: float | None = None
    llm_first_token_ms: float | None = None
    llm_first_sentence_ms: float | None = None
    tts_first_byte_ms: float | None = None
    first_audio_ms: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CascadeCallStats:
    """What one cascade call did (kept in :data:`RECENT_CALLS`)."""

    call_sid: str | None
    turns: list[TurnStats] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    early_used: int = 0
    early_discarded: int = 0
    checkins: int = 0
    end_reason: str | None = None
    outcome: tuple[bool, str] | None = None
    #: The last few chat requests' messages (what the model was given).
    requests: deque[list[dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=8), repr=False)


#: The last few calls' stats, newest last.
RECENT_CALLS: deque[CascadeCallStats] = deque(maxlen=RECENT_CALL_STATS)


@dataclass(slots=True)
class _Sentence:
    key: Hashable
    text: str
    ulaw_bytes: int = 0
    spoken: bool = True  # False: the chime stood in for it
    played: bool = False


class _Turn:
    """One answer: its cancel scope, its sentences (ledger segments) and its timings."""

    def __init__(self, number: int, kind: str, *, pcm: bytes = b"", text: str = "", held: bool = False,
                 then_end: str | None = None) -> None:
        self.number = number
        self.kind = kind
        self.pcm = pcm
        self.text = text  # a ``say`` turn's words, or a ``text`` turn's user message
        self.scope = trio.CancelScope()
        self.go = trio.Event()
        if not held:
            self.go.set()
        self.then_end = then_end
        self.sentences: list[_Sentence] = []
        self.all_sent = False
        self.played = trio.Event()
        self.user_text = ""
        self.tool: ToolCall | None = None
        self.committed = False
        self.started_at = trio.current_time()
        self.end_of_turn: float | None = None if held else (self.started_at if kind == "reply" else None)
        self.stats = TurnStats(number, kind)

    def ms(self, at: float) -> float:
        origin = self.end_of_turn if self.end_of_turn is not None else self.started_at
        return round((at - origin) * 1000, 1)

    def check_played(self) -> None:
        if self.all_sent and all(s.played or not s.ulaw_bytes for s in self.sentences):
            self.played.set()

    def unplayed_ms(self) -> float:
        return sum(s.ulaw_bytes for s in self.sentences if not s.played) / 8


def _seconds(params: dict[str, str], name: str, default: float, call: CallPort) -> float:
    raw = parameter(params, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or not 0 <= value <= 7 * 86400:
        call.log.warning("custom parameter ignored: %s must be a number of seconds >= 0", name)
        return default
    return value


class CascadeLeg(AgentLeg):
    """Speech-to-text → LLM → text-to-speech over OpenAI-compatible HTTP (see the module docstring)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        name="cascade", uplink_pcm=True, uplink_frame_bytes=320, reports_played=True,
        takes_text=True,
    )

    def __init__(self, call: CallPort, settings: CallSettings) -> None:
        super().__init__(call)
        config = call.config
        self.settings: CascadeSettings = config.cascade
        params = dict(call.parameters)
        self.params = params
        self.vad = TurnDetector(self._vad_settings(params))
        self.idle_checkin_s = _seconds(params, "idle_checkin_s", self.settings.idle_checkin_s, call)
        self.idle_hangup_s = _seconds(params, "idle_hangup_s", self.settings.idle_hangup_s, call)
        self.max_call_s = _seconds(params, "max_call_s", self.settings.max_call_s, call)
        self.temperature = self._number(params, "temperature", config.temperature)
        self.conversation = Conversation(self._system_message(params))
        self.client: CascadeClient | None = None
        self.stats = CascadeCallStats(call.start.call_sid if call.start is not None else None)
        RECENT_CALLS.append(self.stats)
        self.turn: _Turn | None = None  # the answer the caller hears (or waits for)
        self.early: _Turn | None = None  # an answer started on a likely end of turn, held
        self.pending_user = ""  # caller words whose answer was dropped before any of it was heard
        self._turns = 0
        self._nursery: trio.Nursery | None = None
        self._running = trio.Event()
        self._done = trio.Event()
        self._end_reason: str | None = None
        self._finish = False  # the end is ours: play out and hang up (else the call is already ending)
        self._closed = False
        self._changed = trio.Event()  # something the idle timer cares about happened
        self._quiet_since = trio.current_time()
        self._idle_stage = 0  # 0: waiting to check in; 1: checked in, waiting to hang up
        call.name_session(f"cascade-{id(self):x}")

    # --- set-up -----------------------------------------------------------------------------------

    def _number(self, params: dict[str, str], name: str, default: float) -> float:
        raw = parameter(params, name)
        if raw is None:
            return default
        try:
            return float(validate_field(name, raw))
        except ValueError as exc:
            self.call.log.warning("custom parameter ignored: %s", exc)
            return default

    def _vad_settings(self, params: dict[str, str]) -> VadSettings:
        config = self.call.config
        silence = int(self._number(params, "silenceDuration", config.silence_duration_ms))
        threshold = self._number(params, "threshold", config.threshold)
        prefix = self._number(params, "prefixPadding", config.prefix_padding)
        early = min(EARLY_SILENCE_MS, silence // 2)
        use_early = self.settings.llm_early_start and early >= 100
        return VadSettings(threshold=threshold, silence_ms=silence, prefix_padding_s=prefix,
                           early_silence_ms=early if use_early else None)

    def _system_message(self, params: dict[str, str]) -> str:
        prompt = parameter(params, "system_prompt") or self.call.config.system_prompt
        text = (
            f"{prompt}\n\nYou are speaking on a phone call: answer in a few short spoken sentences, "
            "without lists, markdown or emoji."
        )
        goal = parameter(params, "goal")
        if goal is not None:
            text += (
                f"\n\nYour goal on this call: {goal.strip()}\nWhen the goal is met, refused or cannot be "
                "met, say goodbye and call end_call with whether it was achieved and a one-line summary."
            )
        return text

    # --- the runner's side --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._running.is_set() and not self._done.is_set() and not self._closed

    async def wait_sendable(self) -> bool:
        await self._running.wait()
        if self._closed:
            return False
        self.call.ready()
        return True

    def writable(self) -> bool:
        # Caller audio is handled in the receiving task itself (a VAD step), never queued: no hop.
        return self.connected

    async def send(self, item: UplinkItem) -> None:
        if not self.connected:
            return
        if type(item) is bytes:
            for event in self.vad.feed(item, agent_speaking=self.turn is not None):
                await self._on_vad(event)
        elif type(item) is SegmentPlayed:
            turn = self.turn
            if turn is not None:
                for sentence in turn.sentences:
                    if sentence.key == item.key:
                        sentence.played = True
                turn.check_played()
        elif type(item) is Digit:
            self.call.log_event(logging.INFO, "dtmf", "cascade: key %s", item.digit)
            text = f"(The caller pressed {item.digit} on the keypad.)"
            if self.turn is None and self.early is None and self.vad.state is TurnState.LISTENING:
                self._start(_Turn(self._next(), "text", text=text))
            else:
                self.pending_user = f"{self.pending_user} {text}".strip()

    async def finish_uplink(self) -> None:
        self._end("caller_hangup", finish=False)

    async def close(self) -> None:
        self._closed = True
        self._done.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- the caller's turns (in the sender's task) -------------------------------------------------

    async def _on_vad(self, event: TurnEvent) -> None:
        call = self.call
        if type(event) is BargeIn:
            self._heard_caller()
            call.barge_in("pause")
            await call.pause()
        elif type(event) is BackChannel:
            self._heard_caller()
            call.barge_in("continue")
            await call.resume()
        elif type(event) is Interruption:
            self._heard_caller()
            call.barge_in("clear")
            interrupted = await call.clear()
            turn = self.turn
            if turn is not None:
                self._cut(turn, interrupted)
        elif type(event) is SpeechStart:
            self._heard_caller()
        elif type(event) is LikelyEnd:
            if self.turn is None and self.early is None:
                self.early = self._start(_Turn(self._next(), "reply", pcm=event.utterance.pcm, held=True))
        elif type(event) is Resumed:
            self._heard_caller()
            early, self.early = self.early, None
            if early is not None:
                early.scope.cancel()
                early.stats.discarded = True
                self.stats.early_discarded += 1
                call.metrics.cascade_early.labels("discarded").inc()
        elif type(event) is Utterance:
            self._heard_caller()
            current = self.turn
            if current is not None and current.then_end is not None:
                return  # the agent is saying goodbye (the call is ending): nothing more to answer
            if current is not None:  # fixed words started over the caller's turn: the caller wins
                self._cut(current, await call.clear())
            call.caller_stopped()
            now = trio.current_time()
            early, self.early = self.early, None
            if early is not None and early.pcm == event.pcm and not early.scope.cancel_called:
                early.end_of_turn = now
                early.stats.early_ms = round((now - early.started_at) * 1000, 1)
                self.stats.early_used += 1
                call.metrics.cascade_early.labels("used").inc()
                self.turn = early
                early.go.set()
            else:
                if early is not None:
                    early.scope.cancel()
                self.turn = self._start(_Turn(self._next(), "reply", pcm=event.pcm))
            self._touch()

    def _heard_caller(self) -> None:
        self._idle_stage = 0
        self._quiet_since = trio.current_time()
        self._touch()

    def _cut(self, turn: _Turn, interrupted: list[Interrupted]) -> None:
        """A real interruption: the answer stops here; the history keeps what the caller heard of it."""
        heard_by_key = {i.key: i.heard_ms for i in interrupted}
        spoken: list[SpokenSentence] = []
        heard_total = 0.0
        for sentence in turn.sentences:
            audio_ms = sentence.ulaw_bytes // 8
            if sentence.key in heard_by_key:
                heard = heard_by_key[sentence.key]
            elif sentence.played:
                heard = audio_ms
            else:
                heard = self.call.heard_ms(sentence.key) or 0
            heard = min(heard, audio_ms)
            spoken.append(SpokenSentence(sentence.text if sentence.spoken else "", max(audio_ms, heard)))
            heard_total += heard
        turn.stats.interrupted = True
        turn.stats.agent_text = " ".join(s.text for s in turn.sentences if s.spoken)
        turn.scope.cancel()
        if self.turn is turn:
            self.turn = None
        if not turn.committed:
            turn.committed = True
            conversation = self.conversation
            if turn.kind in ("reply", "text") and heard_total <= 0:
                # Nothing of the answer was heard: the caller's words (which include any that were
                # already waiting) wait for the next answer.
                self.pending_user = turn.user_text or self.pending_user
                turn.stats.heard_text = ""
                return
            if turn.user_text:
                self._caller_said(turn)
                self.pending_user = ""
                conversation.add_user(turn.user_text)
            heard_text = conversation.add_interrupted(spoken, heard_total)
            turn.stats.heard_text = heard_text
            if heard_text:
                self.call.transcript("agent", heard_text)
        self._touch()

    # --- the engine --------------------------------------------------------------------------------

    async def run(self) -> None:
        call = self.call
        if call.start is not None:
            self.stats.call_sid = call.start.call_sid
        try:
            async with CascadeClient(self.settings) as client:
                self.client = client
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._running.set()
                    nursery.start_soon(self._idle_watch)
                    if self.max_call_s > 0:
                        nursery.start_soon(self._max_call_watch)
                    self._first_words()
                    await self._done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self._done.set()
            self._nursery = None
            self.stats.end_reason = self._end_reason
        reason = self._end_reason
        if reason is not None and self._finish and not self._closed:
            try:
                await call.finish(reason)
            except CallEnded as exc:
                call.end(exc.reason)

    def _end(self, reason: str, *, finish: bool = True) -> None:
        """The engine stops; ``run`` then lets the audio play out and hangs up (``finish``)."""
        if self._end_reason is None:
            self._end_reason = reason
            self._finish = finish
        self._done.set()

    def _next(self) -> int:
        self._turns += 1
        return self._turns

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _start(self, turn: _Turn) -> _Turn:
        if self._nursery is None or self._done.is_set():
            turn.scope.cancel()
            return turn
        self.stats.turns.append(turn.stats)
        self._nursery.start_soon(self._run_turn, turn)
        return turn

    def _say(self, text: str, then_end: str | None = None) -> None:
        """Fixed words (check-in, goodbye, greeting) as the current answer."""
        old = self.turn
        if old is not None:
            old.scope.cancel()
        self.turn = self._start(_Turn(self._next(), "say", text=text, then_end=then_end))
        self._touch()

    def _first_words(self) -> None:
        greeting = parameter(self.params, "greeting")
        if greeting is not None:
            self._say(greeting.strip())
        else:
            self.turn = self._start(_Turn(self._next(), "opening"))

    async def _run_turn(self, turn: _Turn) -> None:
        try:
            with turn.scope:
                await self._answer(turn)
                if turn.sentences:
                    with trio.move_on_after(turn.unplayed_ms() / 1000 + PLAYOUT_GRACE_S):
                        await turn.played.wait()
                self._commit(turn)
        except CallEnded as exc:
            self.call.end(exc.reason)
            self._end(exc.reason, finish=False)
        finally:
            if self.turn is turn:
                self.turn = None
                self._quiet_since = trio.current_time()
                self._touch()
            if self.early is turn and turn.scope.cancel_called:
                self.early = None
        if not turn.scope.cancelled_caught and turn.then_end is not None:
            self._end(turn.then_end)

    async def _answer(self, turn: _Turn) -> None:
        """Transcribe, think and speak one answer; commit it to the history when it was all said."""
        call = self.call
        assert self.client is not None
        messages: list[dict[str, Any]] | None = None
        if turn.kind == "reply":
            text = await self._transcribe(turn)  # None: it failed, and the turn now says an apology
            if text is not None:
                turn.user_text = f"{self.pending_user} {text}".strip()
        elif turn.kind == "text":
            turn.user_text = f"{self.pending_user} {turn.text}".strip()
        if turn.kind in ("reply", "text", "opening"):
            messages = self.conversation.messages()
            if turn.user_text:
                messages.append({"role": "user", "content": turn.user_text})
        send_sentences, sentences = trio.open_memory_channel[tuple[str, bool]](64)
        encoder = codec.DownlinkEncoder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._speaker, turn, sentences, encoder)
            async with send_sentences:
                if messages is None:
                    for sentence in _split(turn.text):
                        await send_sentences.send((sentence, True))
                else:
                    await self._think(turn, messages, send_sentences)
        await turn.go.wait()
        await call.play_tail(encoder.flush())
        turn.all_sent = True
        turn.check_played()

    def _commit(self, turn: _Turn) -> None:
        """The answer was said in full: into the history, both sides into the transcript; ``end_call``."""
        call = self.call
        self._caller_said(turn)
        if turn.user_text:
            self.pending_user = ""
        said = " ".join(s.text for s in turn.sentences if s.spoken)
        turn.stats.agent_text = said
        if turn.committed:
            return
        turn.committed = True
        if turn.user_text:
            self.conversation.add_user(turn.user_text)
        if said:
            self.conversation.add_assistant(said)
            call.transcript("agent", said)
        tool = turn.tool
        if tool is not None and tool.name == "end_call":
            achieved = tool.arguments.get("achieved")
            summary = tool.arguments.get("summary")
            achieved_ok = achieved is True or (isinstance(achieved, str) and achieved.lower() == "true")
            summary_text = summary if isinstance(summary, str) else ""
            self.stats.outcome = (achieved_ok, summary_text)
            call.outcome(achieved_ok, summary_text)
            self.conversation.add_tool_call(tool.call_id, tool.name, tool.arguments, "the call ends now")
            turn.then_end = "end_call"

    def _caller_said(self, turn: _Turn) -> None:
        """The caller's words, into the transcript once their answer is heard (or was said in full)."""
        if turn.user_text and not turn.stats.user_text:
            turn.stats.user_text = turn.user_text
            self.call.transcript("caller", turn.user_text)

    async def _transcribe(self, turn: _Turn) -> str | None:
        assert self.client is not None
        pcm = turn.pcm
        rate = self.settings.stt_rate
        if rate != SAMPLE_RATE:
            resampler = codec.Resampler(SAMPLE_RATE, rate)
            pcm = resampler.process(pcm) + resampler.flush()
        wav = encode_wav(pcm, rate)
        t0 = trio.current_time()
        for attempt in (1, 2):
            try:
                text = await self.client.transcribe(wav)
            except CascadeError as exc:
                self._count(turn, exc)
                if attempt == 1 and exc.kind in RETRIED:
                    continue
                await turn.go.wait()
                self._say_in(turn, NOT_HEARD if exc.kind == "empty" else APOLOGY)
                return None
            turn.stats.stt_ms = round((trio.current_time() - t0) * 1000, 1)
            return text
        return None

    def _say_in(self, turn: _Turn, text: str) -> None:
        """An apology in place of the answer (this turn's task goes on to speak it)."""
        turn.kind = "say"
        turn.text = text

    async def _think(
        self, turn: _Turn, messages: list[dict[str, Any]], out: trio.MemorySendChannel[tuple[str, bool]]
    ) -> None:
        assert self.client is not None
        self.stats.requests.append(messages)
        t0 = trio.current_time()
        sent = 0
        for attempt in (1, 2):
            splitter = SentenceSplitter()
            try:
                async with aclosing(
                    self.client.chat_stream(
                        messages, [END_CALL_TOOL], temperature=self.temperature, max_tokens=MAX_TOKENS
                    )
                ) as events:
                    async for event in events:
                        if type(event) is TextDelta:
                            if turn.stats.llm_first_token_ms is None:
                                turn.stats.llm_first_token_ms = round((trio.current_time() - t0) * 1000, 1)
                            for sentence in splitter.feed(event.text):
                                sent += await self._queue(turn, out, sentence, t0)
                        elif type(event) is ToolCall:
                            turn.tool = event
                for sentence in splitter.flush():
                    sent += await self._queue(turn, out, sentence, t0)
                if turn.tool is not None and not sent:
                    await out.send((END_CALL_GOODBYE, True))
                return
            except CascadeError as exc:
                self._count(turn, exc)
                turn.tool = None
                if attempt == 1 and not sent and exc.kind in RETRIED:
                    continue
                await out.send((APOLOGY, True))
                return

    async def _queue(
        self, turn: _Turn, out: trio.MemorySendChannel[tuple[str, bool]], sentence: str, t0: float
    ) -> int:
        if turn.stats.llm_first_sentence_ms is None:
            turn.stats.llm_first_sentence_ms = round((trio.current_time() - t0) * 1000, 1)
        await out.send((sentence, True))
        return 1

    async def _speaker(
        self,
        turn: _Turn,
        sentences: trio.MemoryReceiveChannel[tuple[str, bool]],
        encoder: codec.DownlinkEncoder,
    ) -> None:
        async with sentences:
            async for text, _ in sentences:
                await self._speak(turn, text, encoder)

    async def _speak(self, turn: _Turn, text: str, encoder: codec.DownlinkEncoder) -> None:
        """One sentence: its speech streamed into its own segment; the chime if the TTS fails twice."""
        assert self.client is not None
        call = self.call
        sentence = _Sentence((turn.number, len(turn.sentences)), text)
        turn.sentences.append(sentence)
        first = turn.stats.tts_first_byte_ms is None
        for attempt in (1, 2):
            t0 = trio.current_time()
            try:
                async with aclosing(self.client.speech_stream(text)) as chunks:
                    async for pcm in chunks:
                        if first and turn.stats.tts_first_byte_ms is None:
                            turn.stats.tts_first_byte_ms = round((trio.current_time() - t0) * 1000, 1)
                        ulaw = encoder.process(pcm)
                        if ulaw:
                            await self._play(turn, sentence, ulaw, len(pcm))
                break
            except CascadeError as exc:
                self._count(turn, exc)
                if attempt == 1 and not sentence.ulaw_bytes and exc.kind in RETRIED:
                    continue
                sentence.spoken = bool(sentence.ulaw_bytes)
                await self._play(turn, sentence, CHIME, len(CHIME))
                break
        await turn.go.wait()
        await call.close_segment(sentence.key)

    async def _play(self, turn: _Turn, sentence: _Sentence, ulaw: bytes, received: int) -> None:
        await turn.go.wait()
        if turn.stats.first_audio_ms is None:
            turn.stats.first_audio_ms = turn.ms(trio.current_time())
            self._caller_said(turn)
        sentence.ulaw_bytes += len(ulaw)
        await self.call.play(sentence.key, ulaw, received=received)

    def _count(self, turn: _Turn, exc: CascadeError) -> None:
        key = f"{exc.stage}:{exc.kind}"
        self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
        turn.stats.errors.append(key)
        self.call.metrics.cascade_errors.labels(exc.stage, exc.kind).inc()
        self.call.log_event(logging.WARNING, f"cascade_{key}", "cascade: %s", exc, errors=True)

    # --- timers ----------------------------------------------------------------------------------

    async def _idle_watch(self) -> None:
        """Check in after ``idle_checkin_s`` of quiet, say goodbye after ``idle_hangup_s`` more."""
        while True:
            changed = self._changed
            listening = self.vad.state is TurnState.LISTENING
            busy = self.turn is not None or self.early is not None or not listening
            limit = self.idle_checkin_s if self._idle_stage == 0 else self.idle_hangup_s
            if busy or limit <= 0:
                await changed.wait()
                continue
            with trio.move_on_at(self._quiet_since + limit) as timer:
                await changed.wait()
            if not timer.cancelled_caught:
                continue
            if self._idle_stage == 0:
                self._idle_stage = 1
                self.stats.checkins += 1
                self._say(CHECKIN)
            else:
                self._say(IDLE_GOODBYE, then_end="idle_timeout")
                return

    async def _max_call_watch(self) -> None:
        await trio.sleep(self.max_call_s)
        early, self.early = self.early, None
        if early is not None:
            early.scope.cancel()
        if self.turn is not None:
            interrupted = await self.call.clear()
            self._cut(self.turn, interrupted)
        self._say(MAX_CALL_GOODBYE, then_end="max_duration")


def _split(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return [*splitter.feed(text), *splitter.flush()]

"""What the cascade emulator is scripted with and what it records (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "FAULTS",
    "ChatReply",
    "ChatRequest",
    "SpeechRequest",
    "SttRequest",
    "tokenize",
]

#: Faults a test can script per stage with :meth:`CascadeServer.fail_next`.
FAULTS: Final[Mapping[str, frozenset[str]]] = {
    # 429/500/400: the error answer; stall: no answer until the client gives up; malformed: a 200 that is
    # not JSON; cut: a 200 whose body stops halfway (the connection closes).
    "stt": frozenset({"400", "429", "500", "stall", "malformed", "cut"}),
    # cut: half the tokens, then the connection closes (no [DONE]); malformed: a chunk that is not JSON;
    # malformed_sse: a line that is not an event-stream line; error_event: an error object inside the
    # stream; stall: as for stt (a stall inside a stream is scripted with a slow tokens_per_s).
    "llm": frozenset({"400", "429", "500", "stall", "cut", "malformed", "malformed_sse", "error_event"}),
    # cut: half the audio, then the connection closes; malformed: an odd number of PCM16 bytes;
    # empty: a 200 with no audio; stall: as for stt.
    "tts": frozenset({"400", "429", "500", "stall", "cut", "malformed", "empty"}),
}

_TOKEN = re.compile(r"\s*\S{1,4}|\s+")


def tokenize(text: str) -> list[str]:
    """How the emulator cuts an answer into streamed tokens: at most 4 visible characters each (the
    average English token), leading spaces attached. ``"".join(tokenize(t)) == t``."""
    return _TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class ChatReply:
    """One scripted answer of the chat endpoint.

    Attributes:
        text: the answer's text (may be empty when it only calls a tool).
        tool_calls: ``(name, arguments)`` of each function call that follows the text; a call is only made
            when the request offered a function of that name (as a real model would).
        first_token_s, tokens_per_s: this reply's pacing; None takes the server's.
    """

    text: str = ""
    tool_calls: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    first_token_s: float | None = None
    tokens_per_s: float | None = None

    @classmethod
    def end_call(cls, text: str = "", **arguments: Any) -> ChatReply:
        """A reply that says ``text`` and then calls ``end_call(**arguments)``."""
        return cls(text, (("end_call", dict(arguments)),))


@dataclass(frozen=True, slots=True)
class SttRequest:
    """A transcription request as received. ``rate``/``duration_ms`` are 0 when the WAV was refused."""

    at: float
    status: int
    model: str | None = None
    language: str | None = None
    response_format: str | None = None
    rate: int = 0
    duration_ms: float = 0.0
    pcm: bytes = field(default=b"", repr=False)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat-completion request as received."""

    at: float
    status: int
    model: str | None = None
    messages: tuple[Mapping[str, Any], ...] = ()
    tools: tuple[str, ...] = ()
    stream: bool = False
    reply: ChatReply | None = None


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A speech request as received; ``audio_bytes`` is what the answer was to carry in full."""

    at: float
    status: int
    model: str | None = None
    voice: str | None = None
    input: str | None = None
    response_format: str | None = None
    audio_bytes: int = 0

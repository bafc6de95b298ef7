"""The conversation the model is given, where an interrupted answer keeps only what the caller heard (no I/O).

Theory of operation
-------------------
The cascade speaks an answer sentence by sentence; the playback ledger reports how many milliseconds of it
the caller heard before an interruption. :func:`heard_text` maps that back to text: every sentence whose
audio was heard to its end is kept whole, the sentence in flight keeps the share of its characters equal to
the share of its audio that played, cut back to the last whole word, and nothing after it. The proportion
is an estimate (speech is not uniform in characters), which is why the cut is at a word boundary and never
claims a word the caller did not hear in full.

:class:`Conversation` holds the messages in OpenAI's chat shape: the system message, then user and
assistant turns (and tool calls and results), bounded to the last ``max_messages`` after the system
message so a long call does not grow every request for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Conversation", "SpokenSentence", "heard_text"]


@dataclass(frozen=True, slots=True)
class SpokenSentence:
    """One sentence of an answer and the length of its synthesized audio."""

    text: str
    audio_ms: int

    def __post_init__(self) -> None:
        if self.audio_ms < 0:
            raise ValueError(f"audio_ms must not be negative, got {self.audio_ms!r}")


def heard_text(sentences: Sequence[SpokenSentence], heard_ms: float) -> str:
    """What the caller heard of an answer spoken as ``sentences`` when playback stopped at ``heard_ms``."""
    kept: list[str] = []
    start = 0.0
    for sentence in sentences:
        end = start + sentence.audio_ms
        if heard_ms >= end:
            kept.append(sentence.text)
            start = end
            continue
        if heard_ms > start and sentence.audio_ms > 0:
            share = (heard_ms - start) / sentence.audio_ms
            prefix = _word_prefix(sentence.text, int(len(sentence.text) * share))
            if prefix:
                kept.append(prefix)
        break
    return " ".join(kept)


def _word_prefix(text: str, chars: int) -> str:
    """The longest run of whole words of ``text`` within its first ``chars`` characters."""
    if chars >= len(text):
        return text
    if chars < len(text) and not text[chars].isspace():
        space = text.rfind(" ", 0, chars + 1)  # the word at the cut was not heard in full
        chars = space if space >= 0 else 0
    return text[:chars].rstrip(" ,;:-—")


class Conversation:
    """The messages sent with each chat request.

    Args:
        system: the system message (the agent's instructions, with the call's goal).
        max_messages: how many messages after the system message are kept (older ones are dropped).
    """

    def __init__(self, system: str, max_messages: int = 200) -> None:
        if max_messages < 2:
            raise ValueError(f"max_messages must be at least 2, got {max_messages!r}")
        self.system = system
        self._max = max_messages
        self._turns: list[dict[str, Any]] = []

    def add_user(self, text: str) -> None:
        self._add({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        """An answer the caller heard in full."""
        self._add({"role": "assistant", "content": text})

    def add_interrupted(self, sentences: Sequence[SpokenSentence], heard_ms: float) -> str:
        """An answer cut off after ``heard_ms``: only the heard part is kept. Returns that part."""
        text = heard_text(sentences, heard_ms)
        if text:
            self._add({"role": "assistant", "content": text})
        return text

    def add_tool_call(self, call_id: str, name: str, arguments: dict[str, Any], result: str) -> None:
        """A function call of the model and its result, as the chat API wants them back."""
        self._add(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
                    }
                ],
            }
        )
        self._add({"role": "tool", "tool_call_id": call_id, "content": result})

    def messages(self) -> list[dict[str, Any]]:
        """The request's ``messages``: a fresh list (the caller may change it)."""
        return [{"role": "system", "content": self.system}, *(dict(m) for m in self._turns)]

    def _add(self, message: dict[str, Any]) -> None:
        self._turns.append(message)
        excess = len(self._turns) - self._max
        if excess > 0:
            del self._turns[:excess]
            # Never open on a tool result whose call was dropped: the API refuses an orphan.
            while self._turns and self._turns[0]["role"] == "tool":
                del self._turns[0]

    def __len__(self) -> int:
        return len(self._turns)

"""Cutting a streamed answer into sentences as soon as each is complete (no I/O).

Theory of operation
-------------------
Text-to-speech starts on the first complete sentence while the model is still writing the rest, so the
splitter must say "this sentence is done" as early as it can be sure, and never cut inside one.
A sentence ends at ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or brackets after it) followed by
whitespace, or at a line break. The whitespace is what makes it sure: ``3.5`` and ``example.com`` have no
space after the dot, so a terminator at the very end of the text so far waits for the next delta (or
:meth:`SentenceSplitter.flush`). Not an end: a dot after a common abbreviation (``Mr.``, ``Dr.``, ``e.g.``,
...) or after a single letter (an initial, ``J. Smith``), or after a bare number that opens the text
(a list item, ``1.``). A run-on without any end is cut at the last comma, semicolon or space once it passes
``max_chars``, so speech never waits on one endless clause.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ABBREVIATIONS", "SentenceSplitter", "split_sentences"]

#: Lower-case words (without their dot) after which a dot does not end a sentence.
ABBREVIATIONS: Final[frozenset[str]] = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "no", "nos", "approx",
        "e.g", "i.e", "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "co", "corp", "dept", "fig", "est", "vol",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        "ave", "rd", "blvd",
    }
)  # fmt: skip

_TERMINATORS: Final = ".!?…"
_CLOSERS: Final = "\"')]}»”’"
# A terminator run followed by closers; what follows decides.
_END = re.compile(r"[.!?…]+[\"')\]}»”’]*")
_WORD_BEFORE = re.compile(r"([\w.]+)$")


class SentenceSplitter:
    """Feed text deltas; get each complete sentence once.

    Args:
        max_chars: a run-on longer than this is cut at a clause or word boundary.
    """

    def __init__(self, max_chars: int = 250) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars!r}")
        self._max_chars = max_chars
        self._text = ""
        self._scan = 0  # where to look for the next end: everything before has been checked

    def feed(self, delta: str) -> list[str]:
        """Adds a delta; returns the sentences it completed (stripped, never empty)."""
        self._text += delta
        out: list[str] = []
        while True:
            cut = self._next_end()
            if cut is None:
                break
            sentence, self._text = self._text[:cut].strip(), self._text[cut:]
            self._scan = 0
            if sentence:
                out.append(sentence)
        if len(self._text.strip()) > self._max_chars:
            out.append(self._cut_run_on())
        return out

    def flush(self) -> list[str]:
        """The stream ended: whatever is left, as a last sentence."""
        rest, self._text, self._scan = self._text.strip(), "", 0
        return [rest] if rest else []

    @property
    def pending(self) -> str:
        """Text received but not yet part of a returned sentence."""
        return self._text

    def _next_end(self) -> int | None:
        text = self._text
        newline = text.find("\n", self._scan)
        for match in _END.finditer(text, self._scan, newline if newline >= 0 else len(text)):
            end = match.end()
            if end == len(text):
                self._scan = match.start()  # unsure until the next character arrives
                return None
            if not text[end].isspace():
                continue  # 3.5, example.com, "Wait...what"
            if match.group()[0] == "." and match.end() - match.start() == 1 and self._no_end(match.start()):
                continue
            return end
        if newline >= 0:
            return newline + 1
        self._scan = max(0, len(text) - 1)
        return None

    def _no_end(self, dot: int) -> bool:
        word = _WORD_BEFORE.search(self._text, 0, dot)
        if word is None:
            return False
        token = word.group(1).lower()
        if token in ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
            return True
        # "1. First..." at the opening of the text is a list item, not a sentence.
        return token.isdigit() and not self._text[: word.start()].strip()

    def _cut_run_on(self) -> str:
        text = self._text
        limit = self._max_chars
        cut = max(text.rfind(", ", 0, limit), text.rfind("; ", 0, limit), text.rfind(": ", 0, limit))
        if cut <= 0:
            cut = text.rfind(" ", 0, limit)
        if cut <= 0:
            cut = limit
        else:
            cut += 1
        piece, self._text, self._scan = text[:cut].strip(), text[cut:], 0
        return piece


def split_sentences(text: str, max_chars: int = 250) -> list[str]:
    """A whole text, split as :class:`SentenceSplitter` would split it streamed."""
    splitter = SentenceSplitter(max_chars)
    return [*splitter.feed(text), *splitter.flush()]

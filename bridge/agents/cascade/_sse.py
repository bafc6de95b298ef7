"""Server-sent events without I/O: bytes in, events out (the client side), and events in, bytes out.

Theory of operation
-------------------
:class:`SseParser` follows the WHATWG event-stream rules: lines end in CRLF, LF or CR (a CR at the end of
a chunk is held until the next byte says whether an LF follows, so a chunk boundary may fall anywhere,
inside a line, inside a UTF-8 sequence or between CR and LF); ``:`` starts a comment; ``field: value``
(one leading space dropped); ``data`` lines join with ``\\n``; a blank line dispatches. ``data: [DONE]``,
OpenAI's end-of-stream sentinel, becomes :class:`SseDone`; anything after it is ignored.

Stricter than a browser on purpose: an OpenAI-compatible chat stream only ever sends ``data``, ``event``,
``id`` and ``retry`` fields and comments, so any other field name, bytes that are not UTF-8, or a line
longer than :data:`MAX_LINE_BYTES` means we are not reading an event stream (an HTML error page behind a
proxy, a truncated body): :class:`~bridge.agents.cascade._errors.CascadeError` with kind ``malformed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bridge._errors import short_repr
from bridge.agents.cascade._errors import CascadeError

__all__ = ["DONE", "MAX_LINE_BYTES", "SseDone", "SseEvent", "SseParser", "encode_comment", "encode_data"]

#: A longer line is refused (bounds the parser's memory whatever the peer sends). A chat chunk is ~300 bytes.
MAX_LINE_BYTES: Final = 1024 * 1024
DONE: Final = "[DONE]"
_KNOWN_FIELDS: Final = frozenset({"data", "event", "id", "retry"})


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its ``event`` type (``"message"`` by default) and its data."""

    data: str
    event: str = "message"


@dataclass(frozen=True, slots=True)
class SseDone:
    """``data: [DONE]``: the stream's regular end."""


class SseParser:
    """Feed bytes as they arrive; get every complete event.

    Args:
        stage: the cascade stage named in errors (``"llm"`` for a chat stream).
    """

    def __init__(self, stage: str = "llm") -> None:
        self._stage = stage
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event = ""
        self.done = False

    def feed(self, chunk: bytes) -> list[SseEvent | SseDone]:
        """Parses what ``chunk`` completes.

        Raises:
            CascadeError: ``malformed`` (not an event stream).
        """
        if self.done:
            return []
        self._buffer += chunk
        out: list[SseEvent | SseDone] = []
        start = 0
        buffer = self._buffer
        while not self.done:
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
            if cr >= 0:
                if cr + 1 == len(buffer):
                    break  # a CR at the end: is it CRLF? wait for the next byte
                end, nxt = cr, cr + 2 if buffer[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(bytes(buffer[start:end]), out)
            start = nxt
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            raise CascadeError(self._stage, "malformed", f"an event-stream line over {MAX_LINE_BYTES} bytes")
        return out

    def end(self) -> list[SseEvent | SseDone]:
        """The body ended: a CR held at the very end was a line break; an event not ended by a blank line
        is dropped, as the standard says (the caller decides whether a stream without ``[DONE]`` is an
        error)."""
        out: list[SseEvent | SseDone] = []
        if self._buffer.endswith(b"\r") and not self.done:
            self._buffer += b"\n"
            out = self.feed(b"")
        self._buffer.clear()
        self._data, self._event = [], ""
        return out

    def _line(self, raw: bytes, out: list[SseEvent | SseDone]) -> None:
        if len(raw) > MAX_LINE_BYTES:
            raise CascadeError(self._stage, "malformed", f"an event-stream line over {MAX_LINE_BYTES} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CascadeError(self._stage, "malformed", f"not UTF-8: {short_repr(raw)}") from None
        if not line:
            self._dispatch(out)
            return
        if line.startswith(":"):
            return  # a comment (servers send them as keep-alives)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name not in _KNOWN_FIELDS:
            raise CascadeError(self._stage, "malformed", f"not an event-stream line: {short_repr(line)}")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # id and retry: a reconnecting EventSource needs them; a chat stream is never resumed.

    def _dispatch(self, out: list[SseEvent | SseDone]) -> None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return
        text = "\n".join(data)
        if text == DONE:
            self.done = True
            out.append(SseDone())
        else:
            out.append(SseEvent(text, event or "message"))


def encode_data(data: str | bytes) -> bytes:
    """One event carrying ``data`` (a payload without line breaks, such as compact JSON)."""
    payload = data.encode() if isinstance(data, str) else data
    if b"\n" in payload or b"\r" in payload:
        raise ValueError(f"an event's data may not contain line breaks: {short_repr(payload)}")
    return b"data: " + payload + b"\n\n"


def encode_comment(text: str) -> bytes:
    """A comment line (a keep-alive)."""
    return b": " + text.encode() + b"\n"

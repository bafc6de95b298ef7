"""The bridge's exception tree.

Small on purpose (h11's ``LocalProtocolError``/``RemoteProtocolError`` are the model): a caller can
catch ``BridgeError`` for "anything the bridge itself raised", ``ProtocolError`` for "a peer sent
something we cannot use" (with a fixed ``kind`` label fit for a metric), or ``CallEnded`` for "this call
is over, here is why".
Bad arguments to our own functions are ``ValueError``/``TypeError``, not part of this tree.
"""

from __future__ import annotations

import reprlib
from typing import ClassVar, Final

__all__ = [
    "PROTOCOL_ERROR_KINDS",
    "BridgeError",
    "CallEnded",
    "ConfigError",
    "DeepgramProtocolError",
    "OpenAIProtocolError",
    "ProtocolError",
    "SpeakrProtocolError",
    "TwilioProtocolError",
    "short_repr",
]

#: Every value ``ProtocolError.kind`` may take. They are metric labels: keep the set small and fixed.
PROTOCOL_ERROR_KINDS: Final[frozenset[str]] = frozenset(
    {
        "bad_json",  # not JSON text (or not UTF-8)
        "not_object",  # JSON, but not an object
        "unknown_event",  # an event/type we do not know
        "missing_field",  # a required field is absent
        "bad_field",  # a field has the wrong type or an impossible value
        "bad_base64",  # a payload is not strict base64
        "too_large",  # a payload is larger than we accept
        "binary_frame",  # a binary frame where only text frames are allowed
        "no_metadata",  # Speakr media without the NUL that ends its metadata
        "bad_metadata",  # Speakr media whose metadata is not the JSON object we need
    }
)

# A detail longer than this is cut: errors end up in log lines, and a peer controls what they echo.
_MAX_DETAIL_CHARS: Final = 300


_PREVIEW_CHARS: Final = 80
_reprlib = reprlib.Repr()
_reprlib.maxstring = _PREVIEW_CHARS
_reprlib.maxother = _PREVIEW_CHARS
_reprlib.maxlevel = 2
_reprlib.maxdict = _reprlib.maxlist = _reprlib.maxtuple = 4


def short_repr(value: object) -> str:
    """A bounded ``repr`` for error details: a peer controls the value, a log line must stay short.

    Text and bytes are cut to ~80 characters *before* ``repr`` (so a 10 MB frame costs nothing) and the cut is
    marked with the full length; containers show a few items only.
    """
    if isinstance(value, str | bytes | bytearray):
        text = repr(value[:_PREVIEW_CHARS])
        cut = len(value) > _PREVIEW_CHARS
        if len(text) > _PREVIEW_CHARS + 3:  # escapes such as \x00 can make a repr 4x longer than its input
            text, cut = text[:_PREVIEW_CHARS], True
        if cut:
            text += f"… ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
        return text
    if isinstance(value, memoryview):
        return f"<memoryview of {value.nbytes} bytes>"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<int of {value.bit_length()} bits>"  # repr() of a huge int is slow or refused
    return _reprlib.repr(value)


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration cannot be used; names the environment variable at fault.

    Args:
        variable: the environment variable (e.g. ``"SPEAKR_TEMPERATURE"``).
        message: what is wrong with it; ``str()`` prefixes the variable's name unless the message already
            contains it. Must not contain the variable's value when that is a secret.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(variable, message)
        self.variable = variable
        self.message = message

    def __str__(self) -> str:
        if self.variable in self.message:
            return self.message
        return f"{self.variable}: {self.message}"


class ProtocolError(BridgeError):
    """A peer sent a message we cannot use.

    The call goes on: the caller logs it, counts it by ``(peer, kind)`` and drops that message.

    Attributes:
        kind: one of :data:`PROTOCOL_ERROR_KINDS`, a metric label.
        detail: a short human explanation; any echoed input is truncated.
        peer: class attribute, ``"twilio"``, ``"speakr"``, ``"deepgram"``, ... on the concrete subclasses.
    """

    peer: ClassVar[str] = "peer"

    def __init__(self, kind: str, detail: str) -> None:
        if kind not in PROTOCOL_ERROR_KINDS:
            raise ValueError(f"unknown protocol error kind {kind!r}")
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.peer} protocol error ({self.kind}): {self.detail}"


class TwilioProtocolError(ProtocolError):
    """Twilio (or something claiming to be Twilio) sent a message we cannot use."""

    peer: ClassVar[str] = "twilio"


class SpeakrProtocolError(ProtocolError):
    """The Speakr agent (or a client of our agent emulator) sent a message we cannot use."""

    peer: ClassVar[str] = "speakr"


class DeepgramProtocolError(ProtocolError):
    """The Deepgram Voice Agent (or a client of our Deepgram emulator) sent a message we cannot use."""

    peer: ClassVar[str] = "deepgram"


class OpenAIProtocolError(ProtocolError):
    """OpenAI Realtime (or a client of our OpenAI emulator) sent a message we cannot use."""

    peer: ClassVar[str] = "openai"


class CallEnded(BridgeError):
    """The call is over; ``reason`` says why in a short fixed label.

    Raised at the I/O edge when a transport closes or a peer ends the call, so one ``except CallEnded``
    unwinds the call runner. Typical reasons: ``"twilio_stop"``, ``"twilio_disconnect"``, ``"agent_end"``,
    ``"agent_disconnect"``.

    Args:
        reason: a short label fit for a metric.
        detail: optional free text for the log line (no secrets).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

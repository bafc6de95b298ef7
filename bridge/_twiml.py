"""The TwiML we answer, built with the ``twilio`` package's ``VoiceResponse``."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from twilio.twiml.voice_response import Connect, VoiceResponse

__all__ = ["FALLBACK_SAY", "BUSY_SAY", "STREAM_PATH", "stream_url", "connect_twiml", "busy_twiml"]

STREAM_PATH = "/twilio/stream"
#: Heard when our side closes the stream without a normal end (agent down, drain timeout, ...).
FALLBACK_SAY = "Sorry, the assistant is not available right now. Please try again later."
BUSY_SAY = "Sorry, all of our lines are busy right now. Please try again in a few minutes."


def stream_url(base_url: str) -> str:
    """``wss://host/twilio/stream`` for an ``https://host`` base (``ws://`` for ``http://``); no query."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + STREAM_PATH, "", ""))


def connect_twiml(stream: str, parameters: Mapping[str, str]) -> str:
    """Connect the call to our Media Stream, with per-call ``<Parameter>``s, then the fallback."""
    response = VoiceResponse()
    connect = Connect()
    element = connect.stream(url=stream)
    for name, value in parameters.items():
        element.parameter(name=name, value=value)
    response.append(connect)
    response.say(FALLBACK_SAY)
    return str(response)


def busy_twiml() -> str:
    """A polite refusal: past MAX_CONCURRENT_CALLS, or while draining."""
    response = VoiceResponse()
    response.say(BUSY_SAY)
    response.hangup()
    return str(response)

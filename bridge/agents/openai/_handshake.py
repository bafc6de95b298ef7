"""The OpenAI Realtime session set-up as a state machine without I/O (after wsproto's ``H11Handshake``).

Theory of operation
-------------------
A Realtime session is usable for a phone call only once the service has confirmed, in ``session.updated``,
that it speaks ``audio/pcmu`` both ways: a session left at ``audio/pcm`` sends 24 kHz PCM16, which played
as μ-law is loud static. :class:`Handshake` owns that phase and nothing else::

    CONNECTING --initial_message()--> CONFIGURING --session.updated (pcmu both ways)--> READY
                                           |
                                           +-- session.updated (another format) / error --> REFUSED

:meth:`Handshake.initial_message` gives the ``session.update`` to send as soon as the socket is open (the
service accepts it before or after its ``session.created``); :meth:`Handshake.receive` takes each parsed
server event until :attr:`Handshake.state` is ``READY`` (hand over to the data phase: caller audio may flow)
or ``REFUSED`` (:attr:`Handshake.reason` says why, a metric-safe label). ``doctor`` and the agent leg drive
it the same way; events after the handshake are not its business.
"""

from __future__ import annotations

import enum

from bridge.agents.openai._wire import (
    DEFAULT_TRANSCRIPTION_MODEL,
    DEFAULT_VOICE,
    AudioFormat,
    ErrorEvent,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    session_update_message,
)

__all__ = ["Handshake", "HandshakeState"]


class HandshakeState(enum.Enum):
    """Where the session set-up is (see the module docstring)."""

    CONNECTING = "connecting"
    CONFIGURING = "configuring"
    READY = "ready"
    REFUSED = "refused"


class Handshake:
    """The bridge's side of the session set-up: ready once ``session.updated`` reads back ``audio/pcmu``.

    Args:
        instructions: the system prompt.
        voice: ``session.audio.output.voice``.
        transcription_model: the caller-side transcription model (None: off).
        tools: offer ``end_call``.

    Attributes:
        state: a :class:`HandshakeState`.
        reason: why it was refused: ``"output_format"``, ``"input_format"`` or the error's label
            (``"unknown_parameter"``, ``"invalid_api_key"``, ...); ``""`` otherwise.
        detail: a short human explanation of the refusal (the service's message or the formats read back).
        session_id: the service's session id, once known.
        output_format: the output format read back from ``session.updated``.
    """

    def __init__(
        self,
        *,
        instructions: str,
        voice: str = DEFAULT_VOICE,
        transcription_model: str | None = DEFAULT_TRANSCRIPTION_MODEL,
        tools: bool = True,
    ) -> None:
        self._message = session_update_message(
            instructions=instructions, voice=voice, transcription_model=transcription_model, tools=tools
        )
        self.state = HandshakeState.CONNECTING
        self.reason = ""
        self.detail = ""
        self.session_id = ""
        self.output_format: AudioFormat | None = None

    def __repr__(self) -> str:  # the instructions may be long or private: not shown
        return f"Handshake(state={self.state.name}, reason={self.reason!r}, session_id={self.session_id!r})"

    @property
    def ready(self) -> bool:
        """True once the session speaks ``audio/pcmu`` both ways."""
        return self.state is HandshakeState.READY

    @property
    def done(self) -> bool:
        """True once the handshake is over, either way."""
        return self.state in (HandshakeState.READY, HandshakeState.REFUSED)

    def initial_message(self) -> str:
        """The ``session.update`` to send once the socket is open (once only).

        Raises:
            RuntimeError: called twice.
        """
        if self.state is not HandshakeState.CONNECTING:
            raise RuntimeError(f"session.update already sent (state {self.state.name})")
        self.state = HandshakeState.CONFIGURING
        return self._message

    def receive(self, event: ServerEvent) -> HandshakeState:
        """Take one server event; returns the new state. Events once the handshake is done change nothing."""
        if self.done:
            return self.state
        if isinstance(event, SessionCreated):
            self.session_id = event.session_id or self.session_id
        elif isinstance(event, SessionUpdated) and self.state is HandshakeState.CONFIGURING:
            self.session_id = event.session_id or self.session_id
            self.output_format = event.output_format
            if event.output_format is None or not event.output_format.is_pcmu:
                self._refuse("output_format", f"output format read back: {event.output_format!r}")
            elif event.input_format is not None and not event.input_format.is_pcmu:
                self._refuse("input_format", f"input format read back: {event.input_format!r}")
            else:
                self.state = HandshakeState.READY
        elif isinstance(event, ErrorEvent):
            self._refuse(event.label, event.message[:200])
        return self.state

    def _refuse(self, reason: str, detail: str) -> None:
        self.state = HandshakeState.REFUSED
        self.reason = reason
        self.detail = detail

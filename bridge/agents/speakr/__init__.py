"""The Speakr agent: its leg (:class:`SpeakrLeg`)."""

from __future__ import annotations

from bridge.agents.speakr._leg import SPEAKR_MAX_MESSAGE_CHARS, SpeakrLeg

__all__ = ["SPEAKR_MAX_MESSAGE_CHARS", "SpeakrLeg"]

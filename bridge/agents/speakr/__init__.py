"""The Speakr agent, all in one place.

- :mod:`._wire`: Speakr's wire protocol without I/O, both ends (the bridge's side and the agent's side).
- :mod:`._leg`: :class:`SpeakrLeg`, the agent leg a call talks to.
- :mod:`._emulator`: :class:`~bridge.agents.speakr._emulator.SpeakrAgentServer`, a scriptable Speakr.
- :mod:`._local_agent`: the built-in local echo agent (``speakr-bridge agent``, and ``serve`` without
  ``SPEAKR_WS_URL``).
"""

from __future__ import annotations

from bridge.agents.speakr._leg import SPEAKR_MAX_MESSAGE_CHARS, SpeakrLeg

__all__ = ["SPEAKR_MAX_MESSAGE_CHARS", "SpeakrLeg"]

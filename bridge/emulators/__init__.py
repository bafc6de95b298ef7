"""Faithful stand-ins for the bridge's two peers, for the demo, the tests, the load tool and the local agent.

- :class:`TwilioCaller`: one phone call as Twilio places it (signed voice webhook, then the Media Stream:
  ``connected``, ``start``, paced 20 ms μ-law frames, ``stop``), with a simulated phone that plays what the
  bridge sends and echoes marks the way Twilio does (after playback, or at once on ``clear``). Returns a
  :class:`CallRecord`.
- :class:`SpeakrAgentServer`: a Speakr-protocol WebSocket server (``initial``, ``ready``, ``media``,
  ``pause``, ``continue``, ``clear``, ``info``, ``end``) driven by a script per :class:`AgentSession`,
  recording everything.
- :class:`TwilioRestApi`: a stand-in for Twilio's REST API (Calls create/update, errors, signed status
  callbacks), which can also play Twilio's side of the calls it "places".
- :class:`PhonePlayback`: the pure model of Twilio's playback buffer the caller uses.
"""

from __future__ import annotations

from bridge.agents.speakr._emulator import (
    AgentEvent,
    AgentSession,
    ReceivedFrame,
    ReceivedStatus,
    SentMedia,
    SessionClosed,
    SpeakrAgentServer,
)
from bridge.emulators._phone import SILENCE_ULAW, PhonePlayback
from bridge.emulators._twilio_caller import CallCounters, CallEvent, CallRecord, TwilioCaller
from bridge.emulators._twilio_rest_api import EmulatedCall, RecordedRequest, TwilioRestApi

__all__ = [
    "SILENCE_ULAW",
    "AgentEvent",
    "AgentSession",
    "CallCounters",
    "CallEvent",
    "CallRecord",
    "EmulatedCall",
    "PhonePlayback",
    "ReceivedFrame",
    "ReceivedStatus",
    "RecordedRequest",
    "SentMedia",
    "SessionClosed",
    "SpeakrAgentServer",
    "TwilioCaller",
    "TwilioRestApi",
]

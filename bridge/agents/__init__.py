"""The agent side of a call, one subpackage per backend.

Each backend keeps in one place its wire protocol without I/O (both ends: the bridge's client side and the
service's side, so its emulator is built on the same code) and its emulator; the call runner talks to every
backend through the same small neutral vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.agents._settings import AGENTS

if TYPE_CHECKING:
    from bridge._call import CallSettings
    from bridge._legs import AgentLeg, CallPort

__all__ = ["AGENTS", "make_leg"]


def make_leg(name: str, call: CallPort, settings: CallSettings) -> AgentLeg:
    """The agent leg for backend ``name`` (one of :data:`AGENTS`), for one call.

    Each backend is imported only when a call asks for it.
    """
    if name == "openai":
        from bridge.agents.openai._leg import OpenAILeg

        return OpenAILeg(call, settings)
    if name == "deepgram":
        from bridge.agents.deepgram._leg import DeepgramLeg

        return DeepgramLeg(call, settings)
    if name == "cascade":
        from bridge.agents.cascade._leg import CascadeLeg

        return CascadeLeg(call, settings)
    from bridge.agents.speakr._leg import SpeakrLeg

    return SpeakrLeg(call, settings)

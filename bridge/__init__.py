"""speakr-bridge: a Twilio phone call in a live conversation with a Speakr voice agent."""

from __future__ import annotations

__version__ = "0.1.0"

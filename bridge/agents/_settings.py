"""Per-backend settings: each agent's own variables, read and validated by its own class.

:class:`bridge._config.Config` holds one of each (``config.openai``, ``config.deepgram``); the agent legs read
theirs. Keys are :class:`~bridge._config.Secret`: never shown by ``repr``, logs or errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge._errors import ConfigError
from bridge._secret import Secret

__all__ = ["AGENTS", "DeepgramSettings", "OpenAISettings", "ws_url"]

#: The backends ``AGENT`` (and a call's ``agent`` parameter) may name.
AGENTS = ("speakr", "openai", "deepgram", "cascade")


def ws_url(var: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(var, f"{var} must be a ws:// or wss:// URL with a host, got {raw!r}")
    return raw


def _get(environ: Mapping[str, str], var: str) -> str | None:
    raw = environ.get(var)
    return None if raw is None or not raw.strip() else raw.strip()


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """``OPENAI_*``: the Realtime socket (GA interface), its key and the voice."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    url: str = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    voice: str = "marin"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OpenAISettings:
        values: dict[str, object] = {}
        if (key := _get(environ, "OPENAI_API_KEY")) is not None:
            values["api_key"] = Secret(key)
        if (url := _get(environ, "OPENAI_REALTIME_URL")) is not None:
            values["url"] = ws_url("OPENAI_REALTIME_URL", url)
        if (voice := _get(environ, "OPENAI_VOICE")) is not None:
            if len(voice) > 64 or not voice.replace("-", "").replace("_", "").isalnum():
                raise ConfigError("OPENAI_VOICE", f"OPENAI_VOICE must be a voice name, got {voice!r}")
            values["voice"] = voice
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DeepgramSettings:
    """``DEEPGRAM_*``: the Voice Agent socket (v1 interface) and its key."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    url: str = "wss://agent.deepgram.com/v1/agent/converse"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DeepgramSettings:
        values: dict[str, object] = {}
        if (key := _get(environ, "DEEPGRAM_API_KEY")) is not None:
            values["api_key"] = Secret(key)
        if (url := _get(environ, "DEEPGRAM_AGENT_URL")) is not None:
            values["url"] = ws_url("DEEPGRAM_AGENT_URL", url)
        return cls(**values)  # type: ignore[arg-type]

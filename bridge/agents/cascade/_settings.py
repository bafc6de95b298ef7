"""The cascade's configuration: three OpenAI-compatible endpoints, their models, a key, the call's timing.

Built once from the environment (:meth:`CascadeSettings.from_env`), names and defaults as in the
configuration table of the docs (``CASCADE_*``). The key is a :class:`~bridge._config.Secret`: no repr,
error or log line shows it. An empty key sends no ``Authorization`` header (a local speaches, vLLM,
Ollama or Kokoro-FastAPI server needs none); OpenAI's own endpoints refuse to start without one.

Call timing (each a per-call default the leg may override):

- ``idle_checkin_s`` (``CASCADE_IDLE_CHECKIN_S``, 8 s): caller silence, after the agent finished speaking,
  before the agent checks in ("Are you still there?"). 0 turns check-ins off.
- ``idle_hangup_s`` (``CASCADE_IDLE_HANGUP_S``, 7 s): further silence after the check-in before the agent
  says goodbye and hangs up.
- ``max_call_s`` (``CASCADE_MAX_CALL_S``, 900 s): the call ends politely (a goodbye, then a hang-up) once
  it has lasted this long. 0: no limit.
- ``llm_early_start`` (``CASCADE_LLM_EARLY_START``, on): start transcription and the chat request on a
  *likely* end of turn (a shorter pause) and throw the answer away if the caller goes on; saves the
  difference between the two pauses on every turn at the price of some wasted requests.
- ``stt_rate`` (``CASCADE_STT_RATE``, 16000): the utterance's WAV rate, 8000 or 16000 Hz.
- ``request_timeout_s`` (``CASCADE_REQUEST_TIMEOUT_S``, 10 s): bound on a transcription, and on the wait
  for a stream's first byte and every later gap in it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final
from urllib.parse import urlsplit

from bridge._errors import ConfigError
from bridge._secret import Secret

__all__ = ["CASCADE_VARIABLES", "DEFAULT_LLM_URL", "DEFAULT_STT_URL", "DEFAULT_TTS_URL", "CascadeSettings"]

DEFAULT_STT_URL: Final = "https://api.openai.com/v1/audio/transcriptions"
DEFAULT_LLM_URL: Final = "https://api.openai.com/v1/chat/completions"
DEFAULT_TTS_URL: Final = "https://api.openai.com/v1/audio/speech"
_OPENAI_HOST: Final = "api.openai.com"
#: Every variable :meth:`CascadeSettings.from_env` reads (``OPENAI_API_KEY`` is the configuration's own).
CASCADE_VARIABLES: Final = (
    "CASCADE_STT_URL", "CASCADE_LLM_URL", "CASCADE_TTS_URL", "CASCADE_STT_MODEL", "CASCADE_LLM_MODEL",
    "CASCADE_TTS_MODEL", "CASCADE_TTS_VOICE", "CASCADE_API_KEY", "CASCADE_STT_RATE",
    "CASCADE_REQUEST_TIMEOUT_S", "CASCADE_IDLE_CHECKIN_S", "CASCADE_IDLE_HANGUP_S", "CASCADE_MAX_CALL_S",
    "CASCADE_LLM_EARLY_START",
)


def _url(var: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(var, f"{var} must be an http(s):// URL with a host, got {raw!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # A key pasted into the URL would show in every log line that names the endpoint.
        raise ConfigError(var, f"{var} must not carry credentials, a query or a fragment")
    return raw


def _name(var: str, raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 200 or any(c.isspace() for c in value):
        raise ConfigError(var, f"{var} must be a non-empty name without spaces, got {raw!r}")
    return value


def _seconds(var: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(var, f"{var} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(var, f"{var} must be between {lo:g} and {hi:g} seconds, got {raw!r}")
    return value


def _flag(var: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(var, f"{var} must be true or false (1/0, yes/no, on/off), got {raw!r}")


@dataclass(frozen=True, slots=True, repr=False)
class CascadeSettings:
    """Everything the cascade needs to reach its endpoints and pace a call (see the module docstring)."""

    stt_url: str = DEFAULT_STT_URL
    llm_url: str = DEFAULT_LLM_URL
    tts_url: str = DEFAULT_TTS_URL
    stt_model: str = "gpt-4o-mini-transcribe"
    llm_model: str = "gpt-4o-mini"
    tts_model: str = "gpt-4o-mini-tts"
    tts_voice: str = "alloy"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    stt_rate: int = 16000
    request_timeout_s: float = 10.0
    idle_checkin_s: float = 8.0
    idle_hangup_s: float = 7.0
    max_call_s: float = 900.0
    llm_early_start: bool = True

    def __post_init__(self) -> None:
        for name in ("stt_url", "llm_url", "tts_url"):
            _url(name, getattr(self, name))
        if self.stt_rate not in (8000, 16000):
            raise ValueError(f"stt_rate must be 8000 or 16000, got {self.stt_rate!r}")
        for name in ("request_timeout_s", "idle_checkin_s", "idle_hangup_s", "max_call_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require_key: bool = True) -> CascadeSettings:
        """Reads ``CASCADE_*`` (and ``OPENAI_API_KEY`` as the key's fallback) from ``env``.

        ``require_key``: refuse OpenAI's endpoints without a key (the configuration asks it only when
        ``AGENT=cascade``; a call that picks the cascade without one meets a counted, spoken 401).

        Raises:
            ConfigError: a value cannot be used; names the variable, never echoes the key.
        """

        def get(var: str) -> str | None:
            raw = env.get(var)
            return raw if raw is not None and raw.strip() != "" else None

        values: dict[str, object] = {}
        for var, name in (
            ("CASCADE_STT_URL", "stt_url"),
            ("CASCADE_LLM_URL", "llm_url"),
            ("CASCADE_TTS_URL", "tts_url"),
        ):
            if (raw := get(var)) is not None:
                values[name] = _url(var, raw.strip())
        for var, name in (
            ("CASCADE_STT_MODEL", "stt_model"),
            ("CASCADE_LLM_MODEL", "llm_model"),
            ("CASCADE_TTS_MODEL", "tts_model"),
            ("CASCADE_TTS_VOICE", "tts_voice"),
        ):
            if (raw := get(var)) is not None:
                values[name] = _name(var, raw)
        if (raw := get("CASCADE_STT_RATE")) is not None:
            if raw.strip() not in ("8000", "16000"):
                raise ConfigError("CASCADE_STT_RATE", f"CASCADE_STT_RATE must be 8000 or 16000, got {raw!r}")
            values["stt_rate"] = int(raw)
        for var, name, lo, hi in (
            ("CASCADE_REQUEST_TIMEOUT_S", "request_timeout_s", 0.1, 300.0),
            ("CASCADE_IDLE_CHECKIN_S", "idle_checkin_s", 0.0, 3600.0),
            ("CASCADE_IDLE_HANGUP_S", "idle_hangup_s", 0.0, 3600.0),
            ("CASCADE_MAX_CALL_S", "max_call_s", 0.0, 7 * 86400.0),
        ):
            if (raw := get(var)) is not None:
                values[name] = _seconds(var, raw, lo, hi)
        if (raw := get("CASCADE_LLM_EARLY_START")) is not None:
            values["llm_early_start"] = _flag("CASCADE_LLM_EARLY_START", raw)
        key_var = "CASCADE_API_KEY" if get("CASCADE_API_KEY") is not None else "OPENAI_API_KEY"
        key = (get(key_var) or "").strip()
        if any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigError(key_var, f"{key_var} must be one token without spaces (value not shown)")
        values["api_key"] = Secret(key)
        settings = cls(**values)  # type: ignore[arg-type]
        if not key and require_key:
            for name in ("stt_url", "llm_url", "tts_url"):
                if urlsplit(getattr(settings, name)).hostname == _OPENAI_HOST:
                    raise ConfigError(
                        "CASCADE_API_KEY",
                        f"CASCADE_API_KEY (or OPENAI_API_KEY) is needed: {name} is OpenAI's "
                        f"({getattr(settings, name)})",
                    )
        return settings

    def redacted(self) -> dict[str, str]:
        """Every setting as text, the key masked."""
        return {
            f.name: str(getattr(self, f.name))
            if f.name != "api_key"
            else ("********" if self.api_key else "(unset)")
            for f in fields(self)
        }

    def __repr__(self) -> str:
        return "CascadeSettings(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

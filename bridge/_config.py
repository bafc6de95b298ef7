"""Configuration: one typed, immutable object built once at start.

Sources, strongest first: the process environment, then a ``.env`` file in the
working directory. Every value is validated here, and a bad one is a
:class:`~bridge._errors.ConfigError` that names the variable. Secrets are
wrapped in :class:`Secret` so that no repr, log line or error can show them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dotenv import dotenv_values

from bridge._errors import ConfigError
from bridge._secret import Secret
from bridge.agents._settings import AGENTS, DeepgramSettings, OpenAISettings
from bridge.agents.speakr._wire import validate_field

__all__ = ["Config", "Secret", "load_config"]


def _redact(value: object) -> str:
    if value is None or (isinstance(value, Secret) and not value):
        return "(unset)"
    return str(value)


@dataclass(frozen=True, slots=True, repr=False)
class Config:
    """Everything the bridge reads from its environment (see CONTRACT.md)."""

    speakr_ws_url: str | None = None
    speakr_api_key: Secret = field(default_factory=lambda: Secret(""))
    voice_id: str = "jill"
    system_prompt: str = "You are a helpful assistant"
    temperature: float = 0.7
    threshold: float = 0.18
    silence_duration_ms: int = 1000
    prefix_padding: float = 0.7
    public_url: str | None = None
    twilio_auth_token: Secret = field(default_factory=lambda: Secret(""))
    twilio_account_sid: str | None = None
    twilio_from_number: str | None = None
    #: Twilio's REST API; changed only for a proxy or a local stand-in (tests, the demo).
    twilio_api_base_url: str = "https://api.twilio.com"
    bridge_api_token: Secret = field(default_factory=lambda: Secret(""))
    max_concurrent_calls: int = 200
    log_format: str = "console"
    # Operational limits, with the environment names in _TUNING below.
    agent_connect_timeout_s: float = 5.0
    agent_ready_timeout_s: float = 5.0
    stream_start_timeout_s: float = 10.0
    #: A started stream from which no audio arrives this long is dead (Twilio sends media every 20 ms).
    stream_idle_timeout_s: float = 5.0
    drain_timeout_s: float = 30.0
    agent_stall_timeout_s: float = 5.0
    bridge_token_ttl_s: float = 300.0
    #: Redis/Valkey shared by a fleet (may carry a password: a Secret). Unset: the embedded store.
    redis_url: Secret = field(default_factory=lambda: Secret(""))
    #: Where each call's stereo recording is written; None: no recordings.
    recordings_dir: str | None = None
    #: Recordings older than this are deleted (checked at start and hourly); 0 keeps them for ever.
    recordings_max_age_days: float = 30.0
    #: After each call its record is POSTed here, signed with BRIDGE_API_TOKEN.
    call_webhook_url: str | None = None
    #: Call records kept in the store: at most this many, each for at most this long after its last change.
    call_records_max: int = 10_000
    call_records_max_age_s: float = 24 * 3600.0
    #: Which backend answers calls (a call's ``agent`` parameter may pick another).
    agent: str = "speakr"
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)

    def agent_url(self) -> str | None:
        """The Speakr URL with ``api_key`` added to its query. Contains the key: never log it."""
        if self.speakr_ws_url is None:
            return None
        return with_api_key(self.speakr_ws_url, self.speakr_api_key.reveal())

    def secrets(self) -> tuple[Secret, ...]:
        """Every key, token and password configured: registered with the log scrubber at start."""
        return (
            self.speakr_api_key, self.twilio_auth_token, self.bridge_api_token,
            self.openai.api_key, self.deepgram.api_key,
        )

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self.redacted().items()) + ")"

    def redacted(self) -> dict[str, str]:
        """Every setting as text for ``doctor`` and start-up logs, secrets masked."""
        shown = {f.name: _redact(getattr(self, f.name)) for f in fields(self)}
        if self.speakr_ws_url:
            shown["speakr_ws_url"] = _mask_query(self.speakr_ws_url)
        return shown


def _mask_query(url: str) -> str:
    """Hide every query value of a URL (someone may have put a key there by hand)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    masked = [(k, "********") for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(masked, safe="*")))


def with_api_key(url: str, api_key: str) -> str:
    """Add ``api_key`` to ``url``'s query string, URL-encoded, keeping what is there."""
    if not api_key:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "api_key"]
    query.append(("api_key", api_key))
    return urlunsplit(parts._replace(query=urlencode(query)))


# name of the env variable -> (Config field, parser)
def _str(var: str, raw: str) -> str:
    return raw


def _ws_url(var: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(var, f"{var} must be a ws:// or wss:// URL with a host, got {raw!r}")
    return raw


def _http_url(var: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(var, f"{var} must be an http(s):// URL with a host, got {raw!r}")
    if parts.query or parts.fragment:
        raise ConfigError(var, f"{var} must not carry a query or fragment, got {raw!r}")
    return raw.rstrip("/")


def _webhook_url(var: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(var, f"{var} must be an http(s):// URL with a host, got {raw!r}")
    return raw


def _redis_url(var: str, raw: str) -> Secret:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(var, "must be a redis://, rediss:// or unix:// URL")
    return Secret(raw)


def _secret(var: str, raw: str) -> Secret:
    return Secret(raw)


def _float_in(lo: float, hi: float) -> Any:
    def parse(var: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(var, f"{var} must be a number, got {raw!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ConfigError(var, f"{var} must be between {lo} and {hi}, got {raw!r}")
        return value

    return parse


def _int_in(lo: int, hi: int) -> Any:
    def parse(var: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(var, f"{var} must be a whole number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(var, f"{var} must be between {lo} and {hi}, got {raw!r}")
        return value

    return parse


def _start_field(wire: str) -> Any:
    """A parser for a start-message default, with the protocol module's ranges (one source of truth)."""

    def parse(var: str, raw: str) -> Any:
        try:
            return validate_field(wire, raw)
        except ValueError as exc:
            raise ConfigError(var, f"{var}: {exc}") from None

    return parse


def _agent(var: str, raw: str) -> str:
    name = raw.lower()
    if name not in AGENTS:
        raise ConfigError(var, f"{var} must be one of {', '.join(AGENTS)}, got {raw!r}")
    return name


def _log_format(var: str, raw: str) -> str:
    if raw not in ("console", "json"):
        raise ConfigError(var, f"{var} must be 'console' or 'json', got {raw!r}")
    return raw


_VARIABLES: dict[str, tuple[str, Any]] = {
    "SPEAKR_WS_URL": ("speakr_ws_url", _ws_url),
    "SPEAKR_API_KEY": ("speakr_api_key", _secret),
    "SPEAKR_VOICE_ID": ("voice_id", _start_field("voice_id")),
    "SPEAKR_SYSTEM_PROMPT": ("system_prompt", _start_field("system_prompt")),
    "SPEAKR_TEMPERATURE": ("temperature", _start_field("temperature")),
    "SPEAKR_THRESHOLD": ("threshold", _start_field("threshold")),
    "SPEAKR_SILENCE_DURATION_MS": ("silence_duration_ms", _start_field("silenceDuration")),
    "SPEAKR_PREFIX_PADDING": ("prefix_padding", _start_field("prefixPadding")),
    "AGENT": ("agent", _agent),
    "PUBLIC_URL": ("public_url", _http_url),
    "TWILIO_AUTH_TOKEN": ("twilio_auth_token", _secret),
    "TWILIO_ACCOUNT_SID": ("twilio_account_sid", _str),
    "TWILIO_FROM_NUMBER": ("twilio_from_number", _str),
    "TWILIO_API_BASE_URL": ("twilio_api_base_url", _http_url),
    "BRIDGE_API_TOKEN": ("bridge_api_token", _secret),
    "MAX_CONCURRENT_CALLS": ("max_concurrent_calls", _int_in(1, 100_000)),
    "LOG_FORMAT": ("log_format", _log_format),
    "REDIS_URL": ("redis_url", _redis_url),
    "RECORDINGS_DIR": ("recordings_dir", _str),
    "RECORDINGS_MAX_AGE_DAYS": ("recordings_max_age_days", _float_in(0.0, 36500.0)),
    "CALL_WEBHOOK_URL": ("call_webhook_url", _webhook_url),
    "CALL_RECORDS_MAX": ("call_records_max", _int_in(1, 10_000_000)),
    "CALL_RECORDS_MAX_AGE_S": ("call_records_max_age_s", _float_in(60.0, 366 * 86400.0)),
    # Operational tuning; defaults suit a real phone line.
    "BRIDGE_AGENT_CONNECT_TIMEOUT_S": ("agent_connect_timeout_s", _float_in(0.1, 120.0)),
    "BRIDGE_AGENT_READY_TIMEOUT_S": ("agent_ready_timeout_s", _float_in(0.1, 120.0)),
    "BRIDGE_STREAM_START_TIMEOUT_S": ("stream_start_timeout_s", _float_in(0.1, 120.0)),
    "BRIDGE_STREAM_IDLE_TIMEOUT_S": ("stream_idle_timeout_s", _float_in(0.5, 120.0)),
    "BRIDGE_DRAIN_TIMEOUT_S": ("drain_timeout_s", _float_in(0.0, 3600.0)),
    "BRIDGE_AGENT_STALL_TIMEOUT_S": ("agent_stall_timeout_s", _float_in(0.1, 120.0)),
}



#: Every variable ``load_config`` reads (``.env.example`` documents each one; a test holds it to that).
VARIABLES = (*_VARIABLES, "AGENT_SYSTEM_PROMPT", "OPENAI_API_KEY", "OPENAI_REALTIME_URL", "OPENAI_VOICE",
             "DEEPGRAM_API_KEY", "DEEPGRAM_AGENT_URL")


def load_config(
    environ: Mapping[str, str] | None = None, *, dotenv_path: str | os.PathLike[str] | None = ".env"
) -> Config:
    """Build the configuration from ``environ`` (default ``os.environ``) over ``.env``.

    Raises:
        ConfigError: a variable is malformed or out of range; the message names it.
    """
    merged: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for var, (name, parse) in _VARIABLES.items():
        raw = merged.get(var)
        if raw is None or raw.strip() == "":
            continue
        values[name] = parse(var, raw if var == "SPEAKR_SYSTEM_PROMPT" else raw.strip())
    prompt = merged.get("AGENT_SYSTEM_PROMPT")
    if prompt is not None and prompt.strip():  # the agent-neutral name wins over SPEAKR_SYSTEM_PROMPT
        values["system_prompt"] = _start_field("system_prompt")("AGENT_SYSTEM_PROMPT", prompt)
    values["openai"] = OpenAISettings.from_env(merged)
    values["deepgram"] = DeepgramSettings.from_env(merged)
    return Config(**values)

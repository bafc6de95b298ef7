"""Logging set-up: console or one JSON object per line, secrets scrubbed.

Call lines carry ``call_sid``, ``stream_sid`` and ``session_id`` as record
attributes (see ``bridge._call._CallLog``); the JSON format emits them as
fields. As a second line of defence behind :class:`bridge._config.Secret`,
a filter replaces any registered secret value that still reaches a message.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

__all__ = ["configure_logging", "register_secret", "JsonFormatter"]

_SECRETS: set[str] = set()
_CALL_FIELDS = ("call_sid", "stream_sid", "session_id")


def register_secret(value: str) -> None:
    """Never let ``value`` appear in a log line (values shorter than 4 are ignored)."""
    if len(value) >= 4:
        _SECRETS.add(value)


def _scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "********")
    return text


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = _scrub(record.getMessage())
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, call ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CALL_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = _scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


_HANDLER_NAME = "speakr-bridge"


def configure_logging(log_format: str = "console", level: int = logging.INFO) -> None:
    """Give the ``bridge`` loggers one handler of ours (idempotent).

    Where the host program already configured logging (handlers on the root
    logger: pytest, an embedding app), bridge records propagate to it instead
    and only the level is set here (secrets are kept out by ``Secret`` first;
    the scrubbing filter on our handler is the second line of defence).
    """
    root = logging.getLogger("bridge")
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    if logging.getLogger().handlers:
        root.propagate = True
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_ScrubFilter())
    root.addHandler(handler)
    root.propagate = False

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

__all__ = ["configure_logging", "register_secret", "scrub", "JsonFormatter", "LogThrottle"]

_SECRETS: set[str] = set()
_CALL_FIELDS = ("call_sid", "stream_sid", "session_id")


def register_secret(value: str) -> None:
    """Never let ``value`` appear in a log line (values shorter than 4 are ignored)."""
    if len(value) >= 4:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by asterisks (for any output, not only logs)."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "********")
    return text


class LogThrottle:
    """Which occurrences of a repeated event get a log line: the first ``first`` per key, then every
    ``every``-th.

    A peer that repeats something thousands of times a second (bad input, ``info``, ``continue``,
    audio that has to be dropped) must not become thousands of log lines: the counters stay exact,
    only the lines are thinned. Keys come from a fixed set in the caller's code, so the table stays
    small.
    """

    __slots__ = ("first", "every", "_seen")

    def __init__(self, first: int, every: int) -> None:
        if first < 0 or every < 1:
            raise ValueError(f"need first >= 0 and every >= 1, got {first!r}, {every!r}")
        self.first = first
        self.every = every
        self._seen: dict[str, int] = {}

    def seen(self, key: str) -> int | None:
        """Count one occurrence of ``key``: its running count if this one is to be logged, else None."""
        n = self._seen[key] = self._seen.get(key, 0) + 1
        return n if n <= self.first or n % self.every == 0 else None


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = scrub(record.getMessage())
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
            entry["exception"] = scrub(self.formatException(record.exc_info))
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

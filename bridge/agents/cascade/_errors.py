"""The cascade's one error class: which stage failed and how, in two fixed labels fit for a metric.

Every failure of the three HTTP legs (speech-to-text, chat, text-to-speech) becomes a :class:`CascadeError`
with a ``stage`` from :data:`STAGES` and a ``kind`` from :data:`CASCADE_ERROR_KINDS`, so the leg can answer
each with a spoken apology or a retry and count it by ``(stage, kind)``. The detail never carries a key:
it is built from status codes, exception type names and bounded previews of what the server said.
"""

from __future__ import annotations

from typing import Final

from bridge._errors import BridgeError

__all__ = ["CASCADE_ERROR_KINDS", "STAGES", "CascadeError"]

#: The three legs of the cascade.
STAGES: Final[frozenset[str]] = frozenset({"stt", "llm", "tts"})

#: Every value ``CascadeError.kind`` may take. Metric labels: keep the set small and fixed.
CASCADE_ERROR_KINDS: Final[frozenset[str]] = frozenset(
    {
        "timeout",  # no (complete) answer within the bound
        "connect",  # the connection failed or broke before an answer
        "rate_limited",  # HTTP 429
        "http_4xx",  # any other 4xx (401 for a bad key among them)
        "http_5xx",  # a 5xx, or an error the server reported inside a stream
        "malformed",  # an answer we cannot read (bad JSON, bad SSE, wrong shape, bad audio)
        "incomplete",  # a stream that ended before its end ([DONE], or the last audio byte)
        "empty",  # a well-formed answer with nothing in it (an empty transcript or reply)
    }
)

_MAX_DETAIL_CHARS: Final = 300


class CascadeError(BridgeError):
    """A cascade endpoint failed; ``stage`` and ``kind`` say where and how.

    Attributes:
        stage: one of :data:`STAGES`.
        kind: one of :data:`CASCADE_ERROR_KINDS`.
        detail: a short explanation without secrets (cut to 300 characters).
        status: the HTTP status, when there was one.
    """

    def __init__(self, stage: str, kind: str, detail: str = "", status: int | None = None) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown cascade stage {stage!r}")
        if kind not in CASCADE_ERROR_KINDS:
            raise ValueError(f"unknown cascade error kind {kind!r}")
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(stage, kind, detail, status)
        self.stage = stage
        self.kind = kind
        self.detail = detail
        self.status = status

    def __str__(self) -> str:
        text = f"cascade {self.stage} error ({self.kind})"
        if self.status is not None:
            text += f" HTTP {self.status}"
        return f"{text}: {self.detail}" if self.detail else text

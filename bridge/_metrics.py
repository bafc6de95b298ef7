"""Prometheus metrics, one registry per app.

Theory of operation: prometheus-client objects take a lock on every update,
which is too dear for the per-frame path (50 frames a second per direction
per call). A call therefore counts frames and bytes in plain integers
(:class:`CallCounters`) and folds them into the registry about once a second
and when it ends. Everything that is rare (errors, barge-in events, call
ends) goes straight to the registry. No label ever carries a secret or a
caller-controlled string: labels are fixed, short vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "CallCounters", "AGENT_INFO_KINDS", "STATUS_CALLBACK_STATUSES", "bounded_label"]

#: ``bridge_agent_info_total{kind}``: the agent's ``info`` codes we know. Any other code is counted as
#: ``other`` (and still logged, throttled, with its text): a label taken from a peer would let it
#: grow ``/metrics`` and the process's memory without bound, one series per distinct code.
AGENT_INFO_KINDS = frozenset({
    "message", "error", "warning", "notice", "invalid_api_key", "unauthorized", "bad_param", "bad_parameter",
    "invalid_parameter", "bad_request", "rate_limited", "quota_exceeded", "timeout", "internal_error",
})
#: ``bridge_status_callbacks_total{status}``: Twilio's call statuses and stream events; anything else
#: is ``other``.
STATUS_CALLBACK_STATUSES = frozenset({
    "queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer",
    "canceled", "stream-started", "stream-stopped", "stream-error", "unknown",
})


def bounded_label(value: str, vocabulary: frozenset[str]) -> str:
    """``value`` if it is in ``vocabulary``, else ``"other"``: a label a peer cannot multiply."""
    return value if value in vocabulary else "other"

_HOP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_READY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The bridge's metrics in a registry of their own (tests make many apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls_active = Gauge("bridge_calls_active", "Calls in progress", registry=r)
        self.calls_total = Counter("bridge_calls", "Calls started (stream accepted)", registry=r)
        self.calls_ended = Counter(
            "bridge_calls_ended", "Calls ended, by reason", ["reason"], registry=r
        )
        self.calls_rejected = Counter(
            "bridge_calls_rejected", "Calls refused before bridging, by reason", ["reason"], registry=r
        )
        self.frames = Counter(
            "bridge_frames", "WebSocket audio messages, by direction", ["direction"], registry=r
        )
        self.audio_bytes = Counter(
            "bridge_audio_bytes", "Audio payload bytes, by direction", ["direction"], registry=r
        )
        self.dropped = Counter(
            "bridge_dropped", "Messages or audio dropped, by reason", ["reason"], registry=r
        )
        self.protocol_errors = Counter(
            "bridge_protocol_errors", "Malformed or unexpected input, by peer and kind",
            ["peer", "kind"], registry=r,
        )
        self.agent_info = Counter("bridge_agent_info", "Speakr info events, by kind", ["kind"], registry=r)
        self.barge_in = Counter(
            "bridge_barge_in_events", "Speakr pause/continue/clear events", ["event"], registry=r
        )
        self.marks = Counter(
            "bridge_marks", "Twilio marks returned, by outcome (played/cleared/unknown)", ["outcome"],
            registry=r,
        )
        self.statuses = Counter("bridge_status_sent", "Playback statuses sent to Speakr", registry=r)
        self.dtmf = Counter("bridge_dtmf", "DTMF digits received from callers", registry=r)
        self.webhooks = Counter(
            "bridge_webhooks", "Twilio HTTP requests, by route and outcome", ["route", "outcome"], registry=r
        )
        self.status_callbacks = Counter(
            "bridge_status_callbacks", "Twilio status callbacks, by status", ["status"], registry=r
        )
        self.hop_latency = Histogram(
            "bridge_hop_latency_seconds", "Time from receiving audio to forwarding it, by direction",
            ["direction"], buckets=_HOP_BUCKETS, registry=r,
        )
        self.agent_ready = Histogram(
            "bridge_agent_ready_seconds", "Twilio start to Speakr ready", buckets=_READY_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(slots=True)
class CallCounters:
    """Per-call hot-path counters, folded into :class:`Metrics` by :meth:`flush`."""

    twilio_frames_in: int = 0
    twilio_bytes_in: int = 0
    speakr_frames_out: int = 0
    speakr_bytes_out: int = 0
    speakr_media_in: int = 0
    speakr_bytes_in: int = 0
    twilio_media_out: int = 0
    twilio_bytes_out: int = 0

    def flush(self, metrics: Metrics) -> None:
        """Add what was counted since the last flush to the registry, then start again."""
        f, b = metrics.frames, metrics.audio_bytes
        if self.twilio_frames_in:
            f.labels("twilio_in").inc(self.twilio_frames_in)
            b.labels("twilio_in").inc(self.twilio_bytes_in)
        if self.speakr_frames_out:
            f.labels("speakr_out").inc(self.speakr_frames_out)
            b.labels("speakr_out").inc(self.speakr_bytes_out)
        if self.speakr_media_in:
            f.labels("speakr_in").inc(self.speakr_media_in)
            b.labels("speakr_in").inc(self.speakr_bytes_in)
        if self.twilio_media_out:
            f.labels("twilio_out").inc(self.twilio_media_out)
            b.labels("twilio_out").inc(self.twilio_bytes_out)
        for fld in fields(self):
            setattr(self, fld.name, 0)

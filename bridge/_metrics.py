"""Prometheus metrics, one registry per app.

Theory of operation: prometheus-client objects take a lock on every update,
which is too dear for the per-frame path (50 frames a second per direction
per call). A call therefore counts frames and bytes in plain integers
(:class:`CallCounters`) and folds them into the registry about once a second
and when it ends. The per-message hop-latency histogram is a
:class:`HopHistogram`: plain bucket counts and a sum, updated without a lock
(every call of a process runs in one Trio thread, and ``/metrics`` is served
from that same thread), read by the registry as a collector at scrape time,
so its buckets, ``_sum`` and ``_count`` are exact. Everything that is rare
(errors, barge-in events, call ends) goes straight to the registry. No label
ever carries a secret or a caller-controlled string: labels are fixed, short
vocabularies.

Several worker processes (``serve --workers N``): ``serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory before it starts them, so
prometheus-client keeps every value in a per-process file there and
:meth:`Metrics.render` sums the files of all workers: one scrape counts the
whole server. Gauges say how to combine processes (``livesum`` for calls in
progress: a dead worker's calls are not). A collector's in-memory counts are
not in those files, so in that mode the hop latency is a prometheus-client
``Histogram`` again (same name, labels and buckets; the lock-free one is for
the single process). Without the variable (one process, tests that build many
apps) each app has its own in-memory registry.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "AGENT_INFO_KINDS",
    "STATUS_CALLBACK_STATUSES",
    "CallCounters",
    "HopChild",
    "HopHistogram",
    "Metrics",
    "bounded_label",
]

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
#: How prometheus-client writes a bucket bound (``1.0``, ``+Inf``), so ours read the same.
_le: Callable[[float], str] = floatToGoString
_READY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class HopChild:
    """One direction's hop latencies: a count per bucket (the last one is ``+Inf``) and their sum.

    ``observe`` is the per-message path: a bisect and two additions, no lock, no label lookup.
    """

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count one latency, in seconds (a bucket counts values <= its bound, as Prometheus's ``le``)."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class HopHistogram(Collector):
    """``bridge_hop_latency_seconds`` by direction, exposed exactly as a prometheus-client
    ``Histogram`` would be (buckets, ``_count``, ``_sum``, ``_created``), at a fraction of its
    per-observation cost."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self._children: dict[str, HopChild] = {}
        registry.register(self)

    def labels(self, direction: str) -> HopChild:
        """The child for one direction (created on first use, like a labelled metric's)."""
        child = self._children.get(direction)
        if child is None:
            child = self._children[direction] = HopChild(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["direction"])
        for direction, child in sorted(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            family.add_metric([direction], buckets, child.sum)
            family.add_sample(f"{self.name}_created", {"direction": direction}, child.created)
        yield family


class Metrics:
    """The bridge's metrics in a registry of their own (tests make many apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls_active = Gauge(
            "bridge_calls_active", "Calls in progress", registry=r, multiprocess_mode="livesum"
        )
        self.store_up = Gauge(
            "bridge_store_up", "1 while the shared store answers (0 in any worker that finds it down)",
            registry=r, multiprocess_mode="livemin",
        )
        self.store_up.set(1)
        self.store_errors = Counter(
            "bridge_store_errors", "Shared-store operations that failed, by operation", ["op"], registry=r
        )
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
        self.web = Counter(
            "bridge_web_requests", "Browser-page requests (sign-in, pages), by route and outcome",
            ["route", "outcome"], registry=r,
        )
        self.status_callbacks = Counter(
            "bridge_status_callbacks", "Twilio status callbacks, by status", ["status"], registry=r
        )
        hop_name = "bridge_hop_latency_seconds"
        hop_doc = "Time from receiving audio to forwarding it, by direction"
        self.hop_latency: HopHistogram | Histogram = (
            Histogram(hop_name, hop_doc, ["direction"], buckets=_HOP_BUCKETS, registry=r)
            if _multiprocess()
            else HopHistogram(hop_name, hop_doc, buckets=_HOP_BUCKETS, registry=r)
        )
        self.dashboard_poll = Histogram(
            "bridge_dashboard_poll_seconds", "One read of the store for the dashboard (while watched)",
            buckets=_READY_BUCKETS, registry=r,
        )
        self.agent_ready = Histogram(
            "bridge_agent_ready_seconds", "Twilio start to the agent ready for caller audio",
            buckets=_READY_BUCKETS, registry=r,
        )
        self.turn_latency = Histogram(
            "bridge_turn_latency_seconds",
            "End of the caller's turn to the agent's first audio: source=bridge (the agent's VAD said the "
            "caller stopped, to our first audio sent to Twilio) or source=agent (latency the agent reports)",
            ["agent", "source"], buckets=_TURN_BUCKETS, registry=r,
        )
        self.agent_errors = Counter(
            "bridge_agent_errors", "Errors the agent reported (OpenAI error, Deepgram Error), by code",
            ["agent", "code"], registry=r,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format (every worker's, in multiprocess mode)."""
        if _multiprocess():
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(self.registry)


#: A turn's latency: from a fast local model (~0.3 s) to a slow cascade (several seconds).
_TURN_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)


def _multiprocess() -> bool:
    """True in a worker of ``serve --workers N`` (see the module docstring)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass(slots=True)
class CallCounters:
    """Per-call hot-path counters, folded into :class:`Metrics` by :meth:`flush`."""

    twilio_frames_in: int = 0
    twilio_bytes_in: int = 0
    agent_frames_out: int = 0
    agent_bytes_out: int = 0
    agent_media_in: int = 0
    agent_bytes_in: int = 0
    twilio_media_out: int = 0
    twilio_bytes_out: int = 0
    #: The ``direction`` labels of the agent's side: ``<backend>_out`` / ``<backend>_in`` (``speakr_out``...).
    agent_out: str = "speakr_out"
    agent_in: str = "speakr_in"

    def name_agent(self, backend: str) -> None:
        self.agent_out, self.agent_in = f"{backend}_out", f"{backend}_in"

    def flush(self, metrics: Metrics) -> None:
        """Add what was counted since the last flush to the registry, then start again."""
        f, b = metrics.frames, metrics.audio_bytes
        if self.twilio_frames_in:
            f.labels("twilio_in").inc(self.twilio_frames_in)
            b.labels("twilio_in").inc(self.twilio_bytes_in)
        if self.agent_frames_out:
            f.labels(self.agent_out).inc(self.agent_frames_out)
            b.labels(self.agent_out).inc(self.agent_bytes_out)
        if self.agent_media_in:
            f.labels(self.agent_in).inc(self.agent_media_in)
            b.labels(self.agent_in).inc(self.agent_bytes_in)
        if self.twilio_media_out:
            f.labels("twilio_out").inc(self.twilio_media_out)
            b.labels("twilio_out").inc(self.twilio_bytes_out)
        for fld in fields(self):
            if fld.type == "int":
                setattr(self, fld.name, 0)

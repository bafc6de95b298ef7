"""The hop-latency histogram: a lock-free stand-in that /metrics cannot tell from the real one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from bridge._metrics import _HOP_BUCKETS, HopHistogram, Metrics

latencies = st.lists(
    st.one_of(st.sampled_from(_HOP_BUCKETS), st.floats(min_value=0.0, max_value=5.0, allow_nan=False)),
    max_size=200,
)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(uplink=latencies, downlink=latencies)
def test_hop_histogram_reports_exactly_what_a_prometheus_histogram_reports(
    uplink: list[float], downlink: list[float]
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hop = HopHistogram("hop_seconds", "doc", buckets=_HOP_BUCKETS, registry=ours)
    reference = Histogram("hop_seconds", "doc", ["direction"], buckets=_HOP_BUCKETS, registry=theirs)
    for direction, values in (("uplink", uplink), ("downlink", downlink)):
        for value in values:
            hop.labels(direction).observe(value)
            reference.labels(direction).observe(value)
    # Buckets and counts exact; the sum too (the same float additions in the same order).
    assert _samples(ours) == _samples(theirs)


def test_hop_histogram_renders_like_a_labelled_histogram_with_its_created_series() -> None:
    metrics = Metrics()
    metrics.hop_latency.labels("uplink").observe(0.002)  # on a bound: counted in le="0.002"
    text = metrics.render().decode()
    assert "# TYPE bridge_hop_latency_seconds histogram" in text
    assert 'bridge_hop_latency_seconds_bucket{direction="uplink",le="0.001"} 0.0' in text
    assert 'bridge_hop_latency_seconds_bucket{direction="uplink",le="0.002"} 1.0' in text
    assert 'bridge_hop_latency_seconds_bucket{direction="uplink",le="+Inf"} 1.0' in text
    assert 'bridge_hop_latency_seconds_count{direction="uplink"} 1.0' in text
    assert 'bridge_hop_latency_seconds_sum{direction="uplink"} 0.002' in text
    assert 'bridge_hop_latency_seconds_created{direction="uplink"}' in text

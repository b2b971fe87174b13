"""The per-frame histogram exports exactly what prometheus_client's own Histogram exports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bridge.ops.metrics import _FAST_BUCKETS, FrameHistogram, Metrics


def _exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus_client adds a _created sample (its creation time); the frame histogram has none.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


values = st.one_of(
    st.sampled_from([0.0, *_FAST_BUCKETS, *(b * (1 + 1e-12) for b in _FAST_BUCKETS), 10.0]),
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
)


@given(st.lists(values, max_size=60))
def test_same_exposition_as_prometheus_client(observed):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    frame = FrameHistogram("callbridge_t_seconds", "doc", _FAST_BUCKETS, ours)
    reference = Histogram("callbridge_t_seconds", "doc", buckets=_FAST_BUCKETS, registry=theirs)
    for value in observed:
        frame.observe(value)
        reference.observe(value)
    assert _exposition(ours) == _exposition(theirs)


def test_a_value_on_a_bound_counts_in_that_bucket():
    registry = CollectorRegistry()
    frame = FrameHistogram("callbridge_t_seconds", "doc", (0.5, 1.0), registry)
    for value in (0.5, 1.0, 1.5):
        frame.observe(value)
    assert registry.get_sample_value("callbridge_t_seconds_bucket", {"le": "0.5"}) == 1
    assert registry.get_sample_value("callbridge_t_seconds_bucket", {"le": "1.0"}) == 2
    assert registry.get_sample_value("callbridge_t_seconds_bucket", {"le": "+Inf"}) == 3
    assert registry.get_sample_value("callbridge_t_seconds_count") == 3
    assert registry.get_sample_value("callbridge_t_seconds_sum") == 3.0


@pytest.mark.parametrize("buckets", [(), (1.0, 0.5), (0.5, 0.5), (float("inf"),)])
def test_bad_buckets_are_refused(buckets):
    with pytest.raises(ValueError, match="buckets"):
        FrameHistogram("callbridge_t_seconds", "doc", buckets, CollectorRegistry())


def test_the_registry_refuses_a_second_family_of_the_same_name():
    registry = CollectorRegistry()
    FrameHistogram("callbridge_t_seconds", "doc", (1.0,), registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("callbridge_t_seconds", "doc", registry=registry)


def test_pacer_lateness_is_exported_by_the_app_registry():
    metrics = Metrics(CollectorRegistry())
    metrics.pacer_lateness.observe(0.003)
    assert metrics.registry.get_sample_value("callbridge_pacer_lateness_seconds_bucket", {"le": "0.005"}) == 1
    assert metrics.registry.get_sample_value("callbridge_pacer_lateness_seconds_bucket", {"le": "0.002"}) == 0

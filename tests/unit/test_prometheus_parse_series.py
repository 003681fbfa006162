"""prometheus_parse's duplicate-series check and bucket bounds, after their speed-ups: exact as before."""

from __future__ import annotations

from typing import Any

from controller.analysis import prometheus_parse
from controller.analysis.prometheus_parse import parse_vector

LABELS = {
    "destination_workload_namespace": "shop",
    "destination_service_name": "reviews",
    "destination_version": "v2",
}


def sample(labels: dict[str, str], value: str = "5") -> dict[str, Any]:
    return {"metric": labels, "value": [1.0, value]}


def test_the_same_series_twice_in_any_label_order_or_with_a_name_blanks_its_workload() -> None:
    first = {**LABELS, "le": "100"}
    reordered = dict(reversed(list(first.items())))
    named = {"__name__": "istio_request_duration_milliseconds_bucket", **first}
    for twin in (reordered, named):
        parsed = parse_vector([sample(first), sample(twin)], "m", "latency", histogram=True)
        assert len(parsed.samples) == 1
        assert "the same series twice" in parsed.problems[("latency", "shop", "reviews", "v2")]


def test_different_series_are_all_kept_with_their_bucket_bounds() -> None:
    result = [sample({**LABELS, "le": le}) for le in ("1", "2.5", "+Inf", "1e3")]
    parsed = parse_vector(result, "m", "latency", histogram=True)
    assert not parsed.problems
    assert [s.le for s in parsed.samples] == [1.0, 2.5, float("inf"), 1000.0]


def test_bad_bucket_bounds_are_still_refused() -> None:
    for le in ("-1", "NaN", "1e999", "one"):
        parsed = parse_vector([sample({**LABELS, "le": le})], "m", "latency", histogram=True)
        assert not parsed.samples and "a bucket bound" in parsed.problems[("latency", "shop", "reviews", "v2")]


def test_two_label_sets_sharing_a_hash_are_told_apart() -> None:
    seen = prometheus_parse._SeenSeries()
    a, b = {"x": "1"}, {"y": "2"}
    seen._first[hash(prometheus_parse._series_identity(b))] = a  # a forced collision: `a` sits under b's hash
    assert seen.twice(b) is False  # a different series, not a duplicate
    assert seen.twice(b) is True
    assert seen.twice(a) is False
    assert seen.twice(dict(a)) is True


def test_the_collector_is_restored_after_parsing() -> None:
    import gc

    assert gc.isenabled()
    parse_vector([sample({**LABELS, "le": "1"})], "m", "latency", histogram=True)
    assert gc.isenabled()
    gc.disable()
    try:
        with prometheus_parse.collector_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()

"""The statistical gate's two new rules, through `evaluate_gates` with per-series raw counters.

- A new *outcome* on a known exporter: a request counter first seen now, whose exporter (its labels without
  the outcome labels) had a series at the previous feed, is counted from 0 (a hard fault's first 5xx counts
  at once). Every other first sight is a baseline only: an exporter never seen, or not seen at the previous
  feed, the first feed of an e-process (a restarted controller), a series forgotten after STALE_TICKS feeds.
- Sticky crossing: once the e-value reached K/alpha the gate stays rejected, whatever later feeds say, and
  its reason quotes the e-value of the crossing; a new run starts uncrossed.
- Evidence written before these fields existed (no `crossed`, no `known`) still loads.

Series keys are built here as `prometheus._add_series` builds them (`series_key`), and
`test_series_keys_are_those_prometheus_source_builds` checks that against the real `PrometheusSource`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.gates import GateReport, Verdict, evaluate_gates
from controller.analysis.metrics import REQUESTS, MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import OUTCOME_LABELS, MetricsRequest, PrometheusSource
from controller.analysis.prometheus_parse import series_id
from controller.analysis.statistical_gate import STALE_TICKS, GateEvidence
from controller.deadline import Deadline
from controller.engine.phases import Phase, RolloutState
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import spec

NAMESPACE, SERVICE = "prod", "shop"
ERRORS = spec(
    """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
analysis: {min_requests: 20}
gates: [{metric: error_rate, mode: statistical}]
"""
)
GATE = "error_rate"
LIMIT = 100.0  # K / alpha = 1 / 0.01


@dataclass(frozen=True)
class Series:
    """One istio_requests_total series: a pod of a version, a client, and how the requests ended."""

    version: str
    code: str = "200"
    pod: str = "a"
    source: str = "gateway"
    flags: str = "-"
    grpc: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            "__name__": "istio_requests_total",
            "reporter": "destination",
            "destination_workload_namespace": NAMESPACE,
            "destination_service_name": SERVICE,
            "destination_version": self.version,
            "pod": f"{self.version}-{self.pod}",
            "source_workload": self.source,
            "response_code": self.code,
            "response_flags": self.flags,
        }
        if self.grpc is not None:
            labels["grpc_response_status"] = self.grpc
        return labels

    @property
    def key(self) -> str:
        """As `prometheus._add_series`: `c<exporter id>.<series id>` (exporter: labels without the outcome)."""
        return f"c{series_id(self.labels, drop=OUTCOME_LABELS)}.{series_id(self.labels)}"

    @property
    def old_key(self) -> str:
        """The key before the change: `c<series id>`, no exporter (state files written by older versions)."""
        return "c" + series_id(self.labels, drop=("__name__", "le"))


Feed = Mapping[Series, float]  # the raw counters Prometheus answers at one feed


def snapshot(feed: Feed, old_keys: bool = False) -> MetricsSnapshot:
    """A snapshot with per-series raw counters (and their sums as totals and window), as `fetch` gives."""
    snap = MetricsSnapshot(window_seconds=30)
    for series, value in feed.items():
        workload = (NAMESPACE, SERVICE, series.version)
        key = series.old_key if old_keys else series.key
        metrics = snap.cumulative_series.setdefault(workload, {}).setdefault(key, VersionMetrics())
        metrics.add_requests(value, series.code, False)
    for workload, by_id in snap.cumulative_series.items():
        total = VersionMetrics()
        for metrics in by_id.values():
            total = total.merged(metrics)
        snap.cumulative[workload] = snap.by_workload[workload] = total
    return snap


def feed_all(feeds: Sequence[Feed], evidence: Mapping[str, GateEvidence] | None = None) -> list[GateReport]:
    """Feed the snapshots in turn, the evidence round-tripping through JSON (as the state file keeps it)."""
    reports = []
    carried = dict(evidence or {})
    for feed in feeds:
        report = evaluate_gates(ERRORS, ("v1",), snapshot(feed), carried)
        carried = {k: GateEvidence.model_validate_json(v.model_dump_json()) for k, v in report.evidence.items()}
        reports.append(report)
    return reports


def evidence_of(report: GateReport) -> GateEvidence:
    return report.evidence[GATE]


def e_value_of(report: GateReport) -> float:
    value = report.results[0].e_value
    assert value is not None
    return value


V1, V2 = Series("v1"), Series("v2")
V2_503 = Series("v2", code="503")


def healthy(second: int, **extra: float) -> dict[Series, float]:
    """v1 serves 90 requests a second, v2 10, no errors; `extra`: more series by name of this module."""
    feed = {V1: 90.0 * second, V2: 10.0 * second}
    feed.update({NAMED[name]: value for name, value in extra.items()})
    return feed


NAMED = {
    "v2_503": V2_503,
    "v2_503_new_pod": Series("v2", code="503", pod="b"),
    "v2_200_new_pod": Series("v2", pod="b"),
    "v2_503_flags": Series("v2", code="503", flags="UF"),
    "v2_503_new_client": Series("v2", code="503", source="batch"),
    "v1_503": Series("v1", code="503"),
}


class RecordingClient:
    """A QueryClient answering the raw request counters with given series."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def query(self, promql: str, deadline: Deadline) -> list[dict[str, Any]]:
        if not promql.startswith("istio_requests_total{"):
            return []
        return [{"metric": s.labels, "value": [0, f"{value:g}"]} for s, value in self.feed.items()]


def test_series_keys_are_those_prometheus_source_builds() -> None:
    feed = {V1: 5.0, V2: 3.0, V2_503: 1.0, NAMED["v2_503_flags"]: 1.0, Series("v2", code="14", grpc="14"): 2.0}
    request = MetricsRequest(NAMESPACE, SERVICE, 30, cumulative_requests=True, windowed=False)
    fetched = PrometheusSource("http://prom", client=RecordingClient(feed)).fetch([request])[request]
    assert fetched.error is None and not fetched.problems
    built = snapshot(feed)
    for workload, by_id in built.cumulative_series.items():
        assert set(fetched.cumulative_series[workload]) == set(by_id)
    # the outcome labels are the only difference between series of one exporter
    exporters = {s.key.split(".")[0] for s in feed if s.version == "v2"}
    assert len(exporters) == 1


def test_a_new_5xx_series_on_an_exporter_seen_at_the_last_feed_counts_at_once() -> None:
    reports = feed_all([healthy(1), healthy(2), healthy(3, v2_503=12)])
    assert e_value_of(reports[1]) == 1.0  # no error yet: the e-process has not moved
    hard_fault = evidence_of(reports[2])
    assert hard_fault.new == (10.0 * 3 + 12 - 10.0, 12.0)  # v2 since the baseline: 20 ok + 12 failed
    assert e_value_of(reports[2]) > LIMIT  # 12 errors at 10 % weight, none on v1: rejected at this feed
    assert reports[2].verdict == Verdict.FAIL
    assert "errors: 12 of 32 requests vs stable (v1) 0 of 180" in reports[2].reasons(Verdict.FAIL)


def test_the_same_series_on_an_exporter_never_seen_is_a_baseline() -> None:
    reports = feed_all([healthy(1), healthy(2), healthy(3, v2_503_new_pod=12, v2_200_new_pod=40)])
    assert evidence_of(reports[2]).new == (20.0, 0.0)  # v2's known pod only
    assert e_value_of(reports[2]) == 1.0 and reports[2].verdict == Verdict.PASS
    # from then on the new pod's counters count as any other series
    later = feed_all([healthy(4, v2_503_new_pod=20, v2_200_new_pod=40)], reports[2].evidence)
    assert evidence_of(later[0]).new == (20.0 + 10.0 + 8.0, 8.0)
    assert e_value_of(later[0]) > 1.0


def test_at_the_first_feed_every_series_is_a_baseline() -> None:
    """Tick 0: a new run, e.g. a restarted controller whose e-process starts afresh."""
    first = feed_all([healthy(60, v2_503=12, v1_503=3)])[0]
    assert evidence_of(first).tick == 1 and evidence_of(first).new == (0.0, 0.0)
    assert e_value_of(first) == 1.0
    assert evidence_of(first).counters[f"v2/{V2_503.key}"] == (12.0, 12.0)
    # the next feed counts the growth only
    after = feed_all([healthy(61, v2_503=13, v1_503=3)], first.evidence)[0]
    assert evidence_of(after).new == (11.0, 1.0)


def test_an_exporter_missing_from_the_last_feed_gives_a_baseline() -> None:
    """v2's pod was seen two feeds ago, not at the last one (a missed scrape): its new series may hold
    requests from before the last feed, so they only set a baseline."""
    missed = {V1: 180.0}
    reports = feed_all([healthy(1), missed, healthy(3, v2_503=12)])
    assert evidence_of(reports[2]).new == (20.0, 0.0)  # the 200 series' growth over two feeds; no error
    assert e_value_of(reports[2]) == 1.0


def test_a_series_forgotten_then_back_is_a_baseline_though_its_exporter_is_seen() -> None:
    start = healthy(1, v2_503=3)  # the 503 series is seen at the first feed (tick 1)
    absent = [healthy(second) for second in range(2, 2 + STALE_TICKS)]  # ticks 2..13: forgotten at tick 13
    reports = feed_all([start, *absent, healthy(2 + STALE_TICKS, v2_503=15)])
    forgotten = evidence_of(reports[-2])
    key = f"v2/{V2_503.key}"
    assert key not in forgotten.counters and key in forgotten.known
    back = evidence_of(reports[-1])
    assert back.new[1] == 0.0 and e_value_of(reports[-1]) == 1.0  # 15 errors not counted: only a baseline
    assert key in back.counters and key in back.known  # never counted from 0 again
    # one feed earlier it was still remembered: back then, its growth counts (15 - 3)
    remembered = feed_all([start, *absent[:-1], healthy(1 + STALE_TICKS, v2_503=15)])
    assert evidence_of(remembered[-1]).new[1] == 12.0


def test_outcome_labels_share_an_exporter_and_other_labels_do_not() -> None:
    """response_flags / response_code / grpc status describe the outcome: a 503 with new flags is a new
    outcome of the same pod and client. Another client (source_workload) is another exporter."""
    flags = feed_all([healthy(1), healthy(2, v2_503_flags=6)])[-1]
    assert evidence_of(flags).new[1] == 6.0
    client = feed_all([healthy(1), healthy(2, v2_503_new_client=6)])[-1]
    assert evidence_of(client).new[1] == 0.0


def crossed_then_clean() -> tuple[GateReport, list[GateReport]]:
    """A hard fault (12 errors) crosses at feed 3; then v1 fails 40 requests a feed while v2 is clean."""
    crossing = feed_all([healthy(1), healthy(2), healthy(3, v2_503=12)])
    after = [healthy(3 + n, v2_503=12, v1_503=40.0 * n) for n in range(1, 6)]
    return crossing[-1], feed_all(after, crossing[-1].evidence)


def test_after_a_crossing_the_gate_stays_failed_and_quotes_the_crossing_e_value() -> None:
    crossing, after = crossed_then_clean()
    crossed_at = e_value_of(crossing)
    assert evidence_of(crossing).crossed == crossed_at >= LIMIT
    assert e_value_of(after[-1]) < 1.0  # the data now say v2 is the better one
    for report in after:
        assert report.verdict == Verdict.FAIL
        assert evidence_of(report).crossed == crossed_at
        reason = report.reasons(Verdict.FAIL)
        assert reason.startswith(f"error_rate of v2: e-value {crossed_at:.4g} >= 100 = K/alpha (1/0.01); ")
        assert report.results[0].e_value == evidence_of(report).e_value  # the value shown is today's


def test_a_fresh_evidence_starts_uncrossed() -> None:
    _, after = crossed_then_clean()
    fresh = evaluate_gates(ERRORS, ("v1",), snapshot(healthy(9, v2_503=12, v1_503=200)), None)
    assert fresh.verdict == Verdict.PASS and evidence_of(fresh).crossed is None
    assert e_value_of(fresh) == 1.0
    # a run that never crossed keeps `crossed` empty however long it runs
    assert all(evidence_of(r).crossed is None for r in feed_all([healthy(s) for s in range(1, 20)]))
    assert evidence_of(after[-1]).crossed is not None  # the old run's evidence is not changed by the new one


def test_an_old_evidence_without_the_new_fields_loads_and_continues(tmp_path: Path) -> None:
    first = feed_all([healthy(1), healthy(2, v1_503=2)])[-1]
    old = json.loads(evidence_of(first).model_dump_json())
    del old["crossed"], old["known"]
    loaded = GateEvidence.model_validate(old)
    assert loaded.crossed is None and loaded.known == set()
    assert loaded.log_e == evidence_of(first).log_e and loaded.counters == evidence_of(first).counters
    # a whole state file written before the change
    store = FileStateStore(tmp_path)
    state = RolloutState(rollout="shop", spec_digest="d", phase=Phase.PROGRESSING, step=0,
                         sequential={GATE: evidence_of(first)})  # fmt: skip
    store.save(state)
    path = tmp_path / "shop.state.json"
    written = json.loads(path.read_text())
    for evidence in written["sequential"].values():
        del evidence["crossed"], evidence["known"]
    path.write_text(json.dumps(written))
    restored = store.load("shop")
    assert restored is not None and restored.sequential[GATE] == loaded
    report = feed_all([healthy(3, v2_503=12, v1_503=2)], restored.sequential)[0]
    assert evidence_of(report).new[1] == 12.0 and report.verdict == Verdict.FAIL


def test_after_an_upgrade_series_keyed_the_old_way_are_never_taken_for_new_outcomes() -> None:
    """An e-process an older version fed (keys `c<series id>`) meets the new keys: every series is new at that
    feed, and none may count from 0 (its exporter was not seen under the new keys): one feed of baselines."""
    carried: dict[str, GateEvidence] = {}
    for second in (1, 2):  # v2 already failed 10 requests: its 503 series exists
        old_feed = snapshot(healthy(second, v2_503=10, v1_503=9 * second), old_keys=True)
        carried = dict(evaluate_gates(ERRORS, ("v1",), old_feed, carried).evidence)
    before = carried[GATE]
    upgraded = feed_all([healthy(3, v2_503=12, v1_503=27)], carried)[0]
    assert evidence_of(upgraded).new == before.new and evidence_of(upgraded).stable == before.stable
    assert e_value_of(upgraded) == before.e_value
    after = feed_all([healthy(4, v2_503=13, v1_503=36)], upgraded.evidence)[0]
    assert evidence_of(after).new[1] - before.new[1] == 1.0  # then growth as usual


@pytest.mark.parametrize("missing", ["error", "problem"])
def test_a_crossed_gate_stays_failed_when_the_ticks_data_is_missing(missing: str) -> None:
    """The crossing is final (the test stopped there): a tick without trusted data cannot un-reject it, so the
    gate stays FAIL with the crossing's reason rather than holding as NO_DATA (which, with
    `on_missing_data: hold`, would keep a version the test rejected in traffic until data returns)."""
    crossing, _ = crossed_then_clean()
    snap = snapshot(healthy(4, v2_503=12))
    if missing == "error":
        snap = MetricsSnapshot(window_seconds=30, error="Prometheus at x did not answer")
    else:
        snap.problems[(REQUESTS, NAMESPACE, SERVICE, "v2")] = "a NaN sample"
    report = evaluate_gates(ERRORS, ("v1",), snap, crossing.evidence)
    assert evidence_of(report).crossed == evidence_of(crossing).crossed  # kept, as it is today
    assert report.verdict == Verdict.FAIL
    assert report.reasons(Verdict.FAIL).startswith(f"error_rate of v2: e-value {evidence_of(crossing).crossed:.4g}")

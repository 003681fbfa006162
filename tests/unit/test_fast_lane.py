"""The fast lane (engine.fast_lane) through the real runner: statistical error gates fed every second
between a rollout's regular ticks, one batched raw-counter fetch for all rollouts, one e-process.

Time is the runner's injected clock (`FakeClock`, also its monotonic clock); `tick()` is called every 0.25 s
of fake time, as a controller loop polling faster than `base_interval()` would. The metric source is our own
(`LiveTraffic`): raw counters per series as a function of the fake clock, keyed as Prometheus' are
(`c<exporter>.<series>`), recording every fetch. Timeline of every scenario: the rollout enters its weight
step at t0 = 1000 s, then regular ticks come every 5 s (1005, 1010, ...) and lane checks every second between.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.analysis.gates import evaluate_gates
from controller.analysis.metrics import RAW_REQUESTS, MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import OUTCOME_LABELS, MetricsRequest, PrometheusSource
from controller.analysis.prometheus_parse import series_id
from controller.analysis.statistical_gate import GateEvidence
from controller.deadline import Deadline
from controller.engine.fast_lane import FAILURE_PAUSE, FastLane
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.state.file_store import FileStateStore
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector
from tests.unit.engine_fixtures import FakeClock, RecordingRouter, spec

T0 = 1000.0  # the rollout enters its weight step (FakeClock's start)
POLL = 0.25  # tick() is called this often
FAULT = 1021.4  # v2 starts failing: after the regular tick at 1020 and the lane check at 1021
GATE = "error_rate"

LANE_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 10, duration: 600s}
gates: [{metric: error_rate, mode: both, max: 5}]
analysis: {min_requests: 20}
schedule: {interval: 5s}
"""


def lane_spec(service: str = "shop", extra: str = "", gates: str | None = None, steps: str | None = None) -> str:
    text = LANE_YAML.replace("service: shop", f"service: {service}") + extra
    if gates is not None:
        text = text.replace("gates: [{metric: error_rate, mode: both, max: 5}]", f"gates: {gates}")
    if steps is not None:
        text = text.replace("  - {weight: 10, duration: 600s}", steps)
    return text


@dataclass(frozen=True)
class Counter:
    """One raw request counter: `rate` requests a second of one outcome, from `start` (created then) to `end`."""

    version: str
    code: str = "200"
    rate: float = 0.0
    start: float = 900.0
    end: float = math.inf
    pod: str = "a"

    def value(self, now: float) -> float | None:
        """None before its first request: Envoy creates a counter lazily."""
        if now <= self.start:
            return None
        return self.rate * (min(now, self.end) - self.start)

    def key(self, namespace: str, service: str) -> str:
        labels = istio(namespace, service, self.version, pod=f"{self.version}-{self.pod}", response_code=self.code,
                       reporter="destination", source_workload="gateway")  # fmt: skip
        return f"c{series_id(labels, drop=OUTCOME_LABELS)}.{series_id(labels)}"


HEALTHY = [Counter("v1", rate=90.0), Counter("v2", rate=10.0)]
# a steady difference: v1 fails 1 %, v2 3 % (the e-value moves at every feed)
NOISY = [Counter("v1", rate=89.1), Counter("v1", "503", 0.9), Counter("v2", rate=9.7), Counter("v2", "503", 0.3)]


@dataclass
class Fetch:
    at: float
    requests: list[MetricsRequest]
    answers: dict[MetricsRequest, MetricsSnapshot]

    @property
    def raw_only(self) -> bool:
        return all(not r.windowed and r.cumulative_requests for r in self.requests)


@dataclass
class LiveTraffic:
    """A MetricSource: every asked service serves `counters`, read at the fake clock's time.

    `lane_failure` is what fetches of raw counters only (the fast lane's) get: "raise", "error" (a snapshot
    error), "problem" (an untrusted raw sample) or "missing" (no answer for the request).
    """

    clock: FakeClock
    counters: list[Counter]
    lane_failure: str | None = None
    tick_errors: frozenset[float] = frozenset()  # times at which the ticks' (windowed) fetches get no answer
    fetches: list[Fetch] = field(default_factory=list)

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        lane = all(not r.windowed for r in requests)
        if lane and self.lane_failure == "raise":
            self.fetches.append(Fetch(self.clock.now, list(requests), {}))
            raise ConnectionError("Prometheus refused the connection")
        answers = {r: self.snapshot(r) for r in requests}
        if lane and self.lane_failure == "missing":
            answers = {}
        for request, snap in answers.items():
            if not lane and self.clock.now in self.tick_errors:
                snap.error = "Prometheus at x did not answer"
            if lane and self.lane_failure == "error":
                snap.error = "Prometheus at x did not answer"
            if lane and self.lane_failure == "problem":
                snap.problems[(RAW_REQUESTS, request.namespace, request.service, None)] = "a NaN sample"
        self.fetches.append(Fetch(self.clock.now, list(requests), answers))
        return answers

    def snapshot(self, request: MetricsRequest) -> MetricsSnapshot:
        snap = MetricsSnapshot(window_seconds=request.window_seconds)
        for counter in self.counters:
            value = counter.value(self.clock.now)
            if value is None:
                continue
            workload = (request.namespace, request.service, counter.version)
            metrics = VersionMetrics()
            metrics.add_requests(value, counter.code, False)
            snap.cumulative_series.setdefault(workload, {})[counter.key(request.namespace, request.service)] = metrics
        for workload, by_id in snap.cumulative_series.items():
            total = VersionMetrics()
            for metrics in by_id.values():
                total = total.merged(metrics)
            snap.cumulative[workload] = total
            if request.windowed:  # the window: all counted so far (plenty of requests, the same error ratio)
                snap.by_workload[workload] = total
        return snap

    def fetches_after(self, at: float) -> list[Fetch]:
        return [f for f in self.fetches if f.at > at]


@dataclass
class Run:
    runner: RolloutRunner
    clock: FakeClock
    traffic: LiveTraffic
    store: FileStateStore
    events: list[tuple[float, TickEvent]] = field(default_factory=list)

    def until(self, end: float) -> Run:
        """tick() every POLL seconds up to and including `end`."""
        while self.clock.now <= end + 1e-9:
            self.events += [(self.clock.now, event) for event in self.runner.tick()]
            self.clock.advance(POLL)
        return self

    def ticked_at(self) -> list[float]:
        return [at for at, _ in self.events]

    def rolled_back_at(self) -> float | None:
        return next((at for at, e in self.events if e.decision.state.phase == Phase.ROLLED_BACK), None)

    def state(self, name: str = "shop") -> tuple[Phase, str]:
        state = self.store.load(name)
        assert state is not None
        return state.phase, state.reason

    @property
    def lane(self) -> FastLane:
        assert self.runner.fast_lane is not None
        return self.runner.fast_lane


def start(
    tmp_path: Path,
    counters: list[Counter],
    texts: Sequence[str] = (LANE_YAML,),
    lane: FastLane | None = None,
    lane_failure: str | None = None,
) -> Run:
    clock = FakeClock(T0)
    traffic = LiveTraffic(clock, counters, lane_failure)
    store = FileStateStore(tmp_path)
    runner = RolloutRunner(RecordingRouter(), traffic, store, clock=clock, fast_lane=lane)
    runner.set_rollouts([ManagedRollout.from_spec(spec(text)) for text in texts])
    return Run(runner, clock, traffic, store)


def hard_fault(at: float) -> list[Counter]:
    """From `at` on, every request to v2 fails: its 200 counter stops, a 503 series appears on its known pod."""
    return [Counter("v1", rate=90.0), Counter("v2", rate=10.0, end=at), Counter("v2", "503", 10.0, start=at)]


HARD_FAULT = hard_fault(FAULT)


@pytest.mark.parametrize("fault", [1020.1, FAULT, 1023.3])
def test_a_hard_fault_between_ticks_rolls_back_at_the_next_lane_check(tmp_path: Path, fault: float) -> None:
    """Lane checks at 1021, 1022, 1023, 1024: the first one after the fault sees 6 to 9 errors on v2 (and
    none on v1), enough to cross (4 are, at 10 % weight): the rollout ticks and rolls back there, within one
    lane interval of the fault, not at the regular tick of 1025."""
    run = start(tmp_path, hard_fault(fault), lane=FastLane()).until(1030)
    rolled_back = run.rolled_back_at()
    assert rolled_back == math.ceil(fault)
    assert fault < rolled_back <= fault + run.lane.interval and rolled_back < 1025.0
    phase, reason = run.state()
    assert phase == Phase.ROLLED_BACK
    assert reason.startswith("gate failed: error_rate of v2: e-value ")
    errors = round(10 * (rolled_back - fault))
    assert f">= 100 = K/alpha (1/0.01); errors: {errors} of " in reason
    assert run.lane.crossings == 1
    # the early tick; then the rolled back rollout keeps its pace from there (nothing to fetch any more)
    assert run.ticked_at() == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0, rolled_back, rolled_back + 5]
    assert run.traffic.fetches_after(rolled_back) == []


def test_without_the_lane_the_rollback_waits_for_the_regular_tick(tmp_path: Path) -> None:
    run = start(tmp_path, HARD_FAULT, lane=None).until(1030)
    assert run.rolled_back_at() == 1025.0
    phase, reason = run.state()
    assert phase == Phase.ROLLED_BACK and reason.startswith("gate failed: error_rate of v2: e-value ")
    assert all(not f.raw_only for f in run.traffic.fetches)  # only the ticks' fetches


def test_one_lane_fetch_per_iteration_for_fifty_rollouts_with_raw_counters_only(tmp_path: Path) -> None:
    texts = [lane_spec(f"s{i}") for i in range(50)]
    run = start(tmp_path, HEALTHY, texts, lane=FastLane()).until(1010)
    by_time: dict[float, list[Fetch]] = {}
    for fetch in run.traffic.fetches:
        by_time.setdefault(fetch.at, []).append(fetch)
    assert all(len(fetches) == 1 for fetches in by_time.values())  # one fetch per tick() call at most
    lane = {at: f[0] for at, f in by_time.items() if f[0].raw_only}
    assert sorted(lane) == [1001.0, 1002.0, 1003.0, 1004.0, 1006.0, 1007.0, 1008.0, 1009.0]
    assert sorted(set(by_time) - set(lane)) == [1005.0, 1010.0]  # the regular ticks' (windowed) fetches
    for fetch in lane.values():
        assert len(fetch.requests) == 50 and {r.service for r in fetch.requests} == {f"s{i}" for i in range(50)}
    assert run.lane.checks == 8 and run.lane.crossings == 0
    assert all(e.decision.state.phase == Phase.PROGRESSING for _, e in run.events[-50:])


def prometheus_counters(query: str) -> Reply:
    """Raw request counters of every service s0..s49 (both reporters), growing with nothing: a steady answer."""
    services = [f"s{i}" for i in range(50)]
    return Reply(body=vector(*[
        sample(istio("prod", s, v, response_code="200", pod=f"{v}-a"), value)
        for s in services for v, value in (("v1", 9000.0), ("v2", 1000.0))
    ]))  # fmt: skip


@pytest.mark.parametrize(
    ("rollouts", "reporters", "queries"),
    [(1, ("destination",), 1), (50, ("destination",), 1), (50, ("destination", "source"), 2)],
)
def test_with_prometheus_the_lane_sends_one_query_per_reporter_whatever_the_number_of_rollouts(
    tmp_path: Path, rollouts: int, reporters: tuple[str, ...], queries: int
) -> None:
    texts = [
        lane_spec(f"s{i}").replace("analysis: {min_requests: 20}", f"analysis: {{min_requests: 20, reporter: "
                                                                     f"{reporters[i % len(reporters)]}}}")
        for i in range(rollouts)
    ]  # fmt: skip
    with FakePrometheus() as prom:
        prom.answer("istio_requests_total{", prometheus_counters, prefix=True)
        clock = FakeClock(T0)
        store = FileStateStore(tmp_path)
        runner = RolloutRunner(RecordingRouter(), PrometheusSource(prom.url), store, clock=clock, fast_lane=FastLane())
        runner.set_rollouts([ManagedRollout.from_spec(spec(text)) for text in texts])
        per_call: dict[float, list[str]] = {}
        while clock.now <= 1009.0:
            before = len(prom.queries)
            runner.tick()
            per_call[clock.now] = prom.queries[before:]
            clock.advance(POLL)
    lane_calls = [1001.0, 1002.0, 1003.0, 1004.0, 1006.0, 1007.0, 1008.0, 1009.0]
    for at in lane_calls:
        sent = per_call[at]
        assert len(sent) == queries, (at, sent)
        assert all(q.startswith("istio_requests_total{") and "increase" not in q for q in sent)
        assert sorted(q.split('reporter="')[1].split('"')[0] for q in sent) == sorted(reporters)
    # nothing else but the regular tick at 1005 (the first, at 1000, enters the step: no data needed)
    assert sorted(at for at, sent in per_call.items() if sent) == sorted([*lane_calls, 1005.0])


def snapshots_of(traffic: LiveTraffic, name: str = "shop") -> list[tuple[float, MetricsSnapshot, bool]]:
    """What each fetch answered for one rollout: (time, snapshot, lane fetch)."""
    found = []
    for fetch in traffic.fetches:
        for request, snap in fetch.answers.items():
            if request.service == name:
                found.append((fetch.at, snap, fetch.raw_only))
    return found


def chain(evidence: GateEvidence | None, snapshots: Sequence[MetricsSnapshot]) -> GateEvidence:
    """The e-process fed every snapshot in turn, through the gates as a tick feeds it."""
    rollout = spec(LANE_YAML)
    carried = {} if evidence is None else {GATE: evidence}
    for snap in snapshots:
        carried = dict(evaluate_gates(rollout, ("v1",), snap, carried).evidence)
    return carried[GATE]


def test_a_regular_tick_continues_the_e_process_the_lane_fed(tmp_path: Path) -> None:
    run = start(tmp_path, NOISY, lane=FastLane()).until(1010)
    fed = snapshots_of(run.traffic)
    assert [(at, lane) for at, _, lane in fed] == [
        (1001.0, True), (1002.0, True), (1003.0, True), (1004.0, True), (1005.0, False),
        (1006.0, True), (1007.0, True), (1008.0, True), (1009.0, True), (1010.0, False),
    ]  # fmt: skip
    state = run.store.load("shop")
    assert state is not None and state.phase == Phase.PROGRESSING
    one_process = chain(None, [snap for _, snap, _ in fed])
    assert state.sequential[GATE] == one_process and one_process.tick == 10
    assert state.e_values[GATE].value == one_process.e_value
    ticks_only = chain(None, [snap for _, snap, lane in fed if not lane])
    assert not math.isclose(ticks_only.e_value, one_process.e_value, rel_tol=1e-6)  # the lane's feeds count


def test_evidence_changed_behind_the_lanes_back_is_the_one_continued(tmp_path: Path) -> None:
    run = start(tmp_path, NOISY, lane=FastLane()).until(1007)
    stored = run.store.load("shop")
    assert stored is not None
    lane_copy = run.lane.evidence_for("shop", stored)[GATE]
    assert lane_copy.tick == 7 and lane_copy != stored.sequential[GATE]  # fed at 1006 and 1007 since the tick
    replaced = stored.sequential[GATE].model_copy(update={"log_e": [2.0] * len(stored.sequential[GATE].log_e)})
    run.store.save(stored.model_copy(update={"sequential": {GATE: replaced}}))  # e.g. a person edited the file
    reloaded = run.store.load("shop")
    assert reloaded is not None
    assert run.lane.evidence_for("shop", reloaded) == {GATE: replaced}  # the lane's copy is dropped
    run.until(1010)
    after = run.store.load("shop")
    assert after is not None
    tick_snapshot = [snap for at, snap, _ in snapshots_of(run.traffic) if at == 1010.0]
    assert after.sequential[GATE] == chain(replaced, tick_snapshot)


@pytest.mark.parametrize("failure", ["raise", "error", "problem", "missing"])
def test_a_failed_lane_fetch_feeds_nothing_and_the_tick_goes_on(tmp_path: Path, failure: str) -> None:
    run = start(tmp_path, HARD_FAULT, lane=FastLane(), lane_failure=failure).until(1024.75)
    state = run.store.load("shop")
    assert state is not None and state.phase == Phase.PROGRESSING  # the fault is not seen between ticks
    assert run.lane.evidence_for("shop", state) == state.sequential  # nothing fed since the tick at 1020
    assert run.lane.crossings == 0
    asked = [f.at for f in run.traffic.fetches if f.raw_only]  # the lane's fetches
    if failure in ("raise", "error"):  # each failed: the lane rests FAILURE_PAUSE intervals, not every second
        assert asked and all(b - a >= FAILURE_PAUSE for a, b in itertools.pairwise(asked))
        assert run.lane.failures == len(asked)
    else:  # answered, but untrusted or incomplete: nothing fed, and the lane goes on looking every second
        assert any(at > 1021.0 for at in asked) and run.lane.checks >= 4 and run.lane.failures == 0
    run.until(1030)
    assert run.rolled_back_at() == 1025.0  # the regular tick's own fetch catches it
    phase, reason = run.state()
    assert phase == Phase.ROLLED_BACK and "e-value" in reason


def test_a_crossing_whose_tick_gets_no_data_still_rolls_back_at_once(tmp_path: Path) -> None:
    """The lane crosses at 1022 and the tick it causes gets no answer from Prometheus: the crossing is final (the
    test stopped there), so the gate is FAIL with the crossing's reason, not NO_DATA, and the rollout rolls back in
    that tick instead of holding until the next regular one."""
    run = start(tmp_path, HARD_FAULT, lane=FastLane())
    run.traffic.tick_errors = frozenset({1022.0})
    run.until(1030)
    assert run.rolled_back_at() == 1022.0 and run.lane.crossings == 1
    phase, reason = run.state()
    assert phase == Phase.ROLLED_BACK and "e-value" in reason and "K/alpha" in reason


def test_only_the_first_crossing_ticks_early(tmp_path: Path) -> None:
    """rollback.failed_checks counts ticks: after the crossing, ticks keep the spec's pace."""
    text = lane_spec(extra="rollback: {failed_checks: 3}\n")
    run = start(tmp_path, HARD_FAULT, [text], lane=FastLane()).until(1040)
    assert run.rolled_back_at() == 1032.0  # the early tick at 1022, then 1027 and 1032
    assert run.ticked_at()[4:8] == [1020.0, 1022.0, 1027.0, 1032.0]
    reasons = {at: e.decision.state.reason for at, e in run.events}
    assert reasons[1022.0].startswith("failed check 1 of 3: error_rate of v2: e-value ")
    assert reasons[1027.0].startswith("failed check 2 of 3: ")
    assert run.lane.crossings == 1


@pytest.mark.parametrize(
    "gates",
    [
        "[{metric: error_rate, max: 5}]",  # threshold only
        "[{metric: latency, quantile: p99, mode: statistical}]",  # statistical, but latency
    ],
)
def test_rollouts_without_statistical_error_gates_are_never_in_the_lane(tmp_path: Path, gates: str) -> None:
    run = start(tmp_path, HARD_FAULT, [lane_spec(gates=gates)], lane=FastLane()).until(1012)
    assert [f.at for f in run.traffic.fetches] == [1005.0, 1010.0]  # the regular ticks only
    assert not any(f.raw_only for f in run.traffic.fetches)
    assert run.lane.checks == 0 and run.runner.base_interval() == 5.0


def test_finished_rollouts_leave_the_lane(tmp_path: Path) -> None:
    promoted = start(tmp_path / "promoted", HEALTHY, [lane_spec(steps="  - {weight: 10, duration: 5s}")], FastLane())
    promoted.until(1020)
    done = next(at for at, e in promoted.events if e.decision.state.phase == Phase.PROMOTED)
    checks = promoted.lane.checks
    promoted.until(1040)
    assert promoted.traffic.fetches_after(done) == [] and promoted.lane.checks == checks
    rolled_back = start(tmp_path / "rolled-back", HARD_FAULT, lane=FastLane()).until(1023)
    assert rolled_back.rolled_back_at() == 1022.0
    checks = rolled_back.lane.checks
    rolled_back.until(1040)
    assert rolled_back.traffic.fetches_after(1022.0) == [] and rolled_back.lane.checks == checks


def test_a_new_rollout_after_a_rollback_starts_uncrossed(tmp_path: Path) -> None:
    run = start(tmp_path, HARD_FAULT, lane=FastLane()).until(1023)
    assert run.rolled_back_at() == 1022.0
    next_release = LANE_YAML.replace("{name: v2, weight: 0}]\ntarget: v2", "{name: v3, weight: 0}]\ntarget: v3")
    run.runner.set_rollouts([ManagedRollout.from_spec(spec(next_release))])
    run.traffic.counters = [*HARD_FAULT, Counter("v3", rate=10.0, start=1023.0)]
    run.until(1040)
    state = run.store.load("shop")
    assert state is not None and state.phase == Phase.PROGRESSING
    assert state.sequential[GATE].crossed is None and state.e_values[GATE].value <= 1.0
    assert run.lane.crossings == 1  # the first run's only


def test_base_interval_is_the_lanes_with_a_lane_rollout_else_the_specs(tmp_path: Path) -> None:
    assert start(tmp_path, HEALTHY, lane=FastLane()).runner.base_interval() == 1.0
    assert start(tmp_path, HEALTHY, lane=None).runner.base_interval() == 5.0
    threshold = lane_spec(gates="[{metric: error_rate, max: 5}]")
    assert start(tmp_path, HEALTHY, [threshold], lane=FastLane()).runner.base_interval() == 5.0
    faster = lane_spec(extra="").replace("interval: 5s", "interval: 0.5s")
    assert start(tmp_path, HEALTHY, [faster], lane=FastLane()).runner.base_interval() == 0.5
    assert start(tmp_path, HEALTHY, [], lane=FastLane()).runner.base_interval() == 5.0

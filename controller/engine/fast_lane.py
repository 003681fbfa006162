"""The fast lane: statistical error gates fed at every loop iteration, between a rollout's regular ticks.

A rollout ticks at its spec's interval (5 s by default): thresholds, latency and custom gates, steps and writes
happen then. Its statistical error gates (`metric: error_rate`, mode `statistical` or `both`) need no window:
their e-process takes the growth of the raw request counters since the last look. So between ticks, every
`interval` (1 s: about one Prometheus scrape), the runner feeds them here:

- ONE query per reporter for every rollout in the lane (the raw `istio_requests_total` counters, no windowed
  query: `MetricsRequest.windowed=False`), so the cost per second does not grow in queries with the number of
  rollouts; each rollout then costs one e-process update per gate (a few float operations per series);
- the e-process is the gate's own (one test, one false-rollback bound): the lane starts from the evidence the
  last tick left in the state, and the next tick continues from what the lane fed (`evidence_for`). If the stored
  evidence is no longer what the lane started from (another writer, a restart), the lane's copy is dropped;
- the moment a gate's e-value reaches K/alpha the rollout is made due at once: its tick runs in the same
  iteration, judges every gate (the crossing is final: `GateEvidence.crossed`) and rolls back as the spec says.
  The lane never writes, never promotes and never steps; a lane whose fetch fails feeds nothing (the tick's own
  fetch reports missing data as always);
- the lane's fetch has its own short deadline (`timeout`, within the tick's), so a slow Prometheus delays the
  iteration by at most that; after a failed fetch the lane rests `FAILURE_PAUSE` lane intervals, so a hanging
  Prometheus does not cost every iteration its timeout (the ticks' own fetches go on and report the missing data).

Feeding every second instead of every five gives the test the same data in smaller intervals: each interval's
likelihood ratio has expectation <= 1 under the null whatever the interval, so the bound (Ville) holds as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from controller.analysis.metrics import RAW_REQUESTS, MetricsSnapshot
from controller.analysis.statistical_gate import GateEvidence, statistical_outcome
from controller.deadline import Deadline
from controller.engine.metrics_port import MetricSource, MetricsRequest
from controller.engine.phases import ACTIVE_PHASES, RolloutState
from controller.engine.ports import ManagedRollout
from controller.spec import Gate

log = structlog.get_logger("ramp.fast_lane")
FAST_LANE_SECONDS = 1.0
FAST_LANE_TIMEOUT = 2.0
FAILURE_PAUSE = 5  # lane intervals without a fetch after a failed one


def lane_gates(rollout: ManagedRollout) -> list[Gate]:
    """The gates the fast lane feeds: statistical error-rate gates."""
    return [g for g in rollout.spec.gates if g.statistical and g.metric == "error_rate"]


def lane_request(rollout: ManagedRollout) -> MetricsRequest:
    spec = rollout.spec
    grpc = any(g.grpc for g in lane_gates(rollout))
    return MetricsRequest(spec.namespace, spec.service, spec.analysis.window, spec.analysis.reporter,
                          cumulative_requests=True, grpc=grpc, windowed=False)  # fmt: skip


@dataclass
class _Lane:
    origin: dict[str, GateEvidence]  # what the last tick left in the state
    evidence: dict[str, GateEvidence]  # the same e-processes, fed since
    checked_at: float


@dataclass
class FastLane:
    interval: float = FAST_LANE_SECONDS
    timeout: float = FAST_LANE_TIMEOUT
    checks: int = 0  # fetches sent (one per iteration with rollouts in the lane)
    crossings: int = 0  # rollouts made due by a crossing
    failures: int = 0  # fetches that failed (the lane then rests FAILURE_PAUSE intervals)
    _resting_until: float = float("-inf")
    _lanes: dict[str, _Lane] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError(f"fast lane interval and timeout must be > 0, got {self.interval}, {self.timeout}")

    def wanted(self, rollouts: Mapping[str, ManagedRollout]) -> bool:
        return any(lane_gates(r) for r in rollouts.values())

    def forget(self, keep: Mapping[str, ManagedRollout]) -> None:
        self._lanes = {name: lane for name, lane in self._lanes.items() if name in keep}

    def after_tick(self, rollout: ManagedRollout, state: RolloutState, now: float) -> None:
        """A tick of `rollout` ended in `state`: the lane restarts from its evidence (or leaves the lane)."""
        if state.phase in ACTIVE_PHASES and lane_gates(rollout):
            self._lanes[rollout.name] = _Lane(dict(state.sequential), dict(state.sequential), now)
        else:
            self._lanes.pop(rollout.name, None)

    def evidence_for(self, name: str, state: RolloutState) -> Mapping[str, GateEvidence]:
        """The e-processes a tick continues: the lane's when it started from this state's, else the state's."""
        lane = self._lanes.get(name)
        if lane is None or lane.origin != state.sequential:
            return state.sequential
        return lane.evidence

    def check(
        self,
        rollouts: Sequence[ManagedRollout],
        metrics: MetricSource,
        now: float,
        deadline: Deadline | None,
    ) -> list[str]:
        """Feed the lane's rollouts (not due this iteration) whose last look is `interval` old; the names of
        those whose test crossed its boundary (to tick now)."""
        slack = min(0.25 * self.interval, 0.1)
        members = [
            r for r in rollouts if (lane := self._lanes.get(r.name)) and now - lane.checked_at >= self.interval - slack
        ]
        if not members or now < self._resting_until:
            return []
        seconds = self.timeout if deadline is None else min(self.timeout, deadline.remaining())
        requests = {r.name: lane_request(r) for r in members}
        self.checks += 1
        try:
            fetched = metrics.fetch(list(requests.values()), deadline=Deadline(seconds))
        except Exception as exc:  # nothing fed; the tick's own fetch reports missing data as always
            log.warning("fast lane: metrics not fetched", error=f"{type(exc).__name__}: {exc}"[:300])
            self._rest(now)
            return []
        if all(snapshot.error is not None for snapshot in fetched.values()) and fetched:
            self._rest(now)  # e.g. Prometheus did not answer: every snapshot carries the reason
        crossed = []
        for rollout in members:
            lane = self._lanes[rollout.name]
            lane.checked_at = now
            snapshot = fetched.get(requests[rollout.name])
            if snapshot is not None and self._feed(rollout, lane, snapshot):
                crossed.append(rollout.name)
        self.crossings += len(crossed)
        if crossed:
            log.info("fast lane: statistical error gate crossed its boundary, ticking now", rollouts=crossed[:20])
        return crossed

    def _rest(self, now: float) -> None:
        self.failures += 1
        self._resting_until = now + FAILURE_PAUSE * self.interval

    def _feed(self, rollout: ManagedRollout, lane: _Lane, snapshot: MetricsSnapshot) -> bool:
        if snapshot.error is not None:
            return False
        spec, stable = rollout.spec, rollout.plan.stable_versions
        versions = (spec.target, *stable)
        crossed = False
        for gate in lane_gates(rollout):
            if snapshot.problem((RAW_REQUESTS,), spec.namespace, spec.service, versions) is not None:
                continue  # untrusted data feeds nothing (the tick says why)
            before = lane.evidence.get(gate.display_name)
            outcome = statistical_outcome(gate, spec, snapshot, stable, None, before)
            lane.evidence[gate.display_name] = outcome.evidence
            # only the first crossing ticks early: after it, ticks keep their pace (rollback.failed_checks counts
            # ticks, so an early tick per second would shorten it)
            crossed = crossed or (outcome.rejected and (before is None or before.crossed is None))
        return crossed

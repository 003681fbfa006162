"""Statistical gates: feed each tick's raw counters into the gate's e-process (see `sequential`).

The e-process state (`GateEvidence`) is carried from tick to tick in the rollout state, outside
its durable part: the cluster store never writes it, so a restarted or failed-over controller starts
the e-process afresh (each run keeps its own false-rollback bound). Local mode keeps it in the
state file and continues it: the first interval after a restart then spans the downtime, which is
still a valid interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pydantic import BaseModel, Field

from controller.analysis.metrics import QUANTILES, MetricsSnapshot, VersionMetrics
from controller.analysis.sequential import (
    Counts,
    e_value,
    grid_for,
    interval_counts,
    slow_counts,
    snap_boundary,
    update_log_e,
)
from controller.spec import Gate, RolloutSpec


class GateEvidence(BaseModel):
    """The e-process of one statistical gate for one rollout run."""

    log_e: list[float] = Field(description="Cumulative log likelihood ratio per alternative of the grid")
    counters: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Per version, the last raw (requests, bad) counters seen"
    )
    slow_ms: float | None = Field(default=None, description="Latency: the frozen slow threshold (a bucket bound)")
    new: tuple[float, float] = (0.0, 0.0)  # the new version's (requests, bad) counted so far
    stable: tuple[float, float] = (0.0, 0.0)  # the same for the stable versions

    @property
    def e_value(self) -> float:
        return e_value(self.log_e)


class Outcome(NamedTuple):
    evidence: GateEvidence
    e_value: float
    limit: float  # K / alpha: the e-value at which the gate rolls back
    rejected: bool
    reason: str
    missing: str | None  # why this tick could not feed the test, if it could not


def statistical_gate_count(spec: RolloutSpec) -> int:
    return sum(1 for gate in spec.gates if gate.statistical)


def fresh_evidence(gate: Gate) -> GateEvidence:
    return GateEvidence(log_e=[0.0] * len(grid_for(gate.tolerance)))


def _slow_threshold(
    gate: Gate,
    spec: RolloutSpec,
    snapshot: MetricsSnapshot,
    versions: Sequence[str],
    stable_window: VersionMetrics | None,
    needed: int,
) -> tuple[float | None, str | None]:
    """The slow threshold snapped to a bucket bound: slow_ms, else max, else stable's quantile now."""
    wanted = gate.slow_ms if gate.slow_ms is not None else gate.max
    if wanted is None:
        stable_names = ",".join(versions[1:]) or "none"
        if stable_window is None or stable_window.requests < needed:
            return None, f"stable ({stable_names}) has fewer than {needed} requests to set the slow threshold"
        wanted = stable_window.quantile(QUANTILES[gate.quantile or "p99"])
        if wanted is None:
            return None, f"no latency histogram for stable ({stable_names}) to set the slow threshold"
    bounds: set[float] = set()
    for version in versions:
        metrics = snapshot.cumulative.get((spec.namespace, spec.service, version))
        if metrics is not None:
            bounds.update(metrics.buckets)
    boundary = snap_boundary(bounds, wanted)
    if boundary is None:
        return None, f"no latency histogram counters for {spec.target} and stable"
    return boundary, None


def _counts(
    gate: Gate, spec: RolloutSpec, snapshot: MetricsSnapshot, versions: Sequence[str], slow: float | None
) -> dict[str, Counts]:
    found: dict[str, Counts] = {}
    for version in versions:
        metrics = snapshot.cumulative.get((spec.namespace, spec.service, version))
        if metrics is None:
            continue
        if gate.metric == "error_rate":
            found[version] = Counts(metrics.requests, metrics.errors)
        elif slow is not None and (counts := slow_counts(metrics.buckets, slow)) is not None:
            found[version] = counts
    return found


def statistical_outcome(
    gate: Gate,
    spec: RolloutSpec,
    snapshot: MetricsSnapshot,
    stable_versions: tuple[str, ...],
    stable_window: VersionMetrics | None,
    previous: GateEvidence | None,
) -> Outcome:
    """One tick of the gate's e-process; `previous` None (or from another grid) starts it afresh."""
    evidence = previous if previous is not None and len(previous.log_e) == len(grid_for(gate.tolerance)) else None
    evidence = evidence or fresh_evidence(gate)
    limit = statistical_gate_count(spec) / gate.alpha
    name, versions = gate.display_name, (spec.target, *stable_versions)
    missing: str | None = None
    slow = evidence.slow_ms
    if gate.metric == "latency" and slow is None:
        needed = gate.min_requests or spec.analysis.min_requests
        slow, missing = _slow_threshold(gate, spec, snapshot, versions, stable_window, needed)
        evidence = evidence.model_copy(update={"slow_ms": slow})
    if missing is None:
        current = _counts(gate, spec, snapshot, versions, slow)
        if spec.target not in current:
            missing = f"no counters for {spec.target} yet"
        previous_counts = {v: Counts(*c) for v, c in evidence.counters.items()}
        interval = interval_counts(previous_counts, current, spec.target, stable_versions)
        new = Counts(evidence.new[0] + interval.new.total, evidence.new[1] + interval.new.bad)
        stable = Counts(evidence.stable[0] + interval.stable.total, evidence.stable[1] + interval.stable.bad)
        log_e = update_log_e(evidence.log_e, interval.new, interval.stable, gate.tolerance, grid_for(gate.tolerance))
        evidence = evidence.model_copy(
            update={
                "log_e": log_e,
                "counters": {v: (c.total, c.bad) for v, c in interval.counters.items()},
                "new": (new.total, new.bad),
                "stable": (stable.total, stable.bad),
            }
        )
    value = evidence.e_value
    if value < limit:
        slow_note = "" if evidence.slow_ms is None else f" (slow: > {evidence.slow_ms:g}ms)"
        return Outcome(evidence, value, limit, False, f"{name}: e-value {value:.3g} < {limit:g}{slow_note}", missing)
    what = "errors" if gate.metric == "error_rate" else f"slower than {evidence.slow_ms:g}ms"
    new_total, new_bad = evidence.new
    stable_total, stable_bad = evidence.stable
    reason = (
        f"{name} of {spec.target}: e-value {value:.4g} >= {limit:g} = K/alpha "
        f"({statistical_gate_count(spec)}/{gate.alpha:g}); {what}: {new_bad:.0f} of {new_total:.0f} requests "
        f"vs stable ({','.join(stable_versions) or 'none'}) {stable_bad:.0f} of {stable_total:.0f}, "
        f"tolerance {gate.tolerance:g}x"
    )
    return Outcome(evidence, value, limit, True, reason, missing)

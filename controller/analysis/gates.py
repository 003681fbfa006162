"""Gates: turn a metrics snapshot into typed verdicts (pass / fail / no-data / hold), each with a reason.

Missing data is never a pass: too few requests, no histogram, an unreachable Prometheus, or
an untrustworthy sample (NaN, negative, mistyped: `MetricsSnapshot.problems`) for the target or
stable versions all give NO_DATA, and the engine never advances on NO_DATA. A statistical gate
also needs `min_requests` of stable traffic to compare with; without it (a 100% step, blue/green)
its `max` judges alone, or it is NO_DATA when it has none.
Statistical gates (mode statistical/both) also run their e-process (`statistical_gate`); in
those modes a `max` breached by the stable versions too gives HOLD (a shared dependency is
down): never a promotion, never a rollback by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from controller.analysis.custom_gate import custom_threshold, observe, problem_kinds
from controller.analysis.custom_metrics import gate_queries
from controller.analysis.gates_model import GateReport as GateReport  # re-exported
from controller.analysis.gates_model import GateResult as GateResult  # re-exported
from controller.analysis.gates_model import Verdict as Verdict  # re-exported
from controller.analysis.metrics import (
    LATENCY,
    QUANTILES,
    RAW_LATENCY,
    RAW_REQUESTS,
    REQUESTS,
    MetricsSnapshot,
    VersionMetrics,
)
from controller.analysis.statistical_gate import (
    GateEvidence,
    crossed,
    crossed_reason,
    statistical_gate_count,
    statistical_outcome,
)
from controller.spec import Gate, RolloutSpec


def _unit(gate: Gate) -> str:
    return "%" if gate.metric == "error_rate" else "ms"


def _fmt(value: float, gate: Gate) -> str:
    return f"{value:.2f}{_unit(gate)}" if gate.metric == "error_rate" else f"{value:.1f}{_unit(gate)}"


def _value(gate: Gate, metrics: VersionMetrics) -> float | None:
    if gate.metric == "error_rate":
        return metrics.error_percent_for(gate.grpc, gate.codes)
    return metrics.quantile(QUANTILES[gate.quantile or "p99"])


def evaluate_gate(
    gate: Gate,
    spec: RolloutSpec,
    target: VersionMetrics | None,
    stable: VersionMetrics | None,
    stable_names: str,
) -> GateResult:
    name = gate.display_name
    needed = gate.min_requests or spec.analysis.min_requests
    window = f"{spec.analysis.window:g}s"
    seen = 0.0 if target is None else target.requests
    stable_value: float | None = None
    if stable is not None and stable.requests >= needed:
        stable_value = _value(gate, stable)
    if target is None or seen < needed:
        # not judged (NO_DATA), but what was seen is shown: a statistical gate can roll back on fewer requests
        observed = _value(gate, target) if target is not None and seen > 0 else None
        reason = f"{name}: {spec.target} had {seen:.0f} requests in the last {window}, gates need {needed}"
        return GateResult(name, Verdict.NO_DATA, observed, stable_value, reason)
    value = _value(gate, target)
    if value is None:
        reason = f"{name}: no latency histogram for {spec.target}"
        return GateResult(name, Verdict.NO_DATA, None, stable_value, reason)
    if gate.max is not None and value > gate.max:
        reason = f"{name} of {spec.target} is {_fmt(value, gate)} > max {_fmt(gate.max, gate)}"
        if gate.statistical and stable_value is not None and stable_value > gate.max:
            reason += f", but stable ({stable_names}) is {_fmt(stable_value, gate)} too (a shared dependency?)"
            return GateResult(name, Verdict.HOLD, value, stable_value, reason)
        return GateResult(name, Verdict.FAIL, value, stable_value, reason)
    if gate.stable_margin is not None:
        if stable_value is None:
            if gate.max is None:
                reason = (
                    f"{name}: stable ({stable_names}) has fewer than {needed} requests to compare against"
                )
                return GateResult(name, Verdict.NO_DATA, value, None, reason)
        elif value > stable_value + gate.stable_margin:
            reason = (
                f"{name} of {spec.target} is {_fmt(value, gate)} > stable ({stable_names}) "
                f"{_fmt(stable_value, gate)} + margin {_fmt(gate.stable_margin, gate)}"
            )
            return GateResult(name, Verdict.FAIL, value, stable_value, reason)
    return GateResult(name, Verdict.PASS, value, stable_value, f"{name} {_fmt(value, gate)} ok")


def _statistical_gate(
    gate: Gate,
    spec: RolloutSpec,
    snapshot: MetricsSnapshot,
    stable_versions: tuple[str, ...],
    previous: GateEvidence | None,
) -> tuple[GateResult, GateEvidence]:
    target = snapshot.version(spec.namespace, spec.service, spec.target)
    stable = snapshot.versions_combined(spec.namespace, spec.service, stable_versions)
    outcome = statistical_outcome(gate, spec, snapshot, stable_versions, stable, previous)
    needed = gate.min_requests or spec.analysis.min_requests
    stable_names = ",".join(stable_versions) or "none"
    if gate.metric == "custom":  # bad/total: stable's evidence is its total events
        stable_seen = observe(gate, spec, snapshot, stable_versions).stable_seen
    else:
        stable_seen = 0.0 if stable is None else stable.requests
    comparable = stable_seen >= needed
    # mode statistical has no threshold (a latency max there only sets the slow threshold) while stable
    # traffic lets the test compare; without it, a max is the only judge left
    if gate.mode == "both":
        judged = gate
    elif comparable:
        judged = gate.model_copy(update={"max": None, "stable_margin": None})
    else:
        judged = gate.model_copy(update={"stable_margin": None})
    if gate.metric == "custom":
        threshold = custom_threshold(judged, spec, snapshot, stable_versions)
    else:
        threshold = evaluate_gate(judged, spec, target, stable, stable_names)
    verdict, reason = threshold.verdict, threshold.reason
    if outcome.rejected:
        verdict, reason = Verdict.FAIL, outcome.reason
    elif verdict == Verdict.PASS and not comparable and gate.max is None:  # nothing to compare with
        seen = stable_seen
        reason = (
            f"{gate.display_name}: stable ({stable_names}) had {seen:.0f} requests in the last "
            f"{spec.analysis.window:g}s, a statistical gate needs {needed} to compare against (no max set)"
        )
        verdict = Verdict.NO_DATA
    elif verdict == Verdict.PASS and outcome.missing is not None and comparable:  # never promote without it
        verdict, reason = Verdict.NO_DATA, f"{gate.display_name}: {outcome.missing}"
    elif verdict == Verdict.PASS:
        reason = f"{reason}; {outcome.reason}"
    # otherwise the threshold part's FAIL/HOLD (mode both) or NO_DATA (too few requests in the window) stands
    result = replace(threshold, verdict=verdict, reason=reason, e_value=outcome.e_value, e_limit=outcome.limit)
    return result, outcome.evidence


def _kinds(gate: Gate, spec: RolloutSpec) -> tuple[str, ...]:
    """The data a gate reads: the window's request counts always (min_requests), then its own kinds."""
    if gate.metric == "custom":
        return problem_kinds(gate, gate_queries(gate, spec))
    kinds = [REQUESTS]
    if gate.metric == "latency":
        kinds.append(LATENCY)
    if gate.statistical:
        kinds.append(RAW_LATENCY if gate.metric == "latency" else RAW_REQUESTS)
    return tuple(kinds)


def _no_data(gate: Gate, spec: RolloutSpec, reason: str, carried: Mapping[str, GateEvidence]) -> GateResult:
    """NO_DATA; a statistical gate still shows its (unchanged) e-value."""
    limit = statistical_gate_count(spec) / gate.alpha if gate.statistical else None
    kept = carried.get(gate.display_name)
    e_value = None if limit is None else (1.0 if kept is None else kept.e_value)
    return GateResult(gate.display_name, Verdict.NO_DATA, None, None, reason, e_value, limit)


def _stays_failed(
    gate: Gate, spec: RolloutSpec, stable_versions: tuple[str, ...], carried: Mapping[str, GateEvidence]
) -> GateResult | None:
    """FAIL for a statistical gate whose test already crossed its boundary (the crossing is final), else None."""
    kept = carried.get(gate.display_name)
    if not gate.statistical or kept is None or not crossed(gate, kept):
        return None
    limit = statistical_gate_count(spec) / gate.alpha
    reason = crossed_reason(gate, spec, stable_versions, kept)
    return GateResult(gate.display_name, Verdict.FAIL, None, None, reason, kept.e_value, limit)


def evaluate_gates(
    spec: RolloutSpec,
    stable_versions: tuple[str, ...],
    snapshot: MetricsSnapshot,
    evidence: Mapping[str, GateEvidence] | None = None,
) -> GateReport:
    """`evidence`: the statistical gates' e-processes from the last tick (by gate name); the report
    carries them forward (unchanged when Prometheus gave no data)."""
    carried = dict(evidence or {})
    if snapshot.error is not None:
        results = [
            _stays_failed(g, spec, stable_versions, carried)
            or _no_data(g, spec, f"{g.display_name}: {snapshot.error}", carried)
            for g in spec.gates
        ]
        return GateReport(tuple(results), carried)
    target = snapshot.version(spec.namespace, spec.service, spec.target)
    stable = snapshot.versions_combined(spec.namespace, spec.service, stable_versions)
    stable_names = ",".join(stable_versions) or "none"
    versions = (spec.target, *stable_versions)
    results = []
    for gate in spec.gates:
        problem = snapshot.problem(_kinds(gate, spec), spec.namespace, spec.service, versions)
        failed = _stays_failed(gate, spec, stable_versions, carried)
        if failed is not None and problem is not None:  # a crossed test stays rejected, data or not
            result = failed
        elif problem is not None:  # the e-process, if any, is carried unchanged: this tick's data is not trusted
            result = _no_data(gate, spec, f"{gate.display_name}: {problem}", carried)
        elif gate.statistical:
            result, carried[gate.display_name] = _statistical_gate(
                gate, spec, snapshot, stable_versions, carried.get(gate.display_name)
            )
        elif gate.metric == "custom":
            result = custom_threshold(gate, spec, snapshot, stable_versions)
        else:
            result = evaluate_gate(gate, spec, target, stable, stable_names)
        results.append(result)
    return GateReport(tuple(results), carried)

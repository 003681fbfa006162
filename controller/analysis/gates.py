"""Gates: turn a metrics snapshot into typed verdicts (pass / fail / no-data), each with a reason.

Missing data is never a pass: too few requests, no histogram, or an unreachable
Prometheus all give NO_DATA, and the engine never advances on NO_DATA.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.spec import Gate, RolloutSpec

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no-data"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    value: float | None
    stable_value: float | None
    reason: str


@dataclass(frozen=True)
class GateReport:
    results: tuple[GateResult, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.verdict for r in self.results}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        if Verdict.NO_DATA in verdicts:
            return Verdict.NO_DATA
        return Verdict.PASS

    def reasons(self, verdict: Verdict) -> str:
        return "; ".join(r.reason for r in self.results if r.verdict == verdict)


def _unit(gate: Gate) -> str:
    return "%" if gate.metric == "error_rate" else "ms"


def _fmt(value: float, gate: Gate) -> str:
    return f"{value:.2f}{_unit(gate)}" if gate.metric == "error_rate" else f"{value:.1f}{_unit(gate)}"


def _value(gate: Gate, metrics: VersionMetrics) -> float | None:
    if gate.metric == "error_rate":
        return metrics.error_percent
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
    if target is None or seen < needed:
        reason = f"{name}: {spec.target} had {seen:.0f} requests in the last {window}, gates need {needed}"
        return GateResult(name, Verdict.NO_DATA, None, None, reason)
    value = _value(gate, target)
    if value is None:
        return GateResult(name, Verdict.NO_DATA, None, None, f"{name}: no latency histogram for {spec.target}")
    stable_value: float | None = None
    if stable is not None and stable.requests >= needed:
        stable_value = _value(gate, stable)
    if gate.max is not None and value > gate.max:
        reason = f"{name} of {spec.target} is {_fmt(value, gate)} > max {_fmt(gate.max, gate)}"
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


def evaluate_gates(
    spec: RolloutSpec, stable_versions: tuple[str, ...], snapshot: MetricsSnapshot
) -> GateReport:
    if snapshot.error is not None:
        return GateReport(
            tuple(
                GateResult(g.display_name, Verdict.NO_DATA, None, None, f"{g.display_name}: {snapshot.error}")
                for g in spec.gates
            )
        )
    target = snapshot.version(spec.namespace, spec.service, spec.target)
    stable = snapshot.versions_combined(spec.namespace, spec.service, stable_versions)
    stable_names = ",".join(stable_versions) or "none"
    return GateReport(tuple(evaluate_gate(g, spec, target, stable, stable_names) for g in spec.gates))

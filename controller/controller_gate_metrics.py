"""What the gates compare against, as metrics the Grafana dashboards draw (no thresholds copied by hand).

- `ramp_gate_threshold{rollout,namespace,gate,kind,unit}`: every gate's thresholds from its spec
  (`controller.analysis.gate_thresholds`: kind max/min/stable_margin/tolerance/k_over_alpha).
- `ramp_gate_stable_value{rollout,namespace,gate}`: the stable version's value of a gate (the stable_margin
  line is this plus the margin).
- `ramp_rollout_info{rollout,namespace,service}` = 1: which service a rollout moves, so a dashboard picking a
  service (Istio's labels) finds its rollout.

The thresholds are recomputed only when a rollout's spec changes (its digest); then the label sets that the new
spec no longer has (a gate or kind removed, the service renamed) are removed, as are the per-gate series of
gates that left the spec, so no dashboard draws an old line. Non-finite values are never exported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from controller.analysis.gate_thresholds import GateThreshold, gate_thresholds
from controller.analysis.gates_model import GateResult
from controller.engine.ports import ManagedRollout

ThresholdKey = tuple[str, str, str]  # gate, kind, unit

# When two threshold gates share a name (allowed: only statistical gates need their own), the strictest wins.
_STRICTEST = {"max": min, "min": max, "stable_margin": min, "tolerance": min, "k_over_alpha": min}


def threshold_values(thresholds: Iterable[GateThreshold]) -> dict[ThresholdKey, float]:
    """One value per (gate, kind, unit) label set: finite ones only, the strictest of a repeated gate name."""
    found: dict[ThresholdKey, float] = {}
    for threshold in thresholds:
        value = float(threshold.value)
        if not math.isfinite(value):
            continue
        key = (threshold.gate, threshold.kind, threshold.unit)
        found[key] = _STRICTEST[threshold.kind](found[key], value) if key in found else value
    return found


@dataclass(frozen=True)
class _Exported:
    """What was exported for one rollout's spec."""

    digest: str
    thresholds: frozenset[ThresholdKey]
    gates: frozenset[str]
    service: str


class GateMetrics:
    def __init__(self, registry: CollectorRegistry, per_gate: Sequence[Gauge] = ()) -> None:
        """`per_gate`: other gauges labelled (rollout, namespace, gate), cleared with a gate that leaves a spec."""
        labels = ["rollout", "namespace"]
        self.threshold = Gauge(
            "ramp_gate_threshold",
            "A gate's threshold from its spec: kind max/min (gate units), stable_margin (gate units, added to "
            "ramp_gate_stable_value), tolerance (ratio new/stable), k_over_alpha (the e-value that rolls back)",
            [*labels, "gate", "kind", "unit"],
            registry=registry,
        )
        self.stable_value = Gauge(
            "ramp_gate_stable_value",
            "Last value of a gate for the stable version(s) (percent or ms)",
            [*labels, "gate"],
            registry=registry,
        )
        self.info = Gauge(
            "ramp_rollout_info", "1 per rollout, with the service it moves", [*labels, "service"], registry=registry
        )
        self._per_gate = (*per_gate, self.stable_value)
        self._exported: dict[tuple[str, str], _Exported] = {}

    def observe_spec(self, rollout: ManagedRollout) -> None:
        """Export the rollout's thresholds, unless its spec is the one already exported."""
        spec = rollout.spec
        name, namespace = rollout.name, spec.namespace
        before = self._exported.get((name, namespace))
        if before is not None and before.digest == rollout.digest:
            return
        values = threshold_values(gate_thresholds(spec))
        gates = frozenset(gate.display_name for gate in spec.gates)
        if before is not None:
            for gate, kind, unit in before.thresholds - values.keys():
                self.threshold.remove(name, namespace, gate, kind, unit)
            for gate in before.gates - gates:
                for gauge in self._per_gate:
                    gauge.remove(name, namespace, gate)
            if before.service != spec.service:
                self.info.remove(name, namespace, before.service)
        for (gate, kind, unit), value in values.items():
            self.threshold.labels(name, namespace, gate, kind, unit).set(value)
        self.info.labels(name, namespace, spec.service).set(1.0)
        self._exported[(name, namespace)] = _Exported(rollout.digest, frozenset(values), gates, spec.service)

    def forget(self, name: str, namespace: str) -> None:
        """The rollout left: its spec is exported afresh if it comes back (the series are removed by the caller)."""
        self._exported.pop((name, namespace), None)

    def observe_results(self, rollout: ManagedRollout, results: Iterable[GateResult]) -> None:
        for result in results:
            value = result.stable_value
            if value is not None and math.isfinite(value):
                self.stable_value.labels(rollout.name, rollout.spec.namespace, result.gate).set(value)

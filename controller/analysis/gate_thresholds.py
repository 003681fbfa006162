"""What each gate of a spec compares against, as plain numbers: exported by the controller's metrics
(`ramp_gate_threshold{rollout,namespace,gate,kind}`, which the Grafana dashboards draw) and drawn by
`ramp report`, so that neither needs thresholds copied from the spec by hand.

Kinds:
- `max`: the absolute limit the new version's value must stay at or below (threshold and both modes);
- `min`: a custom gate's lower limit (the value must be at least this);
- `stable_margin`: how much worse than stable the new version may be (the line is stable's value plus this,
  or minus it for a custom gate where higher is better);
- `tolerance`: a statistical gate's acceptable ratio new/stable of error or slow-request rates;
- `k_over_alpha`: a statistical gate's boundary: the gate rolls back when its e-value reaches K / alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.analysis.statistical_gate import statistical_gate_count
from controller.spec import Gate, RolloutSpec

ThresholdKind = Literal["max", "min", "stable_margin", "tolerance", "k_over_alpha"]
THRESHOLD_KINDS: tuple[ThresholdKind, ...] = ("max", "min", "stable_margin", "tolerance", "k_over_alpha")


@dataclass(frozen=True)
class GateThreshold:
    gate: str  # the gate's display name, as in ramp_gate_value{gate}
    kind: ThresholdKind
    value: float
    unit: str  # "%", "ms", "" (custom gates: the query's unit), "ratio" or "e-value"


def gate_unit(gate: Gate) -> str:
    if gate.metric == "error_rate":
        return "%"
    if gate.metric == "latency":
        return "ms"
    return ""


def thresholds_of(gate: Gate, statistical_gates: int) -> list[GateThreshold]:
    name = gate.display_name
    unit = gate_unit(gate)
    found: list[GateThreshold] = []
    if gate.mode != "statistical":
        if gate.max is not None:
            found.append(GateThreshold(name, "max", float(gate.max), unit))
        if gate.min is not None:
            found.append(GateThreshold(name, "min", float(gate.min), unit))
        if gate.stable_margin is not None:
            found.append(GateThreshold(name, "stable_margin", float(gate.stable_margin), unit))
    if gate.statistical:
        found.append(GateThreshold(name, "tolerance", float(gate.tolerance), "ratio"))
        found.append(GateThreshold(name, "k_over_alpha", statistical_gates / gate.alpha, "e-value"))
    return found


def gate_thresholds(spec: RolloutSpec) -> list[GateThreshold]:
    """Every gate's thresholds, in the spec's gate order."""
    count = statistical_gate_count(spec)
    return [threshold for gate in spec.gates for threshold in thresholds_of(gate, count)]

"""The threshold part of a custom gate: its value for the new version against max, min and stable.

- `query`: the query's value for the target version. Evidence first: the target needs `min_requests`
  requests in the window (Istio's request counter, fetched anyway) like every gate, so a query cannot
  promote a version nobody called. The stable value is the mean of the stable versions' values weighted
  by their requests (one stable version: its value).
- `bad` + `total`: 100 * bad / total in percent; `total` must reach `min_requests`; the stable value is the
  stable versions' summed bad over their summed total. A version with a total but no `bad` series had no
  bad events (as a version with no 5xx series has no errors).

Worse is higher unless `higher_is_better` (a query only): `stable_margin` then bounds how much LOWER the
new version may be. In mode both, a max (or min) breached by stable too holds instead of rolling back,
like the built-in gates. A problem with the answer (NaN, negative, a missing version...) is NO_DATA.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.analysis.custom_metrics import GateQueries, gate_queries
from controller.analysis.gates_model import GateResult, Verdict
from controller.analysis.metrics import REQUESTS, MetricsSnapshot
from controller.spec import Gate, RolloutSpec


@dataclass(frozen=True)
class Observed:
    """The gate's inputs this tick: the target's value and evidence, and the stable versions'."""

    value: float | None
    seen: float  # target requests (query) or total events (bad/total) in the window
    stable_value: float | None
    stable_seen: float


def problem_kinds(gate: Gate, queries: GateQueries) -> tuple[str, ...]:
    kinds = tuple(q.id for q in queries.all)
    return (REQUESTS, *kinds) if gate.query is not None else kinds


def observe(gate: Gate, spec: RolloutSpec, snapshot: MetricsSnapshot, stable_versions: tuple[str, ...]) -> Observed:
    queries = gate_queries(gate, spec)

    def key(version: str) -> tuple[str, str, str]:
        return (spec.namespace, spec.service, version)

    if queries.value is not None:
        values = snapshot.custom.get(queries.value.id, {})
        target = snapshot.version(*key(spec.target))
        weighted, weight, stable_seen = 0.0, 0.0, 0.0
        found = []
        for version in stable_versions:
            metrics = snapshot.version(*key(version))
            requests = 0.0 if metrics is None else metrics.requests
            stable_seen += requests
            if (value := values.get(key(version))) is not None:
                found.append(value)
                weighted, weight = weighted + value * requests, weight + requests
        stable_value = (weighted / weight if weight > 0 else sum(found) / len(found)) if found else None
        seen = 0.0 if target is None else target.requests
        return Observed(values.get(key(spec.target)), seen, stable_value, stable_seen)
    if queries.bad is None or queries.total is None:
        return Observed(None, 0.0, None, 0.0)
    bads, totals = snapshot.custom.get(queries.bad.id, {}), snapshot.custom.get(queries.total.id, {})

    def percent(bad: float, total: float) -> float | None:
        return None if total <= 0 else 100.0 * min(bad, total) / total

    seen = totals.get(key(spec.target), 0.0)
    stable_total = sum(totals.get(key(v), 0.0) for v in stable_versions)
    stable_bad = sum(bads.get(key(v), 0.0) for v in stable_versions)
    return Observed(
        percent(bads.get(key(spec.target), 0.0), seen), seen, percent(stable_bad, stable_total), stable_total
    )


def _fmt(gate: Gate, value: float) -> str:
    return f"{value:.2f}%" if gate.bad is not None else f"{value:.4g}"


def custom_threshold(
    gate: Gate, spec: RolloutSpec, snapshot: MetricsSnapshot, stable_versions: tuple[str, ...]
) -> GateResult:
    """The verdict of max / min / stable_margin for a custom gate (NO_DATA without evidence)."""
    name, target = gate.display_name, spec.target
    stable_names = ",".join(stable_versions) or "none"
    queries = gate_queries(gate, spec)
    if not queries.all:
        return GateResult(name, Verdict.NO_DATA, None, None, f"{name}: template {gate.template!r} is not resolved")
    problem = snapshot.problem(problem_kinds(gate, queries), spec.namespace, spec.service, (target, *stable_versions))
    if problem is not None:
        return GateResult(name, Verdict.NO_DATA, None, None, f"{name}: {problem}")
    seen = observe(gate, spec, snapshot, stable_versions)
    needed = gate.min_requests or spec.analysis.min_requests
    what = "requests" if gate.query is not None else "events (total)"
    stable_value = seen.stable_value if seen.stable_seen >= needed else None
    if seen.seen < needed:  # not judged, but what was seen is shown (as for error rate and latency)
        window = f"{spec.analysis.window:g}s"
        reason = f"{name}: {target} had {seen.seen:.0f} {what} in the last {window}, gates need {needed}"
        return GateResult(name, Verdict.NO_DATA, seen.value if seen.seen > 0 else None, stable_value, reason)
    value = seen.value
    if value is None:
        by = gate.metric_labels
        reason = f"{name}: the query gave no value for {target} (by {by.version}, {by.service}, {by.namespace})"
        return GateResult(name, Verdict.NO_DATA, None, stable_value, reason)
    shown = _fmt(gate, value)
    for limit, breached, sign in ((gate.max, gate.max is not None and value > gate.max, ">"),
                                  (gate.min, gate.min is not None and value < gate.min, "<")):  # fmt: skip
        if not breached or limit is None:
            continue
        reason = f"{name} of {target} is {shown} {sign} {'max' if sign == '>' else 'min'} {_fmt(gate, limit)}"
        stable_too = stable_value is not None and (stable_value > limit if sign == ">" else stable_value < limit)
        if gate.statistical and stable_too and stable_value is not None:
            reason += f", but stable ({stable_names}) is {_fmt(gate, stable_value)} too (a shared dependency?)"
            return GateResult(name, Verdict.HOLD, value, stable_value, reason)
        return GateResult(name, Verdict.FAIL, value, stable_value, reason)
    if gate.stable_margin is not None:
        if stable_value is None:
            if gate.max is None and gate.min is None:
                reason = f"{name}: stable ({stable_names}) has fewer than {needed} {what} to compare against"
                return GateResult(name, Verdict.NO_DATA, value, None, reason)
        elif gate.higher_is_better and value < stable_value - gate.stable_margin:
            reason = (
                f"{name} of {target} is {shown} < stable ({stable_names}) {_fmt(gate, stable_value)} "
                f"- margin {_fmt(gate, gate.stable_margin)}"
            )
            return GateResult(name, Verdict.FAIL, value, stable_value, reason)
        elif not gate.higher_is_better and value > stable_value + gate.stable_margin:
            reason = (
                f"{name} of {target} is {shown} > stable ({stable_names}) {_fmt(gate, stable_value)} "
                f"+ margin {_fmt(gate, gate.stable_margin)}"
            )
            return GateResult(name, Verdict.FAIL, value, stable_value, reason)
    return GateResult(name, Verdict.PASS, value, stable_value, f"{name} {shown} ok")

"""Cross-field rules of the rollout spec, and warnings.

`semantic_problems` reports what the models cannot see field by field (unknown versions, increasing
weights, header matches that depend on the match kind, window vs interval); `spec_warnings` reports
sound but doubtful choices that `ramp validate` prints without failing. Both give a field path per
finding so the loader can point at the exact YAML line. Both are re-exported by controller.spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.spec_hooks import hook_problems
from controller.spec_metrics import body_problems
from controller.spec_routers import router_problems
from controller.spec_rules import format_seconds, header_match_problem
from controller.weights import integer_percentages

if TYPE_CHECKING:
    from controller.spec import Gate, RolloutSpec

Path = tuple[str | int, ...]


def semantic_problems(spec: RolloutSpec) -> list[tuple[Path, str]]:
    """Cross-field problems as (field path, reason); empty when the spec is sound."""
    problems: list[tuple[Path, str]] = []
    names = [v.name for v in spec.versions]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            problems.append((("versions", i, "name"), f"duplicate version {name!r}"))
        seen.add(name)
    if sum(v.weight for v in spec.versions) == 0:
        problems.append((("versions",), "all weights are 0: at least one version must carry traffic"))
    if spec.target not in seen:
        problems.append((("target",), f"unknown version {spec.target!r}: not listed in versions"))
    elif not any(v.weight > 0 for v in spec.versions if v.name != spec.target):
        problems.append(
            (("versions",), f"no version other than target {spec.target!r} carries traffic to roll back to")
        )
    problems.extend(_binding_problems(spec))
    problems.extend(router_problems(spec))
    problems.extend(hook_problems(spec))
    notification_names = [n.name for n in spec.notifications]
    for i, name in enumerate(notification_names):
        if name in notification_names[:i]:
            problems.append((("notifications", i, "name"), f"duplicate notification name {name!r}"))
    if spec.steps is not None:
        problems.extend(_step_problems(spec, seen))
    if spec.analysis.window < spec.schedule.interval:
        window, interval = format_seconds(spec.analysis.window), format_seconds(spec.schedule.interval)
        problems.append(
            (
                ("analysis", "window"),
                f"window {window} is shorter than the tick interval {interval}: requests between two windows "
                "would never be judged",
            )
        )
    names = [gate.display_name for gate in spec.gates]
    for i, gate in enumerate(spec.gates):
        problems.extend(_gate_problems(gate, i))
        if gate.statistical and names.count(gate.display_name) > 1:
            problems.append(
                (("gates", i), f"gate name {gate.display_name!r} is used twice: a statistical gate needs its own name")
            )
    return problems


def _canonical_host(host: str, namespace: str) -> str:
    """Istio's reading of a host: a short name (no dot) is `<name>.<namespace>.svc.cluster.local`."""
    return host if "." in host else f"{host}.{namespace}.svc.cluster.local"


def _binding_problems(spec: RolloutSpec) -> list[tuple[Path, str]]:
    """Extra hosts and gateways: each once; an extra host is not the spec's own host again."""
    problems: list[tuple[Path, str]] = []
    own = _canonical_host(spec.fqdn, spec.namespace)
    seen: dict[str, int] = {}
    for i, host in enumerate(spec.hosts):
        canonical = _canonical_host(host, spec.namespace)
        if canonical == own:
            problems.append(
                (("hosts", i), f"{host!r} is the service's own host {spec.fqdn}, always served: list only extra hosts")
            )
        elif canonical in seen:
            problems.append((("hosts", i), f"host {host!r} is listed twice (first at hosts[{seen[canonical]}])"))
        seen.setdefault(canonical, i)
    gateways: dict[str, int] = {}
    for i, gateway in enumerate(spec.gateways or []):
        full = gateway if "/" in gateway or gateway == "mesh" else f"{spec.namespace}/{gateway}"
        if full in gateways:
            problems.append(
                (("gateways", i), f"gateway {gateway!r} is listed twice (first at gateways[{gateways[full]}])")
            )
        gateways.setdefault(full, i)
    return problems


def _step_problems(spec: RolloutSpec, known: set[str]) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    steps = spec.steps or []
    if not steps:
        problems.append((("steps",), "steps is empty: give at least one step or omit steps for the default"))
    previous: int | None = None
    previous_index = -1
    for i, step in enumerate(steps):
        kinds = [k for k in ("header", "weight", "traffic", "approval") if k in step.model_fields_set]
        if len(kinds) != 1:
            what = "none" if not kinds else ", ".join(kinds)
            problems.append(
                (("steps", i), f"a step needs exactly one of header, weight, traffic, approval (got {what})")
            )
            continue
        kind = kinds[0]
        if kind == "header" and step.header is None:
            problems.append((("steps", i, "header"), "header step without header: give name and value"))
        elif kind == "header" and step.header is not None:
            header = step.header
            reason = header_match_problem(header.name, header.value, header.match)
            if reason is not None:
                problems.append((("steps", i, "header", "value"), reason))
        if kind == "approval" and step.duration is not None:
            problems.append((("steps", i, "duration"), "an approval step waits for a person, not a duration"))
        if kind == "weight" and step.weight is None:
            problems.append((("steps", i, "weight"), "weight step without a weight (0-100)"))
        target_pct: int | None = None
        if kind == "weight" and step.weight is not None:
            target_pct = step.weight
        if kind == "traffic":
            traffic = step.traffic or {}
            unknown = [name for name in traffic if name not in known]
            for name in unknown:
                problems.append((("steps", i, "traffic", name), f"unknown version {name!r}"))
            if traffic and sum(traffic.values()) == 0:
                problems.append((("steps", i, "traffic"), "all weights are 0"))
            elif not traffic:
                problems.append((("steps", i, "traffic"), "traffic step without weights"))
            elif not unknown:
                target_pct = integer_percentages(traffic).get(spec.target, 0)
        if target_pct is not None:
            if previous is not None and target_pct <= previous:
                problems.append(
                    (
                        ("steps", i, kind),
                        f"step weights must increase: target {spec.target!r} gets {target_pct}% here, "
                        f"not more than {previous}% at step {previous_index}",
                    )
                )
            if target_pct == 0:
                problems.append((("steps", i, kind), "a weight step must give the target more than 0%"))
            previous, previous_index = target_pct, i
    return problems


def _gate_problems(gate: Gate, i: int) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    has_limit = gate.max is not None or gate.min is not None or gate.stable_margin is not None
    if gate.mode == "threshold" and not has_limit:
        what = "max, min and/or stable_margin" if gate.metric == "custom" else "max and/or stable_margin"
        problems.append((("gates", i), f"gate without threshold: set {what}"))
    if gate.mode == "both" and not has_limit:
        problems.append(
            (("gates", i), "mode both without threshold: set max and/or stable_margin, or use mode statistical")
        )
    if gate.metric == "latency" and gate.quantile is None and gate.mode != "statistical":
        problems.append((("gates", i, "quantile"), "latency gate needs a quantile (p50, p90 or p99)"))
    problems.extend(_statistical_problems(gate, i))
    if gate.metric != "latency" and gate.quantile is not None:
        problems.append((("gates", i, "quantile"), "quantile applies only to latency gates"))
    if gate.metric == "error_rate" and gate.max is not None and gate.max > 100:
        problems.append((("gates", i, "max"), "error_rate max is a percentage (0-100)"))
    if gate.metric != "error_rate":
        for field in ("grpc", "codes"):
            if getattr(gate, field):  # by value: the API server writes the defaults (false, [])
                problems.append((("gates", i, field), f"{field} applies only to error_rate gates"))
    if len(set(gate.codes)) != len(gate.codes):
        problems.append((("gates", i, "codes"), "a code is listed twice"))
    problems.extend(_custom_problems(gate, i) if gate.metric == "custom" else _not_custom(gate, i))
    return problems


def _not_custom(gate: Gate, i: int) -> list[tuple[Path, str]]:
    fields = ("min", "query", "bad", "total", "template", "labels", "higher_is_better")
    return [
        (("gates", i, field), f"{field} applies only to custom gates (metric: custom)")
        for field in fields
        if getattr(gate, field) not in (None, False)  # by value: the API server writes the defaults
    ]


def _custom_problems(gate: Gate, i: int) -> list[tuple[Path, str]]:
    """A resolved custom gate: one body (query, or bad + total), thresholds that fit it."""
    if gate.template is not None:  # not resolved: the loader reports the unknown template
        return []
    problems = body_problems(gate.query, gate.bad, gate.total, gate.higher_is_better, ("gates", i))
    if gate.name is None:
        problems.append((("gates", i, "name"), "a custom gate needs a name: reasons and status show it"))
    if gate.min is not None and gate.max is not None and gate.min > gate.max:
        problems.append((("gates", i, "min"), f"min {gate.min:g} is above max {gate.max:g}: nothing could pass"))
    if gate.query is not None and gate.statistical:
        problems.append(
            (("gates", i, "mode"), "the statistical test needs counters: give bad and total instead of query")
        )
    if gate.bad is not None:
        if gate.min is not None:
            problems.append((("gates", i, "min"), "min applies to a query; bad/total is judged by max (percent)"))
        if gate.max is not None and gate.max > 100:
            problems.append((("gates", i, "max"), "bad/total max is a percentage (0-100)"))
    return problems


def _statistical_problems(gate: Gate, i: int) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    if not gate.statistical:
        for field in ("tolerance", "alpha", "slow_ms"):
            if field in gate.model_fields_set:
                problems.append((("gates", i, field), f"{field} applies only to mode statistical or both"))
        return problems
    if gate.metric != "latency" and gate.slow_ms is not None:
        problems.append((("gates", i, "slow_ms"), "slow_ms applies only to latency gates"))
    if gate.mode == "statistical":
        if gate.stable_margin is not None:
            problems.append(
                (("gates", i, "stable_margin"), "stable_margin is a threshold: use mode both to combine it")
            )
        if gate.metric != "latency" and gate.max is not None:
            problems.append((("gates", i, "max"), "max is a threshold: use mode both to combine it"))
    return problems


def _absolute_limit(gate: Gate) -> bool:
    """True when the gate can judge the target alone (a max or min it applies), without stable traffic."""
    return gate.mode != "statistical" and (gate.max is not None or gate.min is not None)


def spec_warnings(spec: RolloutSpec) -> list[tuple[Path, str]]:
    """Sound but doubtful choices as (field path, reason); `ramp validate` prints them without failing."""
    warnings: list[tuple[Path, str]] = []
    if spec.gateways is not None and "mesh" not in spec.gateways:
        warnings.append(
            (
                ("gateways",),
                f"mesh is not listed: callers inside the mesh reach {spec.fqdn} without Ramp's routes, so the "
                f"Service spreads them over every version's pods, {spec.target!r} included; add mesh unless "
                "only the gateways listed may reach the service",
            )
        )
    if any(_absolute_limit(gate) for gate in spec.gates):
        return warnings
    for i, step in enumerate(spec.effective_steps):
        if step.kind == "weight" and step.weight is not None:
            share = step.weight
        elif step.kind == "traffic" and step.traffic and sum(step.traffic.values()) > 0:
            share = integer_percentages(step.traffic).get(spec.target, 0)
        else:
            continue
        if share == 100:
            # Default steps are not in the file: point at the gates that need the max instead.
            path: Path = ("steps", i, step.kind) if spec.steps is not None else ("gates",)
            where = "here" if spec.steps is not None else f"at default step {i}"
            warnings.append(
                (
                    path,
                    f"{spec.target!r} gets 100% {where} but every gate compares it with the stable versions "
                    "(statistical, or stable_margin without max): with no stable traffic they give no data, so "
                    "this step holds (and rolls back after missing_data_timeout); give a gate a max",
                )
            )
    return warnings

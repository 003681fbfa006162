"""Rollout spec model (pydantic v2, extra=forbid).

Structural checks (types, ranges, unknown fields) live on the models; checks that
relate several fields (unknown versions, increasing weights, ...) live in
`semantic_problems`, which reports a field path for each problem so the loader
can point at the exact YAML line.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from controller.weights import integer_percentages

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """'90s', '1m30s', '2h', '500ms' or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("duration must be a string like '30s' or a number of seconds")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("duration must be a finite number of seconds >= 0") from None
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {value!r}: use forms like '30s', '2m', '1h30m', '500ms'")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("duration must be a string like '30s' or a number of seconds")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("duration must be a finite number of seconds >= 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _reject_bool(value: object) -> object:
    # YAML turns `true`/`yes` into booleans, which pydantic's lax mode would read as 1.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_reject_bool)]
Number = Annotated[float, BeforeValidator(_reject_bool)]
VersionName = Annotated[
    str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description="DNS label")
]
DnsName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
HeaderName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$", max_length=128)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionWeight(StrictModel):
    name: VersionName
    weight: Int = Field(ge=0, le=1_000_000, description="Relative weight; 50/50/50 means a third each")


class HeaderMatch(StrictModel):
    name: HeaderName = "x-version"
    value: str = Field(min_length=1, max_length=256)
    match: Literal["exact", "prefix", "regex"] = "exact"


class ApprovalPause(StrictModel):
    message: str = "waiting for manual approval (ramp resume)"


class Step(StrictModel):
    """Exactly one of header / weight / traffic / approval."""

    header: HeaderMatch | None = None
    weight: Int | None = Field(default=None, ge=0, le=100, description="Target version's percentage")
    traffic: dict[VersionName, Annotated[Int, Field(ge=0, le=1_000_000)]] | None = Field(
        default=None, description="Relative weights of every version for this step"
    )
    approval: ApprovalPause | None = None
    duration: Duration | None = Field(default=None, description="How long to observe this step")

    @property
    def kind(self) -> str:
        for name in ("header", "weight", "traffic", "approval"):
            if name in self.model_fields_set:
                return name
        return "none"


class Gate(StrictModel):
    name: DnsName | None = None
    metric: Literal["error_rate", "latency"]
    quantile: Literal["p50", "p90", "p99"] | None = Field(
        default=None, description="Required for latency gates"
    )
    max: Number | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Absolute limit: percent for error_rate, milliseconds for latency",
    )
    stable_margin: Number | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="New version may be at most this much worse than stable (gate units)",
    )
    min_requests: Int | None = Field(default=None, ge=1)
    mode: Literal["threshold", "statistical", "both"] = Field(
        default="threshold",
        description=(
            "threshold: max/stable_margin; statistical: an anytime-valid sequential test of the new version "
            "against stable (no fixed threshold); both: the two together, where a max breached by stable too "
            "holds instead of rolling back"
        ),
    )
    tolerance: Number = Field(
        default=1.2,
        ge=1,
        allow_inf_nan=False,
        description="Statistical: ratio (new/stable) of error or slow-request rates that is still acceptable",
    )
    alpha: Number = Field(
        default=0.01,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description=(
            "Statistical: false-rollback bound; the gate rolls back when its e-value reaches K/alpha "
            "(K = the spec's statistical gates)"
        ),
    )
    slow_ms: Number | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Statistical latency: a request slower than this is 'slow' (default: max, else stable's quantile "
            "at the start of the rollout); snapped up to a histogram bucket boundary"
        ),
    )

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.metric == "error_rate":
            return self.metric
        return f"latency-{self.quantile}" if self.quantile else "latency"

    @property
    def statistical(self) -> bool:
        return self.mode != "threshold"


class Schedule(StrictModel):
    interval: Duration = Field(default=5.0, description="Tick interval")


class Analysis(StrictModel):
    window: Duration = Field(default=30.0, description="PromQL range window")
    min_requests: Int = Field(default=20, ge=1, description="Requests the new version needs before judging")
    reporter: Literal["destination", "source"] = "destination"


class RollbackPolicy(StrictModel):
    on_missing_data: Literal["rollback", "hold"] = Field(
        default="rollback",
        description=(
            "Missing data never promotes. rollback: hold, then roll back once data has been missing for "
            "missing_data_timeout; hold: hold until data returns or a person acts"
        ),
    )
    missing_data_timeout: Duration = Field(default=120.0, description="See on_missing_data")
    failed_checks: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Failed gate checks (ticks) before rolling back; 1 = at the first (Flagger calls this threshold)",
    )


DEFAULT_STEP_DURATION = 60.0


def _default_gates() -> list[Gate]:
    return [Gate(metric="error_rate", max=1.0), Gate(metric="latency", quantile="p99", max=500.0)]


class RolloutSpec(StrictModel):
    api_version: Literal["ramp/v1"] = Field(default="ramp/v1", alias="apiVersion")
    kind: Literal["Rollout"] = "Rollout"
    name: DnsName | None = Field(default=None, description="Defaults to the service name")
    service: DnsName
    namespace: DnsName = "default"
    host: str | None = Field(default=None, min_length=1, max_length=253)
    versions: list[VersionWeight] = Field(min_length=1, description="Current traffic, relative weights")
    target: VersionName = Field(description="The version being rolled out")
    steps: list[Step] | None = Field(default=None, description="Default: header, 10, 50, 100")
    gates: list[Gate] = Field(default_factory=_default_gates)
    schedule: Schedule = Field(default_factory=Schedule)
    analysis: Analysis = Field(default_factory=Analysis)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def rollout_name(self) -> str:
        return self.name or self.service

    @property
    def fqdn(self) -> str:
        return self.host or f"{self.service}.{self.namespace}.svc.cluster.local"

    @property
    def baseline(self) -> dict[str, int]:
        return {v.name: v.weight for v in self.versions}

    @property
    def effective_steps(self) -> list[Step]:
        if self.steps is not None:
            return list(self.steps)
        return [
            Step(header=HeaderMatch(value=self.target), duration=DEFAULT_STEP_DURATION),
            Step(weight=10, duration=DEFAULT_STEP_DURATION),
            Step(weight=50, duration=DEFAULT_STEP_DURATION),
            Step(weight=100, duration=DEFAULT_STEP_DURATION),
        ]


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
    if spec.steps is not None:
        problems.extend(_step_problems(spec, seen))
    names = [gate.display_name for gate in spec.gates]
    for i, gate in enumerate(spec.gates):
        problems.extend(_gate_problems(gate, i))
        if gate.statistical and names.count(gate.display_name) > 1:
            problems.append(
                (("gates", i), f"gate name {gate.display_name!r} is used twice: a statistical gate needs its own name")
            )
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
    if gate.mode == "threshold" and gate.max is None and gate.stable_margin is None:
        problems.append((("gates", i), "gate without threshold: set max and/or stable_margin"))
    if gate.mode == "both" and gate.max is None and gate.stable_margin is None:
        problems.append(
            (("gates", i), "mode both without threshold: set max and/or stable_margin, or use mode statistical")
        )
    if gate.metric == "latency" and gate.quantile is None and gate.mode != "statistical":
        problems.append((("gates", i, "quantile"), "latency gate needs a quantile (p50, p90 or p99)"))
    problems.extend(_statistical_problems(gate, i))
    if gate.metric == "error_rate" and gate.quantile is not None:
        problems.append((("gates", i, "quantile"), "quantile applies only to latency gates"))
    if gate.metric == "error_rate" and gate.max is not None and gate.max > 100:
        problems.append((("gates", i, "max"), "error_rate max is a percentage (0-100)"))
    return problems


def _statistical_problems(gate: Gate, i: int) -> list[tuple[Path, str]]:
    problems: list[tuple[Path, str]] = []
    if not gate.statistical:
        for field in ("tolerance", "alpha", "slow_ms"):
            if field in gate.model_fields_set:
                problems.append((("gates", i, field), f"{field} applies only to mode statistical or both"))
        return problems
    if gate.metric == "error_rate" and gate.slow_ms is not None:
        problems.append((("gates", i, "slow_ms"), "slow_ms applies only to latency gates"))
    if gate.mode == "statistical":
        if gate.stable_margin is not None:
            problems.append(
                (("gates", i, "stable_margin"), "stable_margin is a threshold: use mode both to combine it")
            )
        if gate.metric == "error_rate" and gate.max is not None:
            problems.append((("gates", i, "max"), "max is a threshold: use mode both to combine it"))
    return problems

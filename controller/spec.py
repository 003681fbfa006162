"""Rollout spec model (pydantic v2, extra=forbid).

Structural checks (types, ranges, unknown fields) live on the models, with the field
rules and bounds of controller.spec_rules (durations, NaN/infinity, names, hosts, header
names and values); checks that relate several fields (unknown versions, increasing
weights, RE2 and match-all header matches, window vs interval) live in
controller.spec_semantics (`semantic_problems`, `spec_warnings`, re-exported here), which
report a field path for each problem so the loader can point at the exact YAML line.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from controller.spec_hooks import MAX_HOOKS, Hook
from controller.spec_metrics import ClientErrorCode, MetricLabels, Query, Selector
from controller.spec_notify import MAX_NOTIFICATIONS, Notification
from controller.spec_routers import GatewayApiRouting, RouterName
from controller.spec_rules import (
    DEFAULT_PROGRESS_DEADLINE,
    MAX_EXTRA_HOSTS,
    MAX_GATES,
    MAX_GATEWAYS,
    MAX_INTERVAL,
    MAX_MISSING_DATA_TIMEOUT,
    MAX_PROGRESS_DEADLINE,
    MAX_STEP_DURATION,
    MAX_STEPS,
    MAX_VERSIONS,
    MAX_WINDOW,
    MIN_INTERVAL,
    MIN_PROGRESS_DEADLINE,
    MIN_WINDOW,
    check_header_value,
    count_between,
    format_seconds,
)
from controller.spec_rules import parse_duration as parse_duration  # re-exported
from controller.spec_rules import validate_version_name as validate_version_name  # re-exported for the CLI
from controller.spec_semantics import semantic_problems as semantic_problems  # re-exported
from controller.spec_semantics import spec_warnings as spec_warnings  # re-exported
from controller.spec_types import (
    DnsName,
    Gateway,
    HeaderName,
    Host,
    Int,
    Interval,
    Number,
    ProgressDeadline,
    StepDuration,
    StrictModel,
    Timeout,
    VersionName,
    Window,
)


class VersionWeight(StrictModel):
    name: VersionName
    weight: Int = Field(ge=0, le=1_000_000, description="Relative weight; 50/50/50 means a third each")


class HeaderMatch(StrictModel):
    name: HeaderName = "x-version"
    value: Annotated[str, AfterValidator(check_header_value)] = Field(
        max_length=256,
        description=(
            "Printable ASCII, no leading/trailing space. regex: RE2 (Envoy's engine), full match, program size "
            "<= 100; a prefix or regex that matches every value is refused"
        ),
    )
    match: Literal["exact", "prefix", "regex"] = "exact"


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("message has control characters: use one line of printable text")
    return text


class ApprovalPause(StrictModel):
    message: Annotated[str, AfterValidator(_printable)] = Field(
        default="waiting for manual approval (ramp resume)", max_length=500
    )


class Step(StrictModel):
    """Exactly one of header / weight / traffic / approval."""

    header: HeaderMatch | None = None
    weight: Int | None = Field(default=None, ge=0, le=100, description="Target version's percentage")
    traffic: (
        Annotated[
            dict[VersionName, Annotated[Int, Field(ge=0, le=1_000_000)]],
            AfterValidator(count_between("versions", 1, MAX_VERSIONS)),
        ]
        | None
    ) = Field(default=None, description=f"Relative weights of every version for this step (at most {MAX_VERSIONS})")
    approval: ApprovalPause | None = None
    duration: StepDuration | None = Field(
        default=None, description=f"How long to observe this step (0 to {format_seconds(MAX_STEP_DURATION)})"
    )

    @property
    def kind(self) -> str:
        for name in ("header", "weight", "traffic", "approval"):
            if name in self.model_fields_set:
                return name
        return "none"


_CUSTOM_BODY = ("query", "bad", "total", "labels", "higher_is_better")


class Gate(StrictModel):
    name: DnsName | None = None
    metric: Literal["error_rate", "latency", "custom"]
    quantile: Literal["p50", "p90", "p99"] | None = Field(default=None, description="Required for latency gates")
    max: Number | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Absolute limit: percent for error_rate and bad/total, milliseconds for latency, the query's unit",
    )
    min: Number | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="custom query: lower limit (the value must be at least this), e.g. a success rate",
    )
    stable_margin: Number | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="New version may be at most this much worse than stable (gate units)",
    )
    min_requests: Int | None = Field(default=None, ge=1, le=1_000_000_000)
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
    grpc: bool = Field(
        default=False, description="error_rate: also count gRPC failures (Istio's grpc_response_status not 0)"
    )
    codes: list[ClientErrorCode] = Field(
        default_factory=list,
        max_length=20,
        description="error_rate: 4xx status codes counted as errors too, e.g. ['429']",
        json_schema_extra={"maxItems": 20},
    )
    query: Query | None = Field(default=None, description="custom: PromQL template answering one value per version")
    bad: Selector | None = Field(default=None, description="custom: counter selector of bad events (with total)")
    total: Selector | None = Field(default=None, description="custom: counter selector of all events (with bad)")
    template: DnsName | None = Field(default=None, description="custom: a MetricTemplate of the spec's directory")
    labels: MetricLabels | None = Field(
        default=None, description="custom: the answer's namespace/service/version labels (default: Istio's)"
    )
    higher_is_better: bool = Field(
        default=False, description="custom query: higher is better (stable_margin then bounds how much lower)"
    )

    @model_validator(mode="after")
    def _template_alone(self) -> Gate:
        if self.template is not None:
            given = [name for name in _CUSTOM_BODY if getattr(self, name) not in (None, False)]
            if given:
                raise ValueError(f"template {self.template!r} defines the metric: remove {', '.join(given)}")
        return self

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.metric == "custom":
            return self.template or "custom"
        if self.metric == "error_rate":
            return self.metric
        return f"latency-{self.quantile}" if self.quantile else "latency"

    @property
    def statistical(self) -> bool:
        return self.mode != "threshold"

    @property
    def metric_labels(self) -> MetricLabels:
        return self.labels or MetricLabels()


class Schedule(StrictModel):
    interval: Interval = Field(
        default=5.0,
        description=f"Tick interval, {format_seconds(MIN_INTERVAL)} to {format_seconds(MAX_INTERVAL)} "
        "(sub-second ticks are for tests)",
    )


class Analysis(StrictModel):
    window: Window = Field(
        default=30.0,
        description=f"PromQL range window, {format_seconds(MIN_WINDOW)} to {format_seconds(MAX_WINDOW)} "
        "and at least the tick interval",
    )
    min_requests: Int = Field(
        default=20, ge=1, le=1_000_000_000, description="Requests the new version needs before judging"
    )
    reporter: Literal["destination", "source"] = "destination"


class RollbackPolicy(StrictModel):
    on_missing_data: Literal["rollback", "hold"] = Field(
        default="rollback",
        description=(
            "Missing data never promotes. rollback: hold, then roll back once data has been missing for "
            "missing_data_timeout; hold: hold until data returns, a person acts or the progress_deadline passes"
        ),
    )
    missing_data_timeout: Timeout = Field(
        default=120.0, description=f"See on_missing_data (0 to {format_seconds(MAX_MISSING_DATA_TIMEOUT)})"
    )
    failed_checks: Int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Failed gate checks (ticks) before rolling back; 1 = at the first (Flagger calls this threshold)",
    )


DEFAULT_STEP_DURATION = 60.0


_NO_GATES = (
    ": with no gate nothing is judged and the rollout would be promoted without evidence (omit gates for the defaults)"
)


_NO_GATEWAYS = ": omit gateways for mesh only, or list them (e.g. [mesh, shop/public-gateway])"


Gateways = Annotated[list[Gateway], AfterValidator(count_between("gateways", 1, MAX_GATEWAYS, _NO_GATEWAYS))]


def _default_gates() -> list[Gate]:
    return [Gate(metric="error_rate", max=1.0), Gate(metric="latency", quantile="p99", max=500.0)]


class RolloutSpec(StrictModel):
    api_version: Literal["ramp/v1"] = Field(default="ramp/v1", alias="apiVersion")
    kind: Literal["Rollout"] = "Rollout"
    name: DnsName | None = Field(default=None, description="Defaults to the service name")
    service: DnsName
    namespace: DnsName = "default"
    host: Host | None = Field(default=None, description="Default: <service>.<namespace>.svc.cluster.local")
    hosts: Annotated[list[Host], AfterValidator(count_between("hosts", 0, MAX_EXTRA_HOSTS))] = Field(
        default_factory=list,
        description=(
            "Extra hosts the VirtualService serves besides host, e.g. shop.example.com on an ingress gateway "
            f"(at most {MAX_EXTRA_HOSTS}); the routes still send to host's subsets"
        ),
        json_schema_extra={"maxItems": MAX_EXTRA_HOSTS},
    )
    gateways: Gateways | None = Field(
        default=None,
        description=(
            "Gateways the VirtualService is bound to ([namespace/]name, or mesh for the sidecars); "
            f"default: mesh only (at most {MAX_GATEWAYS})"
        ),
        json_schema_extra={"minItems": 1, "maxItems": MAX_GATEWAYS},
    )
    router: RouterName = Field(
        default="istio",
        description="What routes the traffic: istio (VirtualService + DestinationRule) or gateway-api (HTTPRoute)",
    )
    gateway_api: GatewayApiRouting | None = Field(
        default=None, description="For router: gateway-api: the versions' Services, and where the HTTPRoute attaches"
    )
    versions: Annotated[list[VersionWeight], AfterValidator(count_between("versions", 1, MAX_VERSIONS))] = Field(
        description=f"Current traffic, relative weights (1 to {MAX_VERSIONS} versions)",
        json_schema_extra={"minItems": 1, "maxItems": MAX_VERSIONS},
    )
    target: VersionName = Field(description="The version being rolled out")
    steps: Annotated[list[Step], AfterValidator(count_between("steps", 0, MAX_STEPS))] | None = Field(
        default=None,
        description=f"Default: header, 10, 50, 100 (at most {MAX_STEPS} steps)",
        json_schema_extra={"maxItems": MAX_STEPS},
    )
    gates: Annotated[list[Gate], AfterValidator(count_between("gates", 1, MAX_GATES, _NO_GATES))] = Field(
        default_factory=_default_gates,
        description=f"1 to {MAX_GATES} gates; omit for the defaults (error rate <= 1%, p99 <= 500 ms)",
        json_schema_extra={"minItems": 1, "maxItems": MAX_GATES},
    )
    schedule: Schedule = Field(default_factory=Schedule)
    analysis: Analysis = Field(default_factory=Analysis)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    hooks: Annotated[list[Hook], AfterValidator(count_between("hooks", 0, MAX_HOOKS))] = Field(
        default_factory=list,
        description=(
            f"Webhooks before steps, as step gates, to confirm promotion, after the rollout (at most {MAX_HOOKS})"
        ),
        json_schema_extra={"maxItems": MAX_HOOKS},
    )
    notifications: Annotated[
        list[Notification], AfterValidator(count_between("notifications", 0, MAX_NOTIFICATIONS))
    ] = Field(
        default_factory=list,
        description=f"Slack, Teams or JSON webhooks told about this rollout (at most {MAX_NOTIFICATIONS})",
        json_schema_extra={"maxItems": MAX_NOTIFICATIONS},
    )
    progress_deadline: ProgressDeadline = Field(
        default=DEFAULT_PROGRESS_DEADLINE,
        description=(
            "How long the rollout may make no progress before it fails with traffic on the baseline: a version "
            "a step needs has no ready pods, or a step is overdue (its duration passed but it cannot complete: "
            "no data, holding, routing not confirmed). Approval waits and pauses by a person do not count "
            f"({format_seconds(MIN_PROGRESS_DEADLINE)} to {format_seconds(MAX_PROGRESS_DEADLINE)})"
        ),
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def rollout_name(self) -> str:
        return self.name or self.service

    @property
    def fqdn(self) -> str:
        return self.host or f"{self.service}.{self.namespace}.svc.cluster.local"

    @property
    def bound_gateways(self) -> tuple[str, ...]:
        """The gateways to bind, as written; () = Istio's default, mesh only."""
        return tuple(self.gateways or ())

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

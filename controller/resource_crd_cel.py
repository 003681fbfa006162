"""CEL `x-kubernetes-validations` of the RampRollout CRD: the cross-field rules of the rollout spec.

These mirror controller/spec_semantics.py (and the field rules of controller/spec_rules.py that pydantic
runs as validators, so they are not in the model's JSON Schema) for everything CEL can express, so the
API server refuses at `kubectl apply` what `ramp validate` refuses. What CEL cannot express (RE2 program
size and match-all header matches, the largest-remainder share of the target in `traffic` steps, hosts and
gateways that are equal only once the resource's namespace is known) the controller still checks, and it
reports the resource as Invalid. Every rule is sound: it never refuses a spec `ramp validate` accepts.

Rules use only standard CEL (has, size, all, exists, exists_one, filter, map, in, matches, startsWith,
endsWith, duration, type), which cel-python evaluates too, so the tests run them on every example and on
a table of invalid specs. Lists and strings they iterate are bounded (maxItems/maxLength) so that the API
server's cost estimate stays far below its limits: the widest rule, versions against every traffic key
of every step, is 50 x 10 x 10 comparisons of names of at most 63 characters.

`namespace` is a CEL reserved word: rules read the spec's `namespace` as `self.__namespace__`, the escaped name
every Kubernetes version accepts (the plain name only from 1.32 on).

A rule is placed by a schema path: names of properties, with "*" for list items or map values.
"""

from __future__ import annotations

from typing import Any

from controller.spec import Analysis, Schedule
from controller.spec_rules import (  # the private sets are the header rules ramp validate uses
    _HOP_BY_HOP,
    _SET_BY_ENVOY,
    MAX_STEPS,
    format_seconds,
)

Rule = dict[str, str]
SchemaPath = tuple[str, ...]

# A DNS name whose labels are at most 63 characters (RFC 1123), as controller.spec_rules.validate_host checks.
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_NAME_RULE_PATTERN = rf"^{_LABEL}(\\.{_LABEL})*$"


def rule(expression: str, message: str, field_path: str | None = None) -> Rule:
    """One x-kubernetes-validations entry; `field_path` (relative to the rule's node) says which field is wrong."""
    entry = {"rule": expression, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def seconds(expression: str) -> str:
    """CEL for a duration field (int-or-string: seconds or '1m30s') as a CEL duration, for comparisons."""
    return f"(type({expression}) == string ? duration({expression}) : duration(string({expression}) + 's'))"


def duration_constant(value: float) -> str:
    """A CEL duration constant of `value` seconds ('100ms', '10m': the spec's syntax is Go's too)."""
    return f"duration('{format_seconds(value)}')"


def _or_default(owner: str, field: str, default: float) -> str:
    """The field when written, else the pydantic default (Kubernetes defaults it only inside a present parent)."""
    return f"(has(self.{owner}) && has(self.{owner}.{field}) ? self.{owner}.{field} : '{format_seconds(default)}')"


def _list_or_empty(field: str) -> str:
    return f"(has(self.{field}) ? self.{field} : [])"


def _gate_mode(gate: str) -> str:
    return f"(has({gate}.mode) ? {gate}.mode : 'threshold')"


def _gate_display_name(gate: str) -> str:
    """controller.spec.Gate.display_name."""
    return (
        f"(has({gate}.name) ? {gate}.name : ({gate}.metric == 'error_rate' ? 'error_rate' : "
        f"(has({gate}.quantile) ? 'latency-' + {gate}.quantile : 'latency')))"
    )


def _increasing(values: str) -> str:
    """CEL: the list `values` (at most MAX_STEPS long) strictly increases. CEL has no range(): a constant
    list of indices stands in for it."""
    indices = ", ".join(str(i) for i in range(MAX_STEPS - 1))
    return f"[{indices}].all(i, i + 1 >= size({values}) || {values}[i] < {values}[i + 1])"


def _spec_rules() -> list[Rule]:
    window = _or_default("analysis", "window", Analysis().window)
    interval = _or_default("schedule", "interval", Schedule().interval)
    target_listed = "self.versions.exists(v, v.name == self.target)"
    steps = _list_or_empty("steps")
    gateway_api = "(has(self.router) && self.router == 'gateway-api')"
    mode, name = _gate_mode("g"), _gate_display_name
    own_host = (
        "(has(self.host) ? h == self.host : (h == self.service || "
        "(has(self.__namespace__) && h == self.service + '.' + self.__namespace__ + '.svc.cluster.local')))"
    )
    return [
        rule("self.versions.all(v, self.versions.exists_one(w, w.name == v.name))", "duplicate version name",
             ".versions"),
        rule("self.versions.exists(v, v.weight > 0)", "all weights are 0: at least one version must carry traffic",
             ".versions"),
        rule(target_listed, "unknown version: target is not listed in versions", ".target"),
        rule(f"!{target_listed} || self.versions.exists(v, v.name != self.target && v.weight > 0)",
             "no version other than target carries traffic to roll back to", ".versions"),
        rule(f"{steps}.all(s, !has(s.traffic) || s.traffic.all(k, self.versions.exists(v, v.name == k)))",
             "unknown version in a traffic step: every key must be listed in versions", ".steps"),
        rule(f"{steps}.all(s, !has(s.traffic) || (self.target in s.traffic && s.traffic[self.target] > 0))",
             "a traffic step must give the target more than 0%", ".steps"),
        rule(_increasing(f"{steps}.filter(s, has(s.weight)).map(s, s.weight)"),
             "step weights must increase: each weight step must give the target more than the one before",
             ".steps"),
        rule(f"{seconds(window)} >= {seconds(interval)}",
             "window is shorter than the tick interval: requests between two windows would never be judged",
             ".analysis.window"),
        rule(f"{_list_or_empty('gates')}.all(g, {mode} == 'threshold' || "
             f"{_list_or_empty('gates')}.filter(h, {name('h')} == {name('g')}).size() == 1)",
             "gate name is used twice: a statistical gate needs its own name", ".gates"),
        rule(f"!{_list_or_empty('hosts')}.exists(h, {own_host})",
             "an extra host is the service's own host, always served: list only extra hosts", ".hosts"),
        rule("!has(self.hosts) || self.hosts.all(h, self.hosts.exists_one(x, x == h))", "a host is listed twice",
             ".hosts"),
        rule("!has(self.gateways) || self.gateways.all(g, self.gateways.exists_one(x, x == g))",
             "a gateway is listed twice", ".gateways"),
        rule(f"{gateway_api} == has(self.gateway_api)",
             "router: gateway-api needs gateway_api (its port), and gateway_api is only for router: gateway-api",
             ".gateway_api"),
        rule(f"!{gateway_api} || !has(self.gateways)",
             "Istio gateways do not apply to router: gateway-api; attach the route with gateway_api.parent_refs",
             ".gateways"),
        rule("!has(self.gateway_api) || !has(self.gateway_api.version_service) || "
             "self.gateway_api.version_service.contains('{version}')",
             "version_service must contain {version}: each version needs its own Service",
             ".gateway_api.version_service"),
        rule("!has(self.gateway_api) || !has(self.gateway_api.parent_refs) || self.gateway_api.parent_refs.all("
             "p, !has(p.kind) || p.kind != 'Service' || (has(p.group) && p.group == ''))",
             "a Service parent (mesh traffic) is in the core group: write group: ''", ".gateway_api.parent_refs"),
    ]  # fmt: skip


def _step_rules() -> list[Rule]:
    count = " + ".join(f"(has(self.{kind}) ? 1 : 0)" for kind in ("header", "weight", "traffic", "approval"))
    return [
        rule(f"{count} == 1", "a step needs exactly one of header, weight, traffic, approval"),
        rule("!has(self.approval) || !has(self.duration)", "an approval step waits for a person, not a duration",
             ".duration"),
        rule("!has(self.weight) || self.weight > 0", "a weight step must give the target more than 0%", ".weight"),
    ]  # fmt: skip


def _header_name_rules() -> list[Rule]:
    hop_by_hop = ", ".join(f"'{name}'" for name in sorted(_HOP_BY_HOP))
    set_by_envoy = ", ".join(f"'{name}'" for name in sorted(_SET_BY_ENVOY))
    return [
        rule("self != 'host'",
             "every request carries host and the VirtualService already selects it: use the spec's host field"),
        rule(f"!(self in [{hop_by_hop}])",
             "a hop-by-hop header (RFC 9110 7.6.1): proxies drop it and HTTP/2 forbids it, so it cannot select "
             "testers"),
        rule("self != 'content-length'",
             "content-length describes the body (HTTP/2 and chunked requests may omit it), not who sent it"),
        rule(f"!(self in [{set_by_envoy}]) && !self.startsWith('x-envoy-')",
             "Envoy sets or overwrites this header on every request: it cannot select testers"),
    ]  # fmt: skip


def _gate_rules() -> list[Rule]:
    mode = _gate_mode("self")
    only_statistical = [
        rule(f"{mode} != 'threshold' || !has(self.{field})", f"{field} applies only to mode statistical or both",
             f".{field}")
        for field in ("tolerance", "alpha", "slow_ms")
    ]  # fmt: skip
    return [
        rule(f"{mode} != 'threshold' || has(self.max) || has(self.stable_margin)",
             "gate without threshold: set max and/or stable_margin"),
        rule(f"{mode} != 'both' || has(self.max) || has(self.stable_margin)",
             "mode both without threshold: set max and/or stable_margin, or use mode statistical"),
        rule(f"self.metric != 'latency' || has(self.quantile) || {mode} == 'statistical'",
             "latency gate needs a quantile (p50, p90 or p99)", ".quantile"),
        rule("self.metric != 'error_rate' || !has(self.quantile)", "quantile applies only to latency gates",
             ".quantile"),
        rule("self.metric != 'error_rate' || !has(self.max) || self.max <= 100.0",
             "error_rate max is a percentage (0-100)", ".max"),
        *only_statistical,
        rule(f"{mode} == 'threshold' || self.metric != 'error_rate' || !has(self.slow_ms)",
             "slow_ms applies only to latency gates", ".slow_ms"),
        rule(f"{mode} != 'statistical' || !has(self.stable_margin)",
             "stable_margin is a threshold: use mode both to combine it", ".stable_margin"),
        rule(f"{mode} != 'statistical' || self.metric != 'error_rate' || !has(self.max)",
             "max is a threshold: use mode both to combine it", ".max"),
    ]  # fmt: skip


_HOST_RULE = rule(
    f"self.matches('{DNS_NAME_RULE_PATTERN}')",
    "not a DNS name: dot-separated labels of lowercase letters, digits and '-', each at most 63 characters "
    "(RFC 1123, no wildcard)",
)


def cel_rules() -> dict[SchemaPath, list[Rule]]:
    """Schema path (from the resource's root) -> the rules placed there."""
    spec: SchemaPath = ("spec",)
    gateway_name = rf"^(mesh|({_LABEL}/)?{_LABEL}(\\.{_LABEL})*)$"
    return {
        (): [
            rule("!has(self.spec.name) || self.spec.name == self.metadata.name",
                 "spec.name differs from metadata.name: omit it (it defaults to metadata.name)", ".spec.name"),
        ],
        spec: _spec_rules(),
        (*spec, "host"): [_HOST_RULE],
        (*spec, "hosts", "*"): [_HOST_RULE],
        (*spec, "gateways", "*"): [
            rule("self == 'mesh' || !self.endsWith('/mesh')",
                 "mesh is reserved for the sidecars and takes no namespace: write mesh"),
            rule(f"self.matches('{gateway_name}')",
                 "not [namespace/]name with DNS labels of at most 63 characters, nor the reserved mesh"),
        ],
        (*spec, "steps", "*"): _step_rules(),
        (*spec, "steps", "*", "traffic"): [rule("self.exists(k, self[k] > 0)", "all weights are 0")],
        (*spec, "steps", "*", "header", "name"): _header_name_rules(),
        (*spec, "steps", "*", "header", "value"): [
            rule("size(self) > 0",
                 "header value is empty: an empty exact value selects nobody, an empty prefix or regex everybody"),
            rule("self.matches('^[!-~]([ -~]*[!-~])?$')",
                 "header value must be printable ASCII without leading or trailing spaces"),
        ],
        (*spec, "steps", "*", "approval", "message"): [
            rule("!self.matches('[\\\\x00-\\\\x1f\\\\x7f]')",
                 "message has control characters: use one line of printable text"),
        ],
        (*spec, "gates", "*"): _gate_rules(),
        (*spec, "hooks"): [
            rule("self.all(h, self.exists_one(g, g.name == h.name))", "duplicate hook name"),
        ],
        (*spec, "hooks", "*"): [
            rule("!has(self.steps) || self.type in ['pre-step', 'step-gate']",
                 "steps applies to pre-step and step-gate hooks only", ".steps"),
            rule("!has(self.steps) || self.steps.all(s, self.steps.exists_one(t, t == s))",
                 "steps lists a step twice", ".steps"),
        ],
        (*spec, "notifications"): [
            rule("self.all(n, self.exists_one(m, m.name == n.name))", "duplicate notification name"),
        ],
        (*spec, "notifications", "*"): [
            rule("has(self.url) != has(self.url_file)", "give exactly one of url and url_file"),
            rule("self.type == 'webhook' || !has(self.url)",
                 "a Slack or Teams webhook URL is a secret: give it in url_file"),
            rule("self.type == 'webhook' || !has(self.secret_file)",
                 "secret_file signs generic webhooks only (type: webhook)"),
        ],
    }  # fmt: skip


def duration_rule(minimum: float, maximum: float) -> Rule:
    """The bounds of a duration given as a string ('90s'); an integer's bounds are the schema's minimum/maximum."""
    return rule(
        f"type(self) != string || (duration(self) >= {duration_constant(minimum)} && "
        f"duration(self) <= {duration_constant(maximum)})",
        f"duration must be between {format_seconds(minimum)} and {format_seconds(maximum)}",
    )


def attach(schema: dict[str, Any], rules: dict[SchemaPath, list[Rule]]) -> None:
    """Put each path's rules on the schema node at that path (KeyError for a path the schema lacks)."""
    for path, entries in rules.items():
        node = schema
        for part in path:
            node = node["items"] if part == "*" and "items" in node else (
                node["additionalProperties"] if part == "*" else node["properties"][part]
            )  # fmt: skip
        node.setdefault("x-kubernetes-validations", []).extend(entries)

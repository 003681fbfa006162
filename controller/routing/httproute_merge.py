"""Pure merge rules: Ramp's rules and annotations into an existing HTTPRoute, and a tolerant read for `ramp status`.

Ramp owns only what it manages. In an HTTPRoute that is the rules named `ramp-*` (MANAGED_ROUTE_PREFIX), its
annotations (`ramp.dev/backends`, `ramp.dev/state`, and - once consumed - `ramp.dev/command`), and the
parentRefs and hostnames it needs: the spec's are appended when missing and none is ever removed or reordered
(another team may attach the same route elsewhere; removing a parent would cut its traffic off). The merged
rule list is, as for a VirtualService (`istio_merge`):

    [Ramp's header rules] + [foreign rules, original order] + [ramp-primary]

Why that order is safe under Gateway API: an implementation picks the matching rule with the highest
PRECEDENCE first (exact path, longest path prefix, method, most header matches, most query matches) and uses
list order only to break ties. `ramp-primary` (`PathPrefix /`, nothing else) ranks below every match that has
any condition (how a RegularExpression path ranks is left to the implementation), so its position never takes
requests from a foreign rule; it sits last so that it also loses every tie. Ramp's header rules (`PathPrefix /`
+ one header) are first so that they win ties against foreign rules with one header match, as Ramp's header
routes do in a VirtualService; a foreign rule with a longer path, a method or more headers outranks them
wherever it sits, as Gateway API defines (unlike Istio's first-match order). A foreign rule that takes EVERY
request (no matches, or a match with nothing but `PathPrefix /`) would tie with `ramp-primary` and win by
order, silently taking all of its traffic: it is refused with `RouteShadowingError` (a GatewayMergeError)
instead of written.

Fields a person added to a Ramp rule other than name/matches/backendRefs (filters, timeouts, retry,
sessionPersistence...) are kept on the re-rendered rule. Everything else (foreign rules, labels, annotations,
status, unknown fields) is left exactly as it was. A result Gateway API would refuse - more than 16 rules,
more than 32 parentRefs or 16 hostnames, two parentRefs to one parent that the sectionName rules forbid - is
refused with `GatewayMergeError` naming the count or the parents: nothing is written.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controller.engine.routing_model import GATEWAY_GROUP, PRIMARY_ROUTE_NAME, DesiredRouting
from controller.engine.state_port import StateStoreError
from controller.routing.httproute_render import (
    BACKENDS_ANNOTATION,
    backends_annotation,
    http_route,
    managed_rules,
    parent_ref_dict,
)
from controller.routing.httproute_shape import (
    check_http_route,
    is_managed,
    read_header_rule,
    versions_by_service,
    where_of,
)
from controller.routing.k8s_objects import (
    COMMAND_ANNOTATION,
    ClusterRouting,
    MalformedObject,
    RouteMergeError,
    annotations_of,
    merge_annotations,
    merge_managed,
    object_ref,
    resource_version,
    state_of,
)

__all__ = ["GatewayMergeError", "RouteShadowingError", "merge_http_route", "parse_http_routing", "takes_every_request"]

OWNED_RULE_FIELDS = frozenset({"name", "matches", "backendRefs"})
MAX_RULES = 16  # Gateway API's bound on spec.rules
MAX_PARENT_REFS = 32  # ... on spec.parentRefs
MAX_HOSTNAMES = 16  # ... on spec.hostnames
MAX_MATCHES = 128  # ... on the matches of all rules together


class GatewayMergeError(RouteMergeError):
    """The existing HTTPRoute cannot take Ramp's routing without breaking something; nothing is written."""


class RouteShadowingError(GatewayMergeError):
    """A foreign rule would take every request Ramp's weighted rule should get."""


# --- attachment: parentRefs and hostnames ------------------------------------------------------------------


def _parent_identity(parent: Mapping[str, Any], namespace: str) -> tuple[object, ...]:
    """The parent a parentRef names (group, kind, namespace, name) with Gateway API's defaults filled in."""
    return (parent.get("group", GATEWAY_GROUP), parent.get("kind", "Gateway"),
            parent.get("namespace") or namespace, parent.get("name"))  # fmt: skip


def _attachment(parent: Mapping[str, Any], namespace: str) -> tuple[object, ...]:
    """The parent and the part of it (listener or port) a parentRef attaches to: equal ones are the same ref."""
    return *_parent_identity(parent, namespace), _section(parent), parent.get("port")


def _section(parent: Mapping[str, Any]) -> object:
    return parent.get("sectionName") or None  # '' means the whole parent, as absent does


def _describe(parent: Mapping[str, Any], namespace: str) -> str:
    _group, kind, ns, name = _parent_identity(parent, namespace)
    section = f" ({parent['sectionName']})" if parent.get("sectionName") else ""
    return f"{kind} {ns}/{name}{section}"


def _check_parents(obj: Mapping[str, Any], parents: list[Any], namespace: str) -> None:
    """Gateway API's own rules on parentRefs (CEL in the CRD), so the refusal names the parents instead of the
    apiserver answering 422: at most 32; two refs to one parent need two distinct sectionNames (a port does not
    tell them apart). Checked on the parent as Gateway API reads it (an absent namespace is the route's), which
    also refuses the whole-Gateway-plus-one-listener pair the CEL rule lets through when only one ref spells
    the namespace out."""
    if len(parents) > MAX_PARENT_REFS:
        raise GatewayMergeError(f"{object_ref(obj)}: Ramp's parentRefs would make {len(parents)} (Gateway API allows "
                                f"{MAX_PARENT_REFS}); remove some - nothing was written")  # fmt: skip
    for index, first in enumerate(parents):
        for second in parents[index + 1 :]:
            if _parent_identity(first, namespace) != _parent_identity(second, namespace):
                continue
            if _section(first) is None or _section(second) is None or _section(first) == _section(second):
                raise GatewayMergeError(
                    f"{object_ref(obj)}: spec.parentRefs would name {_describe(first, namespace)} and "
                    f"{_describe(second, namespace)}: Gateway API needs a distinct sectionName on each ref to the "
                    "same parent; give the existing ref (or the spec's) a sectionName - nothing was written"
                )


def _attach(obj: Mapping[str, Any], spec: dict[str, Any], routing: DesiredRouting) -> None:
    """Append the spec's missing parentRefs and hostnames; never remove or reorder one.

    A route without hostnames serves every hostname of its parents: adding Ramp's would narrow it and cut off
    the callers it already serves, so hostnames are only appended to a route that lists some.
    """
    parents = list(spec.get("parentRefs") or [])
    known = {_attachment(p, routing.namespace) for p in parents}
    missing = [parent_ref_dict(p) for p in routing.parent_refs]
    missing = [p for p in missing if _attachment(p, routing.namespace) not in known]
    if missing:
        spec["parentRefs"] = parents = [*parents, *missing]
    _check_parents(obj, parents, routing.namespace)
    hostnames = spec.get("hostnames")
    if routing.extra_hosts and hostnames:
        added = [h for h in routing.extra_hosts if h not in hostnames]
        if len(hostnames) + len(added) > MAX_HOSTNAMES:
            raise GatewayMergeError(f"{object_ref(obj)}: Ramp's hostnames would make {len(hostnames) + len(added)} "
                                    f"(Gateway API allows {MAX_HOSTNAMES}) - nothing was written")  # fmt: skip
        hostnames.extend(added)


# --- rules -------------------------------------------------------------------------------------------------


def takes_every_request(rule: Mapping[str, Any]) -> bool:
    """No matches (Gateway API then matches `PathPrefix /`), or a match with no condition beyond `PathPrefix /`
    (no header, query parameter or method; an absent path means `PathPrefix /`)."""
    matches = rule.get("matches")
    if not matches:
        return True
    for match in matches:
        path = match.get("path")
        path_all = path is None or (path.get("type", "PathPrefix") == "PathPrefix" and path.get("value", "/") == "/")
        if path_all and not match.get("headers") and not match.get("queryParams") and match.get("method") is None:
            return True
    return False


def _check_shadowing(obj: Mapping[str, Any], foreign: list[Mapping[str, Any]]) -> None:
    for index, rule in enumerate(foreign):
        if takes_every_request(rule):
            label = repr(rule["name"]) if isinstance(rule.get("name"), str) else f"#{index + 1} (unnamed)"
            raise RouteShadowingError(
                f"{object_ref(obj)}: rule {label} matches every request and would take all the traffic of Ramp's "
                f"weighted rule {PRIMARY_ROUTE_NAME!r}; give it a match (a header, a path, a method), remove it, or "
                f"rename it to {PRIMARY_ROUTE_NAME!r} to hand it to Ramp (its filters/timeouts are kept) - nothing "
                "was written"
            )


def merge_rules(existing: list[Mapping[str, Any]], routing: DesiredRouting) -> tuple[list[Any], list[Any]]:
    """(merged rules, foreign rules): Ramp's header rules, foreign rules in their order, ramp-primary."""
    return merge_managed(existing, managed_rules(routing), is_managed, OWNED_RULE_FIELDS)


def _check_bounds(obj: Mapping[str, Any], rules: list[Any], foreign: int) -> None:
    """Gateway API's bounds on the rules: 16 rules, 128 matches in all (a rule without matches has one)."""
    if len(rules) > MAX_RULES:
        raise GatewayMergeError(
            f"{object_ref(obj)}: the route would have {len(rules)} rules ({foreign} of others + "
            f"{len(rules) - foreign} of Ramp's); Gateway API allows {MAX_RULES}: merge or move some rules - "
            "nothing was written"
        )
    matches = sum(len(found) if isinstance(found := rule.get("matches"), list) else 1 for rule in rules)
    if matches > MAX_MATCHES:
        raise GatewayMergeError(f"{object_ref(obj)}: the route would have {matches} matches in all its rules; "
                                f"Gateway API allows {MAX_MATCHES} - nothing was written")  # fmt: skip


def merge_http_route(
    current: Mapping[str, Any] | None,
    routing: DesiredRouting,
    notes: Mapping[str, str],
    remove: Mapping[str, str],
) -> dict[str, Any]:
    """The HTTPRoute to store: `current` (None: create one) with Ramp's rules, attachment and annotations merged
    in. A new dict; `current` is never modified.

    `notes` are annotations to set (BACKENDS_ANNOTATION is always set); `remove` maps a key to the value that was
    consumed: it is removed only if it still holds that value (a command written after we read it is kept for
    the next tick). MalformedObject when `current` does not have an HTTPRoute's shape, GatewayMergeError when
    the merged route would shadow Ramp or break Gateway API's bounds; ValueError when `routing` has no backends.
    """
    if current is None:
        merged = http_route(routing)
    else:
        check_http_route(current, where_of(routing.namespace, routing.service))  # MalformedObject: nothing merged
        merged = copy.deepcopy(dict(current))
        if merged.get("spec") is None:
            merged["spec"] = {}
        spec: dict[str, Any] = merged["spec"]
        _attach(merged, spec, routing)
        rules, foreign = merge_rules(list(spec.get("rules") or []), routing)
        _check_shadowing(merged, foreign)
        _check_bounds(merged, rules, len(foreign))
        spec["rules"] = rules
    merge_annotations(merged, {BACKENDS_ANNOTATION: backends_annotation(routing), **notes}, remove)
    return merged


# --- reading back, tolerant (`ramp status`) -----------------------------------------------------------------


def parse_http_routing(namespace: str, service: str, obj: Mapping[str, Any] | None) -> ClusterRouting:
    """Tolerant: what can be read is reported; the first malformed part is named in `problem`."""
    if obj is None:
        return ClusterRouting(namespace, service, found=False)
    where = where_of(namespace, service)
    problems: list[str] = []
    try:
        check_http_route(obj, where)
    except MalformedObject as exc:
        problems.append(str(exc))
    try:
        versions = versions_by_service(obj, where, None)
    except MalformedObject as exc:
        problems.append(str(exc))
        versions = {}
    spec = obj.get("spec")
    listed = spec.get("rules") if isinstance(spec, Mapping) else None
    rules = [r for r in listed if isinstance(r, Mapping)] if isinstance(listed, list) else []
    weights: list[tuple[str, int]] = []
    headers = []
    for index, rule in enumerate(rules):
        if rule.get("name") == PRIMARY_ROUTE_NAME:
            weights += _readable_weights(rule.get("backendRefs"), versions)
        elif is_managed(rule):
            try:
                headers.append(read_header_rule(rule, where, f"spec.rules[{index}]", versions))
            except (MalformedObject, ValueError) as exc:
                problems.append(str(exc))
    foreign = tuple(str(r.get("name", f"#{i + 1}")) for i, r in enumerate(rules) if not is_managed(r))
    state, error = None, None
    try:
        state = state_of(obj)
    except StateStoreError as exc:
        error = str(exc)
    notes = {k: v for k, v in annotations_of(obj).items() if isinstance(k, str) and isinstance(v, str)}
    return ClusterRouting(
        namespace, service, True, tuple(weights), tuple(headers), foreign, state, error,
        notes.get(COMMAND_ANNOTATION), resource_version(obj), notes, problems[0] if problems else None,
    )  # fmt: skip


def _readable_weights(found: object, versions: Mapping[str, str]) -> list[tuple[str, int]]:
    """(version, weight) of each readable backendRef; a lone one without weight takes all traffic."""
    refs = [b for b in found if isinstance(b, Mapping)] if isinstance(found, list) else []
    weights: list[tuple[str, int]] = []
    for backend in refs:
        name, weight = backend.get("name"), backend.get("weight", 100 if len(refs) == 1 else 1)
        if isinstance(name, str) and isinstance(weight, int) and not isinstance(weight, bool):
            weights.append((versions.get(name, name), weight))
    return weights

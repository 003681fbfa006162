"""Checking an HTTPRoute the apiserver hands back before Ramp reads it, reading Ramp's rules back, and telling
whether the route is in effect (its status).

An HTTPRoute read from the cluster may be anything a person, another tool or a broken apiserver put there:
`spec.rules` as a mapping, backendRefs that are not a list, weights as strings, junk metadata, megabytes of
data. Each problem is a `MalformedObject` naming the object and the field (`HTTPRoute shop/reviews:
spec.rules must be a list, got a mapping`), never a bare Python exception, and nothing is written over it.
As for VirtualServices (`istio_shape`), the rules Ramp owns (`ramp-*`) are only checked when read back: their
matches and backendRefs are re-rendered on the next write, which repairs them.

The status is the Gateway's answer, not the route's shape: `route_not_accepted` turns whatever is there
(missing, stale, refused, junk) into a short reason and never raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from controller.engine.routing_model import (
    GATEWAY_GROUP,
    MANAGED_ROUTE_PREFIX,
    PRIMARY_ROUTE_NAME,
    DesiredRouting,
    HeaderRoute,
    ParentRef,
    ServiceBackends,
)
from controller.routing.httproute_render import BACKENDS_ANNOTATION, prefix_of, regex_of
from controller.routing.k8s_objects import MalformedObject, annotations_of, check_metadata, fail, ref
from controller.routing.state_codec import kind_of

MAX_RULES_READ = 1000  # far beyond Gateway API's 16: only a broken apiserver hands back more; bounds the work
MAX_LIST_ITEMS = 1000  # parentRefs, hostnames, matches, backendRefs, status parents (Gateway API: 64 at most)
MESSAGE_LIMIT = 200  # a condition's message, as quoted in a reason
_REASON_LIMIT = 100
_IN_EFFECT = ("Accepted", "ResolvedRefs")
BackendRef = tuple[str, int | None, int | None]  # (Service, port, weight as written)


def where_of(namespace: str, service: str) -> str:
    return ref("HTTPRoute", namespace, service)


def is_managed(rule: Mapping[str, Any]) -> bool:
    name = rule.get("name")
    return isinstance(name, str) and name.startswith(MANAGED_ROUTE_PREFIX)


# --- shape ----------------------------------------------------------------------------------------------


def mappings(where: str, field: str, value: object, limit: int = MAX_LIST_ITEMS) -> list[Mapping[str, Any]]:
    """`value` checked to be a list of mappings of at most `limit` items (None reads as an empty list)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(where, field, "a list of mappings", value)
    if len(value) > limit:
        raise MalformedObject(f"{where}: {field} has {len(value)} items (more than {limit})")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise fail(where, f"{field}[{index}]", "a mapping", item)
    return value


def _check_fields(where: str, field: str, item: Mapping[str, Any], strings: Sequence[str], ints: Sequence[str]) -> None:
    for key in strings:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise fail(where, f"{field}.{key}", "a string", item[key])
    for key in ints:
        value = item.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise fail(where, f"{field}.{key}", "an integer >= 0", value)


def _check_parent_ref(where: str, field: str, parent: Mapping[str, Any]) -> None:
    _check_fields(where, field, parent, ("group", "kind", "namespace", "name", "sectionName"), ("port",))


def _check_rule(where: str, field: str, rule: Mapping[str, Any]) -> None:
    """A foreign rule: written back exactly as found, so only the parts Ramp reads (to refuse shadowing)."""
    for index, match in enumerate(mappings(where, f"{field}.matches", rule.get("matches"))):
        at = f"{field}.matches[{index}]"
        path = match.get("path")
        if path is not None and not isinstance(path, Mapping):
            raise fail(where, f"{at}.path", "a mapping", path)
        for part in ("headers", "queryParams"):
            mappings(where, f"{at}.{part}", match.get(part))
    for index, backend in enumerate(mappings(where, f"{field}.backendRefs", rule.get("backendRefs"))):
        _check_fields(where, f"{field}.backendRefs[{index}]", backend, ("group", "kind", "name"), ("port", "weight"))
    mappings(where, f"{field}.filters", rule.get("filters"))


def check_http_route(obj: object, where: str) -> None:
    """MalformedObject unless `obj` has the shape Ramp merges into: metadata, parentRefs, hostnames, rules
    (lists of mappings, integer weights and ports) and status.parents."""
    check_metadata(obj, where)
    assert isinstance(obj, Mapping)
    generation = obj["metadata"].get("generation")
    if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
        raise fail(where, "metadata.generation", "an integer", generation)
    spec = obj.get("spec")
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise fail(where, "spec", "a mapping", spec)
        for index, parent in enumerate(mappings(where, "spec.parentRefs", spec.get("parentRefs"))):
            _check_parent_ref(where, f"spec.parentRefs[{index}]", parent)
        hostnames = spec.get("hostnames")
        if hostnames is not None and not (isinstance(hostnames, list) and all(isinstance(h, str) for h in hostnames)):
            raise fail(where, "spec.hostnames", "a list of strings", hostnames)
        if isinstance(hostnames, list) and len(hostnames) > MAX_LIST_ITEMS:
            raise MalformedObject(f"{where}: spec.hostnames has {len(hostnames)} items (more than {MAX_LIST_ITEMS})")
        for index, rule in enumerate(mappings(where, "spec.rules", spec.get("rules"), MAX_RULES_READ)):
            field = f"spec.rules[{index}]"
            name = rule.get("name")
            if name is not None and not isinstance(name, str):
                raise fail(where, f"{field}.name", "a string", name)
            if not is_managed(rule):
                _check_rule(where, field, rule)
    status = obj.get("status")
    if status is not None:
        if not isinstance(status, Mapping):
            raise fail(where, "status", "a mapping", status)
        mappings(where, "status.parents", status.get("parents"))


# --- reading Ramp's rules back ----------------------------------------------------------------------------


def versions_by_service(obj: Mapping[str, Any], where: str, backends: ServiceBackends | None) -> dict[str, str]:
    """{Service: version}: from the spec's backends when given, else from BACKENDS_ANNOTATION (MalformedObject
    when it is there but unreadable), else empty (each Service then stands for itself)."""
    if backends is not None:
        return {name: version for version, name in backends.services}
    text = annotations_of(obj).get(BACKENDS_ANNOTATION)
    if text is None:
        return {}
    try:
        found = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise MalformedObject(f"{where}: metadata.annotations[{BACKENDS_ANNOTATION!r}] must be a JSON object of "
                              f"Service name to version, got {str(text)[:80]!r}")  # fmt: skip
    return found


def _backend_refs(rule: Mapping[str, Any], where: str, field: str) -> list[BackendRef]:
    """(Service, port, weight or None) of each backendRef of a Ramp rule: Services of the core group only."""
    found: list[BackendRef] = []
    refs = mappings(where, f"{field}.backendRefs", rule.get("backendRefs"))
    if not refs:
        raise fail(where, f"{field}.backendRefs", "a non-empty list", rule.get("backendRefs"))
    for index, backend in enumerate(refs):
        at = f"{field}.backendRefs[{index}]"
        _check_fields(where, at, backend, ("group", "kind", "name", "namespace"), ("port", "weight"))
        if backend.get("group", "") != "" or backend.get("kind", "Service") != "Service":
            raise MalformedObject(f"{where}: {at} must be a Service (group '', kind Service), got "
                                  f"{str(backend.get('group'))[:60]}/{str(backend.get('kind'))[:60]}")  # fmt: skip
        if backend.get("namespace") is not None:
            raise MalformedObject(f"{where}: {at}.namespace must be absent (Ramp routes to its own namespace)")
        name = backend.get("name")
        if not isinstance(name, str):
            raise fail(where, f"{at}.name", "a string", name)
        found.append((name, backend.get("port"), backend.get("weight")))
    return found


def _only_match_all(match: Mapping[str, Any]) -> bool:
    path = match.get("path")
    return path is None or (isinstance(path, Mapping) and path.get("type", "PathPrefix") == "PathPrefix"
                            and path.get("value", "/") == "/" and set(path) <= {"type", "value"})  # fmt: skip


def _check_primary_matches(rule: Mapping[str, Any], where: str, field: str) -> None:
    matches = mappings(where, f"{field}.matches", rule.get("matches"))
    if len(matches) > 1 or any(set(m) - {"path"} or not _only_match_all(m) for m in matches):
        raise MalformedObject(f"{where}: {field}.matches must match every request (PathPrefix / only), as Ramp "
                              "writes it: its weights are for all traffic")  # fmt: skip


def _match_of(kind: object, value: str, where: str, at: str) -> tuple[str, str]:
    """(Ramp's match kind, value) of a header match Ramp wrote (see httproute_render)."""
    if kind == "Exact":
        return "exact", value
    if kind != "RegularExpression":
        raise MalformedObject(f"{where}: {at}.type must be Exact or RegularExpression, got {str(kind)[:40]!r}")
    prefix = prefix_of(value)
    if prefix is not None:
        return "prefix", prefix
    regex = regex_of(value)
    if regex is not None:
        return "regex", regex
    raise MalformedObject(f"{where}: {at}.value {value[:80]!r} is not a pattern Ramp writes "
                          "(^<escaped prefix>.* or ^(?:<regex>)$)")  # fmt: skip


def read_header_rule(rule: Mapping[str, Any], where: str, field: str, versions: Mapping[str, str]) -> HeaderRoute:
    matches = mappings(where, f"{field}.matches", rule.get("matches"))
    if len(matches) != 1 or set(matches[0]) - {"path", "headers"} or not _only_match_all(matches[0]):
        raise MalformedObject(f"{where}: {field}.matches must be one match of PathPrefix / and one header, as "
                              "Ramp writes it")  # fmt: skip
    headers = mappings(where, f"{field}.matches[0].headers", matches[0].get("headers"))
    if len(headers) != 1:
        raise fail(where, f"{field}.matches[0].headers", "a list of one header match", headers)
    at = f"{field}.matches[0].headers[0]"
    header = headers[0]
    name, value, kind = header.get("name"), header.get("value"), header.get("type", "Exact")
    if not isinstance(name, str) or not isinstance(value, str):
        raise MalformedObject(f"{where}: {at} must have a string name and value")
    match, text = _match_of(kind, value, where, at)
    found = _backend_refs(rule, where, field)
    if len(found) != 1:
        raise MalformedObject(f"{where}: {field}.backendRefs must have exactly one Service, got {len(found)}")
    if found[0][2] == 0:
        raise MalformedObject(f"{where}: {field}.backendRefs[0].weight is 0: the rule sends its requests nowhere")
    service = found[0][0]
    return HeaderRoute(header=name, value=text, match=match, version=versions.get(service, service))


def _weights(found: list[BackendRef], versions: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """As written (a sum other than 100 is drift, found by comparing with the desired routing); a backendRef
    without weight weighs 1 (Gateway API's default), so a lone one takes all traffic: 100."""
    if len(found) == 1 and found[0][2] is None:
        return ((versions.get(found[0][0], found[0][0]), 100),)
    return tuple((versions.get(name, name), 1 if weight is None else weight) for name, _, weight in found)


def _observed_backends(
    ports: list[int | None], versions: Mapping[str, str], names: list[str]
) -> ServiceBackends | None:
    """The Services and the port Ramp's backendRefs use, or None when they disagree on the port (drift)."""
    if not ports or len(set(ports)) != 1 or ports[0] is None:
        return None
    services = tuple(dict.fromkeys((versions.get(name, name), name) for name in names))
    return ServiceBackends(port=ports[0], services=services)


def observed_http_routing(
    obj: object, namespace: str, service: str, backends: ServiceBackends | None
) -> DesiredRouting | None:
    """What the HTTPRoute `obj` routes with Ramp's rules (header rules, ramp-primary); None when it has no
    ramp-primary rule; MalformedObject when those rules cannot be read.

    Versions are named by `backends` (the spec's) when given, else by BACKENDS_ANNOTATION, else by the Service
    names themselves. `backends` of the result holds what the rules use: the port shared by every Ramp
    backendRef (None when they disagree), so a caller can compare ports as well as `.traffic()`. `host` is the
    service name (traffic() does not depend on it); parent_refs and extra_hosts are the route's own.
    """
    where = where_of(namespace, service)
    check_http_route(obj, where)
    assert isinstance(obj, Mapping)
    versions = versions_by_service(obj, where, backends)
    spec = obj.get("spec") or {}
    headers: list[HeaderRoute] = []
    weights: tuple[tuple[str, int], ...] | None = None
    ports: list[int | None] = []
    names: list[str] = []
    for index, rule in enumerate(spec.get("rules") or []):
        field = f"spec.rules[{index}]"
        if rule.get("name") == PRIMARY_ROUTE_NAME:
            if weights is not None:
                raise MalformedObject(f"{where}: {field}: a second {PRIMARY_ROUTE_NAME} rule")
            _check_primary_matches(rule, where, field)
            found = _backend_refs(rule, where, field)
            weights = _weights(found, versions)
            ports += [port for _, port, _ in found]
            names += [name for name, _, _ in found]
        elif is_managed(rule):
            headers.append(read_header_rule(rule, where, field, versions))
    if weights is None:
        return None
    listed = tuple(dict.fromkeys([*(v for v, _ in weights), *(h.version for h in headers)]))
    try:
        parents = tuple(_parent_model(p) for p in spec.get("parentRefs") or [] if isinstance(p.get("name"), str))
        return DesiredRouting(
            service=service, namespace=namespace, host=service, versions=listed, header_routes=tuple(headers),
            weights=weights, extra_hosts=tuple(spec.get("hostnames") or ()), router="gateway-api",
            parent_refs=parents, backends=_observed_backends(ports, versions, names),
        )  # fmt: skip
    except ValidationError as exc:  # a value of a type the checks above let through (e.g. an explicit null)
        problem = exc.errors()[0]
        at = ".".join(str(p) for p in problem["loc"]) or "$"
        raise MalformedObject(f"{where}: Ramp's routing cannot be read back ({at}: {problem['msg']})") from exc


def _parent_model(parent: Mapping[str, Any]) -> ParentRef:
    """A parentRef with Gateway API's defaults (an explicit null is the default too)."""
    group, kind = parent.get("group"), parent.get("kind")
    return ParentRef(group=GATEWAY_GROUP if group is None else group, kind="Gateway" if kind is None else kind,
                     name=parent["name"], namespace=parent.get("namespace"), section_name=parent.get("sectionName"),
                     port=parent.get("port"))  # fmt: skip


# --- is the route in effect? -------------------------------------------------------------------------------


def _short(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parent_key(parent: Mapping[str, Any], namespace: str) -> tuple[object, ...]:
    """Who a parentRef names, with Gateway API's defaults filled in (group, kind Gateway, the route's namespace)."""
    return (parent.get("group", GATEWAY_GROUP), parent.get("kind", "Gateway"), parent.get("namespace", namespace),
            parent.get("name"), parent.get("sectionName"), parent.get("port"))  # fmt: skip


def _entry_problem(entry: Mapping[str, Any], who: str, generation: int | None) -> str | None:
    """Why one status.parents[] entry does not say the route is in effect for its parent, or None."""
    conditions = entry.get("conditions")
    if not isinstance(conditions, list):
        return f"{who}: status conditions are not a list (got {kind_of(conditions)})"
    by_type = {c["type"]: c for c in conditions if isinstance(c, Mapping) and isinstance(c.get("type"), str)}
    for wanted in _IN_EFFECT:
        condition = by_type.get(wanted)
        if condition is None:
            return f"{who}: no {wanted} condition yet"
        seen = condition.get("observedGeneration")
        if isinstance(seen, int) and not isinstance(seen, bool) and generation is not None and seen < generation:
            return f"{who}: status for generation {seen} not yet written (route is at generation {generation})"
        if condition.get("status") != "True":
            reason = _short(condition.get("reason"), _REASON_LIMIT) or "no reason given"
            message = _short(condition.get("message"), MESSAGE_LIMIT)
            return f"{who} not {wanted} ({reason})" + (f": {message}" if message else "")
    return None


def route_not_accepted(obj: Mapping[str, Any], parent_refs: Sequence[ParentRef], namespace: str) -> str | None:
    """Why the route is NOT in effect for one of Ramp's parents (the first found), or None when every parent has
    accepted it with its references resolved, for the route's current generation. Never raises."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    generation = meta.get("generation") if isinstance(meta, Mapping) else None
    if not isinstance(generation, int) or isinstance(generation, bool):
        generation = None
    status = obj.get("status") if isinstance(obj, Mapping) else None
    if status is not None and not isinstance(status, Mapping):
        return f"the route's status is not a mapping (got {kind_of(status)})"
    listed = (status or {}).get("parents")
    if listed is not None and not isinstance(listed, list):
        return f"the route's status.parents is not a list (got {kind_of(listed)})"
    entries = [e for e in listed or [] if isinstance(e, Mapping) and isinstance(e.get("parentRef"), Mapping)]
    junk = len(listed or []) - len(entries)
    for parent in parent_refs:
        who = parent.describe()
        wanted = parent_key(
            {k: v for k, v in (("group", parent.group), ("kind", parent.kind), ("namespace", parent.namespace),
                               ("name", parent.name), ("sectionName", parent.section_name), ("port", parent.port))
             if v is not None}, namespace,
        )  # fmt: skip
        mine = [e for e in entries if parent_key(e["parentRef"], namespace) == wanted]
        if not mine:
            return f"no status from {who} yet" + (f" ({junk} unreadable status entries)" if junk else "")
        problems = [_entry_problem(e, who, generation) for e in mine]
        if all(problems):  # one controller accepting it is enough when several report on the same parent
            return problems[0]
    return None

"""Pure merge rules: Ramp's routes and state into an existing VirtualService / DestinationRule.

Ramp owns only what it manages. In a VirtualService that is the http routes named
`ramp-*` (MANAGED_ROUTE_PREFIX), the `ramp.dev/state` annotation and - once consumed - the
`ramp.dev/command` annotation. The merged http list is

    [Ramp's header routes] + [foreign http routes, original order] + [ramp-primary]

Fields a person added to a Ramp route other than name/match/route (retries, timeout, headers,
...) are kept on the re-rendered route. Everything else (exportTo, tcp/tls routes, foreign metadata,
hosts and gateways - the spec's appended when missing, never one removed -) is left exactly as it was. A foreign
route that matches every request and sits before ramp-primary would silently take all traffic
away from Ramp's weights, so it is refused with `RouteShadowingError` instead of written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from controller.engine.routing_model import MANAGED_ROUTE_PREFIX, PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute
from controller.engine.state_port import StateStoreError
from controller.routing.istio_render import destination_rule, managed_http_routes, virtual_service
from controller.routing.istio_shape import check_destination_rule, check_virtual_service
from controller.routing.k8s_objects import (
    COMMAND_ANNOTATION,
    ClusterRouting,
    MalformedObject,
    RouteMergeError,
    annotations_of,
    json_copy,
    merge_annotations,
    merge_managed,
    object_ref,
    ref,
    resource_version,
    state_of,
)
from controller.routing.state_codec import (
    DAMAGED_ANNOTATION,
    STATE_ANNOTATION,
    decode_state,
    encode_state,
    persisted_view,
    same_durable_state,
)

__all__ = [
    "COMMAND_ANNOTATION", "DAMAGED_ANNOTATION", "STATE_ANNOTATION", "ClusterRouting", "IstioMergeError",
    "RouteShadowingError", "annotations_of", "decode_state", "encode_state", "merge_destination_rule",
    "merge_virtual_service", "object_ref", "parse_routing", "persisted_view", "resource_version",
    "same_durable_state", "state_of",
]  # fmt: skip

OWNED_ROUTE_FIELDS = frozenset({"name", "match", "route"})
_CLUSTER_SUFFIX = "svc.cluster.local"
MESH_GATEWAY = "mesh"  # Istio's reserved name for the sidecars (the default binding)


class IstioMergeError(RouteMergeError):
    """The existing VirtualService/DestinationRule cannot take Ramp's routing; nothing is written."""


class RouteShadowingError(IstioMergeError):
    pass


# --- hosts ------------------------------------------------------------------------------------


def canonical_host(host: str, namespace: str) -> str:
    """Istio's reading of a host: a short name (no dot) is `<name>.<namespace>.svc.cluster.local`."""
    return f"{host}.{namespace}.{_CLUSTER_SUFFIX}" if "." not in host and host != "*" else host


def _has_host(hosts: list[Any], host: str, namespace: str) -> bool:
    wanted = canonical_host(host, namespace)
    return any(isinstance(h, str) and canonical_host(h, namespace) == wanted for h in hosts)


def _full_gateway(gateway: str, namespace: str) -> str:
    """Istio's reading of a gateway: a name without a namespace is in the VirtualService's namespace."""
    return gateway if "/" in gateway or gateway == MESH_GATEWAY else f"{namespace}/{gateway}"


def _bind(obj: Mapping[str, Any], spec: dict[str, Any], routing: DesiredRouting) -> None:
    """Add Ramp's host, extra hosts and gateways that are missing; never remove or reorder one.

    A VirtualService without gateways is bound to mesh (Istio's default): when Ramp adds gateways, mesh is
    written out so the callers it already served keep being served.
    """
    hosts = spec["hosts"]
    if not isinstance(hosts, list):
        raise IstioMergeError(f"{object_ref(obj)}: spec.hosts is not a list; nothing was written")
    for host in (routing.host, *routing.extra_hosts):
        if not _has_host(hosts, host, routing.namespace):
            hosts.append(host)
    if not routing.gateways:
        return
    found = spec.get("gateways")
    if found is None or found == []:
        found = [MESH_GATEWAY]
    if not isinstance(found, list) or not all(isinstance(g, str) for g in found):
        raise IstioMergeError(
            f"{object_ref(obj)}: spec.gateways is not a list of strings ({str(found)[:80]}), so Ramp cannot add "
            f"{', '.join(routing.gateways)}; fix it (nothing was written)"
        )
    bound = {_full_gateway(g, routing.namespace) for g in found}
    missing = [g for g in routing.gateways if _full_gateway(g, routing.namespace) not in bound]
    if missing:
        spec["gateways"] = [*found, *missing]


# --- VirtualService ---------------------------------------------------------------------------


def is_managed(route: Mapping[str, Any]) -> bool:
    name = route.get("name")
    return isinstance(name, str) and name.startswith(MANAGED_ROUTE_PREFIX)


def _matches_everything(route: Mapping[str, Any]) -> bool:
    """No match at all, or a match entry with no condition beyond `uri: {prefix: /}`."""
    matches = route.get("match")
    if not matches:
        return True
    for entry in matches:
        if not isinstance(entry, Mapping):
            continue
        conditions = {k: v for k, v in entry.items() if k not in ("name", "ignoreUriCase")}
        if not conditions or conditions == {"uri": {"prefix": "/"}}:
            return True
    return False


def check_shadowing(obj: Mapping[str, Any], foreign: list[dict[str, Any]]) -> None:
    for index, route in enumerate(foreign):
        if _matches_everything(route):
            label = repr(route["name"]) if isinstance(route.get("name"), str) else f"#{index + 1} (unnamed)"
            raise RouteShadowingError(
                f"{object_ref(obj)}: http route {label} matches every request and would sit before "
                f"Ramp's weighted route {PRIMARY_ROUTE_NAME!r}, taking all of its traffic; give it a match "
                f"(e.g. a header or uri), remove it, or rename it to {PRIMARY_ROUTE_NAME!r} to hand it to Ramp "
                "(its retries/timeouts are kept) - nothing was written"
            )


def merge_http(existing: list[Any], routing: DesiredRouting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(merged http list, foreign routes): Ramp's header routes, foreign routes in order, ramp-primary."""
    return merge_managed(existing, managed_http_routes(routing), is_managed, OWNED_ROUTE_FIELDS)


def merge_virtual_service(
    current: Mapping[str, Any] | None,
    routing: DesiredRouting,
    set_annotations: Mapping[str, str],
    remove_annotations: Mapping[str, str],
) -> dict[str, Any]:
    """The VirtualService to store: `current` with Ramp's routes and annotations merged in.

    `remove_annotations` maps a key to the value that was consumed: it is removed only if it
    still holds that value (a command written after we read it is kept for the next tick).
    """
    if current is None:
        merged = virtual_service(routing)
    else:
        check_virtual_service(current, object_ref(current))  # MalformedObject: nothing is merged into it
        merged = json_copy(dict(current))
        if merged.get("spec") is None:
            merged["spec"] = {}
        spec: dict[str, Any] = merged["spec"]
        if spec.get("hosts") is None:
            spec["hosts"] = []
        _bind(merged, spec, routing)
        http, foreign = merge_http(list(spec.get("http") or []), routing)
        check_shadowing(merged, foreign)
        spec["http"] = http
    merge_annotations(merged, set_annotations, remove_annotations)
    return merged


# --- DestinationRule --------------------------------------------------------------------------


def merge_destination_rule(current: Mapping[str, Any] | None, routing: DesiredRouting) -> dict[str, Any]:
    """`current` with a subset per version (labels include version=<v>); foreign subsets/policies kept."""
    if current is None:
        return destination_rule(routing)
    check_destination_rule(current, object_ref(current))
    merged: dict[str, Any] = json_copy(dict(current))
    if merged.get("spec") is None:
        merged["spec"] = {}
    spec = merged["spec"]
    host = spec.get("host")
    if host is None:
        spec["host"] = routing.host
    elif not isinstance(host, str) or not _has_host([host], routing.host, routing.namespace):
        raise IstioMergeError(
            f"{object_ref(merged)}: its host {host!r} is not {routing.host!r}, so its subsets would not apply "
            "to Ramp's routes; fix the host (nothing was written)"
        )
    if spec.get("subsets") is None:
        spec["subsets"] = []
    subsets = spec["subsets"]
    by_name = {s.get("name"): s for s in subsets if isinstance(s, dict)}
    for version in routing.versions:
        subset = by_name.get(version)
        if subset is None:
            subsets.append({"name": version, "labels": {"version": version}})
            continue
        if subset.get("labels") is None:
            subset["labels"] = {}
        labels = subset["labels"]
        if labels.get("version") != version:
            labels["version"] = version
    return merged


# --- reading back -----------------------------------------------------------------------------


def _subset(destination: Any) -> str | None:
    if isinstance(destination, Mapping) and isinstance(destination.get("destination"), Mapping):
        subset = destination["destination"].get("subset")
        return subset if isinstance(subset, str) else None
    return None


def _header_route(route: Mapping[str, Any]) -> HeaderRoute | None:
    try:
        headers = route["match"][0]["headers"]
        header, condition = next(iter(headers.items()))
        kind, value = next(iter(condition.items()))
        version = _subset(route["route"][0])
        if version is None:
            return None
        return HeaderRoute(header=header, value=value, match=kind, version=version)
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration, ValidationError):
        return None


def parse_routing(namespace: str, service: str, obj: Mapping[str, Any] | None) -> ClusterRouting:
    """Tolerant: what can be read is reported; the first malformed part is named in `problem`."""
    if obj is None:
        return ClusterRouting(namespace, service, found=False)
    problem = None
    try:
        check_virtual_service(obj, ref("VirtualService", namespace, service))
    except MalformedObject as exc:
        problem = str(exc)
    spec = obj.get("spec")
    listed = spec.get("http") if isinstance(spec, Mapping) else None
    http = [r for r in listed if isinstance(r, Mapping)] if isinstance(listed, list) else []
    weights: list[tuple[str, int]] = []
    headers: list[HeaderRoute] = []
    for route in http:
        if route.get("name") == PRIMARY_ROUTE_NAME:
            found = route.get("route")
            destinations: list[Any] = found if isinstance(found, list) else []
            for d in destinations:
                subset = _subset(d)
                weight = d.get("weight", 100 if len(destinations) == 1 else 0) if isinstance(d, Mapping) else None
                if subset is not None and isinstance(weight, int) and not isinstance(weight, bool):
                    weights.append((subset, weight))
        elif is_managed(route):
            parsed = _header_route(route)
            if parsed is not None:
                headers.append(parsed)
    foreign = tuple(str(r.get("name", f"#{i + 1}")) for i, r in enumerate(http) if not is_managed(r))
    state, error = None, None
    try:
        state = state_of(obj)
    except StateStoreError as exc:
        error = str(exc)
    notes = {k: v for k, v in annotations_of(obj).items() if isinstance(k, str) and isinstance(v, str)}
    return ClusterRouting(
        namespace, service, True, tuple(weights), tuple(headers), foreign, state, error,
        notes.get(COMMAND_ANNOTATION), resource_version(obj), notes, problem,
    )  # fmt: skip

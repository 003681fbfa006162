"""Checking what the apiserver hands back before Ramp reads it: hostile or damaged objects get a clear error.

A VirtualService read from the cluster may be anything a person, another tool or a broken apiserver put
there: `spec.http` as a mapping, routes that are not mappings, weights as strings, annotations that are not
a mapping, no metadata, megabytes of data. Each problem is reported as `MalformedObject`, naming the object
and the field (`VirtualService shop/reviews: spec.http must be a list, got a mapping`), never as a bare
Python exception, and nothing is written over it. Only the parts Ramp reads or merges are checked; Ramp's
own routes' `route`/`match` fields are re-rendered on the next write, so they are checked only when read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.engine.routing_model import MANAGED_ROUTE_PREFIX, PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute
from controller.routing.k8s_objects import MalformedObject, check_metadata, fail, ref

MAX_HTTP_ROUTES = 1000
MATCH_KINDS = ("exact", "prefix", "regex")


def check_virtual_service(obj: object, where: str) -> None:
    """MalformedObject unless `obj` has the shape Ramp merges into (metadata, hosts, http routes)."""
    check_metadata(obj, where)
    assert isinstance(obj, Mapping)
    spec = obj.get("spec")
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise fail(where, "spec", "a mapping", spec)
    hosts = spec.get("hosts")
    if hosts is not None and not (isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)):
        raise fail(where, "spec.hosts", "a list of strings", hosts)
    http = spec.get("http")
    if http is None:
        return
    if not isinstance(http, list):
        raise fail(where, "spec.http", "a list", http)
    if len(http) > MAX_HTTP_ROUTES:
        raise MalformedObject(f"{where}: spec.http has {len(http)} routes (more than {MAX_HTTP_ROUTES})")
    for index, route in enumerate(http):
        field = f"spec.http[{index}]"
        if not isinstance(route, Mapping):
            raise fail(where, field, "a mapping", route)
        name = route.get("name")
        if name is not None and not isinstance(name, str):
            raise fail(where, f"{field}.name", "a string", name)
        if isinstance(name, str) and name.startswith(MANAGED_ROUTE_PREFIX):
            continue  # Ramp's own: re-rendered on write, checked when read back
        for part in ("match", "route"):  # written back as found: a real apiserver would refuse them anyway
            value = route.get(part)
            if value is None:
                continue
            if not isinstance(value, list):
                raise fail(where, f"{field}.{part}", "a list of mappings", value)
            for at, item in enumerate(value):
                if not isinstance(item, Mapping):
                    raise fail(where, f"{field}.{part}[{at}]", "a mapping", item)


def check_destination_rule(obj: object, where: str) -> None:
    """MalformedObject unless `obj` has the shape Ramp merges subsets into."""
    check_metadata(obj, where)
    assert isinstance(obj, Mapping)
    spec = obj.get("spec")
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise fail(where, "spec", "a mapping", spec)
    subsets = spec.get("subsets")
    if subsets is None:
        return
    if not isinstance(subsets, list):
        raise fail(where, "spec.subsets", "a list", subsets)
    for index, subset in enumerate(subsets):
        if not isinstance(subset, Mapping):
            raise fail(where, f"spec.subsets[{index}]", "a mapping", subset)
        labels = subset.get("labels")
        if labels is not None and not isinstance(labels, Mapping):
            raise fail(where, f"spec.subsets[{index}].labels", "a mapping", labels)


def _route_destinations(route: Mapping[str, Any], where: str, field: str) -> list[tuple[str, int | None]]:
    """(subset, weight or None) of each destination of an http route."""
    destinations = route.get("route")
    if not isinstance(destinations, list) or not destinations:
        raise fail(where, f"{field}.route", "a non-empty list", destinations)
    found: list[tuple[str, int | None]] = []
    for index, item in enumerate(destinations):
        at = f"{field}.route[{index}]"
        if not isinstance(item, Mapping):
            raise fail(where, at, "a mapping", item)
        destination = item.get("destination")
        if not isinstance(destination, Mapping):
            raise fail(where, f"{at}.destination", "a mapping", destination)
        subset = destination.get("subset")
        if not isinstance(subset, str):
            raise fail(where, f"{at}.destination.subset", "a string", subset)
        weight = item.get("weight")
        if weight is not None and (not isinstance(weight, int) or isinstance(weight, bool) or weight < 0):
            raise fail(where, f"{at}.weight", "an integer >= 0", weight)
        found.append((subset, weight))
    return found


def _weights(found: list[tuple[str, int | None]]) -> tuple[tuple[str, int], ...]:
    """As written (a sum other than 100 is drift, found by comparing with the desired routing)."""
    if len(found) == 1 and found[0][1] is None:
        return ((found[0][0], 100),)  # Istio: a single destination takes all traffic
    return tuple((subset, weight or 0) for subset, weight in found)


def _header_route(route: Mapping[str, Any], where: str, field: str) -> HeaderRoute:
    matches = route.get("match")
    if not isinstance(matches, list) or len(matches) != 1 or not isinstance(matches[0], Mapping):
        raise fail(where, f"{field}.match", "a list of one mapping", matches)
    headers = matches[0].get("headers")
    if not isinstance(headers, Mapping) or len(headers) != 1:
        raise fail(where, f"{field}.match[0].headers", "a mapping of one header", headers)
    header, condition = next(iter(headers.items()))
    if not isinstance(condition, Mapping) or len(condition) != 1:
        raise fail(where, f"{field}.match[0].headers[{header!r}]", "a mapping of one condition", condition)
    kind, value = next(iter(condition.items()))
    if kind not in MATCH_KINDS or not isinstance(value, str) or not isinstance(header, str):
        raise MalformedObject(f"{where}: {field}.match[0].headers[{header!r}] is not an exact/prefix/regex string")
    found = _route_destinations(route, where, field)
    if len(found) != 1:
        raise MalformedObject(f"{where}: {field}.route must have exactly one destination, got {len(found)}")
    return HeaderRoute(header=header, value=value, match=kind, version=found[0][0])


def observed_routing(obj: object, namespace: str, service: str, host: str) -> DesiredRouting | None:
    """What the VirtualService `obj` routes with Ramp's routes (header routes, ramp-primary); None when it has
    no ramp-primary route. MalformedObject when those routes cannot be read."""
    where = ref("VirtualService", namespace, service)
    check_virtual_service(obj, where)
    assert isinstance(obj, Mapping)
    http = (obj.get("spec") or {}).get("http") or []
    headers: list[HeaderRoute] = []
    weights: tuple[tuple[str, int], ...] | None = None
    for index, route in enumerate(http):
        name, field = route.get("name"), f"spec.http[{index}]"
        if name == PRIMARY_ROUTE_NAME:
            if weights is not None:
                raise MalformedObject(f"{where}: {field}: a second {PRIMARY_ROUTE_NAME} route")
            weights = _weights(_route_destinations(route, where, field))
        elif isinstance(name, str) and name.startswith(MANAGED_ROUTE_PREFIX):
            headers.append(_header_route(route, where, field))
    if weights is None:
        return None
    versions = tuple(dict.fromkeys([*(v for v, _ in weights), *(h.version for h in headers)]))
    return DesiredRouting(service=service, namespace=namespace, host=host, versions=versions,
                          header_routes=tuple(headers), weights=weights)  # fmt: skip

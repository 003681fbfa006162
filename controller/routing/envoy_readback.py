"""Envoy's live route configuration (admin `/config_dump`) read back into a `DesiredRouting`.

The inverse of `controller.routing.envoy.render_virtual_host`: header routes (one header match each,
in order) are followed by the catch-all default route (a weighted split or a single cluster); routes
after the catch-all can never match and are ignored. Versions come from the cluster names
`<namespace>--<service>--<version>`. Everything is checked: the answer of an admin endpoint is
hostile data. A configuration Ramp cannot express (a foreign cluster, a redirect, a path match, an
inverted header match ...) raises `UnrepresentableRoutes`, naming what was found, so the caller can
report it as drift rather than guess.

With a `template` (the routing Ramp wants), the result reuses its version order, host and header
spelling, so `read_back(...) == template` exactly when Envoy serves what Ramp wants.
"""

from __future__ import annotations

from typing import Any

from controller.engine.routing_model import DesiredRouting, HeaderRoute
from controller.weights import integer_percentages

CLUSTER_SEPARATOR = "--"
_STRING_MATCH_KINDS = {"exact": "exact", "prefix": "prefix"}
_LEGACY_HEADER_KEYS = {"exact_match": "exact", "prefix_match": "prefix"}
_ALLOWED_MATCH_KEYS = frozenset({"prefix", "headers"})
_ALLOWED_HEADER_KEYS = frozenset({"name", "string_match", "exact_match", "prefix_match", "safe_regex_match"})
_ALLOWED_ROUTE_KEYS = frozenset({"match", "route", "name", "metadata", "decorator", "typed_per_filter_config"})


class UnrepresentableRoutes(ValueError):
    """Envoy serves (or reports) a route configuration that is no DesiredRouting."""


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnrepresentableRoutes(f"{what} is {type(value).__name__}, expected an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UnrepresentableRoutes(f"{what} is {type(value).__name__}, expected a list")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise UnrepresentableRoutes(f"{what} is {type(value).__name__}, expected a string")
    return value


def find_route_config(config_dump: Any, name: str) -> tuple[str | None, dict[str, Any] | None]:
    """(version_info, route_config) of the dynamic route configuration `name`; (None, None) if absent."""
    dump = _dict(config_dump, "config_dump")
    for index, entry in enumerate(_list(dump.get("configs"), "config_dump.configs")):
        entry = _dict(entry, f"config_dump.configs[{index}]")
        config = entry.get("route_config")
        if not isinstance(config, dict) or config.get("name") != name:
            continue
        version = entry.get("version_info")
        if version is not None and not isinstance(version, (str, int)):
            raise UnrepresentableRoutes(f"version_info of {name} is {type(version).__name__}")
        return (None if version is None else str(version)), config
    return None, None


def _version_of(cluster: Any, namespace: str, service: str, where: str) -> str:
    name = _text(cluster, f"{where} cluster")
    prefix = f"{namespace}{CLUSTER_SEPARATOR}{service}{CLUSTER_SEPARATOR}"
    version = name[len(prefix) :] if name.startswith(prefix) else ""
    if not version or CLUSTER_SEPARATOR in version or "." in version:
        raise UnrepresentableRoutes(f"{where} sends traffic to cluster {name[:200]!r}, not a version of {service}")
    return version


def _header_match(header: Any, where: str) -> tuple[str, str, str]:
    """(header name, match kind, value) of one header matcher."""
    header = _dict(header, where)
    extra = set(header) - _ALLOWED_HEADER_KEYS
    if extra:
        raise UnrepresentableRoutes(f"{where} uses {sorted(extra)} (Ramp only writes exact/prefix/regex matches)")
    name = _text(header.get("name"), f"{where} name").lower()
    if "string_match" in header:
        matcher = _dict(header["string_match"], f"{where} string_match")
        if len(matcher) != 1:
            raise UnrepresentableRoutes(f"{where} string_match has {sorted(matcher)}")
        ((kind, value),) = matcher.items()
        if kind in _STRING_MATCH_KINDS:
            return name, _STRING_MATCH_KINDS[kind], _text(value, f"{where} {kind}")
        if kind == "safe_regex":
            return name, "regex", _text(_dict(value, f"{where} safe_regex").get("regex"), f"{where} regex")
        raise UnrepresentableRoutes(f"{where} matches by {kind!r}")
    for key, kind in _LEGACY_HEADER_KEYS.items():
        if key in header:
            return name, kind, _text(header[key], f"{where} {key}")
    if "safe_regex_match" in header:
        regex = _dict(header["safe_regex_match"], f"{where} safe_regex_match").get("regex")
        return name, "regex", _text(regex, f"{where} regex")
    raise UnrepresentableRoutes(f"{where} has no value match (presence-only matches are not Ramp's)")


def _destinations(action: dict[str, Any], namespace: str, service: str, where: str) -> dict[str, int]:
    """version -> weight of a route action (a single cluster counts as weight 1)."""
    if "cluster" in action:
        return {_version_of(action["cluster"], namespace, service, where): 1}
    if "weighted_clusters" not in action:
        raise UnrepresentableRoutes(f"{where} routes by {sorted(action)[:5]}, not to a cluster")
    weighted = _dict(action["weighted_clusters"], f"{where} weighted_clusters")
    weights: dict[str, int] = {}
    for index, item in enumerate(_list(weighted.get("clusters"), f"{where} weighted_clusters.clusters")):
        item = _dict(item, f"{where} weighted cluster {index}")
        version = _version_of(item.get("name"), namespace, service, where)
        weight = item.get("weight", 0)
        if isinstance(weight, str) and weight.isdigit():
            weight = int(weight)  # proto3 JSON may print uint32 wrappers as strings
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise UnrepresentableRoutes(f"{where} gives {version} the weight {weight!r}")
        weights[version] = weights.get(version, 0) + weight
    if sum(weights.values()) <= 0:
        raise UnrepresentableRoutes(f"{where} has no weighted cluster with a positive weight")
    return weights


def _route_parts(route: Any, index: int, namespace: str, service: str) -> tuple[tuple[str, str, str] | None, Any]:
    where = f"route {index}"
    route = _dict(route, where)
    if isinstance(route.get("name"), str):
        where = f"route {index} ({route['name'][:80]})"
    extra = set(route) - _ALLOWED_ROUTE_KEYS
    if extra:
        raise UnrepresentableRoutes(f"{where} has {sorted(extra)[:5]}, not a plain route to clusters")
    match = _dict(route.get("match"), f"{where} match")
    if set(match) - _ALLOWED_MATCH_KEYS or match.get("prefix") != "/":
        raise UnrepresentableRoutes(f"{where} matches {sorted(match)[:5]} (Ramp routes every path)")
    headers = _list(match.get("headers"), f"{where} headers")
    action = _dict(route.get("route"), f"{where} action")
    if not headers:
        return None, _destinations(action, namespace, service, where)
    if len(headers) != 1:
        raise UnrepresentableRoutes(f"{where} matches {len(headers)} headers (Ramp writes one per route)")
    header = _header_match(headers[0], f"{where} header")
    destinations = _destinations(action, namespace, service, where)
    if len(destinations) != 1:
        raise UnrepresentableRoutes(f"{where} splits header traffic over {sorted(destinations)}")
    return header, next(iter(destinations))


def _ordered(names: list[str], extra: list[str]) -> list[str]:
    out: list[str] = []
    for name in (*names, *extra):
        if name not in out:
            out.append(name)
    return out


def parse_virtual_host(
    vhost: dict[str, Any], namespace: str, service: str, template: DesiredRouting | None = None
) -> DesiredRouting:
    """The DesiredRouting a virtual host serves (see the module docstring)."""
    header_routes: list[HeaderRoute] = []
    default: dict[str, int] | None = None
    seen_versions: list[str] = []
    for index, route in enumerate(_list(vhost.get("routes"), "virtual host routes")):
        header, target = _route_parts(route, index, namespace, service)
        if header is None:
            default = target
            seen_versions.extend(target)
            break  # a catch-all: later routes never match
        name, kind, value = header
        header_routes.append(HeaderRoute(header=name, value=value, match=kind, version=target))
        seen_versions.append(target)
    if default is None:
        raise UnrepresentableRoutes(f"virtual host {namespace}--{service} has no catch-all route")
    percentages = default if sum(default.values()) == 100 else integer_percentages(default)
    domains = [d for d in _list(vhost.get("domains"), "virtual host domains") if isinstance(d, str)]
    if template is not None:
        weight_order = _ordered([v for v, _ in template.weights], list(template.versions))
        versions = _ordered(list(template.versions), seen_versions)
        host = template.host if template.host in domains else (domains[0] if domains else "")
        wanted = {(r.header.lower(), r.match, r.value, r.version): r for r in template.header_routes}
        header_routes = [wanted.get((r.header, r.match, r.value, r.version), r) for r in header_routes]
    else:
        weight_order = versions = _ordered([], seen_versions)
        host = domains[0] if domains else f"{service}.{namespace}.svc.cluster.local"
    return DesiredRouting(
        service=service,
        namespace=namespace,
        host=host,
        versions=tuple(versions),
        header_routes=tuple(header_routes),
        weights=tuple((v, percentages.get(v, 0)) for v in _ordered(weight_order, versions)),
        # Istio-only bindings Envoy has no notion of: as asked (they never change what requests experience).
        extra_hosts=template.extra_hosts if template is not None else (),
        gateways=template.gateways if template is not None else (),
    )


def read_back(
    config_dump: Any,
    route_config_name: str,
    namespace: str,
    service: str,
    template: DesiredRouting | None = None,
) -> tuple[str | None, DesiredRouting | None]:
    """(version_info, what Envoy serves for the service); the routing is None when Envoy has no
    virtual host for it (or no route configuration of that name at all)."""
    version, config = find_route_config(config_dump, route_config_name)
    if config is None:
        return version, None
    wanted = f"{namespace}{CLUSTER_SEPARATOR}{service}"
    for index, vhost in enumerate(_list(config.get("virtual_hosts"), "virtual_hosts")):
        vhost = _dict(vhost, f"virtual host {index}")
        if vhost.get("name") == wanted:
            return version, parse_virtual_host(vhost, namespace, service, template)
    return version, None

"""Small, faithful interpreters of how each data plane picks the route (and the versions) for one request.

Reading Ramp's three renderings (Istio VirtualService, Gateway API HTTPRoute, Envoy RouteConfiguration) the
way the data planes do, rather than comparing shapes, lets a test claim they send the same requests to the
same versions. Each answers a `Routed` distribution (percent per version; `{}` = the chosen rule has no
servable backend, a 5xx) or None (no route matches, a 404). Whatever is not modelled raises `Unmodelled`, a
destination that is no version of the service `NotAVersion`, both naming object and field: a rendering can
never pass by using a feature an interpreter silently ignores. Request header names are case-insensitive.

Istio VirtualService (controller/schemas/istio-networking-crds.yaml; istio.io .../networking/virtual-service):
  * `http` is "an ordered list of route rules": the first route whose `match` matches wins; no `match` =
    every request; `match` entries are ORed, conditions within one ANDed (only header conditions modelled).
  * StringMatch exact / prefix / regex; regex is RE2, evaluated (by Envoy) as a FULL match; {} = presence.
  * Destination weights are relative; a single destination without a weight gets all traffic.

Gateway API HTTPRoute v1.6.1 (HTTPRouteRule.matches, HTTPHeaderMatch, HTTPBackendRef.weight in
controller/schemas/gateway-api-httproutes-v1.6.1.yaml; gateway-api.sigs.k8s.io/reference/spec):
  * A rule matches if ANY of its matches does (no matches = PathPrefix "/"); within a match all ANDed.
  * Precedence across ALL matching rules: "Exact" path, then the longest "Prefix" path, then method, then the
    LARGEST NUMBER OF HEADER MATCHES, then query params; ties within one HTTPRoute go to the FIRST matching
    rule in list order. (Hostname and Route-age tie-breaks order different Routes; one Route is read here,
    and attachment - parentRefs, hostnames - is taken as given: the request reaches this Route.)
  * PathPrefix matches whole path elements. Header names are case-insensitive and only the first entry of
    equivalent names counts; Exact compares values case-sensitively. RegularExpression is implementation-
    specific: evaluated here as an RE2 SEARCH, raising `AnchoringMismatch` where that differs from a full
    match (Ramp renders anchored patterns, which must mean the same to both kinds of implementation).
  * backendRef weight: weight/(sum of weights), default 1, 0 = no traffic; a Service backendRef has a port.

Envoy RouteConfiguration (envoyproxy.io .../http_conn_man/route_matching; api v3 route_components.proto,
type/matcher/v3 string.proto and regex.proto):
  * The virtual host is chosen by authority: exact domain, longest suffix wildcard, longest prefix wildcard,
    then "*". Its routes are checked IN ORDER and the first match is used; all header matchers must match.
  * StringMatcher exact / prefix / safe_regex (RegexMatcher "is matched against the full string, not as a
    partial match"), `ignore_case` except for regex.
  * `cluster` gets all traffic, `weighted_clusters` split by relative weight; clusters are Ramp's
    `<namespace>--<service>--<version>` (envoy_readback.CLUSTER_SEPARATOR).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from controller.engine.routing_model import ServiceBackends
from controller.routing.envoy_readback import CLUSTER_SEPARATOR

Routed = dict[str, Fraction]
"""Percent of the requests each version receives; `{}` = the chosen rule has no servable backend (a 5xx)."""


class Unmodelled(ValueError):
    """The rendered object uses something these interpreters do not model (or is malformed)."""


class NotAVersion(ValueError):
    """A destination that is not one version of the routed service."""


class AnchoringMismatch(AssertionError):
    """An HTTPRoute regex whose search and full-match answers differ: implementations would disagree."""


# --- hostile-input helpers --------------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Unmodelled(f"{where} is {type(value).__name__}, expected an object")
    return value


def _items(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unmodelled(f"{where} is {type(value).__name__}, expected a list")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Unmodelled(f"{where} is {type(value).__name__}, expected a string")
    return value


def _only(value: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    extra = sorted(set(value) - set(allowed))
    if extra:
        raise Unmodelled(f"{where} uses {extra}, which this interpreter does not model")


def _weight(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Unmodelled(f"{where} is {value!r}, expected a non-negative integer")
    return value


def _compiled(pattern: str, where: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise Unmodelled(f"{where} {pattern!r} is not valid RE2: {exc}") from None


def regex_full_match(pattern: str, value: str, where: str) -> bool:
    return _compiled(pattern, where).fullmatch(value) is not None


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers by lowercase name (HTTP names are case-insensitive; Envoy lowercases them)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in out:
            raise ValueError(f"the request carries {name.lower()!r} twice (in different case)")
        out[name.lower()] = value
    return out


def shares(weights: Iterable[tuple[str, int]]) -> Routed:
    """Relative weights -> percent per version (zero weights dropped, repeated versions summed)."""
    summed: dict[str, int] = {}
    for version, weight in weights:
        summed[version] = summed.get(version, 0) + weight
    total = sum(summed.values())
    if total == 0:
        return {}
    return {version: Fraction(weight * 100, total) for version, weight in summed.items() if weight > 0}


# --- Istio VirtualService ---------------------------------------------------------------------------------

_ISTIO_ROUTE_KEYS = ("name", "match", "route", "timeout", "retries", "headers")
_ISTIO_MATCH_KEYS = ("name", "headers")
_ISTIO_STRING_MATCH_KEYS = ("exact", "prefix", "regex")


def _istio_string_match(spec: Any, actual: str | None, where: str) -> bool:
    spec = _obj(spec, where)
    _only(spec, _ISTIO_STRING_MATCH_KEYS, where)
    if not spec:
        return actual is not None  # an empty header StringMatch checks presence only
    if len(spec) != 1:
        raise Unmodelled(f"{where} sets {sorted(spec)}: a StringMatch is exactly one of exact/prefix/regex")
    ((kind, expected),) = spec.items()
    expected = _str(expected, f"{where}.{kind}")
    if actual is None:
        return False
    if kind == "exact":
        return bool(actual == expected)
    if kind == "prefix":
        return actual.startswith(expected)
    return regex_full_match(expected, actual, f"{where}.regex")


def _istio_match(match: Any, request: dict[str, str], where: str) -> bool:
    match = _obj(match, where)
    _only(match, _ISTIO_MATCH_KEYS, where)  # a uri match would need a path: not modelled, Ramp routes every path
    for name, spec in _obj(match.get("headers", {}), f"{where}.headers").items():
        if not _istio_string_match(spec, request.get(name.lower()), f"{where}.headers[{name!r}]"):
            return False
    return True


def _istio_destinations(route: dict[str, Any], service_host: str, where: str) -> Routed:
    destinations = _items(route.get("route"), f"{where}.route")
    if not destinations:
        raise Unmodelled(f"{where} has no route destinations")
    weights: list[tuple[str, int]] = []
    for index, item in enumerate(destinations):
        at = f"{where}.route[{index}]"
        item = _obj(item, at)
        _only(item, ("destination", "weight", "headers"), at)
        destination = _obj(item.get("destination"), f"{at}.destination")
        _only(destination, ("host", "subset", "port"), f"{at}.destination")
        host = _str(destination.get("host"), f"{at}.destination.host")
        if host != service_host:
            raise NotAVersion(f"{at} sends traffic to host {host!r}, not {service_host!r}")
        if "subset" not in destination:
            raise NotAVersion(f"{at} sends traffic to every pod of {host}, not to one version's subset")
        version = _str(destination["subset"], f"{at}.destination.subset")
        if "weight" not in item and len(destinations) > 1:
            raise Unmodelled(f"{at} has no weight beside other destinations")
        weights.append((version, _weight(item.get("weight", 100), f"{at}.weight")))
    return shares(weights)


def istio_route(virtual_service: Any, headers: Mapping[str, str], service_host: str) -> Routed | None:
    """The versions a request reaches through a VirtualService whose subsets are named after versions."""
    spec = _obj(_obj(virtual_service, "VirtualService").get("spec"), "VirtualService spec")
    request = lowered(headers)
    for index, route in enumerate(_items(spec.get("http"), "spec.http")):
        where = f"spec.http[{index}]"
        route = _obj(route, where)
        _only(route, _ISTIO_ROUTE_KEYS, where)
        matches = _items(route.get("match"), f"{where}.match")
        if matches and not any(_istio_match(m, request, f"{where}.match[{j}]") for j, m in enumerate(matches)):
            continue
        return _istio_destinations(route, service_host, where)
    return None


# --- Gateway API HTTPRoute --------------------------------------------------------------------------------

_GATEWAY_RULE_KEYS = ("name", "matches", "backendRefs", "timeouts", "retry")
_GATEWAY_MATCH_KEYS = ("path", "headers")
_GATEWAY_BACKEND_KEYS = ("group", "kind", "name", "namespace", "port", "weight")


def _gateway_path_rank(spec: Any, path: str, where: str) -> tuple[int, int] | None:
    """(0 for Exact / 1 for PathPrefix, -prefix length) when the path matches; smaller ranks first."""
    spec = _obj(spec, where)
    _only(spec, ("type", "value"), where)
    kind = spec.get("type", "PathPrefix")
    value = _str(spec.get("value", "/"), f"{where}.value")
    if kind == "Exact":
        return (0, 0) if path == value else None
    if kind != "PathPrefix":
        raise Unmodelled(f"{where}.type is {kind!r} (its precedence is implementation-specific)")
    prefix = value.rstrip("/")
    if prefix == "" or path == prefix or path.startswith(prefix + "/"):
        return 1, -len(value)
    return None


def _gateway_header_matches(headers: Any, request: dict[str, str], where: str) -> int | None:
    """The number of header matches when all match, else None."""
    seen: set[str] = set()
    for index, header in enumerate(_items(headers, where)):
        at = f"{where}[{index}]"
        header = _obj(header, at)
        _only(header, ("name", "type", "value"), at)
        name = _str(header.get("name"), f"{at}.name").lower()
        if name in seen:
            continue  # only the first entry with an equivalent name counts
        seen.add(name)
        expected = _str(header.get("value"), f"{at}.value")
        actual = request.get(name)
        kind = header.get("type", "Exact")
        if kind == "Exact":
            hit = actual == expected
        elif kind == "RegularExpression":
            hit = actual is not None and _searched_like_full_match(expected, actual, f"{at}.value")
        else:
            raise Unmodelled(f"{at}.type is {kind!r}")
        if not hit:
            return None
    return len(seen)


def _searched_like_full_match(pattern: str, value: str, where: str) -> bool:
    compiled = _compiled(pattern, where)
    searched = compiled.search(value) is not None
    if searched != (compiled.fullmatch(value) is not None):
        raise AnchoringMismatch(
            f"{where} {pattern!r} {'finds' if searched else 'does not find'} {value!r} by search but "
            f"{'does not' if searched else 'does'} fully match it: implementations would route it differently"
        )
    return searched


def _gateway_backends(rule: dict[str, Any], backends: ServiceBackends, namespace: str, where: str) -> Routed:
    weights: list[tuple[str, int]] = []
    for index, ref in enumerate(_items(rule.get("backendRefs"), f"{where}.backendRefs")):
        at = f"{where}.backendRefs[{index}]"
        ref = _obj(ref, at)
        _only(ref, _GATEWAY_BACKEND_KEYS, at)
        name = _str(ref.get("name"), f"{at}.name")
        if (ref.get("group", ""), ref.get("kind", "Service")) != ("", "Service"):
            raise NotAVersion(f"{at} refers to {ref.get('kind')} {name!r}, not a Service")
        if ref.get("namespace", namespace) != namespace:
            raise NotAVersion(f"{at} refers to Service {name!r} in namespace {ref.get('namespace')!r}")
        version = backends.version_of(name)
        if version is None:
            raise NotAVersion(f"{at} refers to Service {name!r}, which serves no version")
        if ref.get("port") != backends.port:
            raise NotAVersion(f"{at} uses port {ref.get('port')!r}, the versions' Services serve {backends.port}")
        weights.append((version, _weight(ref.get("weight", 1), f"{at}.weight")))
    return shares(weights)


def httproute_route(
    http_route: Any, headers: Mapping[str, str], backends: ServiceBackends, path: str = "/"
) -> Routed | None:
    """The versions a request reaches through an HTTPRoute (by the spec's precedence, not list order)."""
    http_route = _obj(http_route, "HTTPRoute")
    namespace = _str(_obj(http_route.get("metadata"), "HTTPRoute metadata").get("namespace"), "metadata.namespace")
    rules = _items(_obj(http_route.get("spec"), "HTTPRoute spec").get("rules"), "spec.rules")
    request = lowered(headers)
    candidates: list[tuple[int, int, int, int, int]] = []
    for rule_index, rule in enumerate(rules):
        where = f"spec.rules[{rule_index}]"
        rule = _obj(rule, where)
        _only(rule, _GATEWAY_RULE_KEYS, where)
        for match_index, match in enumerate(_items(rule.get("matches"), f"{where}.matches") or [{}]):
            at = f"{where}.matches[{match_index}]"
            match = _obj(match, at)
            _only(match, _GATEWAY_MATCH_KEYS, at)
            path_rank = _gateway_path_rank(match.get("path", {}), path, f"{at}.path")
            header_count = _gateway_header_matches(match.get("headers"), request, f"{at}.headers")
            if path_rank is not None and header_count is not None:
                candidates.append((*path_rank, -header_count, rule_index, match_index))
    if not candidates:
        return None
    chosen = min(candidates)[3]
    return _gateway_backends(rules[chosen], backends, namespace, f"spec.rules[{chosen}]")


# --- Envoy RouteConfiguration -----------------------------------------------------------------------------

_ENVOY_ROUTE_KEYS = ("name", "match", "route", "metadata", "decorator", "typed_per_filter_config")
_ENVOY_MATCH_KEYS = ("prefix", "path", "headers")
_ENVOY_ACTION_KEYS = ("cluster", "weighted_clusters", "timeout", "idle_timeout", "retry_policy")
_ENVOY_STRING_KINDS = ("exact", "prefix", "safe_regex")  # suffix / contains: never rendered, not modelled


def _domain_rank(domain: str, authority: str) -> tuple[int, int] | None:
    """(tier, -length) of a matching virtual-host domain: exact, suffix wildcard, prefix wildcard, '*'."""
    domain = domain.lower()
    if domain == authority:
        return 0, 0
    if domain == "*":
        return 3, 0
    if domain.startswith("*") and authority.endswith(domain[1:]) and len(authority) > len(domain) - 1:
        return 1, -len(domain)
    if domain.endswith("*") and authority.startswith(domain[:-1]) and len(authority) > len(domain) - 1:
        return 2, -len(domain)
    return None


def _envoy_virtual_host(config: dict[str, Any], authority: str) -> dict[str, Any] | None:
    best: tuple[tuple[int, int], dict[str, Any]] | None = None
    for index, vhost in enumerate(_items(config.get("virtual_hosts"), "virtual_hosts")):
        vhost = _obj(vhost, f"virtual_hosts[{index}]")
        for domain in _items(vhost.get("domains"), f"virtual_hosts[{index}].domains"):
            rank = _domain_rank(_str(domain, f"virtual_hosts[{index}] domain"), authority.lower())
            if rank is not None and (best is None or rank < best[0]):
                best = rank, vhost
    return None if best is None else best[1]


def _envoy_string_match(matcher: Any, actual: str, where: str) -> bool:
    matcher = _obj(matcher, where)
    _only(matcher, (*_ENVOY_STRING_KINDS, "ignore_case"), where)
    kinds = [k for k in _ENVOY_STRING_KINDS if k in matcher]
    if len(kinds) != 1:
        raise Unmodelled(f"{where} sets {kinds}: a StringMatcher is exactly one kind")
    (kind,) = kinds
    if kind == "safe_regex":
        regex = _obj(matcher[kind], f"{where}.safe_regex")
        _only(regex, ("regex", "google_re2"), f"{where}.safe_regex")
        return regex_full_match(_str(regex.get("regex"), f"{where}.safe_regex.regex"), actual, where)
    expected = _str(matcher[kind], f"{where}.{kind}")
    if matcher.get("ignore_case") is True:
        actual, expected = actual.lower(), expected.lower()
    return bool(actual == expected) if kind == "exact" else actual.startswith(expected)


def _envoy_header_match(header: Any, request: dict[str, str], where: str) -> bool:
    header = _obj(header, where)
    _only(header, ("name", "string_match", "present_match"), where)  # no invert_match, no legacy forms
    actual = request.get(_str(header.get("name"), f"{where}.name").lower())
    if "present_match" in header:
        return (actual is not None) == (header["present_match"] is True)
    if actual is None:
        return False
    if "string_match" not in header:
        raise Unmodelled(f"{where} has no value matcher")
    return _envoy_string_match(header["string_match"], actual, f"{where}.string_match")


def _envoy_match(match: Any, request: dict[str, str], path: str, where: str) -> bool:
    match = _obj(match, where)
    _only(match, _ENVOY_MATCH_KEYS, where)
    if "prefix" in match:
        path_hit = path.startswith(_str(match["prefix"], f"{where}.prefix"))
    elif "path" in match:
        path_hit = path == _str(match["path"], f"{where}.path")
    else:
        raise Unmodelled(f"{where} has no prefix or path")
    headers = _items(match.get("headers"), f"{where}.headers")
    return path_hit and all(_envoy_header_match(h, request, f"{where}.headers[{i}]") for i, h in enumerate(headers))


def _envoy_version(cluster: Any, namespace: str, service: str, where: str) -> str:
    name = _str(cluster, where)
    prefix = f"{namespace}{CLUSTER_SEPARATOR}{service}{CLUSTER_SEPARATOR}"
    version = name[len(prefix) :] if name.startswith(prefix) else ""
    if not version or CLUSTER_SEPARATOR in version or "." in version:
        raise NotAVersion(f"{where} is cluster {name!r}, not a version of {namespace}/{service}")
    return version


def _envoy_action(route: dict[str, Any], namespace: str, service: str, where: str) -> Routed:
    action = _obj(route.get("route"), f"{where}.route")
    _only(action, _ENVOY_ACTION_KEYS, f"{where}.route")
    if "cluster" in action:
        return {_envoy_version(action["cluster"], namespace, service, f"{where}.route.cluster"): Fraction(100)}
    weighted = _obj(action.get("weighted_clusters"), f"{where}.route.weighted_clusters")
    _only(weighted, ("clusters", "header_name", "runtime_key_prefix"), f"{where}.route.weighted_clusters")
    weights: list[tuple[str, int]] = []
    for index, item in enumerate(_items(weighted.get("clusters"), f"{where}.route.weighted_clusters.clusters")):
        at = f"{where}.route.weighted_clusters.clusters[{index}]"
        item = _obj(item, at)
        _only(item, ("name", "weight"), at)
        weights.append((_envoy_version(item.get("name"), namespace, service, at), _weight(item.get("weight"), at)))
    return shares(weights)


def envoy_route(
    route_configuration: Any,
    headers: Mapping[str, str],
    authority: str,
    namespace: str,
    service: str,
    path: str = "/",
) -> Routed | None:
    """The versions a request for `authority` reaches through an Envoy RouteConfiguration."""
    config = _obj(route_configuration, "RouteConfiguration")
    vhost = _envoy_virtual_host(config, authority)
    if vhost is None:
        return None
    request = lowered(headers)
    for index, route in enumerate(_items(vhost.get("routes"), f"virtual host {vhost.get('name')!r} routes")):
        where = f"virtual host {vhost.get('name')!r} routes[{index}]"
        route = _obj(route, where)
        _only(route, _ENVOY_ROUTE_KEYS, where)
        if _envoy_match(route.get("match"), request, path, f"{where}.match"):
            return _envoy_action(route, namespace, service, where)
    return None

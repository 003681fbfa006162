"""Ramp's Istio, Gateway API and Envoy renderings of one DesiredRouting route every request alike.

For generated routings (1-6 versions, integer percentages summing to 100, 0-3 header routes of every match
kind), each rendering is read by a faithful interpreter of its data plane (tests/unit/routing_interpreters.py)
and asked where a set of probing requests go: no header, each header route's header with matching values
and near misses, the header name in other case, all the header routes' headers at once. Every answer must
equal what the `DesiredRouting` itself means: the first header route whose header matches, else the weights.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.engine.routing_model import (
    PRIMARY_ROUTE_NAME,
    DesiredRouting,
    HeaderRoute,
    ParentRef,
    ServiceBackends,
)
from controller.routing.envoy_render import render_route_configuration
from controller.routing.httproute_render import http_route
from controller.routing.istio_render import virtual_service
from controller.spec_rules import header_match_problem
from tests.unit.routing_interpreters import (
    AnchoringMismatch,
    NotAVersion,
    Routed,
    Unmodelled,
    envoy_route,
    httproute_route,
    istio_route,
    lowered,
    regex_full_match,
    shares,
)

SERVICE = "checkout"
NAMESPACE = "shop"
PORT = 8080


@dataclass(frozen=True)
class RegexCase:
    """A spec regex with values known to match it fully and near misses known not to."""

    pattern: str
    matching: tuple[str, ...]
    near_misses: tuple[str, ...]


REGEX_CASES = (
    RegexCase(r"v[0-9]+", ("v2", "v10"), ("v", "xv2", "v2x", "V2")),
    # Top-level alternation: `^beta|canary$` would be a wrong anchoring (it finds "xcanary" and "betax").
    RegexCase(r"beta|canary", ("beta", "canary"), ("betax", "xcanary", "beta|canary")),
    RegexCase(r"(alpha|beta)-tester", ("alpha-tester", "beta-tester"), ("gamma-tester", "beta-testers")),
    RegexCase(r"[a-z]{3}-canary", ("abc-canary",), ("abcd-canary", "ab-canary", "abc-canary!")),
    RegexCase(r"user-[0-9a-f]{8}", ("user-deadbeef", "user-0123abcd"), ("user-deadbee", "user-deadbeefx")),
    RegexCase(r".*-canary", ("team-canary", "-canary"), ("team-canary-2", "canary")),
    RegexCase(r"a\.b\+c", ("a.b+c",), ("axb+c", "a.bbc")),
    RegexCase(r"(?i)tester", ("tester", "TESTER", "TeStEr"), ("testers", "xtester")),
)
REGEX_BY_PATTERN = {case.pattern: case for case in REGEX_CASES}


# --- what the model means, and the three renderings read back by their interpreters ----------------------


def model_route(routing: DesiredRouting, headers: Mapping[str, str]) -> Routed:
    """`DesiredRouting`'s own meaning: the first header route whose header matches, else the weights."""
    request = lowered(headers)
    for route in routing.header_routes:
        actual = request.get(route.header.lower())
        if actual is None:
            continue
        if route.match == "exact":
            hit = actual == route.value
        elif route.match == "prefix":
            hit = actual.startswith(route.value)
        else:
            hit = regex_full_match(route.value, actual, f"{route.route_name} regex")
        if hit:
            return {route.version: Fraction(100)}
    return shares(routing.live_weights())


def percent(**by_version: int) -> Routed:
    return {version: Fraction(share) for version, share in by_version.items()}


@dataclass(frozen=True)
class Renderings:
    istio: dict[str, Any]
    gateway: dict[str, Any]
    envoy: dict[str, Any]


def render_all(routing: DesiredRouting) -> Renderings:
    return Renderings(virtual_service(routing), http_route(routing), render_route_configuration([routing]))


def answers(routing: DesiredRouting, rendered: Renderings, request: Mapping[str, str]) -> dict[str, Routed | None]:
    assert routing.backends is not None
    return {
        "istio": istio_route(rendered.istio, request, routing.host),
        "gateway-api": httproute_route(rendered.gateway, request, routing.backends),
        "envoy": envoy_route(rendered.envoy, request, routing.host, routing.namespace, routing.service),
    }


def matching_values(route: HeaderRoute) -> tuple[str, ...]:
    if route.match == "regex":
        return REGEX_BY_PATTERN[route.value].matching
    if route.match == "prefix":
        return route.value, route.value + "x", route.value + " tail"
    return (route.value,)


def near_misses(route: HeaderRoute) -> tuple[str, ...]:
    if route.match == "regex":
        return REGEX_BY_PATTERN[route.value].near_misses
    value = route.value
    shifted = chr(ord(value[0]) + 1 if value[0] != "~" else ord("!")) + value[1:]
    misses = (value[:-1], "x" + value, value.swapcase(), shifted)
    return (*misses, value + "x") if route.match == "exact" else misses


def probing_requests(routing: DesiredRouting) -> list[dict[str, str]]:
    """No header, an unrelated one, each header route's matches (also with the name in other case), its
    near misses, and every header route's header at once (which the first route in order must win)."""
    requests: list[dict[str, str]] = [{}, {"x-unrelated": "1"}]
    for route in routing.header_routes:
        for value in matching_values(route):
            requests += [{route.header: value}, {route.header.upper(): value}, {route.header.title(): value}]
        requests += [{route.header: value} for value in near_misses(route)]
    if routing.header_routes:
        requests.append({route.header: matching_values(route)[0] for route in reversed(routing.header_routes)})
    # HTTP strips surrounding whitespace and has no empty values that could match: such requests do not exist.
    return [r for r in requests if all(v and v == v.strip(" ") for v in r.values())]


def disagreements(routing: DesiredRouting, rendered: Renderings) -> list[str]:
    found: list[str] = []
    for request in probing_requests(routing):
        expected = model_route(routing, request)
        for router, got in answers(routing, rendered, request).items():
            if got != expected:
                found.append(f"{router}: {request} -> {got}, the routing says {expected}")
    return found


# --- generated routings -----------------------------------------------------------------------------------

VERSION_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
HEADER_NAMES = st.one_of(
    st.sampled_from(("x-canary", "x-user", "cookie")),  # shared names make routes compete for one header
    st.from_regex(r"[a-z][a-z0-9_-]{0,10}[a-z0-9]", fullmatch=True),
)
HEADER_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12).filter(
    lambda value: value == value.strip(" ")
)


@st.composite
def percentages(draw: st.DrawFn, count: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, 100]
    return [high - low for low, high in itertools.pairwise(bounds)]


@st.composite
def header_routes(draw: st.DrawFn, version: str) -> HeaderRoute:
    match = draw(st.sampled_from(("exact", "prefix", "regex")))
    value = draw(st.sampled_from(tuple(REGEX_BY_PATTERN)) if match == "regex" else HEADER_VALUES)
    return HeaderRoute(header=draw(HEADER_NAMES), value=value, match=match, version=version)


def routing_of(weights: list[tuple[str, int]], routes: tuple[HeaderRoute, ...] = ()) -> DesiredRouting:
    versions = tuple(v for v, _ in weights)
    return DesiredRouting(
        service=SERVICE,
        namespace=NAMESPACE,
        host=f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
        versions=versions,
        header_routes=routes,
        weights=tuple(weights),
        router="gateway-api",
        parent_refs=(ParentRef(group="", kind="Service", name=SERVICE),),
        backends=ServiceBackends(port=PORT, services=tuple((v, f"svc-{v}") for v in versions)),
    )


@st.composite
def routings(draw: st.DrawFn) -> DesiredRouting:
    versions = draw(st.lists(VERSION_NAMES, min_size=1, max_size=6, unique=True))
    weights = list(zip(versions, draw(percentages(len(versions))), strict=True))
    targets = draw(st.permutations(versions))[: draw(st.integers(0, min(3, len(versions))))]
    return routing_of(weights, tuple(draw(header_routes(v)) for v in targets))


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(routing=routings())
def test_istio_gateway_api_and_envoy_route_every_probe_as_the_routing_says(routing: DesiredRouting) -> None:
    assert disagreements(routing, render_all(routing)) == [], routing.describe()
    # Not vacuous: the probes reach the first header route and the weights.
    assert model_route(routing, {}) == {v: w for v, w in routing.weights if w > 0}
    if routing.header_routes:
        first = routing.header_routes[0]
        assert model_route(routing, {first.header: matching_values(first)[0]}) == {first.version: 100}


def test_regex_cases_are_spec_regexes_whose_samples_match_as_labelled() -> None:
    for case in REGEX_CASES:
        assert header_match_problem("x-canary", case.pattern, "regex") is None, case.pattern
        assert all(re2.fullmatch(case.pattern, value) for value in case.matching), case.pattern
        assert not any(re2.fullmatch(case.pattern, value) for value in case.near_misses), case.pattern


# --- precedence: why Ramp's HTTPRoute does not depend on rule order -------------------------------------

CANARY = HeaderRoute(header="x-canary", value="always", match="exact", version="v2")
TESTER = HeaderRoute(header="x-team", value="qa-", match="prefix", version="v3")
SPLIT = [("v1", 80), ("v2", 15), ("v3", 5)]


def test_httproute_header_rule_after_the_primary_rule_still_wins_by_precedence() -> None:
    routing = routing_of(SPLIT, (CANARY, TESTER))
    assert routing.backends is not None
    rendered = render_all(routing)
    rules = rendered.gateway["spec"]["rules"]
    assert rules[-1]["name"] == PRIMARY_ROUTE_NAME
    reordered = copy.deepcopy(rendered.gateway)
    reordered["spec"]["rules"] = [rules[-1], *rules[:-1]]  # the catch-all first

    # Gateway API ranks the match with more header matches first, whatever the list order ...
    assert httproute_route(reordered, {"x-canary": "always"}, routing.backends) == percent(v2=100)
    assert httproute_route(reordered, {"X-Team": "qa-night"}, routing.backends) == percent(v3=100)
    assert httproute_route(reordered, {"x-canary": "never"}, routing.backends) == percent(v1=80, v2=15, v3=5)
    # ... while an Istio VirtualService is strictly first-match: the same reordering there loses the header route.
    reordered_vs = copy.deepcopy(rendered.istio)
    http = reordered_vs["spec"]["http"]
    reordered_vs["spec"]["http"] = [http[-1], *http[:-1]]
    assert istio_route(reordered_vs, {"x-canary": "always"}, routing.host) == percent(v1=80, v2=15, v3=5)


def test_httproute_header_rules_of_equal_precedence_keep_the_routings_order() -> None:
    first = HeaderRoute(header="x-a", value="1", match="exact", version="v2")
    second = HeaderRoute(header="x-b", value="1", match="exact", version="v3")
    routing = routing_of(SPLIT, (first, second))
    assert routing.backends is not None
    rendered = render_all(routing)
    both = {"x-a": "1", "x-b": "1"}
    assert list(answers(routing, rendered, both).values()) == [percent(v2=100)] * 3  # the first header route wins
    swapped = copy.deepcopy(rendered.gateway)
    rules = swapped["spec"]["rules"]
    rules[0], rules[1] = rules[1], rules[0]
    assert httproute_route(swapped, both, routing.backends) == percent(v3=100)  # a tie goes to list order


# --- deliberately broken renderings are caught -----------------------------------------------------------


def _gateway_header(rendered: Renderings, rule: int) -> dict[str, Any]:
    header: dict[str, Any] = rendered.gateway["spec"]["rules"][rule]["matches"][0]["headers"][0]
    return header


def _break_regex_anchoring(rendered: Renderings) -> None:
    _gateway_header(rendered, 0)["value"] = "^beta|canary$"  # anchors only the alternatives' ends


def _break_prefix_anchoring(rendered: Renderings) -> None:
    _gateway_header(rendered, 1)["value"] = "qa\\-.*"  # no leading ^


def _break_gateway_weights(rendered: Renderings) -> None:
    refs = rendered.gateway["spec"]["rules"][-1]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = refs[1]["weight"], refs[0]["weight"]


def _break_gateway_backend(rendered: Renderings) -> None:
    rendered.gateway["spec"]["rules"][1]["backendRefs"][0]["name"] = "svc-v2"


def _break_envoy_order(rendered: Renderings) -> None:
    routes = rendered.envoy["virtual_hosts"][0]["routes"]
    routes.insert(0, routes.pop())


def _break_envoy_case(rendered: Renderings) -> None:
    rendered.envoy["virtual_hosts"][0]["routes"][1]["match"]["headers"][0]["string_match"]["ignore_case"] = True


def _break_istio_prefix_as_exact(rendered: Renderings) -> None:
    rendered.istio["spec"]["http"][1]["match"][0]["headers"]["x-team"] = {"exact": "qa-"}


def _break_istio_subset(rendered: Renderings) -> None:
    rendered.istio["spec"]["http"][-1]["route"][2]["destination"]["subset"] = "v1"


BROKEN = [
    pytest.param(_break_gateway_weights, "gateway-api", id="gateway weights swapped"),
    pytest.param(_break_gateway_backend, "gateway-api", id="gateway header rule to another version's Service"),
    pytest.param(_break_envoy_order, "envoy", id="envoy catch-all first"),
    pytest.param(_break_envoy_case, "envoy", id="envoy prefix ignoring case"),
    pytest.param(_break_istio_prefix_as_exact, "istio", id="istio prefix rendered as exact"),
    pytest.param(_break_istio_subset, "istio", id="istio weight to the wrong subset"),
]
BETA = HeaderRoute(header="x-canary", value="beta|canary", match="regex", version="v2")


def _broken(breaker: Callable[[Renderings], None]) -> tuple[DesiredRouting, Renderings]:
    routing = routing_of(SPLIT, (BETA, TESTER))
    intact = render_all(routing)
    assert disagreements(routing, intact) == []
    broken = copy.deepcopy(intact)
    breaker(broken)
    return routing, broken


@pytest.mark.parametrize(("breaker", "router"), BROKEN)
def test_a_broken_rendering_is_caught_by_its_own_interpreter(
    breaker: Callable[[Renderings], None], router: str
) -> None:
    routing, broken = _broken(breaker)
    found = disagreements(routing, broken)
    assert found != []
    assert all(line.startswith(f"{router}: ") for line in found), found


@pytest.mark.parametrize("breaker", [_break_regex_anchoring, _break_prefix_anchoring])
def test_a_wrongly_anchored_httproute_regex_is_caught(breaker: Callable[[Renderings], None]) -> None:
    routing, broken = _broken(breaker)
    with pytest.raises(AnchoringMismatch, match=r"spec\.rules\[[01]\]\.matches\[0\]\.headers\[0\]\.value"):
        disagreements(routing, broken)


# --- the interpreters themselves --------------------------------------------------------------------------

BACKENDS = ServiceBackends(port=PORT, services=(("v1", "svc-v1"), ("v2", "svc-v2"), ("v3", "svc-v3")))


def _httproute(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": SERVICE, "namespace": NAMESPACE}, "spec": {"rules": list(rules)}}


def _rule(service: str, *matches: dict[str, Any]) -> dict[str, Any]:
    return {"matches": list(matches), "backendRefs": [{"name": service, "port": PORT}]}


def _header(name: str, value: str, kind: str = "Exact") -> dict[str, str]:
    return {"name": name, "value": value, "type": kind}


def test_gateway_precedence_exact_path_then_longest_prefix_then_most_headers_then_order() -> None:
    route = _httproute(
        _rule("svc-v1", {"headers": [_header("x-a", "1")]}),
        _rule("svc-v2", {"headers": [_header("x-a", "1"), _header("X-B", "2")]}),
        _rule("svc-v3", {"path": {"type": "PathPrefix", "value": "/api"}}),
        _rule("svc-v1", {"path": {"type": "Exact", "value": "/api/orders"}}),
    )
    assert httproute_route(route, {"x-a": "1"}, BACKENDS) == percent(v1=100)
    assert httproute_route(route, {"x-a": "1", "x-b": "2"}, BACKENDS) == percent(v2=100)  # more headers beat order
    assert httproute_route(route, {"x-a": "1", "x-b": "2"}, BACKENDS, path="/api/x") == percent(v3=100)
    assert httproute_route(route, {}, BACKENDS, path="/api/orders") == percent(v1=100)
    assert httproute_route(route, {}, BACKENDS, path="/apis") is None  # PathPrefix matches whole elements
    assert httproute_route(route, {"x-a": "2"}, BACKENDS) is None


def test_gateway_header_names_fold_case_and_only_the_first_equivalent_entry_counts() -> None:
    route = _httproute(_rule("svc-v2", {"headers": [_header("X-Canary", "on"), _header("x-canary", "off")]}))
    assert httproute_route(route, {"x-CANARY": "on"}, BACKENDS) == percent(v2=100)
    assert httproute_route(route, {"x-canary": "ON"}, BACKENDS) is None  # values are case-sensitive


def test_gateway_weights_are_relative_and_zero_weights_serve_nothing() -> None:
    refs = [{"name": "svc-v1", "port": PORT, "weight": 1}, {"name": "svc-v2", "port": PORT, "weight": 3}]
    assert httproute_route(_httproute({"backendRefs": refs}), {}, BACKENDS) == percent(v1=25, v2=75)
    for ref in refs:
        ref["weight"] = 0
    assert httproute_route(_httproute({"backendRefs": refs}), {}, BACKENDS) == {}  # matched, nothing to serve


def test_envoy_picks_the_virtual_host_exact_domain_then_wildcard_then_star() -> None:
    def vhost(name: str, domains: list[str], version: str) -> dict[str, Any]:
        cluster = f"{NAMESPACE}--{SERVICE}--{version}"
        return {"name": name, "domains": domains, "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}

    hosts = [vhost("any", ["*"], "v1"), vhost("wild", ["*.shop.svc"], "v2"), vhost("own", ["a.shop.svc"], "v3")]

    def route_for(authority: str) -> Routed | None:
        return envoy_route({"virtual_hosts": hosts}, {}, authority, NAMESPACE, SERVICE)

    assert route_for("A.shop.svc") == percent(v3=100)
    assert route_for("b.shop.svc") == percent(v2=100)
    assert route_for("elsewhere") == percent(v1=100)
    hosts.pop(0)
    assert route_for("elsewhere") is None


@pytest.mark.parametrize(
    ("interpret", "error", "named"),
    [
        (lambda: istio_route({"spec": {"http": [{"redirect": {"uri": "/x"}}]}}, {}, "h"), Unmodelled, "spec.http[0]"),
        (lambda: istio_route({"spec": {"http": "all"}}, {}, "h"), Unmodelled, "spec.http"),
        (
            lambda: istio_route({"spec": {"http": [{"route": [{"destination": {"host": "evil"}}]}]}}, {}, "h"),
            NotAVersion,
            "spec.http[0].route[0]",
        ),
        (
            lambda: httproute_route(_httproute({"filters": [{"type": "RequestRedirect"}]}), {}, BACKENDS),
            Unmodelled,
            "spec.rules[0]",
        ),
        (
            lambda: httproute_route(
                _httproute({"backendRefs": [{"name": "svc-v1", "port": PORT, "namespace": "other"}]}), {}, BACKENDS
            ),
            NotAVersion,
            "spec.rules[0].backendRefs[0]",
        ),
        (
            lambda: httproute_route(
                _httproute(_rule("svc-v1", {"headers": [_header("x", "(", "RegularExpression")]})), {"x": "("}, BACKENDS
            ),
            Unmodelled,
            "spec.rules[0].matches[0].headers[0].value",
        ),
        (
            lambda: envoy_route(
                {
                    "virtual_hosts": [
                        {"domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "x"}}]}
                    ]
                },
                {},
                "h",
                NAMESPACE,
                SERVICE,
            ),
            NotAVersion,
            "routes[0].route.cluster",
        ),
    ],
)
def test_interpreters_refuse_what_they_do_not_model_naming_the_field(
    interpret: Callable[[], object], error: type[Exception], named: str
) -> None:
    with pytest.raises(error) as raised:
        interpret()
    assert named in str(raised.value)

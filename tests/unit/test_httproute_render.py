"""DesiredRouting -> HTTPRoute: the rules Ramp writes, the header match translation, the complete object.

The hypothesis strategies for routings (`routings`) live here and are imported by the merge, shape and CRD tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine.routing_model import DesiredRouting, HeaderRoute, ParentRef, ServiceBackends
from controller.plan import build_plan
from controller.routing.httproute_render import (
    BACKENDS_ANNOTATION,
    GATEWAY_GROUP,
    HTTPROUTE_VERSION,
    HTTPROUTES,
    http_route,
    managed_rules,
    prefix_of,
    prefix_regex,
    regex_of,
    regex_pattern,
)
from controller.spec_loader import parse_spec_text

PROPERTY = settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
LABEL = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


# --- strategies (shared with the merge, shape and CRD tests) ---------------------------------------------


@st.composite
def percentages(draw: st.DrawFn, count: int) -> list[int]:
    """`count` integers >= 0 summing to 100 (zeros included: weight 0 is kept as a backendRef)."""
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    edges = [0, *cuts, 100]
    return [edges[i + 1] - edges[i] for i in range(count)]


@st.composite
def header_values(draw: st.DrawFn, match: str) -> str:
    """Values a spec accepts: printable ASCII, no space at either end; regexes are valid RE2."""
    if match == "regex":
        literal = draw(st.text(PRINTABLE, min_size=1, max_size=12))
        return re2.escape(literal) + draw(st.sampled_from(["", "[0-9]+", "(-[a-z]+)?", "|beta", "\\.v[12]"]))
    text = draw(st.text(PRINTABLE, min_size=1, max_size=40).map(str.strip).filter(bool))
    return str(text)


@st.composite
def header_routes(draw: st.DrawFn, versions: tuple[str, ...]) -> HeaderRoute:
    match = draw(st.sampled_from(["exact", "prefix", "regex"]))
    header = draw(st.from_regex(r"x-[a-z0-9]{1,10}(-[a-z0-9_]{1,5})?", fullmatch=True))
    return HeaderRoute(header=header, value=draw(header_values(match)), match=match,
                       version=draw(st.sampled_from(versions)))  # fmt: skip


@st.composite
def parent_ref_sets(draw: st.DrawFn, service: str) -> tuple[ParentRef, ...]:
    """The mesh default (the service itself), or Gateways as Gateway API accepts them together: distinct
    Gateways, or one Gateway through distinct listeners."""
    shape = draw(st.sampled_from(["mesh", "gateways", "listeners"]))
    if shape == "mesh":
        return (ParentRef(group="", kind="Service", name=service),)
    namespace = draw(st.none() | st.just("edge"))
    if shape == "listeners":
        sections = draw(st.lists(st.sampled_from(["http", "https", "grpc", "admin"]), min_size=1, max_size=3,
                                 unique=True))  # fmt: skip
        return tuple(ParentRef(name="public", namespace=namespace, section_name=s) for s in sections)
    names = draw(st.lists(LABEL, min_size=1, max_size=3, unique=True))
    port = draw(st.none() | st.integers(1, 65535))
    return tuple(ParentRef(name=f"gw-{n}", namespace=namespace, port=port) for n in names)


@st.composite
def routings(draw: st.DrawFn, max_headers: int = 3) -> DesiredRouting:
    """A gateway-api routing as a plan makes them, and more: 1-6 versions, any split (zeros too), up to
    `max_headers` header routes of every match kind, mesh or Gateway parents, hostnames, any port."""
    service = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True))
    versions = tuple(draw(st.lists(LABEL, min_size=1, max_size=6, unique=True)))
    weights = tuple(zip(versions, draw(percentages(len(versions))), strict=True))
    headers = tuple(draw(st.lists(header_routes(versions), max_size=max_headers)))
    hosts = tuple(draw(st.lists(st.from_regex(r"[a-z]{1,8}\.example\.com", fullmatch=True), max_size=2, unique=True)))
    backends = ServiceBackends(
        port=draw(st.integers(1, 65535)), services=tuple((v, f"{service}-{v}") for v in versions)
    )
    return DesiredRouting(
        service=service, namespace=draw(st.sampled_from(["shop", "default"])), host=service, versions=versions,
        header_routes=headers, weights=weights, extra_hosts=hosts, router="gateway-api",
        parent_refs=draw(parent_ref_sets(service)), backends=backends,
    )  # fmt: skip


def reviews(**changes: Any) -> DesiredRouting:
    """reviews in shop: v1 90%, v2 10%, a header route to v2, attached to the Gateway shop/public."""
    base: dict[str, Any] = {
        "service": "reviews", "namespace": "shop", "host": "reviews", "versions": ("v1", "v2"),
        "header_routes": (HeaderRoute(header="x-canary", value="always", version="v2"),),
        "weights": (("v1", 90), ("v2", 10)), "router": "gateway-api",
        "parent_refs": (ParentRef(name="public", namespace="shop"),),
        "backends": ServiceBackends(port=9080, services=(("v1", "reviews-v1"), ("v2", "reviews-v2"))),
    }  # fmt: skip
    return DesiredRouting(**{**base, **changes})


# --- the rules -------------------------------------------------------------------------------------------


def test_header_rules_come_first_then_the_weighted_rule_with_every_version_in_spec_order() -> None:
    services = (("v1", "reviews-v1"), ("v2", "reviews-v2"), ("v3", "reviews-v3"))
    routing = reviews(versions=("v1", "v2", "v3"), weights=(("v2", 10), ("v1", 90), ("v3", 0)),
                      backends=ServiceBackends(port=9080, services=services))  # fmt: skip
    assert managed_rules(routing) == [
        {
            "name": "ramp-header-v2",
            "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                         "headers": [{"type": "Exact", "name": "x-canary", "value": "always"}]}],
            "backendRefs": [{"group": "", "kind": "Service", "name": "reviews-v2", "port": 9080, "weight": 1}],
        },
        {
            "name": "ramp-primary",
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "reviews-v2", "port": 9080, "weight": 10},
                {"group": "", "kind": "Service", "name": "reviews-v1", "port": 9080, "weight": 90},
                {"group": "", "kind": "Service", "name": "reviews-v3", "port": 9080, "weight": 0},
            ],
        },
    ]  # fmt: skip


def test_header_rules_outrank_the_weighted_rule_by_precedence_and_by_order() -> None:
    """Gateway API ranks a match with more header matches higher; ties go to the first rule."""
    routing = reviews(header_routes=(HeaderRoute(header="x-a", value="1", version="v2"),
                                     HeaderRoute(header="x-b", value="2", match="prefix", version="v1")))  # fmt: skip
    rules = managed_rules(routing)
    primary = rules[-1]
    assert [r["name"] for r in rules] == ["ramp-header-v2", "ramp-header-v1", "ramp-primary"]
    for rule in rules[:-1]:
        (match,) = rule["matches"]
        assert len(match["headers"]) > len(primary["matches"][0].get("headers", []))
        assert match["path"] == primary["matches"][0]["path"]  # equal on path: headers decide
        assert set(match) == {"path", "headers"}  # no method/query that could rank differently


def test_two_header_routes_to_one_version_get_unique_rule_names() -> None:
    routing = reviews(header_routes=tuple(HeaderRoute(header=f"x-{i}", value="1", version="v2") for i in range(3)))
    assert [r["name"] for r in managed_rules(routing)] == [
        "ramp-header-v2", "ramp-header-v2-2", "ramp-header-v2-3", "ramp-primary"
    ]  # fmt: skip


def test_weights_must_sum_to_100_and_versions_must_be_known() -> None:
    with pytest.raises(ValueError, match="must sum to 100"):
        managed_rules(reviews(weights=(("v1", 90), ("v2", 5))))
    with pytest.raises(ValueError, match="unknown version 'v9'"):
        managed_rules(reviews(header_routes=(HeaderRoute(header="x-a", value="1", version="v9"),)))
    with pytest.raises(ValueError, match="no Service is named for version 'v3'"):
        managed_rules(reviews(versions=("v1", "v2", "v3"), weights=(("v1", 90), ("v2", 10), ("v3", 0))))


def test_without_backends_nothing_is_rendered() -> None:
    with pytest.raises(ValueError, match="needs the Service of each version"):
        http_route(reviews(backends=None))
    with pytest.raises(ValueError, match="needs the Service of each version"):
        managed_rules(reviews(backends=None))


# --- header match values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "value", "pattern"),
    [
        ("exact", "a.b", None),
        ("prefix", "v2", "^v2.*"),
        ("prefix", "a.b (c)*", r"^a\.b\ \(c\)\*.*"),
        ("prefix", "x^$|[]{}\\/", r"^x\^\$\|\[\]\{\}\\\/.*"),
        ("regex", "v[0-9]+|beta", "^(?:v[0-9]+|beta)$"),
    ],
)
def test_header_match_kinds(match: str, value: str, pattern: str | None) -> None:
    rule = managed_rules(reviews(header_routes=(HeaderRoute(header="x-v", value=value, match=match, version="v2"),)))
    (header,) = rule[0]["matches"][0]["headers"]
    if pattern is None:
        assert header == {"type": "Exact", "name": "x-v", "value": value}
    else:
        assert header == {"type": "RegularExpression", "name": "x-v", "value": pattern}


def test_an_unknown_match_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported header match 'suffix'"):
        managed_rules(reviews(header_routes=(HeaderRoute(header="x", value="1", match="suffix", version="v2"),)))


TEXT = st.characters(blacklist_categories=("Cs",))  # RE2 works on UTF-8: no lone surrogates
NO_NEWLINE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")  # no header value has one


@PROPERTY
@given(value=st.text(TEXT, min_size=1, max_size=30), probe=st.text(NO_NEWLINE, max_size=40))
def test_the_prefix_pattern_means_starts_with_under_full_and_partial_matching(value: str, probe: str) -> None:
    """Any text (non-ASCII and control characters too) is a literal in the pattern, and it reads back.
    (The probe has no newline: HTTP forbids one in a header value, and RE2's `.` does not match it.)"""
    pattern = re2.compile(prefix_regex(value))
    for candidate in (probe, value + probe, probe + value):
        starts = candidate.startswith(value)
        assert bool(pattern.fullmatch(candidate)) == starts, (value, candidate)
        assert bool(pattern.search(candidate)) == starts, (value, candidate)
    assert prefix_of(prefix_regex(value)) == value
    assert regex_of(prefix_regex(value)) is None


@PROPERTY
@given(regex=st.sampled_from(["v2", "a|b", "beta-[0-9]+", "(x|y)z?", "[a-z]+\\.[0-9]", ".+-canary"]),
       probe=st.text(alphabet="abxyz-.0129vbetacnry", max_size=12))  # fmt: skip
def test_the_regex_pattern_means_a_full_match_under_full_and_partial_matching(regex: str, probe: str) -> None:
    pattern = re2.compile(regex_pattern(regex))
    full = bool(re2.fullmatch(regex, probe))
    assert bool(pattern.fullmatch(probe)) == full
    assert bool(pattern.search(probe)) == full
    assert regex_of(regex_pattern(regex)) == regex
    assert prefix_of(regex_pattern(regex)) is None


def test_patterns_ramp_did_not_write_read_as_neither() -> None:
    for pattern in ("v2", "^v2", "v2.*", "^(v2)$", "^a.b.*", "^a\\q.*", "^(?:v2)"):
        assert prefix_of(pattern) is None or regex_of(pattern) is None
    assert prefix_of("^a.b.*") is None  # an unescaped dot is not a literal
    assert prefix_of("^(?:v2)$") is None and regex_of("^v2.*") is None


# --- the object ------------------------------------------------------------------------------------------


def test_the_complete_object() -> None:
    routing = reviews(
        extra_hosts=("reviews.example.com",),
        parent_refs=(ParentRef(name="public", namespace="edge", section_name="https", port=443),
                     ParentRef(group="", kind="Service", name="reviews")),
    )  # fmt: skip
    route = http_route(routing)
    assert route["apiVersion"] == f"{GATEWAY_GROUP}/{HTTPROUTE_VERSION}" == "gateway.networking.k8s.io/v1"
    assert HTTPROUTES == "httproutes"
    assert route["kind"] == "HTTPRoute"
    assert route["metadata"] == {
        "name": "reviews", "namespace": "shop", "labels": {"app.kubernetes.io/managed-by": "ramp"},
        "annotations": {BACKENDS_ANNOTATION: '{"reviews-v1":"v1","reviews-v2":"v2"}'},
    }  # fmt: skip
    assert route["spec"]["parentRefs"] == [
        {"group": GATEWAY_GROUP, "kind": "Gateway", "name": "public", "namespace": "edge", "sectionName": "https",
         "port": 443},
        {"group": "", "kind": "Service", "name": "reviews"},
    ]  # fmt: skip
    assert route["spec"]["hostnames"] == ["reviews.example.com"]
    assert route["spec"]["rules"] == managed_rules(routing)
    assert "hostnames" not in http_route(reviews())["spec"]
    assert json.loads(route["metadata"]["annotations"][BACKENDS_ANNOTATION]) == {"reviews-v1": "v1", "reviews-v2": "v2"}


GATEWAY_SPEC = """
service: reviews
namespace: shop
router: gateway-api
gateway_api:
  port: 9080
versions:
  - name: v1
    weight: 100
  - name: v2
    weight: 0
target: v2
"""


def test_every_planned_routing_of_a_gateway_api_spec_renders() -> None:
    plan = build_plan(parse_spec_text(GATEWAY_SPEC, "gateway.yaml"))
    for routing in plan.all_routings():
        route = http_route(routing)
        assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "reviews"}]
        services = [b["name"] for b in route["spec"]["rules"][-1]["backendRefs"]]
        assert services == ["reviews-v1", "reviews-v2"]
        assert sum(b["weight"] for b in route["spec"]["rules"][-1]["backendRefs"]) == 100
    header_step = plan.steps[0].routing
    assert [r["name"] for r in http_route(header_step)["spec"]["rules"]] == ["ramp-header-v2", "ramp-primary"]


@PROPERTY
@given(routing=routings())
def test_rendering_is_deterministic_and_shaped(routing: DesiredRouting) -> None:
    route = http_route(routing)
    assert route == http_route(routing)
    rules = route["spec"]["rules"]
    assert len(rules) == len(routing.header_routes) + 1
    assert len({r["name"] for r in rules}) == len(rules)
    primary = rules[-1]["backendRefs"]
    assert [b["name"] for b in primary] == [f"{routing.service}-{v}" for v, _ in routing.weights]
    assert [b["weight"] for b in primary] == [w for _, w in routing.weights]
    assert routing.backends is not None
    assert all(b["port"] == routing.backends.port for r in rules for b in r["backendRefs"])

"""charts/microservice with `router: gateway-api`: the HTTPRoute equals what Ramp renders
(controller.routing.httproute_render.http_route) for the same rollout spec and reads back as the same traffic
(httproute_shape.observed_http_routing), one Service per version selects exactly that version's pods and is what
the backendRefs name, weights are Ramp's integer percentages, header routes render per match kind with the
meaning Ramp gives them, and bad values fail the rendering with a message naming the value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine.routing_model import DesiredRouting, HeaderRoute, ParentRef, ServiceBackends
from controller.plan import build_plan
from controller.routing.crd_schema import RouteSchemas
from controller.routing.httproute_render import BACKENDS_ANNOTATION, http_route
from controller.routing.httproute_shape import observed_http_routing
from controller.spec_loader import SpecError, validate_spec_data
from controller.spec_routers import GatewayApiRouting
from controller.weights import integer_percentages
from tests.charts.rendering import (
    ISTIO_KINDS,
    MICRO_CHART,
    MICRO_GATEWAY_API_CI,
    MICRO_NAMESPACE,
    Rendered,
    _ids,
    render,
    render_ci,
    render_error,
)

GATEWAY_CI = MICRO_CHART / "ci" / "gateway-api-values.yaml"
INGRESS_CI = MICRO_CHART / "ci" / "gateway-api-ingress-values.yaml"
SNAKE_CASE = {"sectionName": "section_name"}  # chart parentRefs are written as Gateway API writes them


def spec_of(values: dict[str, Any], release_namespace: str, target: str) -> dict[str, Any]:
    """The rollout spec (as a person would write it for Ramp) whose header step has the chart's routing."""
    gateway_api: dict[str, Any] = {"port": values["port"], "version_service": values["versionService"]}
    if values.get("parentRefs"):
        gateway_api["parent_refs"] = [{SNAKE_CASE.get(k, k): v for k, v in ref.items()} for ref in values["parentRefs"]]
    spec: dict[str, Any] = {
        "service": values["service"],
        "namespace": values.get("namespace") or release_namespace,
        "router": "gateway-api",
        "gateway_api": gateway_api,
        "versions": [{"name": v["name"], "weight": v["weight"]} for v in values["versions"]],
        "target": target,
    }
    for field in ("host", "hosts"):
        if values.get(field):
            spec[field] = values[field]
    if header := values.get("headerRoute"):
        match = {"name": header.get("name", "x-version"), "value": header["value"], "match": header.get("match")}
        spec["steps"] = [{"header": {k: v for k, v in match.items() if v}, "duration": "1m"}, {"weight": 100}]
    return spec


def ramp_routing(values: dict[str, Any], release_namespace: str) -> DesiredRouting:
    """What Ramp routes for the same spec: its header step when the chart has a header route, else the
    baseline. Through Ramp's own spec validation and plan (defaults of parent_refs and version_service
    included); without a header route the target does not change the baseline, so any valid one will do."""
    header = values.get("headerRoute")
    targets = [header["version"]] if header else [v["name"] for v in reversed(values["versions"])]
    problems: list[str] = []
    for target in targets:
        try:
            spec = validate_spec_data(spec_of(values, release_namespace, target), "chart values").spec
        except SpecError as exc:
            problems.append(str(exc))
            continue
        plan = build_plan(spec)
        return plan.steps[0].routing if header else plan.baseline
    raise AssertionError(f"no valid rollout spec for these values: {problems}")


def version_services(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The per-version Services by the version they select (the main Service selects no version)."""
    return {
        s["spec"]["selector"]["version"]: s for s in rendered.of_kind("Service") if "version" in s["spec"]["selector"]
    }


def rule(route: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [r for r in route["spec"]["rules"] if r["name"] == name]
    return found


def primary_weights(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [(b["name"], b["weight"]) for b in rule(route, "ramp-primary")["backendRefs"]]


# ---------------------------------------------------------------------------------------------- equal to Ramp


@pytest.mark.parametrize("path", MICRO_GATEWAY_API_CI, ids=_ids(MICRO_GATEWAY_API_CI))
def test_http_route_equals_ramps_rendering_of_the_same_spec(path: Path) -> None:
    rendered = render_ci(path)
    routing = ramp_routing(rendered.values, MICRO_NAMESPACE)
    route = rendered.one("HTTPRoute")
    assert route == http_route(routing)  # the whole object: metadata, parentRefs, hostnames, rules
    assert not [m for m in rendered.manifests if m["kind"] in ISTIO_KINDS]
    read_back = observed_http_routing(route, routing.namespace, routing.service, None)  # from the annotation only
    assert read_back is not None and read_back.traffic() == routing.traffic()


# Header values with regex metacharacters, so the escaping of prefixes is exercised; regexes valid in RE2.
_VALUES = ["v2", "beta-1.0", "a+b (c)", "x|y^z$", "[tag]{1}", "50%*?", "back\\slash", "q.e.d", "~`!@#&=:;,<>'\""]
_REGEXES = ["v[0-9]+", "(alice|bob)", "a.*z", "[a-f]{2,4}-x", "beta|rc[0-9]"]
_PARENTS = [
    {"group": "", "kind": "Service", "name": "svc"},
    {"name": "public", "namespace": "infra", "sectionName": "https"},
    {"name": "internal"},
    {"name": "edge-gw", "namespace": "infra", "port": 8443},
    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "shared", "sectionName": "http.web"},
]
_weight = st.one_of(st.integers(0, 1_000_000), st.sampled_from([0, 1, 2, 3, 7, 50, 100, 333]))


@st.composite
def _values(draw: st.DrawFn) -> dict[str, Any]:
    weights = draw(st.lists(_weight, min_size=1, max_size=6).filter(lambda ws: sum(ws) > 0))
    versions = [{"name": f"v{i + 1}", "weight": w} for i, w in enumerate(weights)]
    values: dict[str, Any] = {"service": "svc", "namespace": "ns", "router": "gateway-api", "versions": versions}
    values["hosts"] = draw(st.lists(st.sampled_from(["shop.example.com", "api.example.com", "short"]), unique=True))
    parents = draw(st.lists(st.sampled_from(range(len(_PARENTS))), max_size=3, unique=True))
    values["parentRefs"] = [_PARENTS[i] for i in parents]
    values["versionService"] = draw(st.sampled_from(["{service}-{version}", "{version}", "be-{version}-{service}"]))
    match = draw(st.sampled_from([None, "exact", "prefix", "regex"]))
    if match is not None:
        value = draw(st.sampled_from(_REGEXES if match == "regex" else _VALUES))
        target = versions[draw(st.integers(0, len(versions) - 1))]["name"]
        values["headerRoute"] = {"name": "x-test", "value": value, "match": match, "version": target}
    return values


def model_routing(values: dict[str, Any]) -> DesiredRouting:
    """The DesiredRouting of the values, through Ramp's models (spec_routers for parent refs and Service
    names); not through a whole spec, whose rollout rules (e.g. a version to roll back to) some values break."""
    config = GatewayApiRouting.model_validate(
        {"port": 8080, "version_service": values["versionService"]}
        | (
            {"parent_refs": [{SNAKE_CASE.get(k, k): v for k, v in p.items()} for p in values["parentRefs"]]}
            if values["parentRefs"]
            else {}
        )
    )
    names = [v["name"] for v in values["versions"]]
    percent = integer_percentages({v["name"]: v["weight"] for v in values["versions"]})
    header = values.get("headerRoute")
    return DesiredRouting(
        service="svc",
        namespace="ns",
        host="svc.ns.svc.cluster.local",
        versions=tuple(names),
        header_routes=(
            (
                HeaderRoute(
                    header=header["name"], value=header["value"], match=header["match"], version=header["version"]
                ),
            )
            if header
            else ()
        ),
        weights=tuple((n, percent[n]) for n in names),
        extra_hosts=tuple(values["hosts"]),
        router="gateway-api",
        parent_refs=(
            tuple(p.to_model() for p in config.parent_refs)
            if config.parent_refs
            else (ParentRef(group="", kind="Service", name="svc"),)  # spec_routers.parent_refs_of's default
        ),
        backends=ServiceBackends(port=8080, services=tuple((n, config.service_name("svc", n)) for n in names)),
    )


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(values=_values())
def test_chart_renders_what_ramp_renders(values: dict[str, Any]) -> None:
    """Weights, header routes of every match kind, parents, hostnames and Service names: the chart's HTTPRoute
    is Ramp's, is valid by the CRD, and Ramp reads back the traffic it was given."""
    rendered = render(MICRO_CHART, values, MICRO_NAMESPACE)
    routing = model_routing(values)
    route = rendered.one("HTTPRoute")
    assert route == http_route(routing)
    assert RouteSchemas.load().validate(route) == []
    read_back = observed_http_routing(route, "ns", "svc", None)
    assert read_back is not None and read_back.traffic() == routing.traffic()
    services = version_services(rendered)
    assert [(services[v]["metadata"]["name"], w) for v, w in routing.weights] == primary_weights(route)
    assert sum(w for _, w in primary_weights(route)) == 100


# ---------------------------------------------------------------------------------------------- literal values


def test_mesh_values_as_rendered() -> None:
    """Independent of the controller: the literal HTTPRoute of ci/gateway-api-values.yaml."""
    route = render_ci(GATEWAY_CI).one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["metadata"]["name"] == "reviews"
    assert route["metadata"]["namespace"] == "shop"
    assert json.loads(route["metadata"]["annotations"][BACKENDS_ANNOTATION]) == {
        "reviews-v1": "v1", "reviews-v2": "v2", "reviews-v3": "v3",
    }  # fmt: skip
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "reviews"}]  # GAMMA
    assert "hostnames" not in route["spec"]
    every_path = {"path": {"type": "PathPrefix", "value": "/"}}
    prefix = r"^3\.0\-rc.*"  # every non-word character escaped, as Ramp's prefix_regex does
    backend = {"group": "", "kind": "Service", "port": 8080}
    assert route["spec"]["rules"] == [
        {
            "name": "ramp-header-v3",
            "matches": [
                {**every_path, "headers": [{"type": "RegularExpression", "name": "x-canary", "value": prefix}]}
            ],
            "backendRefs": [{**backend, "name": "reviews-v3", "weight": 1}],
        },
        {
            "name": "ramp-primary",
            "matches": [every_path],
            "backendRefs": [
                {**backend, "name": "reviews-v1", "weight": 90},
                {**backend, "name": "reviews-v2", "weight": 10},
                {**backend, "name": "reviews-v3", "weight": 0},  # kept at 0: the version keeps its backendRef
            ],
        },
    ]


def test_ingress_values_as_rendered() -> None:
    """ci/gateway-api-ingress-values.yaml: a Gateway listener and the mesh, hostnames, named version Services,
    50/50/50 as 34/33/33, a regex anchored for full-match meaning."""
    rendered = render_ci(INGRESS_CI)
    route = rendered.one("HTTPRoute")
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra",
         "sectionName": "https"},
        {"group": "", "kind": "Service", "name": "storefront"},
    ]  # fmt: skip
    assert route["spec"]["hostnames"] == ["shop.example.com"]
    assert primary_weights(route) == [("storefront-v1-backend", 34), ("storefront-v2-backend", 33),
                                      ("storefront-v3-backend", 33)]  # fmt: skip
    header = rule(route, "ramp-header-v2")
    assert header["matches"][0]["headers"] == [
        {"type": "RegularExpression", "name": "x-beta", "value": "^(?:(alice|bob)-[0-9]+)$"}
    ]
    assert [b["name"] for b in header["backendRefs"]] == ["storefront-v2-backend"]


@pytest.mark.parametrize(
    ("match", "value", "kind", "pattern", "matching", "not_matching"),
    [
        ("exact", "v3", "Exact", "v3", [], []),
        ("prefix", "b-1.0", "RegularExpression", r"^b\-1\.0.*", ["b-1.0", "b-1.0.7"], ["b-1x0", "xb-1.0", "b-1"]),
        ("prefix", "a+(b)", "RegularExpression", r"^a\+\(b\).*", ["a+(b)c"], ["aa(b)", "a+b"]),
        ("regex", "v[0-9]+", "RegularExpression", "^(?:v[0-9]+)$", ["v1", "v42"], ["v1x", "xv1", "v"]),
        ("regex", "a|b", "RegularExpression", "^(?:a|b)$", ["a", "b"], ["ab", "ba", "xa"]),
    ],
    ids=["exact", "prefix-dash-dot", "prefix-plus-parens", "regex", "regex-alternation-anchored"],
)  # fmt: skip
def test_header_route_per_match_kind(
    match: str, value: str, kind: str, pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    """Gateway API has Exact and RegularExpression only: a prefix becomes an escaped, anchored pattern; a regex
    (a full match in Ramp) is anchored so that full- and partial-matching implementations agree."""
    values = {"router": "gateway-api", "versions": [{"name": "v1", "weight": 100}, {"name": "v3", "weight": 0}],
              "headerRoute": {"value": value, "match": match, "version": "v3"}}  # fmt: skip
    route = render(MICRO_CHART, values, MICRO_NAMESPACE).one("HTTPRoute")
    (header,) = rule(route, "ramp-header-v3")["matches"][0]["headers"]
    assert header == {"type": kind, "name": "x-version", "value": pattern}
    for sample in matching:
        assert re2.search(pattern, sample) and re2.fullmatch(pattern, sample), sample
    for sample in not_matching:
        assert not re2.search(pattern, sample), sample


# ---------------------------------------------------------------------------------------------- the Services


@pytest.mark.parametrize("path", MICRO_GATEWAY_API_CI, ids=_ids(MICRO_GATEWAY_API_CI))
def test_each_version_service_selects_exactly_its_versions_pods(path: Path) -> None:
    rendered = render_ci(path)
    values = rendered.values
    services = version_services(rendered)
    assert list(services) == [v["name"] for v in values["versions"]]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in rendered.of_kind("Deployment")}
    backend_names = {b["name"] for b in rule(rendered.one("HTTPRoute"), "ramp-primary")["backendRefs"]}
    for version, service in services.items():
        name = values["versionService"].replace("{service}", values["service"]).replace("{version}", version)
        assert service["metadata"]["name"] == name and name in backend_names
        assert service["metadata"]["namespace"] == rendered.one("HTTPRoute")["metadata"]["namespace"]
        selected = [
            d for d, pod in pods.items() if service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ]
        assert selected == [f"{values['service']}-{version}"], f"{name} selects {selected}"
        (port,) = service["spec"]["ports"]
        assert port == {"name": "http", "port": values["port"], "targetPort": "http", "protocol": "TCP"}
        (container,) = pods[selected[0]]["spec"]["containers"]
        assert {"name": "http", "containerPort": values["port"], "protocol": "TCP"} in container["ports"]
    main = [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == values["service"]]
    assert [s["spec"]["selector"] for s in main] == [{"app": values["service"]}], "GAMMA attaches to the main one"


def test_istio_keeps_its_objects_and_version_services_on_request() -> None:
    """router istio (the default) renders no HTTPRoute and no version Services unless versionServices: true,
    which adds the Services and leaves the Istio objects exactly as they were."""
    values = {"versions": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]}
    plain = render(MICRO_CHART, values, MICRO_NAMESPACE)
    assert plain.of_kind("HTTPRoute") == [] and version_services(plain) == {}
    with_services = render(MICRO_CHART, {**values, "versionServices": True}, MICRO_NAMESPACE)
    assert [s["metadata"]["name"] for s in version_services(with_services).values()] == ["sample-v1", "sample-v2"]
    for kind in sorted(ISTIO_KINDS):
        assert with_services.one(kind) == plain.one(kind)
    assert with_services.of_kind("HTTPRoute") == []


# ---------------------------------------------------------------------------------------------- bad values

GATEWAY = {"router": "gateway-api"}
TWO = {"versions": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}]}
REGEX = {"match": "regex", "version": "v1"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({**GATEWAY, "gateways": ["mesh"]}, "gateways: Istio gateways do not apply to router gateway-api (mesh)"),
        ({"parentRefs": [{"name": "public"}]}, "parentRefs: only for router gateway-api"),
        ({**GATEWAY, "versionServices": False}, "versionServices: false, but router gateway-api weights one Service"),
        ({**GATEWAY, "versionService": "{service}-svc"}, 'versionService: "{service}-svc" must contain {version}'),
        ({**GATEWAY, "versionService": "{service}-{version}-{zone}"}, "unknown placeholder {zone}"),
        ({**GATEWAY, "versionService": "{service}_{version}"}, 'gives "sample_v1" for version v1: not a Service name'),
        ({**GATEWAY, **TWO, "versionService": "{version}", "service": "v2"}, 'gives "v2" for version v2: the name of'),
        ({**GATEWAY, "service": "s" * 61, "versionService": "{service}-{version}"}, "at most 63 characters"),
        ({"versionServices": True, "versionService": "x"}, 'versionService: "x" must contain {version}'),
        ({**GATEWAY, "parentRefs": [{"name": "gw"}, {"name": "gw", "namespace": "apps"}]}, "parentRefs[1]: Gateway gw"),
        ({**GATEWAY, "parentRefs": [{"kind": "Service", "name": "sample"}]}, "parentRefs[0].group: a Service parent"),
        ({**GATEWAY, "headerRoute": {**REGEX, "value": "(v1"}}, "headerRoute.value must be an RE2 regex"),
        ({"headerRoute": {**REGEX, "value": "v1["}}, "error parsing regexp"),
    ],
    ids=[
        "istio-gateways", "parent-refs-with-istio", "version-services-off", "version-service-without-version",
        "unknown-placeholder", "service-name-not-a-label", "service-name-of-the-main-service", "service-name-too-long",
        "istio-version-services-checked-too", "same-parent-twice", "service-parent-in-gateway-group",
        "regex-does-not-compile", "regex-checked-for-istio-too",
    ],
)  # fmt: skip
def test_bad_gateway_api_values_fail_with_a_clear_message(values: dict[str, Any], complaint: str) -> None:
    values = {"namespace": "apps", **values}
    assert complaint in render_error(MICRO_CHART, values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"router": "linkerd"}, "/router"),
        ({"router": "gateway-api", "parentRefs": [{"kind": "Gateway"}]}, "/parentRefs/0"),
        ({"router": "gateway-api", "parentRefs": [{"name": "gw", "section_name": "https"}]}, "/parentRefs/0"),
        ({"router": "gateway-api", "parentRefs": [{"name": "gw", "port": 0}]}, "/parentRefs/0/port"),
        ({"router": "gateway-api", "parentRefs": [{"name": "Gateway"}]}, "/parentRefs/0/name"),
        ({"versionServices": "yes"}, "/versionServices"),
        ({"versionService": ""}, "/versionService"),
        ({"headerRoute": {"value": " v3", "version": "v1"}}, "/headerRoute/value"),
        ({"headerRoute": {"value": "v\u00e9", "version": "v1"}}, "/headerRoute/value"),
    ],
    ids=[
        "unknown-router", "parent-without-name", "parent-snake-case-field", "parent-port-zero", "parent-name-uppercase",
        "version-services-string", "version-service-empty", "header-value-leading-space", "header-value-non-ascii",
    ],
)  # fmt: skip
def test_schema_rejects_bad_gateway_api_values(values: dict[str, Any], complaint: str) -> None:
    message = render_error(MICRO_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message

"""Ingress bindings in a spec: `gateways` ([namespace/]name or mesh) and extra `hosts` (DNS names, no
wildcard) are validated at their line, carried into every planned routing, and rendered into the
VirtualService (validated against Istio's CRDs); without them the VirtualService is exactly as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.plan import build_plan
from controller.routing.crd_schema import IstioSchemas, find_crd_file
from controller.routing.istio_render import virtual_service
from controller.spec_loader import SpecError, load_spec, parse_spec_located, parse_spec_text

# Lines 1-8; anything appended starts at line 9.
BASE = """\
service: shop
namespace: web
versions:
  - name: v1
    weight: 100
  - name: v2
    weight: 0
target: v2
"""
INGRESS = Path(__file__).resolve().parents[2] / "rollout-specs" / "ingress.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, "spec.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.fixture(scope="module")
def schemas() -> IstioSchemas:
    path = find_crd_file()
    assert path is not None
    return IstioSchemas.load(path)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gateways",
    [
        "[mesh]",
        "[mesh, istio-system/public-gateway]",
        "[public-gateway]",  # the spec's namespace, as Istio reads it
        "[istio-system/ingress.example-gw, mesh]",  # a name may be a DNS subdomain
    ],
)
def test_gateways_accept_namespace_slash_name_and_mesh(gateways: str) -> None:
    spec = parse_spec_text(BASE + f"gateways: {gateways}\n", "spec.yaml")
    assert spec.gateways is not None and len(spec.gateways) >= 1


GATEWAY_RULE = "is not [namespace/]name with a DNS name"


@pytest.mark.parametrize(
    ("gateways", "where", "reason"),
    [
        ("['*']", "gateways.0", "gateway '*' has a wildcard"),
        ("[istio-system/*]", "gateways.0", "has a wildcard"),
        ("[Public-Gateway]", "gateways.0", GATEWAY_RULE),
        ("[mesh, 'a/b/c']", "gateways.1", "namespace 'a/b' is not a DNS label"),
        ("[Istio-System/gw]", "gateways.0", "namespace 'Istio-System' is not a DNS label"),
        ("['/gw']", "gateways.0", "namespace '' is not a DNS label"),
        ("[istio-system/]", "gateways.0", GATEWAY_RULE),
        ("[shop/mesh]", "gateways.0", "mesh is reserved for the sidecars and takes no namespace"),
        ("['gw\\n']", "gateways.0", GATEWAY_RULE),
        ("[1]", "gateways.0", "Input should be a valid string"),
        ("mesh", "gateways", "Input should be a valid list"),
        ("[]", "gateways", "no gateways: omit gateways for mesh only"),
        ("[mesh, gw, web/gw]", "gateways.2", "gateway 'web/gw' is listed twice (first at gateways[1])"),
        ("[mesh, mesh]", "gateways.1", "gateway 'mesh' is listed twice"),
    ],
)  # fmt: skip
def test_bad_gateways_are_refused_at_their_line(gateways: str, where: str, reason: str) -> None:
    found = problems(BASE + f"gateways: {gateways}\n")
    assert len(found) == 1 and found[0].startswith(f"spec.yaml:9: {where}: "), found
    assert reason in found[0], found


def test_at_most_10_gateways() -> None:
    many = ", ".join(f"gw{i}" for i in range(11))
    assert problems(BASE + f"gateways: [{many}]\n") == ["spec.yaml:9: gateways: at most 10 gateways allowed, got 11"]


@pytest.mark.parametrize(
    ("hosts", "where", "reason"),
    [
        ("['*.example.com']", "hosts.0", "has a wildcard: Ramp routes one service's host"),
        ("[shop.example.com, Shop.Example.com]", "hosts.1", "is not a DNS name"),
        ("['shop.example.com.']", "hosts.0", "is not a DNS name"),
        ("['']", "hosts.0", "host must have 1 to 253 characters"),
        ("[shop.web.svc.cluster.local]", "hosts.0", "is the service's own host shop.web.svc.cluster.local"),
        ("[shop]", "hosts.0", "'shop' is the service's own host"),  # the short name of the same service
        ("[a.example.com, a.example.com]", "hosts.1", "host 'a.example.com' is listed twice (first at hosts[0])"),
        ("a.example.com", "hosts", "Input should be a valid list"),
    ],
)  # fmt: skip
def test_bad_hosts_are_refused_with_the_host_rules_at_their_line(hosts: str, where: str, reason: str) -> None:
    found = problems(BASE + f"hosts: {hosts}\n")
    assert len(found) == 1 and found[0].startswith(f"spec.yaml:9: {where}: "), found
    assert reason in found[0], found


def test_at_most_20_extra_hosts() -> None:
    many = ", ".join(f"h{i}.example.com" for i in range(21))
    assert problems(BASE + f"hosts: [{many}]\n") == ["spec.yaml:9: hosts: at most 20 hosts allowed, got 21"]


def test_gateways_without_mesh_warn_that_mesh_callers_bypass_the_routes() -> None:
    located = parse_spec_located(BASE + "hosts: [shop.example.com]\ngateways: [istio-system/public]\n", "spec.yaml")
    assert [(w.line, w.path) for w in located.warnings] == [(10, "gateways")]
    assert "mesh is not listed" in located.warnings[0].reason and "'v2' included" in located.warnings[0].reason
    with_mesh = parse_spec_located(BASE + "gateways: [istio-system/public, mesh]\n", "spec.yaml")
    assert with_mesh.warnings == ()


def test_the_schema_describes_the_new_fields() -> None:
    from controller.spec import RolloutSpec

    properties = RolloutSpec.model_json_schema(by_alias=True)["properties"]
    assert properties["hosts"]["maxItems"] == 20
    gateways = properties["gateways"]
    assert (gateways["minItems"], gateways["maxItems"]) == (1, 10)  # array keywords: null is unaffected
    assert "[namespace/]name" in gateways["anyOf"][0]["items"]["description"]


# --- plan and rendering ----------------------------------------------------------------------------


def test_every_planned_routing_carries_the_gateways_and_hosts() -> None:
    plan = build_plan(load_spec(INGRESS))
    for routing in plan.all_routings():
        assert routing.host == "storefront.shop.svc.cluster.local"
        assert routing.extra_hosts == ("shop.example.com",)
        assert routing.gateways == ("mesh", "istio-system/public-gateway")


def test_the_rendered_virtual_service_is_bound_to_the_gateways_and_serves_the_hosts(schemas: IstioSchemas) -> None:
    plan = build_plan(load_spec(INGRESS))
    for routing in plan.all_routings():
        vs = virtual_service(routing)
        assert vs["spec"]["hosts"] == ["storefront.shop.svc.cluster.local", "shop.example.com"]
        assert vs["spec"]["gateways"] == ["mesh", "istio-system/public-gateway"]
        # every destination is the service's own host (the subsets live there), never the ingress host
        destinations = {d["destination"]["host"] for r in vs["spec"]["http"] for d in r["route"]}
        assert destinations == {"storefront.shop.svc.cluster.local"}
        assert schemas.validate(vs) == []


def test_without_bindings_the_virtual_service_is_unchanged() -> None:
    spec = parse_spec_text(BASE, "spec.yaml")
    assert (spec.hosts, spec.gateways) == ([], None)
    for routing in build_plan(spec).all_routings():
        vs = virtual_service(routing)
        assert vs["spec"]["hosts"] == ["shop.web.svc.cluster.local"] and "gateways" not in vs["spec"]


def test_local_mode_confirms_a_routing_with_bindings() -> None:
    """Envoy has no gateways: its read-back of the routes it serves equals the routing asked for (bindings
    included), so a spec with gateways and hosts is confirmed in local mode as in a cluster."""
    from controller.routing.envoy_readback import parse_virtual_host
    from controller.routing.envoy_render import render_virtual_host

    for routing in build_plan(load_spec(INGRESS)).all_routings():
        served = parse_virtual_host(render_virtual_host(routing, True), routing.namespace, routing.service, routing)
        assert served == routing
        assert served.traffic() == routing.traffic()

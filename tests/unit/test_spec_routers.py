"""The router part of a spec: `router`, `gateway_api` (port, parent refs, version Services), what the plan carries
to the routers, and `ramp plan` printing HTTPRoutes for `router: gateway-api` (validated against the packaged
Gateway API CRD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.engine.routing_model import ParentRef, ServiceBackends
from controller.plan import build_plan
from controller.routing.crd_schema import RouteSchemas
from controller.spec import RolloutSpec, semantic_problems
from controller.spec_loader import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "service": "reviews", "namespace": "shop", "target": "v2",
    "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
}  # fmt: skip


def spec_of(**fields: Any) -> RolloutSpec:
    return RolloutSpec.model_validate({**BASE, **fields})


def problems(**fields: Any) -> list[tuple[tuple[str | int, ...], str]]:
    return semantic_problems(spec_of(**fields))


def test_istio_stays_the_default_and_carries_no_gateway_api_parts() -> None:
    plan = build_plan(spec_of())
    for routing in plan.all_routings():
        assert (routing.router, routing.parent_refs, routing.backends) == ("istio", (), None)


def test_gateway_api_defaults_to_the_service_itself_as_a_mesh_parent_and_named_version_services() -> None:
    plan = build_plan(spec_of(router="gateway-api", gateway_api={"port": 9080}))
    for routing in plan.all_routings():
        assert routing.router == "gateway-api"
        assert routing.parent_refs == (ParentRef(group="", kind="Service", name="reviews"),)
        assert routing.backends == ServiceBackends(port=9080, services=(("v1", "reviews-v1"), ("v2", "reviews-v2")))


def test_parent_refs_and_the_service_naming_come_from_the_spec() -> None:
    config = {"port": 80, "version_service": "{version}-of-{service}",
              "parent_refs": [{"name": "public", "namespace": "infra", "section_name": "https", "port": 443}]}
    routing = build_plan(spec_of(router="gateway-api", gateway_api=config)).baseline
    assert routing.parent_refs == (ParentRef(name="public", namespace="infra", section_name="https", port=443),)
    assert routing.backends is not None and routing.backends.service_of("v2") == "v2-of-reviews"


@pytest.mark.parametrize(
    ("fields", "where", "reason"),
    [
        ({"router": "gateway-api"}, ("gateway_api",), "router: gateway-api needs gateway_api"),
        ({"gateway_api": {"port": 80}}, ("gateway_api",), "only for router: gateway-api"),
        ({"router": "gateway-api", "gateway_api": {"port": 80}, "gateways": ["mesh"]}, ("gateways",),
         "Istio gateways do not apply"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "version_service": "{service}"}},
         ("gateway_api", "version_service"), "must contain {version}"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "version_service": "{service}-{tag}"}},
         ("gateway_api", "version_service"), "unknown placeholder {tag}"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "version_service": "{service}_{version}"}},
         ("gateway_api", "version_service"), "not a Service name"),
        ({"service": "s" * 40, "router": "gateway-api",
          "gateway_api": {"port": 80, "version_service": "{service}-{service}-{version}"}},
         ("gateway_api", "version_service"), "not a Service name"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "parent_refs": [{"name": "g"}, {"name": "g"}]}},
         ("gateway_api", "parent_refs", 1), "listed twice"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "parent_refs": [
            {"name": "g"}, {"name": "g", "section_name": "https"}]}},
         ("gateway_api", "parent_refs", 1), "its own section_name"),
        ({"router": "gateway-api", "gateway_api": {"port": 80, "parent_refs": [{"kind": "Service", "name": "r"}]}},
         ("gateway_api", "parent_refs", 0, "group"), "core group"),
    ],
)  # fmt: skip
def test_cross_field_rules_name_the_field(fields: dict[str, Any], where: tuple[str | int, ...], reason: str) -> None:
    found = problems(**fields)
    assert any(path == where and reason in text for path, text in found), found


def test_distinct_listeners_of_one_gateway_and_same_named_parents_elsewhere_are_fine() -> None:
    refs = [{"name": "g", "section_name": "http"}, {"name": "g", "section_name": "https"},
            {"name": "g", "namespace": "other"}, {"group": "", "kind": "Service", "name": "reviews"}]  # fmt: skip
    assert problems(router="gateway-api", gateway_api={"port": 80, "parent_refs": refs}) == []


@pytest.mark.parametrize(
    "config",
    [{}, {"port": 0}, {"port": 65536}, {"port": 80, "parent_refs": []}, {"port": 80, "extra": 1},
     {"port": 80, "parent_refs": [{"name": "Public"}]}, {"port": 80, "parent_refs": [{"name": "g", "kind": "9x"}]},
     {"port": 80, "parent_refs": [{"name": "g"}] * 33}],
)  # fmt: skip
def test_malformed_gateway_api_blocks_are_refused_with_the_file_and_field(tmp_path: Path, config: Any) -> None:
    file = tmp_path / "spec.yaml"
    file.write_text(yaml.safe_dump({**BASE, "router": "gateway-api", "gateway_api": config}), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(file)
    assert all(str(file) in str(p) or p.file == file for p in caught.value.problems)
    assert any("gateway_api" in str(p) for p in caught.value.problems), caught.value.problems


def test_unknown_router_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "spec.yaml"
    file.write_text(yaml.safe_dump({**BASE, "router": "linkerd"}), encoding="utf-8")
    with pytest.raises(SpecError, match="router"):
        load_spec(file)


def test_plan_prints_validated_httproutes_for_a_gateway_api_spec(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["plan", "rollout-specs/gateway-api.yaml", "-o", "yaml"]) == 0
    out = capsys.readouterr().out
    manifests = [doc for doc in yaml.safe_load_all(out) if doc]
    assert len(manifests) == 6 and {m["kind"] for m in manifests} == {"HTTPRoute"}  # baseline, 4 steps, promoted
    schemas = RouteSchemas.load()
    for manifest in manifests:
        assert schemas.validate(manifest) == []
        assert manifest["apiVersion"] == "gateway.networking.k8s.io/v1"
    header_step = manifests[1]["spec"]["rules"]
    assert [rule["name"] for rule in header_step] == ["ramp-header-v2", "ramp-primary"]
    weights = [[b["weight"] for b in m["spec"]["rules"][-1]["backendRefs"]] for m in manifests]
    assert weights == [[100, 0], [100, 0], [90, 10], [50, 50], [0, 100], [0, 100]]

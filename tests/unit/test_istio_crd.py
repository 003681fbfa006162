"""Rendered Istio manifests against Istio's published CRDs, in strict mode."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from controller.plan import build_plan
from controller.routing.crd_schema import CRD_ENV_VAR, IstioSchemas, find_crd_file, strict_schema
from controller.routing.istio_render import destination_rule, virtual_service
from controller.spec_loader import load_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "rollout-specs").glob("*.yaml"))
CRD_FILE = find_crd_file()  # the copy shipped in the package: always there


@pytest.fixture(scope="module")
def schemas() -> IstioSchemas:
    return IstioSchemas.load()


def demo_manifests() -> tuple[dict[str, Any], dict[str, Any]]:
    spec = load_spec(next(p for p in SPECS if p.name == "demo.yaml"))
    routing = build_plan(spec).steps[1].routing  # 10%, with the header route first
    return virtual_service(routing), destination_rule(routing)


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_planned_routing_renders_valid_manifests(schemas: IstioSchemas, path: Path) -> None:
    plan = build_plan(load_spec(path))
    routings = plan.all_routings()
    assert len(routings) == len(plan.steps) + 2
    for routing in routings:
        for manifest in (virtual_service(routing), destination_rule(routing)):
            assert schemas.validate(manifest) == [], (path.name, routing.describe(), manifest)


def test_the_file_holds_the_kinds_we_write(schemas: IstioSchemas) -> None:
    assert {"VirtualService", "DestinationRule"} <= set(schemas.kinds)
    assert "v1" in schemas.crds["VirtualService"].served_versions()


def test_unknown_field_in_an_http_route_is_rejected(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][1]["retires"] = {"attempts": 3}
    assert schemas.validate(vs) == [
        "$.spec.http[1].retires: unknown field 'retires' (Kubernetes would silently prune it)"
    ]


def test_typo_in_a_destination_is_rejected(schemas: IstioSchemas) -> None:
    vs, dr = demo_manifests()
    vs["spec"]["http"][1]["route"][0]["destination"]["subnet"] = "v1"
    dr["spec"]["subsets"][0]["lables"] = {"version": "v1"}
    assert schemas.validate(vs) == [
        "$.spec.http[1].route[0].destination.subnet: unknown field 'subnet' (Kubernetes would silently prune it)"
    ]
    assert schemas.validate(dr) == [
        "$.spec.subsets[0].lables: unknown field 'lables' (Kubernetes would silently prune it)"
    ]


def test_weight_as_string_is_rejected(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][1]["route"][0]["weight"] = "90"
    assert schemas.validate(vs) == ["$.spec.http[1].route[0].weight: '90' is not of type 'integer'"]


def test_weight_beyond_int32_is_rejected(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][1]["route"][0]["weight"] = 2**31
    assert schemas.validate(vs) == ["$.spec.http[1].route[0].weight: 2147483648 is not a 'int32'"]


def test_header_match_needs_exactly_one_kind(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][0]["match"][0]["headers"]["x-version"] = {"exact": "v2", "prefix": "v"}
    errors = schemas.validate(vs)
    assert len(errors) == 1
    assert errors[0].startswith("$.spec.http[0].match[0].headers['x-version']: ")
    assert "is valid under each of" in errors[0]


def test_missing_required_field(schemas: IstioSchemas) -> None:
    _, dr = demo_manifests()
    del dr["spec"]["host"]
    assert schemas.validate(dr) == ["$.spec: 'host' is a required property"]


def test_api_version_must_be_served_and_kind_known(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    for api_version in ("networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"):
        assert schemas.validate({**vs, "apiVersion": api_version}) == []
    assert schemas.validate({**vs, "apiVersion": "networking.istio.io/v2"}) == [
        "$.apiVersion: 'networking.istio.io/v2' is not a served version of VirtualService "
        "(use networking.istio.io/v1, networking.istio.io/v1alpha3, networking.istio.io/v1beta1)"
    ]
    assert schemas.validate({**vs, "apiVersion": "v1"})[0].startswith("$.apiVersion: 'v1' is not a served")
    assert schemas.validate({**vs, "kind": "Service"}) == [
        "$.kind: unknown kind 'Service' (known: DestinationRule, Gateway, VirtualService)"
    ]


def test_metadata_name_and_namespace_are_required(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    broken = copy.deepcopy(vs)
    del broken["metadata"]["namespace"]
    broken["metadata"]["name"] = ""
    assert schemas.validate(broken) == [
        "$.metadata.name: required (a non-empty string)",
        "$.metadata.namespace: required (a non-empty string)",
    ]
    broken = copy.deepcopy(vs)
    broken["metadata"]["name"] = "Demo_Service"
    broken["metadata"]["lables"] = {}
    assert schemas.validate(broken) == [
        "$.metadata.name: 'Demo_Service' is not a lowercase RFC 1123 subdomain",
        "$.metadata.lables: unknown field 'lables'",
    ]
    assert schemas.validate({k: v for k, v in vs.items() if k != "metadata"}) == [
        "$.metadata: must be an object with name and namespace",
        "$: 'metadata' is a required property",
    ]


def test_unknown_top_level_field_is_rejected(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    assert schemas.validate({**vs, "specs": {}}) == [
        "$.specs: unknown field 'specs' (Kubernetes would silently prune it)"
    ]


def test_nullable_and_preserved_fields(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][1]["mirrorPercent"] = None  # nullable: true
    vs["status"] = {"anything": {"goes": 1}}  # x-kubernetes-preserve-unknown-fields
    assert schemas.validate(vs) == []
    vs["spec"]["http"][1]["mirrorPercent"] = -1
    assert schemas.validate(vs) == ["$.spec.http[1].mirrorPercent: -1 is less than the minimum of 0"]


def test_all_errors_are_reported(schemas: IstioSchemas) -> None:
    vs, _ = demo_manifests()
    vs["spec"]["http"][1]["route"][0]["weight"] = "90"
    vs["spec"]["http"][1]["route"][1]["wieght"] = 10
    vs["spec"]["hosts"] = "demo"
    assert schemas.validate(vs) == [
        "$.spec.hosts: 'demo' is not of type 'array'",
        "$.spec.http[1].route[0].weight: '90' is not of type 'integer'",
        "$.spec.http[1].route[1].wieght: unknown field 'wieght' (Kubernetes would silently prune it)",
    ]


def test_strict_schema_only_closes_declared_objects() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "integer", "nullable": True}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "one": {"oneOf": [{"required": ["x"], "properties": {"x": {}}}]},
        },
    }
    strict = strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert strict["properties"]["a"]["properties"]["b"]["type"] == ["integer", "null"]
    assert "additionalProperties" not in strict["properties"]["free"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in strict["properties"]["one"]["oneOf"][0]
    assert schema["properties"]["a"].get("additionalProperties") is None  # the input is not modified


def test_load_is_cached(schemas: IstioSchemas) -> None:
    assert IstioSchemas.load() is schemas
    assert CRD_FILE is not None
    assert IstioSchemas.load(CRD_FILE) is schemas


def test_env_var_overrides_the_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert CRD_FILE is not None
    monkeypatch.setenv(CRD_ENV_VAR, str(CRD_FILE))
    assert find_crd_file() == CRD_FILE
    monkeypatch.setenv(CRD_ENV_VAR, str(tmp_path / "absent.yaml"))
    assert find_crd_file() is None
    with pytest.raises(FileNotFoundError, match=CRD_ENV_VAR):
        IstioSchemas.load()
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: ConfigMap\n")
    with pytest.raises(ValueError, match="no CustomResourceDefinition"):
        IstioSchemas.load(empty)

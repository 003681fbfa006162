"""The emulator validates custom resources like the apiserver: pruning, defaults, OpenAPI schema, CEL, 422 causes.

A small hand-written CRD covers each rule kind; the last tests install Ramp's own CRD
(controller.resource_crd.rollout_crd) and apply every file of rollout-specs/ as a RampRollout.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller import rollout_resource as rr
from tests.k8s.crd_validation import apply_defaults, prune, to_jsonschema
from tests.k8s.emulator import KubeHarness

REPO = Path(__file__).resolve().parents[2]
G, V, P = "example.dev", "v1", "widgets"


def widget_crd() -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "object",
        "required": ["color"],
        "x-kubernetes-validations": [
            {"rule": "self.size <= 10 || self.color == 'red'", "message": "only red widgets may be larger than 10"},
            {"rule": "!has(self.zone) || !has(oldSelf.zone) || self.zone == oldSelf.zone",
             "message": "zone is immutable", "reason": "FieldValueForbidden", "fieldPath": ".zone"},
        ],
        "properties": {
            "name": {"type": "string"},
            "color": {"type": "string", "enum": ["red", "blue"]},
            "size": {"type": "integer", "minimum": 1, "default": 3},
            "ratio": {"type": "number", "x-kubernetes-validations": [{"rule": "self <= 1", "message": "at most 1"}]},
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "zone": {"type": "string", "maxLength": 8},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "parts": {
                "type": "array", "maxItems": 3, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string"}, "count": {"type": "integer", "default": 1}}},
            },
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }  # fmt: skip
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "!has(self.spec.name) || self.spec.name == self.metadata.name",
                                      "message": "spec.name must equal metadata.name"}],
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                       "spec": spec, "status": {"type": "object", "properties": {"phase": {"type": "string"}}}},
    }  # fmt: skip
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{P}.{G}"},
        "spec": {"group": G, "scope": "Namespaced",
                 "names": {"kind": "Widget", "listKind": "WidgetList", "plural": P, "singular": "widget",
                           "shortNames": ["wg"]},
                 "versions": [{"name": V, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
                               "subresources": {"status": {}}}]},
    }  # fmt: skip


def widget(name: str = "w", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "Widget", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"color": "blue", **spec}}  # fmt: skip


def refused(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as error:
        call(*args, **kwargs)
    return error.value.status, json.loads(error.value.body)


def test_the_schema_translation_handles_openapi_dialect() -> None:
    node = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}], "minimum": 1}
    assert to_jsonschema(node)["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert to_jsonschema({"type": "string", "nullable": True, "enum": ["a"]}) == {"type": ["string", "null"],
                                                                                  "enum": ["a", None]}  # fmt: skip
    schema = widget_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = {"color": "red", "size": None, "bogus": 2, "free": {"any": {"thing": 1}}, "parts": [{"name": "p"}]}
    obj = {"apiVersion": "x", "metadata": {"labels": {"a": "b"}}, "extra": 1, "spec": spec}
    assert prune(schema, obj) == ["extra", "spec.bogus"]
    apply_defaults(schema, obj)
    assert obj["metadata"] == {"labels": {"a": "b"}}  # metadata is never pruned
    assert obj["spec"] == {"color": "red", "size": 3, "free": {"any": {"thing": 1}},
                           "parts": [{"name": "p", "count": 1}]}  # fmt: skip


def test_an_installed_crd_is_served_pruned_and_defaulted(kube: KubeHarness) -> None:
    kube.install_crd(widget_crd())
    api = client.CustomObjectsApi(kube.api_client())
    resources = {r.name: r for r in api.get_api_resources(G, V).resources}
    assert resources[P].kind == "Widget" and resources[P].short_names == ["wg"] and f"{P}/status" in resources
    created = api.create_namespaced_custom_object(G, V, "shop", P, widget(port="http", bogus=1))
    assert created["spec"] == {"color": "blue", "port": "http", "size": 3}  # unknown field pruned, default applied
    status, body = refused(api.create_namespaced_custom_object, G, V, "shop", P, widget("x", bogus=1),
                           field_validation="Strict")  # fmt: skip
    assert status == 400 and 'unknown field "spec.bogus"' in body["message"]
    crd = client.ApiextensionsV1Api(kube.api_client()).read_custom_resource_definition(f"{P}.{G}")
    assert {c.type: c.status for c in crd.status.conditions} == {"NamesAccepted": "True", "Established": "True"}


def test_invalid_objects_are_refused_with_422_and_one_cause_per_problem(kube: KubeHarness) -> None:
    kube.install_crd(widget_crd())
    api = client.CustomObjectsApi(kube.api_client())
    bad = widget(color="green", size="big", port=True, zone="far-too-long-zone", parts=[{"name": "a"}, {"name": "a"}])
    del bad["spec"]["color"]
    bad["spec"]["ratio"] = 2
    status, body = refused(api.create_namespaced_custom_object, G, V, "shop", P, bad)
    assert status == 422 and body["reason"] == "Invalid" and body["details"]["kind"] == "Widget"
    causes = {(c["field"], c["reason"]) for c in body["details"]["causes"]}
    assert causes == {
        ("spec.color", "FieldValueRequired"), ("spec.size", "FieldValueTypeInvalid"),
        ("spec.port", "FieldValueInvalid"),
        ("spec.zone", "FieldValueTooLong"), ("spec.parts[1]", "FieldValueDuplicate"),
    }  # fmt: skip
    assert body["message"].startswith('Widget.example.dev "w" is invalid: [')
    status, body = refused(api.create_namespaced_custom_object, G, V, "shop", P, widget(color="green"))
    unsupported = 'Unsupported value: "green": supported values: "red", "blue"'
    assert body["details"]["causes"] == [{"reason": "FieldValueNotSupported", "field": "spec.color",
                                          "message": unsupported}]  # fmt: skip


def test_cel_rules_run_at_their_node_with_old_self_on_updates(kube: KubeHarness) -> None:
    kube.install_crd(widget_crd())
    api = client.CustomObjectsApi(kube.api_client())
    bad = widget(size=11, ratio=1.5)
    bad["spec"]["name"] = "other"
    status, body = refused(api.create_namespaced_custom_object, G, V, "shop", P, bad)
    assert status == 422
    assert {(c["field"], c["message"]) for c in body["details"]["causes"]} == {
        ("", 'Invalid value: "object": spec.name must equal metadata.name'),
        ("spec", 'Invalid value: "object": only red widgets may be larger than 10'),
        ("spec.ratio", "Invalid value: 1.5: at most 1"),
    }  # fmt: skip
    created = api.create_namespaced_custom_object(G, V, "shop", P, widget(name="w", size=11, color="red", zone="a"))
    assert created["spec"]["size"] == 11  # a number rule compares an int with a double, as Kubernetes' CEL does
    api.patch_namespaced_custom_object(G, V, "shop", P, "w", {"spec": {"ratio": 1}})
    status, body = refused(api.patch_namespaced_custom_object, G, V, "shop", P, "w", {"spec": {"zone": "b"}})
    assert body["details"]["causes"] == [{"reason": "FieldValueForbidden", "field": "spec.zone",
                                          "message": "Forbidden: zone is immutable"}]  # fmt: skip
    status_only = api.patch_namespaced_custom_object_status(G, V, "shop", P, "w", {"status": {"phase": "ok"}})
    assert status_only["status"] == {"phase": "ok"} and status_only["metadata"]["generation"] == 2


def test_a_crd_created_through_the_api_is_installed_and_a_broken_rule_refused(kube: KubeHarness) -> None:
    extensions = client.ApiextensionsV1Api(kube.api_client())
    extensions.create_custom_resource_definition(widget_crd(), _preload_content=False)
    api = client.CustomObjectsApi(kube.api_client())
    status, _ = refused(api.create_namespaced_custom_object, G, V, "shop", P, widget(size=0))
    assert status == 422
    broken = widget_crd()
    broken["metadata"]["name"] = "gadgets.example.dev"
    broken["spec"]["names"] = {"kind": "Gadget", "plural": "gadgets"}
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = [{"rule": "self.("}]
    status, body = refused(extensions.create_custom_resource_definition, broken, _preload_content=False)
    assert status == 422 and "gadgets.example.dev" in body["message"]


def ramp_crd() -> dict[str, Any]:
    resource_crd = pytest.importorskip("controller.resource_crd")
    crd: dict[str, Any] = resource_crd.rollout_crd()
    return crd


def test_every_rollout_spec_applies_as_a_ramprollout_under_ramps_crd(kube: KubeHarness) -> None:
    kube.install_crd(ramp_crd())
    api = client.CustomObjectsApi(kube.api_client())
    for path in sorted((REPO / "rollout-specs").glob("*.yaml")):
        resource = rr.resource_from_spec_data(yaml.safe_load(path.read_text()))
        namespace = resource["metadata"].setdefault("namespace", "default")
        created = api.create_namespaced_custom_object(rr.GROUP, rr.VERSION, namespace, rr.PLURAL, resource)
        assert created["metadata"]["generation"] == 1, path.name


def test_ramps_crd_refuses_what_ramp_validate_refuses(kube: KubeHarness) -> None:
    kube.install_crd(ramp_crd())
    api = client.CustomObjectsApi(kube.api_client())
    resource = rr.resource_from_spec_data(yaml.safe_load((REPO / "rollout-specs" / "three-versions.yaml").read_text()))
    bad = copy.deepcopy(resource)
    bad["spec"].update(target="v9", name="other")
    status, body = refused(api.create_namespaced_custom_object, rr.GROUP, rr.VERSION, "shop", rr.PLURAL, bad)
    assert status == 422
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"spec.target", "spec.name"} <= fields, body["message"]


def test_kubectl_get_receives_a_table_of_the_printer_columns(kube: KubeHarness) -> None:
    crd = widget_crd()
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    kube.install_crd(crd)
    api = client.CustomObjectsApi(kube.api_client())
    created = api.create_namespaced_custom_object(G, V, "shop", P, widget())
    api.patch_namespaced_custom_object_status(G, V, "shop", P, "w", {"status": {"phase": "Ready"}})
    listed = kube.table(P, "shop")
    assert [c["name"] for c in listed["columnDefinitions"]] == ["Name", "Color", "Size", "Phase", "Age"]
    assert listed["columnDefinitions"][3]["priority"] == 1
    assert [r["cells"] for r in listed["rows"]] == [["w", "blue", 3, "Ready", created["metadata"]["creationTimestamp"]]]
    assert kube.table(P, "shop", "w")["rows"][0]["object"]["metadata"]["name"] == "w"


def test_ramps_crd_prints_its_columns(kube: KubeHarness) -> None:
    ramp_crd()
    crd = kube.install_ramp_crd()
    columns = crd["spec"]["versions"][0].get("additionalPrinterColumns") or []
    resource = rr.resource_from_spec_data(yaml.safe_load((REPO / "rollout-specs" / "demo.yaml").read_text()))
    namespace = resource["metadata"].setdefault("namespace", "default")
    client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        rr.GROUP, rr.VERSION, namespace, rr.PLURAL, resource)  # fmt: skip
    printed = kube.table(rr.PLURAL, namespace)
    assert [c["name"] for c in printed["columnDefinitions"]] == ["Name", *(c["name"] for c in columns)]
    row = dict(zip([c["name"] for c in printed["columnDefinitions"]], printed["rows"][0]["cells"], strict=True))
    assert row["Name"] == resource["metadata"]["name"] and row.get("Target") == resource["spec"]["target"]

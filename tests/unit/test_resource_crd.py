"""The RampRollout CRD (controller/resource_crd.py): generated from the pydantic model, structural, valid
Kubernetes, accepting every example spec as a resource, with Kubernetes' defaults equal to pydantic's.

The structural checker below transcribes the rules of k8s.io/apiextensions-apiserver
(pkg/apiserver/schema/validation.go and the CRD validation of x-kubernetes-* extensions); the API server
refuses a CRD that breaks one of them, so a drift here would only show at `kubectl apply`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from controller import rollout_resource as names
from controller.cli import main
from controller.resource_crd import (
    CRD_PATH,
    DURATION_PATTERN,
    NOT_DEFAULTED,
    PRINTER_COLUMNS,
    _Converter,
    crd_yaml,
    duration_bounds,
    rollout_crd,
    spec_models,
    spec_schema,
    status_schema,
)
from controller.rollout_resource import resource_from_spec_data, spec_data_from_resource
from controller.routing.crd_schema import IstioSchemas
from controller.spec import RolloutSpec, semantic_problems
from controller.spec_loader import load_spec
from controller.spec_rules import parse_duration
from tests.k8s.crd_validation import defaulted

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "rollout-specs").glob("*.yaml"))
CRD_FILE = REPO / CRD_PATH
K8S_VERSION = kubernetes_validate.latest_version()


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = rollout_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def example_resources() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, resource_from_spec_data(yaml.safe_load(p.read_text(encoding="utf-8")))) for p in SPECS]


# ---------------------------------------------------------------------------------------------- the file


def test_the_committed_crd_is_exactly_the_generator_output() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), (
        f"{CRD_PATH} drifted from the model: regenerate it with `.venv/bin/python -m controller crd > {CRD_PATH}`"
    )
    assert crd_yaml().startswith("# ") and f"controller crd > {CRD_PATH}" in crd_yaml()
    assert list(yaml.safe_load_all(CRD_FILE.read_text(encoding="utf-8"))) == [rollout_crd()]  # one plain document


def test_ramp_crd_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_the_chart_ships_only_this_crd() -> None:
    assert sorted(p.name for p in CRD_FILE.parent.iterdir()) == [CRD_FILE.name]


# ---------------------------------------------------------------------------------------------- names


def test_names_are_the_fixed_ones() -> None:
    crd = rollout_crd()
    assert crd["metadata"]["name"] == names.CRD_NAME == "ramprollouts.ramp.dev"
    assert crd["spec"]["group"] == names.GROUP and crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"] == {
        "kind": "RampRollout", "listKind": "RampRolloutList", "plural": "ramprollouts", "singular": "ramprollout",
        "shortNames": ["rr"], "categories": ["ramp"],
    }  # fmt: skip
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}


def test_kubectl_get_names_do_not_collide_with_argo_rollouts() -> None:
    """Argo Rollouts: rollouts.argoproj.io, singular rollout, shortName ro (and kubectl matches all of them)."""
    ours = rollout_crd()["spec"]["names"]
    argo = {"rollouts", "rollout", "ro", "Rollout"}
    ours_all = {ours["plural"], ours["singular"], ours["kind"], *ours["shortNames"]}
    assert not ours_all & argo
    assert not {name.lower() for name in ours_all} & argo


def test_printer_columns_are_the_contract() -> None:
    assert (
        rollout_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
        == PRINTER_COLUMNS
        == [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Step", "type": "string", "jsonPath": ".status.step"},
            {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
            {"name": "Weight", "type": "integer", "jsonPath": ".status.targetWeight"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 0},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]
    )


# ---------------------------------------------------------------------------------------------- structural


_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
# Keys a CRD schema may not use at all (JSONSchemaProps has no field, or apiextensions validation forbids it).
_FORBIDDEN = {"$ref", "$defs", "definitions", "$schema", "id", "patternProperties", "propertyNames", "const",
              "dependencies", "additionalItems", "uniqueItems", "x-kubernetes-preserve-unknown-fields"}  # fmt: skip
_NOT_IN_JUNCTORS = {"type", "description", "default", "title", "nullable", "additionalProperties",
                    "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource", "x-kubernetes-list-type",
                    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations"}  # fmt: skip
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_RULE_KEYS = {"rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf"}


def _in_junctor(node: Any, path: str) -> Iterator[str]:
    if not isinstance(node, dict):
        return
    for key in sorted(set(node) & _NOT_IN_JUNCTORS):
        yield f"{path}.{key}: must not be set inside anyOf/allOf/oneOf/not"
    if "properties" in node and "metadata" in node["properties"]:
        yield f"{path}.properties.metadata: must not be specified in a nested context"
    for key in ("items", "not"):
        yield from _in_junctor(node.get(key), f"{path}.{key}")
    for name, sub in node.get("properties", {}).items():
        yield from _in_junctor(sub, f"{path}.properties.{name}")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            yield from _in_junctor(sub, f"{path}.{key}[{i}]")


def structural_problems(node: Any, path: str = "", level: str = "root") -> Iterator[str]:
    """Why `node` is not a structural schema (Kubernetes' rules), one line each; nothing when it is."""
    where = path or "<root>"
    if not isinstance(node, dict):
        yield f"{where}: a schema must be an object"
        return
    yield from (f"{where}.{key}: not allowed in a CRD schema" for key in sorted(set(node) & _FORBIDDEN))
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if int_or_string:
        if "type" in node:
            yield f"{where}.type: must be empty with x-kubernetes-int-or-string"
        if "anyOf" in node and node["anyOf"] != _INT_OR_STRING:
            yield f"{where}.anyOf: an int-or-string may only have anyOf [{{type: integer}}, {{type: string}}]"
    elif not isinstance(node.get("type"), str) or node["type"] not in _TYPES:
        yield f"{where}.type: must be one of {sorted(_TYPES)} ({level} level), got {node.get('type')!r}"
    if level == "root" and node.get("type") != "object":
        yield f"{where}.type: must be object at the root"
    if node.get("type") == "array" and "items" not in node:
        yield f"{where}.items: must be specified for an array"
    if "properties" in node and "additionalProperties" in node:
        yield f"{where}: properties and additionalProperties are mutually exclusive"
    if "additionalProperties" in node and (level == "root" or not isinstance(node["additionalProperties"], dict)):
        yield f"{where}.additionalProperties: must be a schema, and not at the root"
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            yield f"{where}.{key}: must be a boolean (OpenAPI 3.0)"
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            yield f"{where}.pattern: invalid: {exc}"
    if node.get("x-kubernetes-list-type") == "map":
        keys = set(node.get("x-kubernetes-list-map-keys", []))
        if not keys or not keys <= set(node["items"].get("required", [])):
            yield f"{where}: list-map keys must be required fields of the items"
    for entry in node.get("x-kubernetes-validations", []):
        if set(entry) - _RULE_KEYS or not entry.get("rule"):
            yield f"{where}.x-kubernetes-validations: bad entry {entry}"
        if not (entry.get("message") or entry.get("messageExpression")) or "\n" in entry.get("message", ""):
            yield f"{where}.x-kubernetes-validations: every rule needs a one-line message ({entry['rule'][:40]})"
    if "default" in node:
        try:
            jsonschema.Draft4Validator(_plain(node)).validate(node["default"])
        except jsonschema.ValidationError as exc:
            yield f"{where}.default: does not validate against its own schema: {exc.message}"
    for key in _JUNCTORS:
        if key in node and not (int_or_string and key == "anyOf" and node[key] == _INT_OR_STRING):
            subs = node[key] if isinstance(node[key], list) else [node[key]]
            for i, sub in enumerate(subs):
                yield from _in_junctor(sub, f"{where}.{key}[{i}]")
    if level == "root" and "metadata" in node.get("properties", {}):
        metadata = node["properties"]["metadata"]
        if set(metadata.get("properties", {})) - {"name", "generateName"} or set(metadata) - {"type", "properties"}:
            yield f"{where}.properties.metadata: may only restrict name and generateName"
    if "items" in node:
        yield from structural_problems(node["items"], f"{path}.items", "items")
    for name, sub in node.get("properties", {}).items():
        yield from structural_problems(sub, f"{path}.properties.{name}", "field")
    if isinstance(node.get("additionalProperties"), dict):
        yield from structural_problems(node["additionalProperties"], f"{path}.additionalProperties", "field")


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node without its children's defaults/rules: enough to check one default (Draft 4 semantics)."""
    return {k: v for k, v in node.items() if k not in ("default", "x-kubernetes-validations", "description")}


def test_the_schema_is_structural() -> None:
    assert list(structural_problems(openapi_schema())) == []


def test_the_structural_checker_is_not_blind() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/x"},
            "b": {"type": ["string", "number"]},
            "c": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]},
            "d": {"type": "object", "properties": {"x": {}}, "additionalProperties": {"type": "string"}},
            "e": {"type": "integer", "anyOf": [{"type": "integer", "description": "no"}]},
            "f": {"type": "array"},
            "g": {"type": "number", "minimum": 0, "exclusiveMinimum": 0},
            "h": {"type": "integer", "default": "x"},
            "i": {"type": "string", "x-kubernetes-validations": [{"rule": "true"}]},
            "j": {"type": "object", "patternProperties": {"^a$": {"type": "string"}}},
        },
    }
    problems = "\n".join(structural_problems(bad))
    for name in "abcdefghij":
        assert f".properties.{name}" in problems, name


def test_the_crd_is_valid_kubernetes() -> None:
    """The same strict check as every chart manifest (tests/charts/test_chart_validation.py)."""
    kubernetes_validate.validate(rollout_crd(), K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        broken = copy.deepcopy(rollout_crd())
        broken["spec"]["versions"][0]["servd"] = True
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_an_unknown_json_schema_keyword_fails_generation() -> None:
    """pydantic emitting something new must fail `ramp crd`, not slip into the CRD."""
    with pytest.raises(ValueError, match="uniqueItems"):
        _Converter({}).node({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, ("X", "y"), "X")
    with pytest.raises(ValueError, match="union"):
        _Converter({}).node({"anyOf": [{"type": "string"}, {"type": "integer"}]}, ("X", "y"), "X")


# ---------------------------------------------------------------------------------------------- examples


@pytest.fixture(scope="module")
def schemas() -> IstioSchemas:
    """The committed file, read by the repository's strict CRD validator (unknown fields are errors)."""
    return IstioSchemas.load(CRD_FILE)


@pytest.mark.parametrize(("name", "resource"), example_resources(), ids=[p.name for p in SPECS])
def test_every_example_is_a_valid_resource(schemas: IstioSchemas, name: str, resource: dict[str, Any]) -> None:
    assert schemas.validate(resource) == []


def test_the_validator_refuses_what_the_schema_refuses(schemas: IstioSchemas) -> None:
    resource = example_resources()[0][1]
    cases = {
        "unknown field": ("spec", "wieght", 10),
        "envelope field in spec": ("spec", "kind", "Rollout"),
        "too many gates": ("spec", "gates", [{"metric": "error_rate", "max": 1}] * 21),
        "duration syntax": ("spec", "schedule", {"interval": "5 s"}),
        "duration below its integer minimum": ("spec", "schedule", {"interval": 0}),
        "fractional seconds": ("spec", "schedule", {"interval": 0.5}),
        "bad phase": ("status", "phase", "Done"),
    }
    for case, (part, key, value) in cases.items():
        broken = copy.deepcopy(resource)
        broken.setdefault(part, {})[key] = value
        assert schemas.validate(broken) != [], case


def test_a_full_status_validates(schemas: IstioSchemas) -> None:
    resource = example_resources()[0][1]
    resource["status"] = {
        "observedGeneration": 3, "phase": "Progressing", "step": "2/4", "currentStep": 2, "totalSteps": 4,
        "targetWeight": 10, "weights": {"v1": 90, "v2": 10},
        "headerRoutes": [{"header": "x-version", "match": "exact", "value": "v2", "version": "v2"}],
        "reason": "step 2/4: 10% for 1m", "paused": False,
        "gates": [{"name": "error_rate", "verdict": "pass", "value": 0.1, "stableValue": 0.2, "eValue": 1.5,
                   "eLimit": 200, "reason": "0.10% <= 1%"}],
        "lastCommand": {"id": "abc", "command": "pause", "applied": True, "reason": "paused",
                        "at": "2026-11-26T10:00:00Z"},
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": "m", "lastTransitionTime": "2026-11-26T10:00:00Z",
             "observedGeneration": 3}
            for t, s, r in (("Ready", "False", "Progressing"), ("Reconciling", "True", "Progressing"),
                            ("Stalled", "False", "Progressing"))
        ],
    }  # fmt: skip
    assert schemas.validate(resource) == []
    resource["status"]["conditions"][0]["reason"] = "not camel case"
    assert schemas.validate(resource) != []


def test_status_phases_are_the_engine_phases_and_invalid() -> None:
    phases = status_schema()["properties"]["phase"]["enum"]
    assert phases == ["Pending", "HeaderTest", "Progressing", "Paused", "Promoted", "RolledBack", "Failed", "Invalid"]


# ---------------------------------------------------------------------------------------------- defaults


def _field_type(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields[field]
    return Annotated[info.annotation, info]


def _defaults(schema: dict[str, Any], model: type[BaseModel]) -> Iterator[tuple[type[BaseModel], str, Any]]:
    models = spec_models()
    for field, node in schema["properties"].items():
        if "default" in node:
            yield model, field, node["default"]
        inner = node.get("items", node)
        if "properties" in inner:
            nested = next(m for m in models.values() if set(m.model_fields) >= set(inner["properties"]))
            yield from _defaults(inner, nested)


def test_every_default_in_the_crd_is_the_pydantic_default() -> None:
    found = list(_defaults(spec_schema(), RolloutSpec))
    assert len(found) >= 10  # the walk finds them
    for model, field, default in found:
        expected = model.model_fields[field].get_default(call_default_factory=True)
        adapter: TypeAdapter[Any] = TypeAdapter(_field_type(model, field))
        assert adapter.validate_python(default) == expected, (model.__name__, field)
    defaulted = {(m.__name__, f) for m, f, _ in found}
    assert not defaulted & set(NOT_DEFAULTED)


def _every_default_exercised() -> dict[str, Any]:
    """A spec whose objects are all present but empty, so that every default applies."""
    return {
        "service": "reviews", "namespace": "shop", "target": "v2",
        "versions": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 0}],
        "steps": [{"header": {"value": "v2"}, "duration": 5}, {"approval": {}}, {"weight": 100}],
        "gates": [{"metric": "error_rate", "max": 1}, {"metric": "latency", "mode": "statistical"}],
        "schedule": {}, "analysis": {}, "rollback": {},
    }  # fmt: skip


FLAT_SPECS = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in SPECS] + [_every_default_exercised()]


@pytest.mark.parametrize("flat", FLAT_SPECS, ids=[*(p.name for p in SPECS), "every-default"])
def test_defaults_applied_by_kubernetes_change_nothing(flat: dict[str, Any]) -> None:
    """The stored (defaulted) resource is the same spec for the controller, and no more invalid."""
    resource = resource_from_spec_data(flat)
    stored = defaulted(openapi_schema(), resource)
    data, problems = spec_data_from_resource(stored)
    original, _ = spec_data_from_resource(resource)
    assert problems == [] and data is not None and original is not None
    assert RolloutSpec.model_validate(data) == RolloutSpec.model_validate(original)
    assert semantic_problems(RolloutSpec.model_validate(data)) == []


def test_defaults_do_apply() -> None:
    stored = defaulted(openapi_schema(), resource_from_spec_data(_every_default_exercised()))["spec"]
    assert stored["schedule"] == {"interval": 5} and stored["analysis"]["window"] == 30
    assert stored["rollback"]["missing_data_timeout"] == 120 and stored["gates"][0]["mode"] == "threshold"
    assert stored["steps"][0]["header"] == {"value": "v2", "name": "x-version", "match": "exact"}
    assert "tolerance" not in stored["gates"][0] and "alpha" not in stored["gates"][1]


def test_the_namespace_is_never_defaulted() -> None:
    """A default of `default` would be written into every resource and clash with its own namespace."""
    assert "default" not in spec_schema()["properties"]["namespace"]


# ---------------------------------------------------------------------------------------------- durations


def _duration_nodes(schema: dict[str, Any], model: type[BaseModel]) -> Iterator[tuple[type[BaseModel], str, Any]]:
    models = spec_models()
    for field, node in schema["properties"].items():
        if node.get("x-kubernetes-int-or-string"):
            yield model, field, node
        inner = node.get("items", node)
        if "properties" in inner:
            nested = next(m for m in models.values() if set(m.model_fields) >= set(inner["properties"]))
            yield from _duration_nodes(inner, nested)


def test_duration_bounds_are_the_models() -> None:
    nodes = list(_duration_nodes(spec_schema(), RolloutSpec))
    assert {(m.__name__, f) for m, f, _ in nodes} >= {
        ("Step", "duration"), ("Schedule", "interval"), ("Analysis", "window"),
        ("RollbackPolicy", "missing_data_timeout"),
    }  # fmt: skip
    for model, field, node in nodes:
        adapter: TypeAdapter[Any] = TypeAdapter(_field_type(model, field))
        adapter.validate_python(node["minimum"])
        adapter.validate_python(node["maximum"])
        with pytest.raises(ValidationError):
            adapter.validate_python(node["maximum"] + 1)
        low, high = duration_bounds(model, field)
        adapter.validate_python(f"{round(low * 1000)}ms")
        with pytest.raises(ValidationError):
            adapter.validate_python(f"{round(high * 1000) + 1}ms")
        if low > 0:
            with pytest.raises(ValidationError):
                adapter.validate_python(f"{round(low * 1000) - 1}ms")


@pytest.mark.parametrize(
    "text", ["30s", "2m", "1h30m", "500ms", "1.5h", "0s", "10", "s", "5 s", "1d", "-1s", "1m 30s", "", "1h1h", "1.s"]
)
def test_the_duration_pattern_is_the_parsers_syntax(text: str) -> None:
    try:
        parse_duration(text)
        parses = True
    except ValueError:
        parses = False
    assert (re.fullmatch(DURATION_PATTERN.strip("^$"), text) is not None) == parses


def test_load_spec_still_reads_every_example() -> None:
    """The generator reads the model without changing it (the model stays the single source)."""
    for path in SPECS:
        load_spec(path)

"""The RampRollout CustomResourceDefinition, generated from the pydantic model (one source of truth).

`rollout_crd()` builds the apiextensions.k8s.io/v1 CRD; `ramp crd` prints it (`crd_yaml()`), and
charts/ramp/crds/ramprollouts.ramp.dev.yaml is that output, committed (a test fails when they drift).

The `spec` schema is `RolloutSpec.model_json_schema()` turned into a Kubernetes *structural* schema:
`$ref`s inlined; pydantic's `anyOf [X, null]` read as X (Kubernetes has no null type: optional means not
required); `ge/le/gt/lt` and JSON Schema 2020's numeric exclusive bounds written as OpenAPI 3.0's
minimum/maximum with boolean exclusiveMinimum/exclusiveMaximum; `additionalProperties: false` dropped
(Kubernetes prunes unknown fields, and kubectl's strict field validation refuses them); a
`patternProperties` map as `additionalProperties` plus a CEL rule on its keys. A duration (pydantic's
`type: [string, number]`) becomes `x-kubernetes-int-or-string` with exactly `anyOf: [{type: integer},
{type: string}]` - the only anyOf a structural int-or-string node may have - and its bounds beside it:
minimum/maximum apply to integers only, pattern to strings only, and a CEL rule bounds a string by
`duration()`. The bounds are read from the model by probing its validator, so they cannot drift either.
So a number of seconds with a fraction (`0.5`) is refused by the API server: write '500ms'.

Kubernetes applies the schema's defaults to the stored object, so a default is kept only where applying
it changes nothing the controller reads: not `namespace` (a resource's namespace is its metadata's),
and not a statistical gate's `tolerance`/`alpha`, which ramp validate refuses when written on a
threshold gate. The cross-field rules are CEL, in controller.resource_crd_cel.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from controller import rollout_resource as names
from controller.engine.phases import Phase
from controller.resource_crd_cel import attach, cel_rules, duration_rule, rule
from controller.spec import RolloutSpec
from controller.spec_rules import _DURATION_PART, DNS_LABEL_PATTERN, MAX_VERSIONS  # the parser's own syntax

CRD_PATH = "charts/ramp/crds/ramprollouts.ramp.dev.yaml"  # relative to the repository root
INVALID_PHASE = "Invalid"  # the controller refuses the resource (status.reason says why)
DURATION_PATTERN = rf"^({_DURATION_PART.pattern})+$"
DURATION_MAX_LENGTH = 64
_DURATION_PROBE_LIMIT_MS = 10**12  # a duration field accepting this much has no upper bound

# (model, field) -> why Kubernetes must not write the pydantic default into the stored object.
NOT_DEFAULTED = {
    ("RolloutSpec", "namespace"): "the resource's namespace is metadata.namespace; spec.namespace must equal it",
    ("Gate", "tolerance"): "written on a threshold gate it is refused (it applies only to statistical gates)",
    ("Gate", "alpha"): "written on a threshold gate it is refused (it applies only to statistical gates)",
}
# (model, field) -> bounds the model checks in validators (count_between) and the API server can check too.
TIGHTENED: dict[tuple[str, str], dict[str, Any]] = {
    ("RolloutSpec", "steps"): {"minItems": 1},  # "steps is empty: ... omit steps for the default"
    ("Step", "traffic"): {"minProperties": 1, "maxProperties": MAX_VERSIONS},
}
_KEPT = frozenset(
    {"type", "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems",
     "maxItems", "required", "default", "minProperties", "maxProperties"}
)  # fmt: skip
_BOUNDS = {"ge": ("minimum", False), "le": ("maximum", False), "gt": ("minimum", True), "lt": ("maximum", True)}


# ---------------------------------------------------------------------------------------------- the model


def _nested_types(annotation: object) -> list[object]:
    args = typing.get_args(annotation)
    return [annotation, *(t for arg in args for t in _nested_types(arg))]


def spec_models() -> dict[str, type[BaseModel]]:
    """RolloutSpec and every model inside it, by class name (the names pydantic uses in $defs)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for info in model.model_fields.values():
            for candidate in _nested_types(info.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    visit(candidate)

    visit(RolloutSpec)
    return found


def duration_bounds(model: type[BaseModel], field: str) -> tuple[float, float]:
    """(minimum, maximum) seconds a duration field accepts, found by asking its validator (to the ms)."""
    info = model.model_fields[field]
    field_type: Any = Annotated[info.annotation, info]  # the field's validators, without the rest of the model
    adapter: TypeAdapter[Any] = TypeAdapter(field_type)

    def accepts(millis: int) -> bool:
        try:
            return adapter.validate_python(f"{millis}ms") is not None
        except ValidationError:
            return False

    inside = next((ms for ms in (0, 1000, 60_000, 3_600_000, 86_400_000) if accepts(ms)), None)
    if inside is None or accepts(_DURATION_PROBE_LIMIT_MS):
        raise ValueError(f"{model.__name__}.{field}: cannot find the bounds of this duration")
    low, high = 0, inside  # smallest accepted in [low, high]
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if accepts(middle) else (middle + 1, high)
    minimum = low
    low, high = inside, _DURATION_PROBE_LIMIT_MS  # largest accepted in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if accepts(middle) else (low, middle - 1)
    return minimum / 1000, low / 1000


# ---------------------------------------------------------------------------------------------- the schema


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Converter:
    """pydantic JSON Schema -> structural schema; `where` is the (model, field) of the node converted."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.models = spec_models()

    def node(self, node: dict[str, Any], where: tuple[str, str], model: str) -> dict[str, Any]:
        node = dict(node)
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
            if len(branches) != 1:
                raise ValueError(f"{'.'.join(where)}: a union Kubernetes cannot express: {branches}")
            node = {**branches[0], **node}
        if node.get("default", "") is None:
            del node["default"]  # Optional: absent, not null
        if "$ref" in node:
            model = node.pop("$ref").rsplit("/", 1)[-1]
            node = {**self.defs[model], **node}
        if isinstance(node.get("type"), list):
            return self.duration(node, where)
        out: dict[str, Any] = {}
        for key, value in node.items():
            self.keyword(out, key, value, where, model)
        first = [k for k in ("type", "description") if k in out]  # for readers of the YAML
        return {k: out[k] for k in [*first, *(k for k in out if k not in first)]}

    def keyword(self, out: dict[str, Any], key: str, value: Any, where: tuple[str, str], model: str) -> None:
        if key in ("title", "propertyNames") or (key == "additionalProperties" and value is False):
            return  # propertyNames: checked with patternProperties below
        if key == "properties":
            out[key] = {
                name: {**self.node(sub, (model, name), model), **TIGHTENED.get((model, name), {})}
                for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties"):
            out[key] = self.node(value, where, model)
        elif key == "patternProperties":
            ((pattern, sub),) = value.items()
            out["additionalProperties"] = self.node(sub, where, model)
            key_rule = rule(
                f"self.all(k, size(k) <= 63 && k.matches({_cel_string(pattern)}))",
                "every key must be a version name (a DNS label)",
            )
            out.setdefault("x-kubernetes-validations", []).append(key_rule)
        elif key in _BOUNDS or (key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool)):
            bound, exclusive = _BOUNDS.get(key, ("minimum" if key == "exclusiveMinimum" else "maximum", True))
            out[bound] = value
            if exclusive:
                out["exclusiveMinimum" if bound == "minimum" else "exclusiveMaximum"] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and where in NOT_DEFAULTED:
            return
        elif key in _KEPT:
            out[key] = value
        else:
            raise ValueError(f"{'.'.join(where)}: JSON Schema keyword {key!r} has no structural equivalent here")

    def duration(self, node: dict[str, Any], where: tuple[str, str]) -> dict[str, Any]:
        if sorted(node["type"]) != ["number", "string"]:
            raise ValueError(f"{'.'.join(where)}: unexpected type list {node['type']}")
        minimum, maximum = duration_bounds(self.models[where[0]], where[1])
        out: dict[str, Any] = {
            "description": f"{node.get('description', 'A duration')}; seconds, or e.g. '30s', '2m', '1h30m', '500ms'",
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": math.ceil(minimum),
            "maximum": math.floor(maximum),
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
            "x-kubernetes-validations": [duration_rule(minimum, maximum)],
        }
        default = node.get("default")
        if isinstance(default, int | float) and where not in NOT_DEFAULTED:
            if not float(default).is_integer():
                raise ValueError(f"{'.'.join(where)}: a default of {default}s is not a whole number of seconds")
            out["default"] = int(default)
        return out


def spec_schema() -> dict[str, Any]:
    """The structural schema of a RampRollout's `spec` (the rollout spec without apiVersion/kind)."""
    generated = RolloutSpec.model_json_schema(by_alias=True)
    defs = generated.pop("$defs", {})
    schema = _Converter(defs).node(generated, ("RolloutSpec", ""), "RolloutSpec")
    for field in names.ENVELOPE_FIELDS:
        schema["properties"].pop(field, None)
    schema["required"] = [f for f in schema.get("required", []) if f not in names.ENVELOPE_FIELDS]
    schema["description"] = (
        "The rollout spec (`ramp schema`), without apiVersion/kind. name and namespace may be omitted; "
        "when given they must equal metadata.name and the resource's namespace."
    )
    return schema


def _object(properties: dict[str, Any], description: str, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _array(items: dict[str, Any], description: str, max_items: int) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": items, "maxItems": max_items}


def _text(description: str, max_length: int = 1024) -> dict[str, Any]:
    return {"type": "string", "description": description, "maxLength": max_length}


def _int(description: str, minimum: int | None = 0, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def _timestamp(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "description": description}


def _condition() -> dict[str, Any]:
    """metav1.Condition, as kstatus reads it."""
    return _object(
        {
            "type": _text("Ready, Reconciling or Stalled", 316),
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {
                "type": "string",
                "maxLength": 1024,
                "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                "description": "CamelCase, e.g. Promoted, Progressing, RolledBack, ProgressDeadlineExceeded",
            },
            "message": _text("For people", 32768),
            "lastTransitionTime": _timestamp("When status last changed"),
            "observedGeneration": _int("The metadata.generation this condition describes"),
        },
        "A condition following the Kubernetes API conventions",
        ["type", "status"],
    )


def status_schema() -> dict[str, Any]:
    """`status`, written only by the controller (a subresource)."""
    phases = [*(p.value for p in Phase), INVALID_PHASE]
    gate = _object(
        {
            "name": _text("The gate's name", 128),
            "verdict": _text("As the engine reports it: pass, fail, no-data or hold", 32),
            "value": _number("The target version's value (gate units)"),
            "stableValue": _number("The stable versions' value"),
            "eValue": _number("Statistical gates: the e-value"),
            "eLimit": _number("Statistical gates: the e-value that rolls back (K/alpha)"),
            "reason": _text("Why this verdict"),
        },
        "The last evaluation of one gate",
        ["name"],
    )
    header_route = _object(
        {
            "header": _text("Header name", 128),
            "match": _text("exact, prefix or regex", 16),
            "value": _text("Header value", 256),
            "version": _text("The version these requests reach", 63),
        },
        "A header-only route in force",
    )
    command = _object(
        {
            "id": _text("The command's id", 64),
            "command": _text("pause, resume, abort, promote, ...", 32),
            "applied": {"type": "boolean", "description": "Whether the controller acted on it"},
            "reason": _text("Why it was applied or refused"),
            "at": _timestamp("When the controller handled it"),
        },
        "The last command (annotation ramp.dev/command), absent until one",
    )
    properties = {
        "observedGeneration": _int("The metadata.generation this status describes"),
        "phase": {"type": "string", "enum": phases, "description": "Engine phase, or Invalid (see reason)"},
        "step": _text("For display: '2/4', '-' before the first step", 32),
        "currentStep": _int("1-based; 0 before the first step"),
        "totalSteps": _int("Steps of the rollout"),
        "targetWeight": _int("The target version's percentage of weighted traffic now", 0, 100),
        "weights": {
            "type": "object",
            "description": "Each version's percentage now",
            "additionalProperties": _int("Percentage", 0, 100),
            "maxProperties": MAX_VERSIONS,
        },
        "headerRoutes": _array(header_route, "Header-only routes in force", 16),
        "reason": _text("What the rollout is doing, why it holds, or why it rolled back or failed"),
        "gates": _array(gate, "The last gate evaluations", 64),
        "lastCommand": command,
        "paused": {"type": "boolean", "description": "Paused by a person (ramp pause, or the command annotation)"},
        "conditions": {
            "type": "array",
            "description": "Ready, Reconciling and Stalled (kstatus)",
            "items": _condition(),
            "maxItems": 8,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    }
    return _object(properties, "Written by the controller: progress, gates and conditions")


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "string", "jsonPath": ".status.step"},
    {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.targetWeight"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 0},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def resource_schema() -> dict[str, Any]:
    """The openAPIV3Schema of a RampRollout, CEL rules included."""
    schema = _object(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN}},
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
        f"A progressive rollout of one service by Ramp; `kubectl get {names.PLURAL}` ({names.SHORT_NAMES[0]})",
        ["spec"],
    )
    attach(schema, cel_rules())
    return schema


def rollout_crd() -> dict[str, Any]:
    """The RampRollout CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": names.CRD_NAME, "labels": {"app.kubernetes.io/part-of": "ramp"}},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": names.LIST_KIND,
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
                "categories": list(names.CATEGORIES),
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": resource_schema()},
                }
            ],
        },
    }


CRD_HEADER = (
    "# The RampRollout CRD. GENERATED by `ramp crd` from the rollout spec model (controller/resource_crd.py):\n"
    "# do not edit. Regenerate with: .venv/bin/python -m controller crd > " + CRD_PATH + "\n"
    "# Helm installs it from the chart's crds/; without Helm: kubectl apply -f " + CRD_PATH + "\n"
)


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases (&id001 / *id001) for rules shared by two fields: plain YAML for every reader."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    """The CRD as committed: the header, then one YAML document."""
    body = yaml.dump(rollout_crd(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return CRD_HEADER + body

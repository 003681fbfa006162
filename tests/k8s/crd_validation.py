"""What a kube-apiserver does with a custom resource's body before storing it, for one CRD version.

A real apiserver decodes a custom object, prunes the fields its structural schema does not declare (or
rejects them with `fieldValidation=Strict`), applies the schema's `default`s, then validates the result
against the OpenAPI v3 schema and the CEL rules (`x-kubernetes-validations`), answering 422 Invalid with
one cause per problem. Ramp's CRD is generated from the pydantic model, so the only way to know the API
server rejects what `ramp validate` rejects is to run the CRD through these same steps: this module does
it with jsonschema (the schema translated from OpenAPI's dialect) and cel-python.

Not emulated: CEL cost budgets, validation ratcheting, `optionalOldSelf`, formats, the full ObjectMeta
validation (only metadata.name is checked). Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

Path = tuple[str | int, ...]
_ROOT_KEPT = ("apiVersion", "kind", "metadata")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SCHEMA_KEYS = (
    "type", "required", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "multipleOf",
)  # fmt: skip
_SHOULD = {
    "pattern": "should match '{}'",
    "minimum": "should be greater than or equal to {}",
    "maximum": "should be less than or equal to {}",
    "minLength": "should be at least {} chars long",
    "minItems": "should have at least {} items",
    "multipleOf": "should be a multiple of {}",
}
_PREFIX = {
    "FieldValueInvalid": "Invalid value: {value}: ",
    "FieldValueForbidden": "Forbidden: ",
    "FieldValueRequired": "Required value: ",
    "FieldValueDuplicate": "Duplicate value: {value}: ",
}


@dataclass(frozen=True)
class Cause:
    """One entry of a 422 Status's `details.causes`, as the apiserver writes it."""

    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueTypeInvalid, FieldValueNotSupported, ...
    field: str  # "spec.steps[0].duration"
    message: str  # "Required value", 'Invalid value: "object": ...'

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def field_path(path: Path) -> str:
    """("spec", "steps", 0, "duration") -> "spec.steps[0].duration" (the apiserver's field notation)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def shown(value: Any) -> str:
    """How an apiserver cause quotes a value: scalars as JSON, objects and lists by their type."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "null")


def to_jsonschema(node: Mapping[str, Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema node as JSON Schema draft 4 (nullable, int-or-string, x-kubernetes-*)."""
    out: dict[str, Any] = {k: copy.deepcopy(node[k]) for k in _SCHEMA_KEYS if k in node}
    if "properties" in node:
        out["properties"] = {k: to_jsonschema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = to_jsonschema(node["items"])
    if isinstance(node.get("additionalProperties"), Mapping):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_jsonschema(n) for n in node[key]]
    if "not" in node:
        out["not"] = to_jsonschema(node["not"])
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:  # structural: that anyOf is optional
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    elif node.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


def _children(schema: Mapping[str, Any], value: Any) -> Iterator[tuple[str | int, Mapping[str, Any], Any]]:
    """(key, child schema, child value) for the values present under a schema node."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) if key in props else (extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield key, sub, child
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, child in enumerate(value):
            yield index, schema["items"], child


def prune(schema: Mapping[str, Any], value: Any, path: Path = (), root: bool = True) -> list[str]:
    """Drop (in place) the fields the schema does not declare; the dropped fields' paths, for Strict."""
    dropped: list[str] = []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties") or {}
        keep = set(props) | (set(_ROOT_KEPT) if root or schema.get("x-kubernetes-embedded-resource") else set())
        extra = schema.get("additionalProperties")
        if not isinstance(extra, Mapping) and extra is not True:
            for key in [k for k in value if k not in keep]:
                dropped.append(field_path((*path, key)))
                del value[key]
    for key, sub, child in _children(schema, value):
        if not (root and key == "metadata"):
            dropped += prune(sub, child, (*path, key), root=False)
    return dropped


def apply_defaults(schema: Mapping[str, Any], value: Any) -> None:
    """Structural defaulting, in place: absent (or null and not nullable) fields get their `default`."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if value.get(key) is None and key in value and not sub.get("nullable"):
                del value[key]  # null of a non-nullable field is pruned, then defaulted
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    for _key, sub, child in _children(schema, value):
        apply_defaults(sub, child)


def defaulted(schema: Mapping[str, Any], value: Any) -> Any:
    """What the API server stores: a copy of `value` with the schema's defaults filled in."""
    stored = copy.deepcopy(value)
    apply_defaults(schema, stored)
    return stored


def _schema_causes(schema: Mapping[str, Any], obj: Any) -> list[Cause]:
    causes: list[Cause] = []
    errors = jsonschema.Draft4Validator(to_jsonschema(schema)).iter_errors(obj)
    for error in sorted(errors, key=lambda e: ([str(p) for p in e.absolute_path], str(e.validator))):
        path = tuple(error.absolute_path)
        where = field_path(path)
        if error.validator == "required":
            for name in error.validator_value:
                if isinstance(error.instance, dict) and name not in error.instance:
                    causes.append(Cause("FieldValueRequired", field_path((*path, name)), "Required value"))
        elif error.validator == "type":
            kind = _json_type(error.instance)
            text = f'Invalid value: "{kind}": {where} in body must be of type {error.validator_value}: "{kind}"'
            causes.append(Cause("FieldValueTypeInvalid", where, text))
        elif error.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in error.validator_value)
            text = f"Unsupported value: {shown(error.instance)}: supported values: {allowed}"
            causes.append(Cause("FieldValueNotSupported", where, text))
        elif error.validator == "maxLength":
            text = f"Too long: may not be more than {error.validator_value} bytes"
            causes.append(Cause("FieldValueTooLong", where, text))
        elif error.validator == "maxItems":
            count = len(error.instance)
            causes.append(Cause("FieldValueTooMany", where,
                                f"Too many: {count}: must have at most {error.validator_value} items"))  # fmt: skip
        else:
            should = _SHOULD.get(str(error.validator), "").format(error.validator_value) or error.message
            text = f"Invalid value: {shown(error.instance)}: {where} in body {should}"
            causes.append(Cause("FieldValueInvalid", where, text))
    return causes


def _list_map_causes(schema: Mapping[str, Any], value: Any, path: Path) -> list[Cause]:
    causes: list[Cause] = []
    if schema.get("x-kubernetes-list-type") == "map" and isinstance(value, list):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for index, item in enumerate(value):
            if isinstance(item, dict):
                key = json.dumps([item.get(k) for k in keys])
                if key in seen:
                    shown_key = "{" + ", ".join(f'"{k}":{json.dumps(item.get(k))}' for k in keys) + "}"
                    text = f"Duplicate value: {shown_key}"
                    causes.append(Cause("FieldValueDuplicate", field_path((*path, index)), text))
                seen.add(key)
    for key, sub, child in _children(schema, value):
        causes += _list_map_causes(sub, child, (*path, key))
    return causes


_NUMERIC = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _as_doubles(a: Any, b: Any) -> tuple[Any, Any]:
    """Kubernetes' CEL compares int and double (cross-type numeric comparisons); cel-python does not."""
    if isinstance(a, _NUMERIC) and isinstance(b, _NUMERIC) and type(a) is not type(b):
        return celtypes.DoubleType(float(a)), celtypes.DoubleType(float(b))
    return a, b


# Module-level functions: cel-python's compiled runner calls them by their qualified names.
def cel_lt(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_lt(*_as_doubles(a, b))


def cel_le(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_le(*_as_doubles(a, b))


def cel_gt(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_gt(*_as_doubles(a, b))


def cel_ge(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_ge(*_as_doubles(a, b))


def cel_eq(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_eq(*_as_doubles(a, b))


def cel_ne(a: Any, b: Any) -> Any:
    return celpy.evaluation.bool_ne(*_as_doubles(a, b))


# Kubernetes' CEL libraries (strings and lists extensions) that cel-python lacks; method calls x.f(y) reach f(x, y).
_K8S_CEL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_<_": cel_lt, "_<=_": cel_le, "_>_": cel_gt, "_>=_": cel_ge, "_==_": cel_eq, "_!=_": cel_ne,
    "isSorted": lambda xs: celtypes.BoolType(list(xs) == sorted(xs)),
    "sum": lambda xs: sum(xs[1:], xs[0]) if len(xs) else celtypes.IntType(0),
    "min": lambda xs: min(xs),
    "max": lambda xs: max(xs),
    "indexOf": lambda xs, x: celtypes.IntType(
        xs.find(x) if isinstance(xs, str) else (list(xs).index(x) if x in xs else -1)
    ),
    "lowerAscii": lambda s: celtypes.StringType(s.lower()),
    "upperAscii": lambda s: celtypes.StringType(s.upper()),
    "trim": lambda s: celtypes.StringType(s.strip()),
    "split": lambda s, sep: celtypes.ListType([celtypes.StringType(p) for p in s.split(sep)]),
    "join": lambda xs, sep="": celtypes.StringType(str(sep).join(str(x) for x in xs)),
}  # fmt: skip


# CEL's reserved words: a property with one of these names is `__<name>__` in a rule (Kubernetes' escaping).
_CEL_RESERVED = frozenset({
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
})  # fmt: skip
_CEL_ACCESSIBLE = re.compile(r"^[a-zA-Z_.\-/][a-zA-Z0-9_.\-/]*$")


def cel_property_names(name: str) -> tuple[str, ...]:
    """How CEL rules name a declared object property, as the apiserver binds it: `x-prop` is `x__dash__prop`,
    `a__b` is `a__underscores__b`; a reserved word is `__namespace__` and, since Kubernetes 1.32 recognises
    keywords as field names, also `namespace`. () when no rule can reach the property."""
    if name in _CEL_RESERVED:
        return f"__{name}__", name
    if not _CEL_ACCESSIBLE.match(name):
        return ()
    for raw, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(raw, escaped)
    return (name,)


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """A JSON value as the CEL value Kubernetes binds: typed by the schema (a `number` is a double even when
    written `1`), maps and lists recursively. Declared properties are named as rules see them (escaped, see
    `cel_property_names`); the keys of a map (additionalProperties) are data and stay as they are."""
    kind = schema.get("type")
    if value is None or (schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties")):
        return celpy.json_to_cel(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    if isinstance(value, dict):
        declared = schema.get("properties") or {}
        fields: dict[Any, Any] = {}
        for key, sub, child in _typed(schema, value):
            bound = to_cel(child, sub)
            for name in cel_property_names(key) if key in declared else (key,):
                fields[celtypes.StringType(name)] = bound
        return celtypes.MapType(fields)
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        return celtypes.ListType([to_cel(v, items) for v in value])
    return celpy.json_to_cel(value)


def _typed(schema: Mapping[str, Any], value: dict[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Any]]:
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, child in value.items():
        yield key, props.get(key) or (extra if isinstance(extra, Mapping) else {}), child


@cache
def _environment() -> celpy.Environment:
    return celpy.Environment()


@cache
def compiled(rule: str) -> celpy.Runner:
    """A CEL rule compiled once (raises celpy.CELParseError for a rule the apiserver would refuse in the CRD)."""
    env = _environment()
    return env.program(env.compile(rule), functions=_K8S_CEL_FUNCTIONS)


def cel_rules(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every `x-kubernetes-validations` entry of a schema, at any depth."""
    yield from schema.get("x-kubernetes-validations") or []
    for sub in (schema.get("properties") or {}).values():
        yield from cel_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from cel_rules(schema[key])


def _cel_value(value: Any, schema: Mapping[str, Any], root: bool) -> Any:
    if root and isinstance(value, dict):  # at the root, CEL sees only metadata.name and metadata.generateName
        meta = value.get("metadata") or {}
        value = {**value, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}
    return to_cel(value, schema)


def _evaluate(rule: Mapping[str, Any], schema: Mapping[str, Any], value: Any, old: Any, root: bool) -> tuple[bool, str]:
    text = str(rule["rule"])
    activation = {"self": _cel_value(value, schema, root)}
    if old is not _ABSENT:
        activation["oldSelf"] = _cel_value(old, schema, root)
    try:
        result = compiled(text).evaluate(activation)
    except celpy.CELEvalError as exc:
        return False, f"rule evaluation error: {exc.args[0] if exc.args else exc}"
    if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
        return True, ""
    message = str(rule.get("message") or f"failed rule: {text}")
    if rule.get("messageExpression"):
        with contextlib.suppress(celpy.CELEvalError):  # the apiserver falls back to `message` when it fails
            message = str(compiled(str(rule["messageExpression"])).evaluate(activation))
    return False, message


_ABSENT = object()


def _cel_causes(schema: Mapping[str, Any], value: Any, old: Any, path: Path) -> list[Cause]:
    causes: list[Cause] = []
    if value is None:
        return causes
    for rule in schema.get("x-kubernetes-validations") or []:
        if re.search(r"\boldSelf\b", str(rule["rule"])) and old is _ABSENT:
            continue  # a transition rule is checked only on updates of an existing value
        ok, message = _evaluate(rule, schema, value, old, root=not path)
        if not ok:
            reason = str(rule.get("reason") or "FieldValueInvalid")
            where = field_path(path) + str(rule.get("fieldPath") or "")
            prefix = _PREFIX.get(reason, "").format(value=shown(value))
            causes.append(Cause(reason, where.lstrip("."), prefix + message))
    for key, sub, child in _children(schema, value):
        child_old: Any = _ABSENT
        if isinstance(key, str) and isinstance(old, dict) and key in old:
            child_old = old[key]
        causes += _cel_causes(sub, child, child_old, (*path, key))
    return causes


class CrdVersion:
    """One served version of a CRD: its schema, status subresource and printer columns."""

    def __init__(self, crd: Mapping[str, Any], version: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        self.group: str = spec["group"]
        self.kind: str = spec["names"]["kind"]
        self.plural: str = spec["names"]["plural"]
        self.name: str = version["name"]
        self.schema: Mapping[str, Any] = (version.get("schema") or {}).get("openAPIV3Schema") or {}
        self.has_status: bool = "status" in (version.get("subresources") or {})
        self.printer_columns: list[Mapping[str, Any]] = list(version.get("additionalPrinterColumns") or [])
        for rule in cel_rules(self.schema):  # the apiserver refuses a CRD whose rules do not compile
            compiled(str(rule["rule"]))

    def admit(self, obj: dict[str, Any]) -> list[str]:
        """Prune unknown fields and apply defaults, in place, as the apiserver decodes a body: the pruned fields
        (`fieldValidation=Strict` refuses the body when there are any)."""
        unknown = prune(self.schema, obj)
        apply_defaults(self.schema, obj)
        return unknown

    def validate(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Cause]:
        """Every problem the apiserver reports for this object (create when `old` is None, else update)."""
        causes: list[Cause] = []
        name = (obj.get("metadata") or {}).get("name")
        if isinstance(name, str) and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
            causes.append(Cause("FieldValueInvalid", "metadata.name", f"Invalid value: {json.dumps(name)}: a "
                                "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                                "'-' or '.', and must start and end with an alphanumeric character"))  # fmt: skip
        body = {k: v for k, v in obj.items() if k != "metadata"}
        schema = {**self.schema, "properties": {k: v for k, v in (self.schema.get("properties") or {}).items()
                                                if k != "metadata"}}  # fmt: skip
        causes += _schema_causes(schema, body)
        causes += _list_map_causes(self.schema, obj, ())
        if not causes:  # like the apiserver, CEL runs on schema-valid objects only
            causes += _cel_causes(self.schema, obj, _ABSENT if old is None else old, ())
        return causes

    def invalid(self, name: str, causes: list[Cause]) -> tuple[str, dict[str, Any]]:
        """The 422 Status message and details for these causes."""
        listed = [f"{c.field}: {c.message}" if c.field else c.message for c in causes]
        text = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
        message = f'{self.kind}.{self.group} "{name}" is invalid: {text}'
        details = {"name": name, "group": self.group, "kind": self.kind, "causes": [c.as_dict() for c in causes]}
        return message, details


def crd_versions(crd: Mapping[str, Any]) -> list[CrdVersion]:
    """The served versions of an apiextensions.k8s.io/v1 CustomResourceDefinition."""
    return [CrdVersion(crd, v) for v in crd["spec"]["versions"] if v.get("served", True)]

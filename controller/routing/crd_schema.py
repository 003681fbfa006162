"""Validate manifests against Istio's published networking CRDs, strictly.

The CRD file (VirtualService, DestinationRule, Gateway as published by istio/api) ships with
the package: ``controller/schemas/istio-networking-crds.yaml`` (its header names the source,
version and licence, Apache-2.0), so validation never depends on anything outside the package.
Set ``RAMP_ISTIO_CRDS`` (or ``ramp plan --crds``) to validate against another copy, e.g. a newer Istio.

The Gateway API HTTPRoute CRD (v1.6.1, standard channel, Apache-2.0) ships beside it:
``controller/schemas/gateway-api-httproutes-v1.6.1.yaml``. ``IstioSchemas.load()`` reads one file (the Istio
kinds only); ``RouteSchemas.load()`` reads the Istio file (same override) AND the packaged Gateway API file, so
one ``validate`` checks every object a cluster router writes, VirtualServices and HTTPRoutes alike.

Validation is stricter than the API server on purpose: Kubernetes silently prunes
unknown fields of structural schemas, which hides typos (``wieght: 10`` would
vanish and leave the route unweighted). Here every object schema that declares
``properties`` and is not ``x-kubernetes-preserve-unknown-fields`` rejects fields it
does not declare. ``nullable`` and the ``int32``/``double``/``byte``/``date-time``
formats are honoured; CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError

CRD_ENV_VAR = "RAMP_ISTIO_CRDS"
PACKAGED_CRD_FILE = Path(__file__).resolve().parent.parent / "schemas" / "istio-networking-crds.yaml"
GATEWAY_API_CRD_FILE = PACKAGED_CRD_FILE.parent / "gateway-api-httproutes-v1.6.1.yaml"

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
# ObjectMeta fields a client may send; anything else is a typo.
_OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
        "annotations", "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip


def crd_file_candidates() -> list[Path]:
    """Where the CRD file is looked for: the env var if set (then the only place), else the packaged copy."""
    override = os.environ.get(CRD_ENV_VAR)
    if override:
        return [Path(override)]
    return [PACKAGED_CRD_FILE]


def find_crd_file() -> Path | None:
    """The Istio CRD file, or None when it cannot be found (see crd_file_candidates)."""
    return next((p for p in crd_file_candidates() if p.is_file()), None)


@dataclass(frozen=True)
class CrdVersion:
    name: str
    served: bool
    storage: bool
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Crd:
    kind: str
    group: str
    namespaced: bool
    versions: Mapping[str, CrdVersion]

    def served_versions(self) -> list[str]:
        return [v.name for v in self.versions.values() if v.served]


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    @checker.checks("int64")
    def _int64(value: object) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    @checker.checks("uint32")
    def _uint32(value: object) -> bool:
        return not isinstance(value, int) or 0 <= value < 2**32

    @checker.checks("double")
    def _double(value: object) -> bool:
        return not isinstance(value, float) or math.isfinite(value)

    @checker.checks("byte")
    def _byte(value: object) -> bool:
        if not isinstance(value, str):
            return True
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        return True

    @checker.checks("date-time")
    def _date_time(value: object) -> bool:
        return not isinstance(value, str) or _RFC3339.match(value) is not None

    return checker


_FORMATS = _format_checker()


def strict_schema(schema: Any, in_junctor: bool = False) -> Any:
    """A copy of an openAPIV3Schema made strict (unknown fields rejected) and JSON-Schema-ready."""
    if isinstance(schema, list):
        return [strict_schema(item, in_junctor) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            result[key] = {name: strict_schema(sub, in_junctor) for name, sub in value.items()}
        elif key in ("description", "x-kubernetes-validations"):
            continue
        else:
            result[key] = strict_schema(value, in_junctor or key in _JUNCTORS)
    if schema.get("nullable") is True and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    if (
        not in_junctor
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def _root_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = strict_schema(copy.deepcopy(dict(openapi)))
    properties = root.setdefault("properties", {})
    properties.update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}})
    root["additionalProperties"] = False
    root["required"] = ["apiVersion", "kind", "metadata"]
    return root


def json_path(parts: Iterable[str | int]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}"
        else:
            text += f"[{part!r}]"
    return text


def _error_messages(error: ValidationError) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        instance = error.instance if isinstance(error.instance, dict) else {}
        extra = [key for key in instance if key not in declared]
        return [
            f"{json_path([*path, str(key)])}: unknown field {str(key)!r} (Kubernetes would silently prune it)"
            for key in extra
        ]
    message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
    return [f"{json_path(path)}: {message}"]


def _metadata_problems(metadata: object, namespaced: bool) -> list[str]:
    if not isinstance(metadata, dict):
        return ["$.metadata: must be an object with name and namespace"]
    problems: list[str] = []
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        problems.append("$.metadata.name: required (a non-empty string)")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"$.metadata.name: {name!r} is not a lowercase RFC 1123 subdomain")
    namespace = metadata.get("namespace")
    if namespaced:
        if not isinstance(namespace, str) or not namespace:
            problems.append("$.metadata.namespace: required (a non-empty string)")
        elif len(namespace) > 63 or not _DNS_LABEL.match(namespace):
            problems.append(f"$.metadata.namespace: {namespace!r} is not a lowercase RFC 1123 label")
    for key in metadata:
        if key not in _OBJECT_META_FIELDS:
            problems.append(f"{json_path(['metadata', str(key)])}: unknown field {str(key)!r}")
    for mapping in ("labels", "annotations"):
        values = metadata.get(mapping)
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"$.metadata.{mapping}: must be a map of strings")
            continue
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str):
                where = json_path(["metadata", mapping, str(key)])
                problems.append(f"{where}: keys and values must be strings")
    return problems


@dataclass
class IstioSchemas:
    """The CRDs of one file, by kind, with compiled strict validators cached per (kind, version)."""

    path: Path
    crds: Mapping[str, Crd]
    _validators: dict[tuple[str, str], Draft4Validator] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path | None = None) -> IstioSchemas:
        """Load (and cache) the CRD file; FileNotFoundError if it cannot be found."""
        return _load_cached(*_file_key(path))

    @property
    def kinds(self) -> list[str]:
        return sorted(self.crds)

    def validator(self, kind: str, version: str) -> Draft4Validator:
        key = (kind, version)
        if key not in self._validators:
            schema = _root_schema(self.crds[kind].versions[version].schema)
            self._validators[key] = Draft4Validator(schema, format_checker=_FORMATS)
        return self._validators[key]

    def validate(self, manifest: Mapping[str, Any]) -> list[str]:
        """Every problem of `manifest` as '$.json.path: reason'; empty when valid."""
        if not isinstance(manifest, Mapping):
            return [f"$: a manifest must be an object, not {type(manifest).__name__}"]
        kind = manifest.get("kind")
        if not isinstance(kind, str) or kind not in self.crds:
            return [f"$.kind: unknown kind {kind!r} (known: {', '.join(self.kinds)})"]
        crd = self.crds[kind]
        api_version = manifest.get("apiVersion")
        group, _, version = str(api_version).rpartition("/")
        served = crd.served_versions()
        if not isinstance(api_version, str) or group != crd.group or version not in served:
            expected = ", ".join(f"{crd.group}/{v}" for v in served)
            return [f"$.apiVersion: {api_version!r} is not a served version of {kind} (use {expected})"]
        problems = _metadata_problems(manifest.get("metadata"), crd.namespaced)
        errors = sorted(
            self.validator(kind, version).iter_errors(dict(manifest)),
            key=lambda e: [str(p) for p in e.absolute_path],
        )
        for error in errors:
            problems.extend(_error_messages(error))
        return problems


@dataclass
class RouteSchemas(IstioSchemas):
    """The Istio CRDs and the packaged Gateway API HTTPRoute CRD together: `path` is the Istio file,
    `sources` every file read. The Gateway API file's kinds win should the Istio file carry the same kind."""

    sources: tuple[Path, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None) -> RouteSchemas:
        """The Istio file (`path`, else $RAMP_ISTIO_CRDS, else the packaged copy) and the packaged Gateway API
        file, cached; FileNotFoundError if either cannot be found."""
        if not GATEWAY_API_CRD_FILE.is_file():
            raise FileNotFoundError(f"Gateway API CRD file not found (looked at {GATEWAY_API_CRD_FILE}; it ships "
                                    "with Ramp: reinstall the package)")  # fmt: skip
        return _load_combined(_file_key(path), _file_key(GATEWAY_API_CRD_FILE))


FileKey = tuple[Path, int, int]  # (resolved path, mtime in ns, size): a changed file is read again


def _file_key(path: Path | None) -> FileKey:
    """The CRD file to read (`path`, else see crd_file_candidates); FileNotFoundError when it is not there."""
    found = path if path is not None else find_crd_file()
    if found is None or not found.is_file():
        where = ", ".join(str(p) for p in ([found] if found else crd_file_candidates()))
        raise FileNotFoundError(f"Istio CRD file not found (looked at {where}; set {CRD_ENV_VAR})")
    resolved = found.resolve()
    stat = resolved.stat()
    return resolved, stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _load_combined(istio_key: FileKey, gateway_key: FileKey) -> RouteSchemas:
    istio, gateway = _load_cached(*istio_key), _load_cached(*gateway_key)
    return RouteSchemas(istio.path, {**istio.crds, **gateway.crds}, sources=(istio.path, gateway.path))


def _parse_crds(text: str) -> dict[str, Crd]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds: dict[str, Crd] = {}
    for doc in yaml.load_all(text, Loader=loader):
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        versions = {
            v["name"]: CrdVersion(
                name=v["name"],
                served=bool(v.get("served")),
                storage=bool(v.get("storage")),
                schema=v.get("schema", {}).get("openAPIV3Schema", {}),
            )
            for v in spec.get("versions", [])
        }
        kind = spec["names"]["kind"]
        crds[kind] = Crd(kind, spec["group"], spec.get("scope", "Namespaced") == "Namespaced", versions)
    return crds


@functools.lru_cache(maxsize=4)
def _load_cached(path: Path, mtime_ns: int, size: int) -> IstioSchemas:
    crds = _parse_crds(path.read_text(encoding="utf-8"))
    if not crds:
        raise ValueError(f"{path}: no CustomResourceDefinition documents")
    return IstioSchemas(path, crds)

"""The RampRollout custom resource: names, and the envelope around the rollout spec format.

A RampRollout's `spec` is exactly a rollout spec (same fields, validation and defaults) without the
flat file's `apiVersion`/`kind`; `metadata.name` is the rollout's name and `metadata.namespace` the
service's namespace. In `spec`, `name` and `namespace` may be omitted (they default to the metadata) and,
when written, must equal it. A resource named like its service reads to exactly the spec of the same file
(same digest: moving a rollout from a file to a resource does not restart it). So a spec file becomes a
resource by moving `name`/`namespace` into `metadata` and the rest under `spec` (`ramp resource FILE`
prints that), and a file in resource form is also a valid spec file for the directory mode.

Pure: no I/O. The CRD itself is generated from the pydantic model by controller.resource_crd.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

GROUP = "ramp.dev"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RampRollout"
LIST_KIND = "RampRolloutList"
PLURAL = "ramprollouts"
SINGULAR = "ramprollout"
SHORT_NAMES = ("rr",)
CATEGORIES = ("ramp",)
CRD_NAME = f"{PLURAL}.{GROUP}"

COMMAND_ANNOTATION = "ramp.dev/command"  # the same annotation as on the VirtualService (see istio_merge)
ENVELOPE_FIELDS = ("apiVersion", "kind")  # flat-file fields that are not part of a resource's spec
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

FieldPath = tuple[str | int, ...]


def is_resource(data: Mapping[str, Any]) -> bool:
    """Whether a parsed document is in resource form (apiVersion ramp.dev/v1, kind RampRollout)."""
    return data.get("apiVersion") == API_VERSION and data.get("kind") == KIND


def _check_label(value: object, path: FieldPath, problems: list[tuple[FieldPath, str]], what: str) -> str | None:
    if not isinstance(value, str) or not value:
        problems.append((path, f"{what} is required (a DNS label)"))
        return None
    if len(value) > 63 or not _DNS_LABEL.match(value):
        problems.append((path, f"{what} {value[:80]!r} is not a DNS label (lowercase letters, digits, '-'; <= 63)"))
        return None
    return value


def spec_data_from_resource(
    data: Mapping[str, Any], default_namespace: str = "default"
) -> tuple[dict[str, Any] | None, list[tuple[FieldPath, str]]]:
    """The flat spec data of a resource-form document, or None with the problems (field path, reason).

    Paths of problems in the returned spec data map back to the resource as ("spec", *path).
    """
    problems: list[tuple[FieldPath, str]] = []
    unknown = sorted(str(k) for k in data if k not in ("apiVersion", "kind", "metadata", "spec", "status"))
    for key in unknown:
        problems.append(((key,), "unknown field in a RampRollout (expected apiVersion, kind, metadata, spec)"))
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping):
        problems.append((("metadata",), "metadata is required (a mapping with at least name)"))
        metadata = {}
    name = _check_label(metadata.get("name"), ("metadata", "name"), problems, "metadata.name")
    namespace: str | None = default_namespace
    if "namespace" in metadata:
        namespace = _check_label(metadata.get("namespace"), ("metadata", "namespace"), problems, "metadata.namespace")
    spec = data.get("spec")
    if not isinstance(spec, Mapping):
        problems.append((("spec",), "spec is required: the rollout spec (service, versions, target, ...)"))
        return None, problems
    flat: dict[str, Any] = dict(spec)
    for key in ENVELOPE_FIELDS:
        if key in flat:
            problems.append((("spec", key), f"{key} belongs to the resource, not its spec"))
    if name is not None:
        given = flat.get("name", name)
        if given != name:
            problems.append((("spec", "name"), f"spec.name {given!r} differs from metadata.name {name!r}: omit it"))
        elif name != flat.get("service"):
            flat["name"] = name  # the rollout's name; left out when it is the default (the service), as in a file
    if namespace is not None:
        given = flat.setdefault("namespace", namespace)
        if given != namespace:
            problems.append(
                (("spec", "namespace"), f"spec.namespace {given!r} differs from the resource's namespace "
                 f"{namespace!r}: omit it")
            )  # fmt: skip
    if problems:
        return None, problems
    return flat, []


def resource_from_spec_data(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap a flat spec file's data as a RampRollout (name and namespace moved to metadata)."""
    spec = {k: v for k, v in flat.items() if k not in (*ENVELOPE_FIELDS, "name", "namespace")}
    name = flat.get("name") or flat.get("service")
    metadata: dict[str, Any] = {"name": name}
    if flat.get("namespace"):
        metadata["namespace"] = flat["namespace"]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}

"""Object semantics of the emulator that a real apiserver applies to every write: CRDs, generation, status.

- CRDs: `crd_resource_infos` turns a CustomResourceDefinition into kmock discovery entries (kind, scope,
  names, the status subresource); RampRollout's are declared by default (`ramp_rollout_info`).
- metadata.generation is 1 on create and grows by one when anything but metadata and status changes
  (for kinds without a status subresource, status changes count too, as for a CRD without one).
- A kind with a status subresource keeps its stored status on writes to the main resource (and drops the
  status given on create), and `/status` writes change the status only.
- PATCH bodies are applied by their Content-Type: JSON patch, merge patch; strategic merge patch is refused
  for custom resources (415), as the apiserver does.

Pure functions over plain dicts; emulator.py wires them into requests.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonpatch
from kmock._internal import dicts, references

from controller import rollout_resource as rr
from tests.k8s.emulator_watch import api_error

CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace", "name")


def ramp_rollout_info() -> references.ResourceInfo:
    """Discovery of ramp.dev/v1 ramprollouts, named by controller.rollout_resource."""
    return references.ResourceInfo(
        namespaced=True, kind=rr.KIND, singular=rr.SINGULAR, verbs=set(VERBS), shortnames=set(rr.SHORT_NAMES),
        categories=set(rr.CATEGORIES), subresources={"status"},
    )  # fmt: skip


def crd_resource_infos(crd: Mapping[str, Any]) -> dict[str, references.ResourceInfo]:
    """'group/version/plural' -> discovery info, for each served version of a CustomResourceDefinition."""
    spec = crd["spec"]
    names = spec["names"]
    infos: dict[str, references.ResourceInfo] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = {"status"} if "status" in (version.get("subresources") or {}) else set()
        subresources |= {"scale"} if "scale" in (version.get("subresources") or {}) else set()
        infos[f"{spec['group']}/{version['name']}/{names['plural']}"] = references.ResourceInfo(
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(), verbs=set(VERBS),
            shortnames=set(names.get("shortNames") or ()), categories=set(names.get("categories") or ()),
            subresources=subresources,
        )  # fmt: skip
    return infos


def established(crd: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The CRD object as the apiserver stores it once accepted: names accepted, Established."""
    stored = copy.deepcopy(dict(crd))
    names = stored["spec"]["names"]
    conditions = [
        {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
        for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                        ("Established", "InitialNamesAccepted", "the initial names have been accepted"))
    ]  # fmt: skip
    stored_versions = [v["name"] for v in stored["spec"]["versions"] if v.get("storage")]
    stored["status"] = {"acceptedNames": names, "conditions": conditions, "storedVersions": stored_versions}
    return stored


def resource_name(resource: Any) -> str:
    """'ramprollouts.ramp.dev', 'pods': how apiserver messages name a resource."""
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def apply_patch(stored: Mapping[str, Any], patch: Any, content_type: str, custom: bool) -> dict[str, Any]:
    """The object after a PATCH body of this Content-Type (a 4xx Kubernetes error when it cannot apply)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/strategic-merge-patch+json" and custom:
        raise api_error(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources; "
                        "use a merge patch (application/merge-patch+json) or a JSON patch")  # fmt: skip
    as_json_patch = media == "application/json-patch+json" or (not media and isinstance(patch, list))
    if as_json_patch:
        if not isinstance(patch, list):
            raise api_error(400, "BadRequest", "the JSON patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(copy.deepcopy(dict(stored)), patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            message = f"the server rejected our request due to an error in our request: {exc}"
            raise api_error(422, "Invalid", message) from exc
        return dict(result)
    if not isinstance(patch, Mapping):
        raise api_error(400, "BadRequest", f"a {media or 'merge'} patch must be a JSON object")
    return dict(dicts.merge_patch_dict(copy.deepcopy(dict(stored)), patch))


def _content(obj: Mapping[str, Any], has_status: bool) -> dict[str, Any]:
    skipped = ("metadata", "status") if has_status else ("metadata",)
    return {k: v for k, v in obj.items() if k not in skipped}


def prepare_create(body: dict[str, Any], has_status: bool) -> None:
    """A new object: generation 1, and no status when the kind has a status subresource."""
    if has_status:
        body.pop("status", None)
    body.setdefault("metadata", {})["generation"] = 1


def prepare_update(
    stored: Mapping[str, Any], new: dict[str, Any], has_status: bool, subresource: str | None
) -> dict[str, Any]:
    """The object to store for an update of `stored` to `new` (main resource or its status subresource)."""
    if has_status and subresource == "status":
        result = copy.deepcopy(dict(stored))
        if new.get("status") is None:
            result.pop("status", None)
        else:
            result["status"] = copy.deepcopy(new["status"])
        return result
    result = copy.deepcopy(new)
    if has_status:
        result.pop("status", None)
        if "status" in stored:
            result["status"] = copy.deepcopy(stored["status"])
    meta = result.setdefault("metadata", {})
    old_meta = stored.get("metadata") or {}
    for key in SERVER_FIELDS:  # set by the server only: a client's value is ignored
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    generation = int(old_meta.get("generation") or 1)
    before, after = (json.dumps(_content(o, has_status), sort_keys=True) for o in (stored, result))
    if before != after:
        generation += 1
    meta["generation"] = generation
    return result


def unchanged(stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an update changes nothing but the resourceVersion (the apiserver then writes nothing)."""
    def strip(obj: Mapping[str, Any]) -> str:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
        return json.dumps({**obj, "metadata": meta}, sort_keys=True)

    return strip(stored) == strip(new)


def json_path(obj: Any, path: str) -> Any:
    """A printer column's simple JSONPath (`.status.phase`, `.spec.versions[0].name`) on an object; None if absent."""
    value = obj
    for part in re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", path):
        key, index = part
        if key and isinstance(value, Mapping):
            value = value.get(key)
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return None
    return value


def wants_table(headers: Mapping[str, str]) -> bool:
    """Whether a request asks for the Table form (`kubectl get` sends `Accept: application/json;as=Table;...`)."""
    accept = next((v for k, v in headers.items() if k.lower() == "accept"), "")
    return "as=Table" in accept


def table(columns: list[Mapping[str, Any]], items: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
    """The meta.k8s.io/v1 Table the apiserver answers `kubectl get` with: Name, then the CRD's printer columns
    (which replace the default Age column), one row per object with its metadata."""
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a "
                    "namespace.", "priority": 0}]  # fmt: skip
    for c in columns:
        definitions.append({"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                            "description": c.get("description", ""), "priority": c.get("priority", 0)})  # fmt: skip
    rows = [
        {"cells": [obj["metadata"]["name"], *(json_path(obj, str(c["jsonPath"])) for c in columns)],
         "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}}
        for obj in items
    ]  # fmt: skip
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}  # fmt: skip

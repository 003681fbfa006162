"""What every cluster router reads on the objects it writes: names, resourceVersion, annotations, the state
annotation, the command annotation, and a tolerant view of the routing for `ramp status` (ClusterRouting).

Objects from the apiserver are hostile until checked: `check_metadata` checks the size, the metadata and the
annotations, and a problem is a MalformedObject naming the object and the field; nothing is written over it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.engine.phases import RolloutState
from controller.engine.routing_model import HeaderRoute
from controller.routing.state_codec import STATE_ANNOTATION, decode_state, kind_of

COMMAND_ANNOTATION = "ramp.dev/command"
MAX_OBJECT_BYTES = 1_572_864  # etcd's default request limit (1.5 MiB): no real object is larger


class RouteMergeError(ValueError):
    """The existing objects cannot take Ramp's routing without breaking something; nothing is written."""


class MalformedObject(ValueError):
    """An object from the apiserver that does not have the shape Ramp needs; nothing is written over it."""


def ref(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}"


def fail(where: str, field: str, wanted: str, value: object) -> MalformedObject:
    return MalformedObject(f"{where}: {field} must be {wanted}, got {kind_of(value)}")


def check_metadata(obj: object, where: str) -> Mapping[str, Any]:
    """The object's metadata, after checking the object, its size and its annotations."""
    if not isinstance(obj, Mapping):
        raise MalformedObject(f"{where}: the object must be a mapping, got {kind_of(obj)}")
    size = len(json.dumps(obj, default=repr))
    if size > MAX_OBJECT_BYTES:
        raise MalformedObject(f"{where}: the object is {size} bytes, more than Kubernetes stores ({MAX_OBJECT_BYTES})")
    meta = obj.get("metadata")
    if meta is None:
        raise MalformedObject(f"{where}: metadata is missing")
    if not isinstance(meta, Mapping):
        raise fail(where, "metadata", "a mapping", meta)
    for key in ("name", "namespace", "resourceVersion"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise fail(where, f"metadata.{key}", "a string", meta[key])
    notes = meta.get("annotations")
    if notes is not None:
        if not isinstance(notes, Mapping):
            raise fail(where, "metadata.annotations", "a mapping", notes)
        for key, value in notes.items():
            if not isinstance(key, str):
                raise fail(where, "metadata.annotations keys", "strings", key)
            if not isinstance(value, str) and key != STATE_ANNOTATION:  # a damaged state is StateDamaged
                raise fail(where, f"metadata.annotations[{key!r}]", "a string", value)
    return meta


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON tree (what the apiserver answers: dicts, lists, strings, numbers, booleans, None),
    several times faster than `copy.deepcopy`; anything else (never in an answer) is deep-copied the slow way."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    if value is None or isinstance(value, str | int | float):  # immutable (bool is an int)
        return value
    return copy.deepcopy(value)


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def object_ref(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
    return f"{kind} {str(meta.get('namespace', '?'))[:253]}/{str(meta.get('name', '?'))[:253]}"


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    value = _meta(obj).get("resourceVersion")
    return None if value is None else str(value)


def annotations_of(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """The annotations (values as found: check_metadata has checked them where it matters)."""
    found = _meta(obj).get("annotations") or {}
    return dict(found) if isinstance(found, Mapping) else {}


def state_of(obj: Mapping[str, Any] | None) -> RolloutState | None:
    notes = annotations_of(obj)
    if obj is None or STATE_ANNOTATION not in notes:
        return None
    return decode_state(notes[STATE_ANNOTATION], object_ref(obj))


@dataclass(frozen=True)
class ClusterRouting:
    """Ramp's routing as found in the cluster (for `ramp status`)."""

    namespace: str
    service: str
    found: bool
    weights: tuple[tuple[str, int], ...] = ()
    header_routes: tuple[HeaderRoute, ...] = ()
    foreign_routes: tuple[str, ...] = ()
    state: RolloutState | None = None
    state_error: str | None = None
    command: str | None = None
    resource_version: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None  # the route object is malformed: what and where
    kind: str = "VirtualService"
    not_in_effect: str | None = None  # stored but not serving: why (e.g. a Gateway has not accepted the HTTPRoute)


def merge_annotations(merged: dict[str, Any], notes: Mapping[str, str], remove: Mapping[str, str]) -> None:
    """Set `notes` on `merged`; remove each key of `remove` only while it still holds that value (a command written
    after it was read is kept). The metadata is left exactly as it was when nothing changes (even an empty map)."""
    meta = merged.setdefault("metadata", {})
    original = dict(meta.get("annotations") or {})
    updated = dict(original)
    for key, value in remove.items():
        if updated.get(key) == value:
            del updated[key]
    updated.update(notes)
    if updated != original:
        if updated:
            meta["annotations"] = updated
        else:
            meta.pop("annotations", None)


def merge_managed(
    existing: list[Any], rendered: list[dict[str, Any]], managed: Callable[[Mapping[str, Any]], bool],
    owned: frozenset[str],
) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """(merged, foreign) entries of a route list (Istio http routes, HTTPRoute rules): Ramp's `rendered` entries
    with the fields people added to them kept (all but `owned`), around the foreign ones in their order: every
    rendered entry but the last first, the last (ramp-primary) after the foreign ones. `existing` is the caller's
    own copy (the merges deep-copy the object first): its entries are reused, not copied again."""
    previous = {e["name"]: e for e in existing if isinstance(e, Mapping) and managed(e)}
    foreign = [e for e in existing if not (isinstance(e, Mapping) and managed(e))]
    merged = []
    for entry in rendered:
        kept = {k: v for k, v in previous.get(entry["name"], {}).items() if k not in owned}
        merged.append({**entry, **kept})
    return [*merged[:-1], *foreign, merged[-1]], foreign

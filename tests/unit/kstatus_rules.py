"""kstatus's rules for a resource of a kind it has no special rules for, transcribed to Python.

Source: kubernetes-sigs/cli-utils, package pkg/kstatus/status (the library Flux's `wait: true` and
`healthChecks` use):
- status.go `Compute`: `checkGenericProperties`; if it decides, that is the result; else the legacy rules of
  built-in kinds (`GetLegacyConditionsFn`, core.go: a map keyed by group/kind - Service, Pod, Deployment, ...,
  CustomResourceDefinition); a kind without one (ours: ramp.dev/RampRollout) is `Current`,
  "Resource is current".
- generic.go `checkGenericProperties`, in this order:
  1. `metadata.deletionTimestamp` set (non-empty) -> Terminating, "Resource scheduled for deletion";
  2. `checkGeneration`: when `metadata.generation` exists AND `status.observedGeneration` exists and they
     differ -> InProgress, "<Kind> generation is G, but latest observed generation is O" (a missing
     observedGeneration skips the check);
  3. `status.conditions` in list order: the first `Reconciling` with status "True" -> InProgress (message:
     the condition's), else the first `Stalled` "True" -> Failed (the condition's message). Both are looked
     for in one pass, so with both True the one listed first wins;
  4. otherwise no decision (-> Current for our kind, see above).
- util.go `GetObjectWithConditions` converts the object with the unstructured converter: conditions that
  are not a list of objects with string fields make `Compute` return an error (Flux then reports the
  resource as not ready / Unknown). `unstructured.NestedInt64`/`NestedString` return an error for a field of
  the wrong type, which `Compute` also returns.

Only `Ready` is NOT read for unknown kinds: a resource without Reconciling/Stalled True is Current whatever
its Ready says. That is why our status never leaves both False before the rollout is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IN_PROGRESS = "InProgress"
FAILED = "Failed"
CURRENT = "Current"
TERMINATING = "Terminating"

# Kinds with legacy (type-specific) rules in core.go's legacyTypes; a RampRollout is not one of them.
LEGACY_KINDS = frozenset(
    {
        "Service", "Pod", "Secret", "PersistentVolumeClaim", "apps/StatefulSet", "apps/DaemonSet",
        "extensions/DaemonSet", "apps/Deployment", "extensions/Deployment", "apps/ReplicaSet",
        "extensions/ReplicaSet", "policy/PodDisruptionBudget", "batch/CronJob", "ConfigMap", "batch/Job",
        "apiextensions.k8s.io/CustomResourceDefinition",
    }
)  # fmt: skip


class KstatusError(ValueError):
    """What `Compute` returns as an error (a field of the wrong type)."""


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def _nested(obj: Mapping[str, Any], *path: str) -> tuple[Any, bool]:
    """unstructured.NestedFieldNoCopy: (value, found); a non-map on the way means not found."""
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return None, False
        current = current[key]
    return current, True


def _nested_int64(obj: Mapping[str, Any], *path: str) -> tuple[int, bool]:
    value, found = _nested(obj, *path)
    if not found:
        return 0, False
    if isinstance(value, bool) or not isinstance(value, int):
        raise KstatusError(f".{'.'.join(path)} accessor error: {value!r} is of the type {type(value).__name__}")
    return value, True


def _group_kind(obj: Mapping[str, Any]) -> str:
    api_version = obj.get("apiVersion", "")
    group = api_version.split("/")[0] if isinstance(api_version, str) and "/" in api_version else ""
    kind = obj.get("kind", "")
    return f"{group}/{kind}" if group else str(kind)


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """GetObjectWithConditions: status.conditions converted to BasicCondition (type/status/reason/message
    strings); a value of another shape is a conversion error."""
    value, found = _nested(obj, "status", "conditions")
    if not found or value is None:
        return []
    if not isinstance(value, list):
        raise KstatusError("status.conditions: cannot convert to a list of conditions")
    for condition in value:
        if not isinstance(condition, Mapping):
            raise KstatusError("status.conditions: a condition is not an object")
        for key in ("type", "status", "reason", "message"):
            if key in condition and condition[key] is not None and not isinstance(condition[key], str):
                raise KstatusError(f"status.conditions: {key} is not a string")
    return list(value)


def compute(obj: Mapping[str, Any]) -> Result:
    """kstatus `Compute` for `obj` (a full resource, as read from the API server)."""
    deletion, found = _nested(obj, "metadata", "deletionTimestamp")
    if found and deletion is not None and not isinstance(deletion, str):
        raise KstatusError("metadata.deletionTimestamp is not a string")
    if found and deletion:
        return Result(TERMINATING, "Resource scheduled for deletion")
    generation, has_generation = _nested_int64(obj, "metadata", "generation")
    if has_generation:
        observed, has_observed = _nested_int64(obj, "status", "observedGeneration")
        if has_observed and observed != generation:
            kind = obj.get("kind", "")
            return Result(
                IN_PROGRESS, f"{kind} generation is {generation}, but latest observed generation is {observed}"
            )
    for condition in _conditions(obj):
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return Result(IN_PROGRESS, str(condition.get("message") or ""))
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return Result(FAILED, str(condition.get("message") or ""))
    if _group_kind(obj) in LEGACY_KINDS:
        raise NotImplementedError(f"kstatus has type-specific rules for {_group_kind(obj)}; not transcribed")
    return Result(CURRENT, "Resource is current")

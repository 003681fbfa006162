"""Rollout specs from a directory AND from RampRollout custom resources, with one owner per service.

The controller's SpecSource in a cluster: the spec directory (files, a ConfigMap, a git checkout) as
before, plus the RampRollout objects a watch keeps cached (`ResourceCache`). A resource is validated
exactly as a file (same model, same rules, same allowed namespaces); an invalid one is refused as a
whole. Ownership is decided across both sources (controller.spec_owners): a resource and a file for the
same service, host or rollout name are a clash, and NEITHER runs until it is resolved; the clash is
reported on both (the file's problem is logged, the resource gets status Invalid/OwnerClash and an Event,
see controller.k8s.rollout_bridge).

Deleting a resource stops managing its service: traffic stays exactly as it was (no finalizer, nothing is
reverted), like removing a spec file.

Until the watch has LISTed every namespace it covers once, NOTHING runs, files included: a file cannot be
given its service while a resource not seen yet may claim the same service, host or rollout name (on a start
or a failover, the file would otherwise move traffic for one tick and then be refused as a clash). The wait is
reported as a problem of the spec directory, and /readyz says the watch is not listed yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from controller.engine.ports import ResourceRef
from controller.engine.runner import ManagedRollout
from controller.rollout_resource import KIND
from controller.spec import RolloutSpec
from controller.spec_directory import SpecDirectory
from controller.spec_loader import FieldPath, LocatedSpec, SpecError, SpecProblem, validate_spec_data
from controller.spec_owners import without_clashes

RefusalKind = Literal["InvalidSpec", "OwnerClash", "NamespaceNotManaged"]
ResourceKey = tuple[str, str]  # (namespace, name)
NOT_LISTED = (
    "waiting for the first list of RampRollout resources: no spec runs (files included) until every watched "
    "namespace is listed, so that no service, host or rollout name gets two owners (/readyz says why the list "
    "fails; a controller that serves spec files only runs with --no-resources)"
)


class ResourceCache(Protocol):
    """What the RampRollout watch offers: a change counter and a copy of the objects by (namespace, name)."""

    def snapshot(self) -> tuple[int, dict[ResourceKey, dict[str, Any]]]: ...
    def synced(self) -> bool: ...


@dataclass(frozen=True)
class Refusal:
    """Why a resource does not run: its kind (the Stalled condition's reason) and the problems, one per line."""

    kind: RefusalKind
    message: str
    generation: int


def resource_label(namespace: str, name: str) -> str:
    """How problems name a resource (in place of a file name)."""
    return f"{KIND} {namespace}/{name}"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def resource_ref(obj: Mapping[str, Any], key: ResourceKey) -> ResourceRef:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    uid = meta.get("uid")
    return ResourceRef(key[0], key[1], uid if isinstance(uid, str) else "", _int(meta.get("generation")))


def _problem_text(problems: list[SpecProblem]) -> str:
    return "; ".join(f"{p.path or '(resource)'}: {p.reason}" for p in problems)


@dataclass
class StaticSpecSource:
    """Rollouts given once, never changing (the loop's SpecSource for benchmarks and tests: every replica reads
    the same specs, as each pod reads the whole spec directory)."""

    path: Path
    rollouts: list[ManagedRollout]
    problems: list[SpecProblem] = field(default_factory=list)
    _read: bool = False

    def refresh(self) -> bool:
        """True once (the first read), then False: nothing ever changes."""
        first, self._read = not self._read, True
        return first


@dataclass
class CombinedSpecSource:
    """A SpecSource (see controller_loop) over a spec directory and the RampRollout cache."""

    directory: SpecDirectory
    resources: ResourceCache
    rollouts: list[ManagedRollout] = field(default_factory=list)
    problems: list[SpecProblem] = field(default_factory=list)
    refusals: dict[ResourceKey, Refusal] = field(default_factory=dict)
    objects: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)
    _resource_version: int | None = None
    _directory_loaded: bool = False
    _listed: bool = False  # the watch has listed every namespace once: ownership can be decided

    @property
    def path(self) -> Path:
        return self.directory.path

    def rollout_for(self, key: ResourceKey) -> ManagedRollout | None:
        """The running rollout of a resource (None: refused, or not known yet)."""
        for rollout in self.rollouts:
            ref = rollout.resource
            if ref is not None and (ref.namespace, ref.name) == key:
                return rollout
        return None

    def refresh(self) -> bool:
        """Re-read the directory if it changed and take the newest resources; True when the set was rebuilt."""
        changed = self.directory.refresh() or not self._directory_loaded
        self._directory_loaded = True
        listed = self.resources.synced()  # read BEFORE the snapshot: a listed cache is complete from then on
        version, objects = self.resources.snapshot()
        if listed != self._listed:
            self._listed, changed = listed, True
        if version != self._resource_version:
            self._resource_version, self.objects, changed = version, objects, True
        if changed:
            self._rebuild()
        return changed

    def _namespace_check(self, spec: RolloutSpec) -> list[tuple[FieldPath, str]]:
        allowed = self.directory.allowed_namespaces
        if allowed is None or spec.namespace in allowed:
            return []
        names = ", ".join(sorted(allowed)) or "none"
        return [(("namespace",), f"namespace {spec.namespace!r} is not managed by this controller (allowed: {names})")]

    def _rebuild(self) -> None:
        if not self._listed:
            self.rollouts, self.refusals = [], {}
            waiting = SpecProblem(str(self.directory.path), 1, "", NOT_LISTED)
            self.problems = sorted([*self.directory.problems, waiting], key=lambda p: (p.file, p.line))
            return
        located: list[LocatedSpec] = []
        refs: dict[str, ResourceKey] = {}
        self.refusals = {}
        for key, obj in sorted(self.objects.items()):
            label = resource_label(*key)
            ref = resource_ref(obj, key)
            try:
                data = dict(obj)
                meta = data.get("metadata")
                data["metadata"] = {**meta, "namespace": key[0]} if isinstance(meta, Mapping) else meta
                spec = validate_spec_data(data, label, self._namespace_check, self.directory.templates)
            except SpecError as exc:
                kind: RefusalKind = "InvalidSpec"
                if any("is not managed by this controller" in p.reason for p in exc.problems):
                    kind = "NamespaceNotManaged"
                self.refusals[key] = Refusal(kind, _problem_text(exc.problems), ref.generation)
                continue
            located.append(spec)
            refs[label] = key
        located_files = {spec.file: r for spec, r in zip(self.directory.located, self.directory.rollouts, strict=True)}
        owned, clashes = without_clashes([*self.directory.located, *located])
        for problem in clashes:
            clashing = refs.get(problem.file)
            if clashing is not None:
                earlier = self.refusals.get(clashing)
                text = problem.reason if earlier is None else f"{earlier.message}; {problem.reason}"
                generation = resource_ref(self.objects[clashing], clashing).generation
                self.refusals[clashing] = Refusal("OwnerClash", text, generation)
        rollouts: list[ManagedRollout] = []
        for spec in owned:
            if spec.file in refs:
                key = refs[spec.file]
                rollouts.append(ManagedRollout.from_spec(spec.spec, resource=resource_ref(self.objects[key], key)))
            else:
                rollouts.append(located_files[spec.file])
        self.rollouts = rollouts
        refused = [SpecProblem(resource_label(*k), 1, "", f"{r.kind}: {r.message}") for k, r in self.refusals.items()]
        self.problems = sorted(
            [*self.directory.problems, *[c for c in clashes if c.file not in refs], *refused],
            key=lambda p: (p.file, p.line),
        )

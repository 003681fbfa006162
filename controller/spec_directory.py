"""A directory of rollout specs, re-read when files change.

Every valid file becomes a ManagedRollout; an invalid file is reported (once per
change) and ignored as a whole, never partially applied. Two files for the same
service (namespace/service), host or rollout name are both refused, each problem
naming the other file and line (controller.spec_owners): neither runs until the
clash is resolved. With `allowed_namespaces`, a spec for any other namespace is
rejected the same way. MetricTemplate files are read first; the specs' `template:` gates resolve
against them (an edited template reloads the directory like any edited file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.engine.runner import ManagedRollout
from controller.spec import RolloutSpec
from controller.spec_loader import FieldPath, LocatedSpec, SpecError, SpecProblem, load_spec_located, spec_files
from controller.spec_metrics import LocatedTemplate, load_templates
from controller.spec_owners import without_clashes

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class SpecDirectory:
    path: Path
    allowed_namespaces: frozenset[str] | None = None
    _fingerprint: Fingerprint | None = None
    rollouts: list[ManagedRollout] = field(default_factory=list)
    problems: list[SpecProblem] = field(default_factory=list)
    located: list[LocatedSpec] = field(default_factory=list)  # the owned specs, with their lines (same order)
    templates: dict[str, LocatedTemplate] = field(default_factory=dict)  # MetricTemplates by name, for resources too

    def _current_fingerprint(self) -> Fingerprint:
        entries = []
        for file in spec_files([self.path]) if self.path.is_dir() else []:
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue
            entries.append((str(file), stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def _namespace_check(self, spec: RolloutSpec) -> list[tuple[FieldPath, str]]:
        allowed = self.allowed_namespaces
        if allowed is None or spec.namespace in allowed:
            return []
        names = ", ".join(sorted(allowed)) or "none"
        return [(("namespace",), f"namespace {spec.namespace!r} is not managed by this controller (allowed: {names})")]

    def refresh(self) -> bool:
        """Re-read the directory if anything changed; True when the rollout set was reloaded."""
        fingerprint = self._current_fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        loaded: list[LocatedSpec] = []
        problems: list[SpecProblem] = []
        if not self.path.is_dir():
            problems.append(SpecProblem(str(self.path), 1, "", "spec directory does not exist"))
        templates = load_templates(self.path)
        self.templates = templates.catalog
        problems.extend(templates.problems)
        for name, _, _ in fingerprint:
            if name in templates.files:
                continue
            try:
                loaded.append(load_spec_located(Path(name), self._namespace_check, templates.catalog))
            except SpecError as exc:
                problems.extend(exc.problems)
        owned, clashes = without_clashes(loaded)
        self.located = owned
        self.rollouts = [ManagedRollout.from_spec(located.spec, source=Path(located.file)) for located in owned]
        self.problems = sorted([*problems, *clashes], key=lambda p: (p.file, p.line))
        return True

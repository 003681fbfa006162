"""Load rollout specs from YAML with `file:line: field.path: reason` errors.

Every problem in a file is collected (YAML syntax, duplicate keys, unknown fields,
types and ranges, cross-field rules) and raised together as SpecError; nothing is
returned for a file with any problem, so nothing half-valid can be applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.spec import RolloutSpec, semantic_problems

MAX_SPEC_BYTES = 256 * 1024
FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        where = self.path or "(document)"
        return f"{self.file}:{self.line}: {where}: {self.reason}"


class SpecError(Exception):
    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _dotted(path: FieldPath) -> str:
    return ".".join(str(p) for p in path)


class _LineIndex:
    """Maps field paths to the 1-based line where that key or item starts."""

    def __init__(self) -> None:
        self.lines: dict[FieldPath, int] = {}
        self.duplicates: list[tuple[FieldPath, int]] = []

    def walk(self, node: yaml.Node, path: FieldPath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = (*path, key)
                if key in seen:
                    self.duplicates.append((child, key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[child] = key_node.start_mark.line + 1
                self.walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i))

    def line_of(self, path: FieldPath) -> int:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return 1


def _pydantic_path(loc: tuple[int | str, ...]) -> FieldPath:
    # Drop pydantic's internal segments such as union tags or '[key]' suffixes.
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "[key]"))))


def parse_spec_text(text: str, file: str) -> RolloutSpec:
    """Validate one YAML document; raises SpecError listing every problem."""
    if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
        raise SpecError([SpecProblem(file, 1, "", f"file larger than {MAX_SPEC_BYTES} bytes")])
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecProblem(file, line, "", f"invalid YAML: {problem}")]) from None
    docs = [d for d in docs if d is not None]
    if len(docs) != 1:
        raise SpecError([SpecProblem(file, 1, "", f"expected exactly one YAML document, found {len(docs)}")])
    index = _LineIndex()
    index.walk(docs[0], ())
    problems = [SpecProblem(file, line, _dotted(p), "duplicate key") for p, line in index.duplicates]
    try:
        data: Any = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise SpecError([SpecProblem(file, 1, "", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(file, 1, "", "a rollout spec must be a mapping of fields")])
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            path = _pydantic_path(err["loc"])
            problems.append(SpecProblem(file, index.line_of(path), _dotted(path), err["msg"]))
        raise SpecError(problems) from None
    for path, reason in semantic_problems(spec):
        problems.append(SpecProblem(file, index.line_of(path), _dotted(path), reason))
    if problems:
        raise SpecError(problems)
    return spec


def load_spec(path: Path) -> RolloutSpec:
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError([SpecProblem(str(path), 1, "", f"file larger than {MAX_SPEC_BYTES} bytes")])
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(path), 1, "", "file is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(str(path), 1, "", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_spec_text(text, str(path))


def spec_files(paths: list[Path]) -> list[Path]:
    """Expand directories to their *.yaml / *.yml files (sorted); keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            found.append(path)
    return found

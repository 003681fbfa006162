"""Load rollout specs from YAML with `file:line: field.path: reason` errors.

Every problem in a file is collected (YAML syntax, duplicate keys, unknown fields,
types and ranges, cross-field rules) and raised together as SpecError; nothing is
returned for a file with any problem, so nothing half-valid can be applied.

A spec's `template:` gates are resolved against the MetricTemplate documents of its directory
(`load_templates`); the returned spec carries the templates' queries inline, so a template edit
changes the spec (and its digest) like any gate edit.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.rollout_resource import is_resource, spec_data_from_resource
from controller.spec import RolloutSpec, semantic_problems, spec_warnings
from controller.spec_metrics import (
    LocatedTemplate,
    MetricTemplate,
    TemplateCatalog,
    load_templates,
    resolve_templates,
    template_problems,
)

MAX_SPEC_BYTES = 256 * 1024
MAX_NESTING = 32
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


def _part(part: str | int) -> str:
    text = str(part)
    # Keys with control characters (or empty keys) are quoted so a problem stays one line.
    return text if text and text.isprintable() else repr(text)


def _dotted(path: FieldPath) -> str:
    return ".".join(_part(p) for p in path)


class _LineIndex:
    """Maps field paths to the 1-based line where that key or item starts.

    Paths are followed through the composed node graph on demand, so aliases cost
    nothing extra (no exponential expansion) and recursive aliases cannot loop.
    """

    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self._constructor = yaml.SafeLoader("")
        self.duplicates: list[tuple[FieldPath, int]] = []
        self._find_duplicates(root, ())

    def _key(self, node: yaml.Node) -> object:
        """The Python key safe_load builds for `node` (1 for `1`, None for `null`), else its text."""
        if isinstance(node, yaml.ScalarNode):
            try:
                key = self._constructor.construct_object(node, deep=True)
                hash(key)
                return key
            except (yaml.YAMLError, ValueError, TypeError, OverflowError):
                return node.value
        return ("<complex key>", id(node))

    def _find_duplicates(self, root: yaml.Node, root_path: FieldPath) -> None:
        visited: set[int] = set()
        stack: list[tuple[yaml.Node, FieldPath]] = [(root, root_path)]
        while stack:
            node, path = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.MappingNode):
                seen: set[object] = set()
                for key_node, value_node in node.value:
                    key = self._key(key_node)
                    child = (*path, str(key_node.value))
                    if key in seen:
                        self.duplicates.append((child, key_node.start_mark.line + 1))
                    seen.add(key)
                    stack.append((value_node, child))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
        self.duplicates.sort(key=lambda d: d[1])

    def _matches(self, key_node: yaml.Node, wanted: str | int) -> bool:
        if not isinstance(key_node, yaml.ScalarNode):
            return False
        if key_node.value == str(wanted):
            return True
        key = self._key(key_node)
        return key == wanted or str(key) == str(wanted) or repr(key) == str(wanted)

    def line_of(self, path: FieldPath) -> int:
        """Line of the deepest prefix of `path` present in the document."""
        node = self.root
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                # The last duplicate wins, as in the loaded data.
                pair = next((kv for kv in reversed(node.value) if self._matches(kv[0], part)), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


def _pydantic_path(loc: tuple[int | str, ...]) -> FieldPath:
    # Drop pydantic's internal segments such as union tags or '[key]' suffixes.
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "[key]"))))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str) -> SpecProblem:
    """One single-line problem for a YAML error, at the line PyYAML points to."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return SpecProblem(file, line, "", f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}")
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    reason = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        reason = f"{reason} ({context} at line {context_mark.line + 1})"
    return SpecProblem(file, line, "", _one_line(f"invalid YAML: {reason}"))


class _TooDeep(yaml.YAMLError):
    def __init__(self, line: int) -> None:
        super().__init__(f"nested more than {MAX_NESTING} levels deep")
        self.line = line


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses to nest deeper than MAX_NESTING (it recurses per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # stub lacks types
                mark = event.start_mark
                raise _TooDeep(mark.line + 1 if mark is not None else 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, file: str) -> tuple[_SpecLoader, list[yaml.Node]]:
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # the reader already rejects unprintable characters here
        docs: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                docs.append(node)
        return loader, docs
    except yaml.YAMLError as exc:
        if loader is not None:
            loader.dispose()
        if isinstance(exc, _TooDeep):
            raise SpecError([SpecProblem(file, exc.line, "", str(exc))]) from None
        raise SpecError([_yaml_problem(exc, text, file)]) from None


ExtraCheck = Callable[[RolloutSpec], list[tuple[FieldPath, str]]]
LOCATED_FIELDS = ("name", "service", "namespace", "host")


@dataclass(frozen=True)
class LocatedSpec:
    """A valid spec with the lines of its identity fields, so clashes between files can name both lines."""

    file: str
    spec: RolloutSpec
    lines: dict[str, int]  # top-level fields of LOCATED_FIELDS present in the file -> line
    warnings: tuple[SpecProblem, ...] = ()

    def line(self, field: str) -> int:
        """The field's line; for a field left to its default, the line of `service`."""
        return self.lines.get(field, self.lines.get("service", 1))


def parse_spec_text(
    text: str, file: str, extra_check: ExtraCheck | None = None, templates: TemplateCatalog | None = None
) -> RolloutSpec:
    """Validate one YAML document; raises SpecError listing every problem.

    `extra_check` adds the caller's own rules (e.g. the controller's allowed namespaces), reported
    with file, line and field like every other problem. `templates`: the MetricTemplates `template:`
    gates may name (none when not given).
    """
    return parse_spec_located(text, file, extra_check, templates).spec


def parse_document(text: str, file: str) -> tuple[Any, _LineIndex, list[SpecProblem]]:
    """One YAML mapping, its line index and its duplicate keys; SpecError when it cannot be read."""
    if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
        raise SpecError([SpecProblem(file, 1, "", f"file larger than {MAX_SPEC_BYTES} bytes")])
    loader, docs = _compose(text, file)
    try:
        if len(docs) != 1:
            reason = f"expected exactly one YAML document, found {len(docs)}"
            raise SpecError([SpecProblem(file, 1, "", reason)])
        index = _LineIndex(docs[0])
        problems = [SpecProblem(file, line, _dotted(p), "duplicate key") for p, line in index.duplicates]
        try:
            data: Any = loader.construct_document(docs[0])
        except yaml.YAMLError as exc:
            raise SpecError([*problems, _yaml_problem(exc, text, file)]) from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise SpecError([*problems, SpecProblem(file, 1, "", _one_line(f"invalid YAML: {exc}"))]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(file, 1, "", "a rollout spec must be a mapping of fields")])
    return data, index, problems


def parse_spec_located(
    text: str, file: str, extra_check: ExtraCheck | None = None, templates: TemplateCatalog | None = None
) -> LocatedSpec:
    """parse_spec_text, keeping the lines of the identity fields and the spec's warnings."""
    data, index, problems = parse_document(text, file)
    return _validated(data, file, index, problems, extra_check, templates)


def is_template_data(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == "MetricTemplate"


def parse_template_located(text: str, file: str) -> LocatedTemplate:
    """Validate one MetricTemplate document; raises SpecError listing every problem."""
    data, index, problems = parse_document(text, file)
    try:
        template = MetricTemplate.model_validate(data)
    except ValidationError as exc:
        problems.extend(_model_problems(exc, file, index, ()))
        raise SpecError(sorted(problems, key=lambda p: p.line)) from None
    for path, reason in template_problems(template):
        problems.append(SpecProblem(file, index.line_of(path), _dotted(path), reason))
    if problems:
        raise SpecError(sorted(problems, key=lambda p: p.line))
    return LocatedTemplate(file, index.line_of(("name",)), template)


def _model_problems(
    exc: ValidationError, file: str, index: _LineIndex | _NoLines, prefix: FieldPath
) -> list[SpecProblem]:
    found = []
    for err in exc.errors(include_url=False):
        path = (*prefix, *_pydantic_path(err["loc"]))
        reason = _one_line(err["msg"].removeprefix("Value error, "))
        found.append(SpecProblem(file, index.line_of(path), _dotted(path), reason))
    return found


class _NoLines:
    """For data that did not come from a file (a resource read from the apiserver): every problem at line 1."""

    def line_of(self, path: FieldPath) -> int:
        return 1


def validate_spec_data(
    data: dict[str, Any], where: str, extra_check: ExtraCheck | None = None, templates: TemplateCatalog | None = None
) -> LocatedSpec:
    """Validate parsed data (a flat spec or a RampRollout object) exactly as a file; problems name `where`."""
    return _validated(data, where, _NoLines(), [], extra_check, templates)


def _validated(
    data: dict[str, Any],
    file: str,
    index: _LineIndex | _NoLines,
    problems: list[SpecProblem],
    extra_check: ExtraCheck | None,
    templates: TemplateCatalog | None = None,
) -> LocatedSpec:
    """Validate a flat spec or a RampRollout resource (its `spec`; paths then start with `spec.`)."""
    prefix: FieldPath = ()
    located_in: dict[str, FieldPath] = {name: (name,) for name in LOCATED_FIELDS}
    if is_resource(data):
        flat, envelope = spec_data_from_resource(data)
        for path, reason in envelope:
            problems.append(SpecProblem(file, index.line_of(path), _dotted(path), reason))
        if flat is None or problems:
            raise SpecError(sorted(problems, key=lambda p: p.line))
        prefix = ("spec",)
        spec_part = data.get("spec") or {}
        metadata = {"name": ("metadata", "name"), "namespace": ("metadata", "namespace")}
        located_in = {n: (("spec", n) if n in spec_part else metadata.get(n, ("spec", n))) for n in LOCATED_FIELDS}
        data = flat

    def locate(path: FieldPath) -> FieldPath:
        return (*prefix, *path)

    if is_template_data(data):
        reason = "a MetricTemplate, not a rollout spec: rollouts of its directory name it in gates[].template"
        raise SpecError([*problems, SpecProblem(file, index.line_of(("kind",)), "kind", reason)])
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        problems.extend(_model_problems(exc, file, index, prefix))
        raise SpecError(sorted(problems, key=lambda p: p.line)) from None
    spec, unresolved = resolve_templates(spec, templates or {})
    extra = extra_check(spec) if extra_check is not None else []
    for path, reason in [*unresolved, *semantic_problems(spec), *extra]:
        problems.append(SpecProblem(file, index.line_of(locate(path)), _dotted(locate(path)), reason))
    if problems:
        raise SpecError(sorted(problems, key=lambda p: p.line))
    lines = {name: index.line_of(located_in[name]) for name in LOCATED_FIELDS if name in data}
    warnings = [
        SpecProblem(file, index.line_of(locate(path)), _dotted(locate(path)), reason)
        for path, reason in spec_warnings(spec)
    ]
    return LocatedSpec(file, spec, lines, tuple(sorted(warnings, key=lambda p: p.line)))


def load_spec(path: Path, extra_check: ExtraCheck | None = None) -> RolloutSpec:
    return load_spec_located(path, extra_check).spec


def read_spec_file(path: Path) -> str:
    """The text of a spec file: a regular file, at most MAX_SPEC_BYTES, UTF-8; SpecError otherwise."""

    def problem(reason: str) -> SpecError:
        return SpecError([SpecProblem(str(path), 1, "", reason)])

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise problem("not a regular file")  # a FIFO or device could block or never end
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)  # never trust st_size alone
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise problem(f"file larger than {MAX_SPEC_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise problem("file is not UTF-8 text") from None


def load_spec_located(
    path: Path, extra_check: ExtraCheck | None = None, templates: TemplateCatalog | None = None
) -> LocatedSpec:
    """One spec file; its `template:` gates resolve against `templates`, by default those of its directory."""
    text = read_spec_file(path)
    if templates is None:
        templates = load_templates(path.parent).catalog
    return parse_spec_located(text, str(path), extra_check, templates)


def spec_files(paths: list[Path]) -> list[Path]:
    """Expand directories to their *.yaml / *.yml files (sorted); keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            found.append(path)
    return found

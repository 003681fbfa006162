"""Custom metrics: PromQL templates for `metric: custom` gates, and reusable MetricTemplate documents.

A custom gate gives EITHER `query` (PromQL answering one value per version), OR `bad` + `total` (two
counter selectors; Ramp computes 100 * increase(bad) / increase(total) per version, and their per-series
increments feed the statistical test), OR `template: <name>`, a MetricTemplate document of the spec's
directory with the same fields, defined once and shared.

Templates are rendered once per tick for EVERY rollout that uses them: `{{ service }}` and `{{ namespace }}`
become a regex alternation of all their services and namespaces, so they must fill a whole `=~"..."`
matcher (`destination_service_name=~"{{ service }}"`); the answer is split per (namespace, service, version)
by the labels of `labels` (Istio's by default). `{{ window }}` (the analysis window, e.g. `30s`) must sit in a
range `[...]`, and `{{ reporter }}` (destination | source) fill a whole matcher. The checks here are static
and cheap (placeholders, balanced brackets and quotes, size); Prometheus itself judges the rest, and a bad
answer is *no data*, never a pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from controller.spec_rules import DNS_LABEL_PATTERN

if TYPE_CHECKING:
    from controller.spec import RolloutSpec
    from controller.spec_loader import SpecProblem

MAX_QUERY_CHARS = 4096
PLACEHOLDERS = ("namespace", "service", "window", "reporter")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_NAME_PATTERN = f"^{_LABEL}$"
_MATCHER_BEFORE = re.compile(rf"{_LABEL}\s*=~\s*\"$")
_EQUAL_BEFORE = re.compile(rf"{_LABEL}\s*=~?\s*\"$")
_SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{(.*)\}\s*", re.DOTALL)
_MATCHER = re.compile(rf"\s*({_LABEL})\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"\s*(,|$)", re.DOTALL)
_CLOSING = {")": "(", "]": "[", "}": "{"}


def _scan_problem(text: str) -> str | None:
    """Unbalanced brackets or an unterminated string literal, outside strings and comments."""
    stack: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "\"'`":
            end = i + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" and char != "`" else 1
            if end >= len(text):
                return f"unterminated string starting at character {i + 1}"
            i = end + 1
            continue
        if char == "#":  # a comment runs to the end of the line
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
            continue
        if char in "([{":
            stack.append(char)
        elif char in _CLOSING:
            if not stack or stack[-1] != _CLOSING[char]:
                return f"unbalanced {char!r} at character {i + 1}"
            stack.pop()
        i += 1
    return f"unclosed {stack[-1]!r}" if stack else None


def _text_problem(text: str) -> str | None:
    if not text.strip():
        return "empty query"
    if len(text) > MAX_QUERY_CHARS:
        return f"query longer than {MAX_QUERY_CHARS} characters"
    if any(not (c.isprintable() or c in "\n\t") for c in text):
        return "query has control characters"
    return None


def placeholder_problems(text: str, *, window_allowed: bool = True) -> list[str]:
    """Each placeholder known and where batching can fill it; no stray `{{`/`}}`."""
    problems: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        name, before, after = match.group(1), text[: match.start()], text[match.end() :]
        shown = "{{ " + name + " }}"
        if name not in PLACEHOLDERS:
            problems.append(f"unknown placeholder {shown} (known: {', '.join(PLACEHOLDERS)})")
        elif name in ("service", "namespace") and not (_MATCHER_BEFORE.search(before) and after.startswith('"')):
            problems.append(
                f'{shown} must fill a whole regex matcher, e.g. label=~"{shown}": Ramp renders it as an '
                "alternation of every rollout sharing the query"
            )
        elif name == "reporter" and not (_EQUAL_BEFORE.search(before) and after.startswith('"')):
            problems.append(f'{shown} must fill a whole matcher, e.g. reporter="{shown}"')
        elif name == "window" and not window_allowed:
            problems.append(f"{shown} is not used here: Ramp applies the window to bad and total itself")
        elif name == "window" and not (before.rstrip().endswith("[") and after.lstrip()[:1] in ("]", ":")):
            problems.append(f"{shown} must be a range, e.g. [{shown}]")
    rest = _PLACEHOLDER.sub("x", text)
    if "{{" in rest or "}}" in rest:
        problems.append("stray '{{' or '}}': placeholders are {{ namespace }}, {{ service }}, {{ window }}, "
                        "{{ reporter }}")
    return problems


def check_query(text: str) -> str:
    """A `query`: sane text, known placeholders in batchable places, service and namespace both used."""
    problem = _text_problem(text) or _scan_problem(_PLACEHOLDER.sub("x", text))
    problems = [problem] if problem else placeholder_problems(text)
    used = {m.group(1) for m in _PLACEHOLDER.finditer(text)}
    for needed in ("service", "namespace"):
        if not problems and needed not in used:
            problems.append(
                f'the query must select the rollouts\' {needed}s with =~"{{{{ {needed} }}}}", so that one query '
                "serves every rollout sharing it"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return text


def check_selector(text: str) -> str:
    """`bad` / `total`: one counter selector `metric{label op "value", ...}`, placeholders as in a query."""
    problem = _text_problem(text)
    if problem is None:
        whole = _SELECTOR.fullmatch(text)
        if whole is None:
            problem = 'expected one counter selector, e.g. istio_requests_total{response_code=~"5.."}'
        else:
            matchers, at = whole.group(2), 0
            while problem is None and matchers[at:].strip():
                found = _MATCHER.match(matchers, at)
                if found is None:
                    problem = f"cannot read the matchers from {matchers[at:at + 40]!r}"
                else:
                    at = found.end()
    problems = [problem] if problem else placeholder_problems(text, window_allowed=False)
    used = {m.group(1) for m in _PLACEHOLDER.finditer(text)}
    if not problems and not {"service", "namespace"} <= used:
        problems.append('the selector must match destination_service_name=~"{{ service }}" and the namespace '
                        'label =~"{{ namespace }}" (or the labels of `labels`)')
    if problems:
        raise ValueError("; ".join(problems))
    return text


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace every placeholder with its value (values are DNS labels, durations or reporters: no escaping)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _client_error_code(value: object) -> str:
    """A 4xx status code counted as an error, as a string like the response_code label ("429")."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'codes are strings, as in the response_code label: write "{value}"')
    if not isinstance(value, str) or len(value) != 3 or not value.isdigit() or not 400 <= int(value) <= 499:
        raise ValueError(f"codes are 4xx status codes (400-499), got {value!r}")
    return value


ClientErrorCode = Annotated[
    str,
    BeforeValidator(_client_error_code),
    WithJsonSchema({"type": "string", "pattern": "^4[0-9][0-9]$", "description": "an HTTP status code 400-499"}),
]


_QUERY_SCHEMA = {"type": "string", "maxLength": MAX_QUERY_CHARS}
Query = Annotated[
    str,
    AfterValidator(check_query),
    WithJsonSchema({**_QUERY_SCHEMA, "description": 'PromQL, one value per version; e.g. svc=~"{{ service }}"'}),
]
Selector = Annotated[
    str,
    AfterValidator(check_selector),
    WithJsonSchema({**_QUERY_SCHEMA, "description": "A counter selector: metric{matchers}"}),
]
LabelName = Annotated[str, Field(pattern=_LABEL_NAME_PATTERN, max_length=128)]


class MetricLabels(BaseModel):
    """The labels of the answer that say which rollout and version a value belongs to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: LabelName = "destination_version"
    service: LabelName = "destination_service_name"
    namespace: LabelName = "destination_workload_namespace"


class MetricTemplate(BaseModel):
    """A reusable custom metric (a document of its own in the spec directory), referenced by `template:`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["ramp/v1"] = Field(default="ramp/v1", alias="apiVersion")
    kind: Literal["MetricTemplate"]
    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
    description: str | None = Field(default=None, max_length=500)
    query: Query | None = None
    bad: Selector | None = None
    total: Selector | None = None
    labels: MetricLabels = Field(default_factory=MetricLabels)
    higher_is_better: bool = Field(default=False, description="query: a higher value is better (e.g. a success rate)")


def template_problems(template: MetricTemplate) -> list[tuple[tuple[str | int, ...], str]]:
    return body_problems(template.query, template.bad, template.total, template.higher_is_better, ())


def body_problems(
    query: str | None, bad: str | None, total: str | None, higher_is_better: bool, at: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Exactly one of query, or bad + total; higher_is_better only for a query."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if query is not None and (bad is not None or total is not None):
        problems.append((at, "give either query, or bad and total, not both"))
    elif query is None and (bad is None) != (total is None):
        missing = "total" if total is None else "bad"
        problems.append(((*at, missing), f"bad and total go together: {missing} is missing"))
    elif query is None and bad is None:
        problems.append((at, "a custom metric needs query, or bad and total, or template"))
    if higher_is_better and query is None:
        reason = "higher_is_better applies to query only (bad/total: less is better)"
        problems.append(((*at, "higher_is_better"), reason))
    return problems


@dataclass(frozen=True)
class LocatedTemplate:
    file: str
    line: int
    template: MetricTemplate


TemplateCatalog = Mapping[str, LocatedTemplate]
_FROM_TEMPLATE = ("query", "bad", "total", "labels", "higher_is_better")


def resolve_templates(
    spec: RolloutSpec, catalog: TemplateCatalog
) -> tuple[RolloutSpec, list[tuple[tuple[str | int, ...], str]]]:
    """The spec with each `template:` gate replaced by the template's fields (the gate named after the template
    unless it has a name), so the running spec is self-contained; problems for unknown names."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    gates = list(spec.gates)
    for i, gate in enumerate(spec.gates):
        if gate.template is None or gate.metric != "custom":
            continue
        found = catalog.get(gate.template)
        if found is None:
            known = ", ".join(sorted(catalog)) or "none"
            reason = f"unknown metric template {gate.template!r} (in the spec's directory: {known})"
            problems.append((("gates", i, "template"), reason))
            continue
        body = {name: getattr(found.template, name) for name in _FROM_TEMPLATE}
        gates[i] = gate.model_copy(update={**body, "template": None, "name": gate.name or found.template.name})
    if problems:
        return spec, problems
    return spec.model_copy(update={"gates": gates}), []


@dataclass(frozen=True)
class TemplateSet:
    """The MetricTemplates of a directory: by name, the files that hold templates, and their problems."""

    catalog: dict[str, LocatedTemplate]
    files: frozenset[str]
    problems: tuple[SpecProblem, ...]


def load_templates(directory: Path) -> TemplateSet:
    """Every `kind: MetricTemplate` file of a directory; a name defined twice is refused in both files."""
    # the loader imports this module (templates resolve while a spec loads): import it when called
    from controller.spec_loader import (
        SpecError,
        SpecProblem,
        is_template_data,
        parse_document,
        parse_template_located,
        read_spec_file,
        spec_files,
    )

    found: list[LocatedTemplate] = []
    files: set[str] = set()
    problems: list[SpecProblem] = []
    for path in spec_files([directory]) if directory.is_dir() else []:
        try:
            text = read_spec_file(path)
            if "MetricTemplate" not in text or not is_template_data(parse_document(text, str(path))[0]):
                continue  # a rollout spec (or a broken file, reported when it is loaded as one)
            files.add(str(path))
            found.append(parse_template_located(text, str(path)))
        except SpecError as exc:
            problems.extend(exc.problems if str(path) in files else [])
    by_name: dict[str, list[LocatedTemplate]] = {}
    for located in found:
        by_name.setdefault(located.template.name, []).append(located)
    catalog: dict[str, LocatedTemplate] = {}
    for name, defined in by_name.items():
        if len(defined) == 1:
            catalog[name] = defined[0]
            continue
        for one in defined:
            others = ", ".join(f"{o.file}:{o.line}" for o in defined if o is not one)
            problems.append(SpecProblem(one.file, one.line, "name", f"template {name!r} is also defined at {others}"))
    return TemplateSet(catalog, frozenset(files), tuple(sorted(problems, key=lambda p: (p.file, p.line))))

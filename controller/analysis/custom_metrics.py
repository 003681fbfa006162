"""Custom gates' queries: rendered once per tick for every rollout that shares them, and their answers checked.

A custom gate's PromQL is a template (controller.spec_metrics). Its window and reporter are rendered per
rollout; `{{ service }}` and `{{ namespace }}` stay until the batch is known, then become a regex alternation
of every service and namespace that uses the same query, so rollouts sharing a template (same text, window,
reporter and labels) share ONE query per tick: the number of queries does not grow with the rollouts.

- `query:` one instant query, one value per (namespace, service, version);
- `bad:` + `total:` two windowed queries, `sum by (labels) (increase(<selector>[window]))`, for the percentage;
  a statistical gate also reads both counters raw, per series (no aggregation), for reset-safe increments.

Every answer is checked like the built-in ones (`prometheus_parse`): an element that is not an object, a
label that is not a string, a missing namespace/service/version label, NaN, +-Inf, a negative or unparseable
value, or the same version (or series) twice, gives *no data* for what it belongs to, never a pass.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.analysis.metrics import ProblemKey, WorkloadKey
from controller.analysis.prometheus_parse import parse_number, series_id
from controller.spec import Gate, RolloutSpec
from controller.spec_metrics import render


def prom_window(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


@dataclass(frozen=True)
class CustomQuery:
    """One query of custom gates before the batch fills `{{ service }}` / `{{ namespace }}`.

    Equal CustomQuery objects are one query per tick, whatever the number of rollouts using it."""

    text: str  # window and reporter rendered
    labels: tuple[str, str, str]  # the answer's (namespace, service, version) labels
    raw: bool = False  # counters per series (statistical gates): each series is kept apart

    @property
    def id(self) -> str:
        """A short stable id: keys the snapshot's values and problems (a problem kind of its own)."""
        digest = hashlib.blake2b(repr((self.text, self.labels, self.raw)).encode(), digest_size=8).hexdigest()
        return f"custom:{digest}"

    def promql(self, services: Iterable[str], namespaces: Iterable[str]) -> str:
        # Names are DNS labels (validated), so they need no regex escaping.
        return render(
            self.text, {"service": "|".join(sorted(set(services))), "namespace": "|".join(sorted(set(namespaces)))}
        )


@dataclass(frozen=True)
class GateQueries:
    """What one custom gate reads: a value query, or windowed bad/total (and their raw counters)."""

    value: CustomQuery | None = None
    bad: CustomQuery | None = None
    total: CustomQuery | None = None
    raw_bad: CustomQuery | None = None
    raw_total: CustomQuery | None = None

    @property
    def all(self) -> tuple[CustomQuery, ...]:
        found = (self.value, self.bad, self.total, self.raw_bad, self.raw_total)
        return tuple(q for q in found if q is not None)


def gate_queries(gate: Gate, spec: RolloutSpec) -> GateQueries:
    """The queries of a (resolved) custom gate of `spec`; empty for other gates."""
    if gate.metric != "custom":
        return GateQueries()
    names = gate.metric_labels
    labels = (names.namespace, names.service, names.version)
    return _queries(gate.query, gate.bad, gate.total, gate.statistical, labels, spec.analysis.window,
                    spec.analysis.reporter)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _queries(
    query: str | None,
    bad_text: str | None,
    total_text: str | None,
    statistical: bool,
    labels: tuple[str, str, str],
    window_seconds: float,
    reporter: str,
) -> GateQueries:
    """Rendered once per distinct gate (rollouts sharing a template share it), not per rollout per tick."""
    window = prom_window(window_seconds)
    fill = {"window": window, "reporter": reporter}
    keep = {"service": "{{ service }}", "namespace": "{{ namespace }}"}
    if query is not None:
        return GateQueries(value=CustomQuery(render(query, {**fill, **keep}), labels))
    if bad_text is None or total_text is None:
        return GateQueries()  # an unresolved template: the loader refuses it; evaluation says no data
    by = ", ".join(labels)
    bad, total = render(bad_text, {**fill, **keep}), render(total_text, {**fill, **keep})
    queries = GateQueries(
        bad=CustomQuery(f"sum by ({by}) (increase({bad}[{window}]))", labels),
        total=CustomQuery(f"sum by ({by}) (increase({total}[{window}]))", labels),
    )
    if not statistical:
        return queries
    raw_bad, raw_total = CustomQuery(bad, labels, raw=True), CustomQuery(total, labels, raw=True)
    return GateQueries(None, queries.bad, queries.total, raw_bad, raw_total)


def spec_queries(spec: RolloutSpec) -> tuple[CustomQuery, ...]:
    """Every custom query a rollout needs this tick, once each."""
    found: dict[CustomQuery, None] = {}
    for gate in spec.gates:
        found.update(dict.fromkeys(gate_queries(gate, spec).all))
    return tuple(found)


@dataclass
class CustomParsed:
    values: dict[WorkloadKey, float] = field(default_factory=dict)  # instant / windowed: per version
    series: dict[WorkloadKey, dict[str, float]] = field(default_factory=dict)  # raw: per version, per series
    problems: dict[ProblemKey, str] = field(default_factory=dict)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _describe(labels: Any, names: tuple[str, str, str]) -> str:
    if not isinstance(labels, dict):
        return f"a custom query's element (labels {_short(labels, 40)})"
    shown = [f'{k}="{_short(labels[k])}"' for k in names if k in labels]
    return "a custom query's series {" + ", ".join(shown) + "}"


def _scope(query: CustomQuery, labels: Any) -> ProblemKey:
    """The narrowest data a bad element can blank out (as prometheus_parse does for the built-in queries)."""
    if not isinstance(labels, dict):
        return (query.id, None, None, None)
    namespace, service, version = (labels.get(name) for name in query.labels)
    if not (isinstance(namespace, str) and namespace and isinstance(service, str) and service):
        return (query.id, None, None, None)
    if not isinstance(version, str) or not version:
        return (query.id, namespace, service, None)
    return (query.id, namespace, service, version)


def _element_problem(item: Any, query: CustomQuery) -> tuple[str | None, float | None]:
    if not isinstance(item, dict):
        return f"an element of type {type(item).__name__} instead of an object", None
    labels = item.get("metric")
    if not isinstance(labels, dict):
        return f"labels of type {type(labels).__name__} instead of an object", None
    for name, value in labels.items():
        if not isinstance(value, str):
            return f"a {type(value).__name__} label {_short(name, 40)}={_short(value, 40)}", None
    for name in query.labels:
        if not labels.get(name):
            return f"no {name} label (the query must keep it, e.g. sum by ({', '.join(query.labels)}))", None
    pair = item.get("value")
    if not isinstance(pair, list) or len(pair) != 2:
        return f'a value {_short(pair, 40)} instead of a [timestamp, "number"] pair', None
    if isinstance(pair[0], bool) or not isinstance(pair[0], int | float):
        return f"a timestamp {_short(pair[0], 40)}", None
    value, wrong = parse_number(pair[1])
    return wrong, value


def parse_custom(result: Sequence[Any], query: CustomQuery) -> CustomParsed:
    """Check every element of a custom query's `data.result`; values per version (or per series when raw)."""
    parsed = CustomParsed()
    twice: set[WorkloadKey] = set()
    for item in result:
        problem, value = _element_problem(item, query)
        labels = item.get("metric") if isinstance(item, dict) else None
        scope = _scope(query, labels)
        if problem is None and value is not None and isinstance(labels, dict):
            key: WorkloadKey = (labels[query.labels[0]], labels[query.labels[1]], labels[query.labels[2]])
            if query.raw:
                per_series = parsed.series.setdefault(key, {})
                identity = series_id(labels)
                if identity not in per_series:
                    per_series[identity] = value
                    continue
                problem = "the same series twice"
            elif key not in parsed.values and key not in twice:
                parsed.values[key] = value
                continue
            else:  # two values for one version: which one is right is unknown
                twice.add(key)
                parsed.values.pop(key, None)
                problem = f"two values for one version (group the query by {query.labels[2]})"
        what = problem or "an unusable element"
        parsed.problems.setdefault(scope, f"Prometheus returned {what} for {_describe(labels, query.labels)}")
    return parsed

"""Prometheus range answers (matrices) as time series, for `ramp report`: pure, and every value checked.

An answer's `data.result` is a list of `{"metric": {labels}, "values": [[unix time, "value"], ...]}`. Nothing in it
is trusted: an item that is not such a series, a label that is not a short string, a point that is not a
`[finite time >= 0, value]` pair, an unreadable value and a repeated time are skipped and counted; NaN and
infinities become None (a gap in a chart, never a point at infinity); at most MAX_SERIES series and MAX_POINTS
points per series (Prometheus' own limit) are read. Only an answer that is not a list at all raises
PrometheusAnswerError.

Several series for one key (`version`, `gate`, ...) that differ in other labels are the same metric exported by
several controller replicas (a restarted pod, a former leader or shard owner still exporting what it last saw):
`keyed` keeps, at each moment, the replica whose values changed last (the one ticking the rollout).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.analysis.prometheus_http import PrometheusAnswerError
from controller.deadline import Deadline
from controller.report.model import MAX_NAME

MAX_SERIES = 64
MAX_POINTS = 11_000
MAX_LABEL_CHARS = MAX_NAME  # a label value longer than a report name is not a version or gate name
MAX_VALUE_CHARS = 64  # a sample value as text ("1.2345e+06", "NaN"); anything longer is not one

Points = dict[float, float | None]  # time -> value (None: NaN or an infinity), in time order
Labels = tuple[tuple[str, str], ...]


class RangeQueryClient(Protocol):
    """What `ramp report` asks of Prometheus (PrometheusHTTP.query_range): a matrix's `data.result`."""

    def query_range(self, promql: str, start: float, end: float, step: float, deadline: Deadline) -> list[Any]: ...


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    points: Points


@dataclass(frozen=True)
class RangeAnswer:
    series: tuple[Series, ...] = ()
    skipped_series: int = 0  # not a series, or beyond MAX_SERIES
    skipped_points: int = 0  # unreadable, repeated time, or beyond MAX_POINTS
    skipped_labels: int = 0  # labels that are not short strings (dropped from their series)

    def problems(self) -> str | None:
        """What was skipped, for a note; None when the answer was read whole."""
        parts = [f"{count} {what}" for count, what in ((self.skipped_series, "series"),
                 (self.skipped_points, "points"), (self.skipped_labels, "labels")) if count]  # fmt: skip
        return ", ".join(parts) + " unreadable or over the limits, skipped" if parts else None


def _number(raw: object) -> tuple[bool, float | None]:
    """(readable, value) of a sample value: None for NaN and infinities (a gap)."""
    if isinstance(raw, bool):
        return False, None
    if isinstance(raw, int | float):
        number = float(raw)
    elif isinstance(raw, str) and len(raw) <= MAX_VALUE_CHARS:
        try:
            number = float(raw)
        except ValueError:
            return False, None
    else:
        return False, None
    return True, (number if math.isfinite(number) else None)


def _time(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    at = float(raw)
    return at if math.isfinite(at) and at >= 0 else None


def _labels(raw: object) -> tuple[dict[str, str], int] | None:
    """Labels (missing: none), and how many were dropped; None when `metric` is not an object at all."""
    if raw is None:
        return {}, 0
    if not isinstance(raw, dict):
        return None
    labels: dict[str, str] = {}
    dropped = 0
    for key, value in list(raw.items())[:64]:
        if isinstance(key, str) and isinstance(value, str) and 0 < len(key) <= 128 and len(value) <= MAX_LABEL_CHARS:
            labels[key] = value
        else:
            dropped += 1
    return labels, dropped + max(0, len(raw) - 64)


def _points(raw: list[Any], max_points: int) -> tuple[Points, int]:
    points: Points = {}
    skipped = max(0, len(raw) - max_points)
    for item in raw[:max_points]:
        if not isinstance(item, list | tuple) or len(item) != 2:
            skipped += 1
            continue
        at = _time(item[0])
        readable, value = _number(item[1])
        if at is None or not readable or at in points:
            skipped += 1
            continue
        points[at] = value
    return dict(sorted(points.items())), skipped


def parse_matrix(result: object, *, max_series: int = MAX_SERIES, max_points: int = MAX_POINTS) -> RangeAnswer:
    """The series of a range answer's `data.result`; see the module docstring for what is skipped."""
    if not isinstance(result, list):
        raise PrometheusAnswerError(f"a range answer's result is {type(result).__name__}, not a list")
    series: list[Series] = []
    skipped_series = skipped_points = skipped_labels = 0
    for item in result:
        if len(series) >= max_series:
            skipped_series += 1
            continue
        values = item.get("values") if isinstance(item, dict) else None
        read = _labels(item.get("metric")) if isinstance(item, dict) else None
        if read is None or not isinstance(values, list):
            skipped_series += 1
            continue
        labels, dropped = read
        points, bad = _points(values, max_points)
        skipped_points += bad
        skipped_labels += dropped
        series.append(Series(labels, points))
    return RangeAnswer(tuple(series), skipped_series, skipped_points, skipped_labels)


@dataclass
class Keyed:
    """Time series by the value of one label; `sources` replicas seen, `unkeyed` series without the label."""

    values: dict[str, Points] = field(default_factory=dict)
    sources: int = 0
    unkeyed: int = 0


def _changes(series: Mapping[str, Points]) -> list[float]:
    """When a replica's values changed: each series' first point and every point that differs from the one before."""
    found: set[float] = set()
    for points in series.values():
        before: object = object()
        for at, value in points.items():
            if value != before:
                found.add(at)
            before = value
    return sorted(found)


def _last_before(marks: list[float], at: float) -> float:
    index = bisect.bisect_right(marks, at)
    return marks[index - 1] if index else -math.inf


def keyed(answer: RangeAnswer, key: str | None) -> Keyed:
    """Series by their `key` label (None: a metric without one, under the key ""); across replicas, at each
    moment the one whose values changed last."""
    sources: dict[Labels, dict[str, Points]] = {}
    unkeyed = 0
    for one in answer.series:
        name = "" if key is None else one.labels.get(key)
        if name is None or (key is not None and not name):
            unkeyed += 1
            continue
        identity = tuple(sorted((k, v) for k, v in one.labels.items() if k not in (key, "__name__")))
        sources.setdefault(identity, {}).setdefault(name, one.points)  # a repeated series: the first is kept
    if len(sources) <= 1:
        only = next(iter(sources.values()), {})
        return Keyed({name: dict(points) for name, points in only.items()}, len(sources), unkeyed)
    order = sorted(sources)
    changes = {identity: _changes(sources[identity]) for identity in order}
    times = sorted({at for identity in order for points in sources[identity].values() for at in points})
    merged: dict[str, Points] = {}
    for at in times:
        present = [i for i in order if any(at in points for points in sources[i].values())]
        chosen = max(present, key=lambda identity: _last_before(changes[identity], at))  # ties: the first
        for name, points in sources[chosen].items():
            if at in points:
                merged.setdefault(name, {})[at] = points[at]
    return Keyed({name: dict(sorted(points.items())) for name, points in merged.items()}, len(sources), unkeyed)


def last_value(points: Points) -> tuple[float, float] | None:
    """The last (time, value) with a number, or None."""
    for at in reversed(points):
        value = points[at]
        if value is not None:
            return at, value
    return None

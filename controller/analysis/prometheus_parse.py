"""Check every sample of a Prometheus vector before it counts: hostile answers give *no data*, never a pass.

A sample must be `{"metric": {label: str, ...}, "value": [timestamp, "number"]}` with a finite,
non-negative number (Prometheus encodes NaN and infinities as the strings "NaN", "+Inf", "-Inf"), a
numeric `le` (or "+Inf") on histogram buckets, a status-code `response_code` on request counters (and a
numeric `grpc_response_status` when it has one), and
the same series only once. A sample that breaks a rule is not used, and it blanks out exactly what it
belongs to, with a reason naming the problem and the series:

- its (namespace, service, version) when those labels are readable strings;
- every version of its (namespace, service) when only the version is unreadable or missing;
- every rollout of the query (a wildcard) when it cannot be attributed at all.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from controller.analysis.metrics import ProblemKey, WorkloadKey

NAMESPACE, SERVICE, VERSION = "destination_workload_namespace", "destination_service_name", "destination_version"
GRPC_LABEL = "grpc_response_status"
_GRPC_STATUS = re.compile(r"\d{1,2}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = {"nan": "NaN", "+inf": "+Inf", "inf": "+Inf", "-inf": "-Inf"}
_RESPONSE_CODE = re.compile(r"\d{1,3}")
_SHOWN_LABELS = (NAMESPACE, SERVICE, VERSION, "response_code", "grpc_response_status", "le", "pod", "instance")


class Sample(NamedTuple):
    """One checked sample (a tuple: immutable, and built without a frozen dataclass' per-field setattr)."""

    labels: dict[str, str]
    key: WorkloadKey
    value: float
    le: float | None  # histogram buckets only


@dataclass
class Parsed:
    samples: list[Sample] = field(default_factory=list)
    problems: dict[ProblemKey, str] = field(default_factory=dict)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a large answer becomes objects (decoded, then checked).

    Those objects form no cycles, but allocating tens of thousands of them triggers collections that traverse
    the whole heap of a controller holding thousands of rollouts: most of a judging tick's CPU at 1,000. The
    collector is re-enabled at once after (unless something else had disabled it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label_text(value: Any) -> str:
    text = value if isinstance(value, str) else _short(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text.replace("\\", "\\\\").replace('"', '\\"')


def describe(metric: str, labels: Any) -> str:
    """`metric{ns="..", service="..", version="..", ...}` with the labels that identify the series."""
    if not isinstance(labels, dict):
        return f"{metric} (labels {_short(labels)})"
    shown = [f'{k}="{_label_text(labels[k])}"' for k in _SHOWN_LABELS if k in labels]
    return f"{metric}{{{', '.join(shown)}}}"


def parse_number(text: Any) -> tuple[float | None, str | None]:
    """(value, None) for a finite non-negative number written as Prometheus does; (None, what is wrong)."""
    if not isinstance(text, str):
        return None, f"a {type(text).__name__} value {_short(text)} instead of a string"
    if not _NUMBER.fullmatch(text):  # checked first: the common case (no special value matches it)
        special = _SPECIAL.get(text.strip().lower())
        if special is not None:
            return None, special
        return None, f"an unparseable value {_short(text)}"
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        return None, f"an out-of-range value {_short(text)}"
    if value < 0:
        return None, f"a negative value {text}"
    return value, None


def series_id(labels: dict[str, str], *, drop: Sequence[str] = ("__name__",)) -> str:
    """A short stable id of a series' label set (a histogram's buckets share one: drop `le`)."""
    kept = sorted((k, v) for k, v in labels.items() if k not in drop)
    # repr() quotes and escapes both sides, so no two label sets share a text (cheaper than json.dumps: hot path)
    text = ",".join(f"{k!r}={v!r}" for k, v in kept)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _scope(kind: str, labels: Any) -> ProblemKey:
    """The narrowest data a bad sample with these labels can blank out."""
    if not isinstance(labels, dict):
        return (kind, None, None, None)
    namespace, service, version = labels.get(NAMESPACE), labels.get(SERVICE), labels.get(VERSION)
    if not isinstance(namespace, str) or not isinstance(service, str) or not namespace or not service:
        return (kind, None, None, None)
    if not isinstance(version, str) or not version:
        return (kind, namespace, service, None)
    return (kind, namespace, service, version)


@functools.lru_cache(maxsize=256)
def _bucket_bound(le: str) -> float | None:
    """A bucket's `le` as a number (+Inf included), None when it is not one; cached: answers repeat a few bounds."""
    return math.inf if le == "+Inf" else parse_number(le)[0]


def _labels_problem(labels: Any, histogram: bool) -> str | None:
    if not isinstance(labels, dict):
        return f"labels of type {type(labels).__name__} instead of an object"
    for name, value in labels.items():
        if not isinstance(value, str):
            return f"a {type(value).__name__} label {name}={_short(value)}"
    for name in (NAMESPACE, SERVICE, VERSION):
        if not labels.get(name):
            return f"no {name} label"
    if histogram:
        if "le" not in labels:
            return "a bucket without an le label"
        le = labels["le"]
        if le != "+Inf" and _bucket_bound(le) is None:
            return f"a bucket bound le={_short(le)}"
    elif not _RESPONSE_CODE.fullmatch(labels.get("response_code", "")):
        return f"a response_code of {_short(labels.get('response_code'))}"
    elif labels.get(GRPC_LABEL, "") != "" and not _GRPC_STATUS.fullmatch(labels[GRPC_LABEL]):
        return f"a {GRPC_LABEL} of {_short(labels[GRPC_LABEL])}"
    return None


def _series_identity(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    """The exact label set (values checked to be strings), `__name__` left out."""
    if "__name__" in labels:
        return frozenset((k, v) for k, v in labels.items() if k != "__name__")
    return frozenset(labels.items())  # built in C


class _SeenSeries:
    """The series of one answer so far, for `twice`. Keyed by the hash of the exact label set with the first
    labels seen under it: no object per series is kept (tens of thousands of them would only feed the garbage
    collector); a hash shared by two different label sets is told apart exactly."""

    def __init__(self) -> None:
        self._first: dict[int, dict[str, str]] = {}
        self._collided: set[frozenset[tuple[str, str]]] = set()

    def twice(self, labels: dict[str, str]) -> bool:
        """True when this exact label set was seen before in the answer (then recorded)."""
        identity = _series_identity(labels)
        key = hash(identity)
        first = self._first.get(key)
        if first is None:
            self._first[key] = labels
            return False
        if _series_identity(first) == identity:
            return True
        if identity in self._collided:
            return True
        self._collided.add(identity)
        return False


def parse_vector(result: Sequence[Any], metric: str, kind: str, *, histogram: bool) -> Parsed:
    """Check every element of `data.result`; `kind` says what a bad sample blanks out."""
    with collector_paused():
        return _parse_vector(result, metric, kind, histogram)


def _parse_vector(result: Sequence[Any], metric: str, kind: str, histogram: bool) -> Parsed:
    parsed = Parsed()
    seen = _SeenSeries()
    for item in result:
        labels = item.get("metric") if isinstance(item, dict) else None
        problem: str | None = None
        value: float | None = None
        if not isinstance(item, dict):
            problem = f"an element of type {type(item).__name__} instead of an object"
        else:
            problem = _labels_problem(labels, histogram)
            pair = item.get("value")
            if problem is None:
                if not isinstance(pair, list) or len(pair) != 2:
                    problem = f"a value {_short(pair)} instead of a [timestamp, \"number\"] pair"
                elif isinstance(pair[0], bool) or not isinstance(pair[0], int | float):
                    problem = f"a timestamp {_short(pair[0])}"
                else:
                    value, wrong = parse_number(pair[1])
                    problem = wrong
        if problem is None and isinstance(labels, dict) and seen.twice(labels):
            problem = "the same series twice"
        if problem is not None or value is None or not isinstance(labels, dict):
            reason = f"Prometheus returned {problem} for {describe(metric, labels)}"
            parsed.problems.setdefault(_scope(kind, labels), reason)
            continue
        le = _bucket_bound(labels["le"]) if histogram else None
        key = (labels[NAMESPACE], labels[SERVICE], labels[VERSION])
        parsed.samples.append(Sample(labels, key, value, le))
    return parsed

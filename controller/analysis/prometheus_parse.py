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

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.analysis.metrics import ProblemKey, WorkloadKey

NAMESPACE, SERVICE, VERSION = "destination_workload_namespace", "destination_service_name", "destination_version"
GRPC_LABEL = "grpc_response_status"
_GRPC_STATUS = re.compile(r"\d{1,2}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = {"nan": "NaN", "+inf": "+Inf", "inf": "+Inf", "-inf": "-Inf"}
_RESPONSE_CODE = re.compile(r"\d{1,3}")
_SHOWN_LABELS = (NAMESPACE, SERVICE, VERSION, "response_code", "grpc_response_status", "le", "pod", "instance")


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    key: WorkloadKey
    value: float
    le: float | None  # histogram buckets only


@dataclass
class Parsed:
    samples: list[Sample] = field(default_factory=list)
    problems: dict[ProblemKey, str] = field(default_factory=dict)


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
    special = _SPECIAL.get(text.strip().lower())
    if special is not None:
        return None, special
    if not _NUMBER.fullmatch(text):
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
        if le != "+Inf" and parse_number(le)[1] is not None:
            return f"a bucket bound le={_short(le)}"
    elif not _RESPONSE_CODE.fullmatch(labels.get("response_code", "")):
        return f"a response_code of {_short(labels.get('response_code'))}"
    elif labels.get(GRPC_LABEL, "") != "" and not _GRPC_STATUS.fullmatch(labels[GRPC_LABEL]):
        return f"a {GRPC_LABEL} of {_short(labels[GRPC_LABEL])}"
    return None


def parse_vector(result: Sequence[Any], metric: str, kind: str, *, histogram: bool) -> Parsed:
    """Check every element of `data.result`; `kind` says what a bad sample blanks out."""
    parsed = Parsed()
    seen: set[frozenset[tuple[str, str]]] = set()
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
        scope = _scope(kind, labels)
        if problem is None and isinstance(labels, dict):
            # The exact label set (values checked to be strings): cheaper than hashing a text, for every sample.
            identity = frozenset((k, v) for k, v in labels.items() if k != "__name__")
            if identity in seen:
                problem = "the same series twice"
            seen.add(identity)
        if problem is not None or value is None or not isinstance(labels, dict):
            reason = f"Prometheus returned {problem} for {describe(metric, labels)}"
            parsed.problems.setdefault(scope, reason)
            continue
        le = None
        if histogram:
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        key = (labels[NAMESPACE], labels[SERVICE], labels[VERSION])
        parsed.samples.append(Sample(labels, key, value, le))
    return parsed

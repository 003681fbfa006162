"""What `kubectl get` prints for a custom resource, from its CRD's `additionalPrinterColumns`.

Transcribed from Kubernetes for the simple JSONPaths a CRD may use (`.status.phase`, `.metadata.name`):
- the API server's table convertor (apiextensions-apiserver, registry/customresource/tableconvertor):
  a missing field is a nil cell; a `string` column prints the value as JSONPath prints it (a string as is,
  a number or bool as its JSON text); `integer` takes int64 (a float64 truncated) else nil; `date` parses
  RFC 3339 and shows the age with apimachinery's `duration.HumanDuration` (`<invalid>` when unparsable);
- kubectl's table printer (cli-runtime printers/tableprinter.go): the NAME column first; columns with a
  priority other than 0 only with `-o wide`; a nil cell prints as nothing; a cell is cut at its first line
  break with "..." appended; headers upper-cased; cells aligned by a tabwriter (padding 3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_MISSING = object()


def jsonpath(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a simple JSONPath (`.a.b.c`), or _MISSING (AllowMissingKeys)."""
    if not path.startswith("."):
        raise ValueError(f"not a simple JSONPath: {path!r}")
    current: Any = obj
    for key in path[1:].split("."):
        if not isinstance(current, Mapping) or key not in current:
            return _MISSING
        current = current[key]
    return current


def human_duration(seconds: float) -> str:
    """apimachinery/pkg/util/duration.HumanDuration."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        s = whole % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def cell(obj: Mapping[str, Any], column: Mapping[str, Any], now: datetime) -> str | None:
    """The cell the API server computes for `column` (None: a nil cell)."""
    value = jsonpath(obj, column["jsonPath"])
    if value is _MISSING or value is None:
        return None
    kind = column["type"]
    if kind == "string":
        return _json_text(value)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return str(int(value))
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return repr(float(value))
    if kind == "boolean":
        return str(value).lower() if isinstance(value, bool) else None
    if kind == "date":
        if not isinstance(value, str):
            return None
        try:
            stamp = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "<invalid>"
        return human_duration((now - stamp).total_seconds())
    return None


def _printed(text: str | None) -> str:
    if text is None:
        return ""
    for index, char in enumerate(text):
        if char in "\n\r\f":
            return text[:index] + "..."
    return text


def row(obj: Mapping[str, Any], columns: Sequence[Mapping[str, Any]], now: datetime, wide: bool = False) -> list[str]:
    """One printed row: NAME, then each visible column's cell as kubectl prints it."""
    name = jsonpath(obj, ".metadata.name")
    cells = [_printed(None if name is _MISSING else str(name))]
    for column in columns:
        if column.get("priority", 0) != 0 and not wide:
            continue
        cells.append(_printed(cell(obj, column, now)))
    return cells


def headers(columns: Sequence[Mapping[str, Any]], wide: bool = False) -> list[str]:
    return ["NAME", *(str(c["name"]).upper() for c in columns if c.get("priority", 0) == 0 or wide)]


def table(
    objects: Sequence[Mapping[str, Any]], columns: Sequence[Mapping[str, Any]], now: datetime, wide: bool = False
) -> str:
    """`kubectl get` output: a header line then one line per object, columns padded like its tabwriter."""
    lines = [headers(columns, wide), *(row(o, columns, now, wide) for o in objects)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        padded = [text.ljust(widths[i] + 3) for i, text in enumerate(line[:-1])]
        out.append("".join(padded) + line[-1])
    return "\n".join(out) + "\n"

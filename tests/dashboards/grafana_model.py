"""Reading the Grafana dashboards in dashboards/ and running their PromQL the way Grafana would.

Grafana replaces template variables before a query reaches Prometheus: `${datasource}` picks the
data source, `$namespace`/`$service` become the selected values (a regex for multi-value/"All"), and
the built-ins `$__rate_interval`, `$__interval` and `$__range` become durations. `substitute` does the
same with fixed values, so every panel target and annotation can be executed against a real Prometheus.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.local.processes import http_get

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What Grafana would substitute for its built-in variables on a short time range.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m"}
PANEL_STEP_SECONDS = 5.0  # range-query step of panels (= $__interval)

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_THRESHOLD_SELECTOR = re.compile(r"ramp_gate_threshold\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
GATE_METRICS = ("ramp_gate_threshold", "ramp_gate_evalue", "ramp_gate_stable_value")
MANUAL_VARIABLE_TYPES = frozenset({"custom", "constant", "textbox"})  # values typed in, not read from Prometheus
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON, for every *.json in dashboards/."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard.get("templating", {}).get("list", [])}


def variable_query(var: Mapping[str, Any]) -> str:
    """The PromQL/label_values text of a query variable (string form or Grafana's object form)."""
    query = var.get("query")
    if isinstance(query, dict):
        return str(query.get("query", ""))
    return str(query or "")


def duration_seconds(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a Grafana step duration: {text!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str
    where: str  # panel title + refId, or the annotation's name
    expr: str
    instant: bool
    step_seconds: float
    is_annotation: bool = False

    @property
    def label(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboard_queries(name: str, dashboard: Mapping[str, Any]) -> list[DashboardQuery]:
    """Every panel target and annotation query of one dashboard."""
    found: list[DashboardQuery] = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            found.append(
                DashboardQuery(
                    name,
                    f"panel {panel.get('title')!r} {target.get('refId')}",
                    str(target.get("expr", "")),
                    instant=bool(target.get("instant")) and not target.get("range"),
                    step_seconds=PANEL_STEP_SECONDS,
                )
            )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        found.append(
            DashboardQuery(
                name,
                f"annotation {annotation.get('name')!r}",
                str(annotation.get("expr", "")),
                instant=False,
                step_seconds=duration_seconds(str(annotation.get("step", "60s"))),
                is_annotation=True,
            )
        )
    return found


def is_gate_query(query: DashboardQuery) -> bool:
    """A query drawing the gates' thresholds, stable's values or e-values from the controller's metrics."""
    return any(metric in query.expr for metric in GATE_METRICS)


def threshold_selector(expr: str) -> tuple[str | None, str | None] | None:
    """The exact `kind` and `unit` matchers (None: not given) of the `ramp_gate_threshold{...}` selector in a
    query, or None when it reads no threshold. Several selectors must agree."""
    found = {
        (named.get("kind"), named.get("unit"))
        for selector in _THRESHOLD_SELECTOR.findall(expr)
        for named in [dict(_MATCHER.findall(selector))]
    }
    if len(found) > 1:
        raise ValueError(f"ramp_gate_threshold selectors disagree on kind/unit: {sorted(map(str, found))}")
    return found.pop() if found else None


def manual_threshold_variables(dashboard: Mapping[str, Any]) -> list[str]:
    """Variables someone must set by hand to draw a gate line: the old `error_threshold`/`latency_threshold`, or
    any typed-in (custom, constant, textbox) variable named like a threshold."""
    return sorted(
        name
        for name, var in variables(dashboard).items()
        if name in ("error_threshold", "latency_threshold")
        or (var.get("type") in MANUAL_VARIABLE_TYPES and "threshold" in name.lower())
    )


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace `$name` / `${name}` / `${name:format}` like Grafana; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"variable ${name} is not defined by the dashboard or Grafana")
        return values[name]

    return _VARIABLE.sub(replace, text)


def variable_values(
    dashboard: Mapping[str, Any], selected: Mapping[str, str], use_all: bool
) -> dict[str, str]:
    """Values for every variable: `selected` ones (or "All" where allowed and `use_all`), textbox defaults."""
    values = dict(BUILTINS)
    for name, var in variables(dashboard).items():
        if var["type"] == "datasource":
            continue
        if var["type"] == "textbox" or var["type"] == "constant":
            values[name] = str(var["query"])
        elif use_all and var.get("includeAll"):
            values[name] = str(var.get("allValue") or ".*")
        else:
            values[name] = selected[name]
    return values


# -- Prometheus HTTP API -----------------------------------------------------------------------
def _api(prometheus_url: str, path: str, params: list[tuple[str, str]]) -> Any:
    url = f"{prometheus_url.rstrip('/')}/api/v1/{path}?" + urllib.parse.urlencode(params)
    status, body = http_get(url, timeout=10.0)
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise RuntimeError(f"HTTP {status}: {data.get('errorType')}: {data.get('error')}")
    return data["data"]


def run_query(prometheus_url: str, expr: str, instant: bool, start: float, end: float, step: float) -> list[Any]:
    """Instant query at `end`, or a range query over [start, end] aligned to the step as Grafana
    aligns it (both ends rounded down to a multiple of the step); the `result` list."""
    if instant:
        data = _api(prometheus_url, "query", [("query", expr), ("time", f"{end:.3f}")])
    else:
        start, end = math.floor(start / step) * step, math.floor(end / step) * step
        params = [("query", expr), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", f"{step:g}")]
        data = _api(prometheus_url, "query_range", params)
    result: list[Any] = data["result"]
    return result


def label_values(prometheus_url: str, variable_text: str, start: float, end: float) -> list[str]:
    """What Grafana's `label_values(selector, label)` returns (the /api/v1/label/<label>/values API)."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_text.strip(), re.DOTALL)
    if match is None:
        raise ValueError(f"not a label_values() query: {variable_text!r}")
    selector, label = match.group(1), match.group(2)
    params = [("match[]", selector), ("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
    found: list[str] = _api(prometheus_url, f"label/{label}/values", params)
    return found


def samples(series: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(timestamp, value) of one result series, instant or range."""
    points = series["values"] if "values" in series else [series["value"]]
    return [(float(t), float(v)) for t, v in points]


def finite_values(result: list[Any]) -> list[float]:
    return [v for series in result for _, v in samples(series) if math.isfinite(v)]

"""Report -> one self-contained HTML page: uPlot's script and stylesheet inlined, the data as inline JSON, a
Content-Security-Policy that forbids loading anything (no scripts, fonts, images or requests from elsewhere).

Every text that comes from a state file, a spec or Prometheus is escaped (html.escape for markup; JSON with `<`,
`>`, `&` and the line separators escaped inside the data <script>, so no reason can close it).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from functools import cache
from html import escape
from importlib import resources
from typing import Any

from controller.report.build import Chart, Report

REPORT_MARK = '<meta name="generator" content="ramp report">'  # how a report is told from other files
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
UPLOT_VERSION = "1.6.32"


@cache
def _asset(name: str) -> str:
    return resources.files("controller.report").joinpath(name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(raw, escaped)
    return text


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _log_range(chart: Chart) -> list[float]:
    values = [v for s in chart.series for v in s.values if v is not None and v > 0 and math.isfinite(v)]
    low = min([0.1, *values])
    high = max([10.0, *values])
    return [low / 2, high * 2]


def _chart_data(chart: Chart) -> dict[str, Any]:
    return {
        "id": chart.id,
        "title": chart.title,
        "unit": chart.unit,
        "log": chart.log_scale,
        "stepped": chart.stepped,
        "range": _log_range(chart) if chart.log_scale else None,
        "x": list(chart.x),
        "series": [
            {"label": s.label, "kind": s.kind, "group": s.group, "values": list(s.values)} for s in chart.series
        ],
    }


def page_data(report: Report) -> dict[str, Any]:
    xs = [x for chart in report.charts for x in chart.x] + [a.at for a in report.annotations]
    start, end = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if end <= start:
        end = start + 1.0
    return {
        "start": start,
        "startText": _when(start),
        "end": end,
        "versions": list(report.inputs.versions),
        "charts": [_chart_data(chart) for chart in report.charts],
        "annotations": [{"at": a.at, "kind": a.kind, "label": a.label} for a in report.annotations],
        "spans": [{"start": s.start, "end": s.end, "kind": s.kind} for s in report.spans],
    }


def _table(rows: list[tuple[str, str]], table_id: str) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="{table_id}" class="kv">{body}</table>'


def summary_rows(report: Report) -> list[tuple[str, str]]:
    inputs = report.inputs
    rows = [
        ("rollout", f"{inputs.namespace}/{inputs.rollout} (service {inputs.service})"),
        ("new version", inputs.target),
        ("compared with", ", ".join(inputs.stable) or "-"),
        ("steps", " → ".join(inputs.steps) or "-"),
        ("outcome", inputs.final_phase or "-"),
        ("last reason", inputs.final_reason or "-"),
    ]
    return rows + list(inputs.summary)


def _phases_table(report: Report) -> str:
    rows = "".join(
        f'<tr class="mark-{escape(a.kind)}"><td>{i}</td><td>{escape(_when(a.at))}</td>'
        f"<td>{escape(a.label)}</td><td>{escape(a.reason)}</td></tr>"
        for i, a in enumerate(report.annotations, start=1)
    )
    return ('<table id="phases"><thead><tr><th>#</th><th>time</th><th>phase</th><th>reason</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")  # fmt: skip


def _holds_list(report: Report) -> str:
    holds = [s for s in report.spans if s.kind == "hold"]
    if not holds:
        return ""
    items = "".join(
        f"<li>{escape(_when(s.start))} for {s.end - s.start:.0f} s: "
        f"{escape(s.reason or 'gates held or had no data (the reason is kept in local timelines only)')}</li>"
        for s in holds
    )
    return f'<h2>Holds</h2><ul id="holds">{items}</ul>'


def _chart_boxes(report: Report) -> str:
    return "".join(
        f'<section class="chart" id="{escape(c.id)}" data-chart-kind="{escape(c.id.split("-")[1])}">'
        f'<h2>{escape(c.title)}</h2><div class="plot"></div></section>'
        for c in report.charts
    )


STYLE = """
body { font-family: sans-serif; margin: 20px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
table.kv th { background: #f4f4f4; }
tr.mark-rollback td { color: #b00; } tr.mark-promoted td { color: #080; }
.notes { color: #a60; } .source { color: #666; font-size: 0.85em; }
.legend-key { display: inline-block; width: 14px; height: 10px; margin-right: 4px; }
"""


def render_html(report: Report, generated_at: float) -> str:
    inputs = report.inputs
    title = f"Ramp report: {inputs.namespace}/{inputs.rollout} → {inputs.target}: {inputs.final_phase or '-'}"
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        REPORT_MARK,
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{escape(title)}</title>",
        f"<style>{_asset('vendor/uplot/uPlot.min.css')}</style>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="source">Source: {escape(inputs.source or "-")}. Generated {escape(_when(generated_at))} by '
        f"ramp report (charts: uPlot {UPLOT_VERSION}, MIT). Shaded: header-only test (violet), gates holding "
        "(orange). Numbered lines: the phase changes below.</p>",
        f'<ul class="notes" id="notes">{notes}</ul>' if notes else "",
        "<h2>Summary</h2>",
        _table(summary_rows(report), "summary"),
        _chart_boxes(report),
        "<h2>Phase changes</h2>",
        _phases_table(report),
        _holds_list(report),
        f'<script id="ramp-data" type="application/json">{_script_json(page_data(report))}</script>',
        f"<script>{_asset('vendor/uplot/uPlot.iife.min.js')}</script>",
        f"<script>{_asset('report.js')}</script>",
        "</body></html>",
    ])  # fmt: skip

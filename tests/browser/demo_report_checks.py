"""What a demo's report must show in a real browser, checked the same way for the healthy run (made by
tests/dashboards/test_dashboards.py's demo) and the faulty one (tests/browser/test_demo_report.py, the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.chromium import HeadlessChromium

READY = "document.body.dataset.chartsRendered !== undefined"
CHARTS_JS = """Array.from(document.querySelectorAll('section.chart')).map(function (s) {
  var canvas = s.querySelector('canvas'), drawn = 0;
  if (canvas) {
    var pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (var i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) { drawn++; } }
  }
  return {id: s.id, rendered: s.dataset.rendered, series: JSON.parse(s.dataset.series || 'null'),
          points: Number(s.dataset.points), drawn: drawn};
})"""
EXPECTED_SERIES = {
    "chart-weights": ["v1", "v2"],
    "chart-gate-error-rate": ["v2", "stable (v1)", "max 2", "stable + 1"],
    "chart-gate-latency-p99": ["v2", "stable (v1)", "max 250"],
    "chart-evalues": ["e-value error_rate", "K/alpha error_rate = 100"],
}


def check_demo_report(
    chromium: HeadlessChromium, report: Path, summary: dict[str, Any], scenario: str, screenshot: Path
) -> None:
    """The report renders with no console error and no request but itself, each chart holds its series (read
    back from uPlot's own plots) and is drawn, the tables match the demo's summary; a screenshot is kept."""
    with chromium.open(report, ready_js=READY) as page:
        assert page.console_errors == []
        assert page.requests == [page.url]  # the report itself, nothing else: no script, font or image
        charts = page.evaluate(CHARTS_JS)
        assert {c["id"]: c["series"] for c in charts} == EXPECTED_SERIES
        for chart in charts:
            assert chart["rendered"] == "true" and chart["points"] >= 3, chart
            assert chart["drawn"] > 2000, f"{chart['id']}: the canvas is (nearly) blank"
        plotted = page.evaluate("window.rampPlots.map(function (u) { return u.data; })")
        rows = dict(page.evaluate(
            "Array.from(document.querySelectorAll('#summary tr')).map(function (r) {"
            " return [r.cells[0].textContent, r.cells[1].textContent]; })"))  # fmt: skip
        phases = page.evaluate("Array.from(document.querySelectorAll('#phases tbody tr')).map(function (r) {"
                               " return r.cells[2].textContent + ' | ' + r.cells[3].textContent; })")  # fmt: skip
        page.screenshot(screenshot)
    assert rows["user requests"] == str(summary["requests"])
    assert rows["failed user requests"] == str(summary["failed_requests"])
    assert rows["outcome"] == summary["outcome"]
    weights = dict(zip(EXPECTED_SERIES["chart-weights"], plotted[0][1:], strict=True))
    evalues = plotted[3][1]
    assert all(v is None or v > 0 for v in evalues) and plotted[3][2][-1] == 100
    if scenario == "healthy":
        assert weights["v2"][0] == 0 and 10 in weights["v2"] and 50 in weights["v2"] and weights["v2"][-1] == 100
        assert phases[-1].startswith("Promoted")
    else:
        assert weights["v1"][-1] == 100 and weights["v2"][-1] == 0
        assert phases[-1].startswith("RolledBack") and "gate failed: error_rate of v2" in phases[-1]
        assert max(v for v in evalues if v is not None) > 1  # the evidence against v2 grew
        gate = plotted[1]  # chart-gate-error-rate: x, v2, stable, max, stable + margin
        assert max(v for v in gate[1] if v is not None) > 2  # v2's error rate crossed its max
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280

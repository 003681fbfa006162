"""The main job as a user runs it, `ramp demo --json --report PATH` in subprocesses, and its report in a real
browser (Debian's headless Chromium, through tests/browser/chromium.py).

Both scenarios run at once, each on its own stack on free loopback ports (about 40 s for the two). The report
of each must render with no console error and no request for anything but itself, every chart must hold the
series uPlot was given (read back from the plots), and a screenshot of each is kept in tests/artifacts/ (the
README's picture of the faulty report is one of them). The healthy run's summary is also checked in-process by
tests/dashboards/test_dashboards.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import HeadlessChromium
from tests.e2e.conftest import leftover_demo_processes, require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("healthy", "faulty")
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


@dataclass
class Demo:
    code: int
    summary: dict[str, Any]
    progress: str
    report: Path


@pytest.fixture(scope="module")
def demos(artifacts_dir: Path) -> dict[str, Demo]:
    reports = {s: artifacts_dir / f"report-{s}.html" for s in SCENARIOS}
    for report in reports.values():
        report.unlink(missing_ok=True)
    running = {
        s: subprocess.Popen(
            [sys.executable, "-m", "controller", "demo", "--json", "--timeout", "150", "--scenario", s,
             "--report", str(reports[s])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for s in SCENARIOS
    }  # fmt: skip
    done = {}
    try:
        for scenario, process in running.items():
            out, err = process.communicate(timeout=240)
            done[scenario] = Demo(process.returncode, json.loads(out), err, reports[scenario])
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
    return done


def test_faulty_demo_rolls_back_with_breaching_value_and_cleans_up(demos: dict[str, Demo]) -> None:
    demo = demos["faulty"]
    summary = demo.summary
    assert demo.code == 0, demo.progress
    assert summary["outcome"] == "RolledBack" == summary["expected_outcome"]
    reason = str(summary["rollback_reason"])
    # error_rate runs in mode both: its max (2%) or its sequential test (e-value at K/alpha = 100), whichever first
    assert reason.startswith("gate failed: error_rate of v2"), reason
    assert "> max 2.00%" in reason or ">= 100 = K/alpha (1/0.01)" in reason, reason
    assert isinstance(summary["fault_to_rollback_seconds"], float) and summary["fault_to_rollback_seconds"] > 0
    assert summary["final_traffic"] == {"v1": 200}
    phases = summary["phases"]
    assert isinstance(phases, list) and [p["phase"] for p in phases][-1] == "RolledBack"
    assert "RolledBack" in demo.progress and "error_rate=" in demo.progress  # live progress went to stderr
    assert f"report: {demo.report}" in demo.progress and summary["report"] == str(demo.report)
    assert leftover_demo_processes() == []


def test_healthy_demo_is_promoted_and_writes_its_report(demos: dict[str, Demo]) -> None:
    demo = demos["healthy"]
    assert demo.code == 0, demo.progress
    assert demo.summary["outcome"] == "Promoted" and demo.summary["final_traffic"] == {"v2": 200}
    assert demo.summary["report"] == str(demo.report) and demo.report.stat().st_size > 50_000


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_demo_report_renders_in_chromium(
    demos: dict[str, Demo], chromium: HeadlessChromium, artifacts_dir: Path, scenario: str
) -> None:
    demo = demos[scenario]
    with chromium.open(demo.report, ready_js=READY) as page:
        assert page.console_errors == []
        assert page.requests == [page.url]  # the report itself, nothing else: no script, font or image
        charts = page.evaluate(CHARTS_JS)
        assert {c["id"]: c["series"] for c in charts} == EXPECTED_SERIES
        for chart in charts:
            assert chart["rendered"] == "true" and chart["points"] >= 3, chart
            assert chart["drawn"] > 2000, f"{chart['id']}: the canvas is (nearly) blank"
        plotted = page.evaluate("window.rampPlots.map(function (u) { return u.data; })")
        weights = dict(zip(EXPECTED_SERIES["chart-weights"], plotted[0][1:], strict=True))
        summary = dict(page.evaluate(
            "Array.from(document.querySelectorAll('#summary tr')).map(function (r) {"
            " return [r.cells[0].textContent, r.cells[1].textContent]; })"))  # fmt: skip
        phases = page.evaluate("Array.from(document.querySelectorAll('#phases tbody tr')).map(function (r) {"
                               " return r.cells[2].textContent + ' | ' + r.cells[3].textContent; })")  # fmt: skip
        page.screenshot(artifacts_dir / f"report-{scenario}.png")
    assert summary["user requests"] == str(demo.summary["requests"])
    assert summary["failed user requests"] == str(demo.summary["failed_requests"])
    assert summary["outcome"] == demo.summary["outcome"]
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
    png = (artifacts_dir / f"report-{scenario}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280

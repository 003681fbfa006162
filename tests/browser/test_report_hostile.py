"""Reports made of hostile data, in a real browser: text from state files, timelines and Prometheus never runs
as script or markup, and reports with nothing to draw (no samples, only gaps, a log scale with no positive
value) still render without a console error."""

from __future__ import annotations

from pathlib import Path

from controller.analysis.gate_thresholds import GateThreshold
from controller.report.model import GateSample, PhaseMark, ReportInputs, TickSample
from controller.report.write import write_report
from tests.browser.chromium import HeadlessChromium

READY = "document.body.dataset.chartsRendered !== undefined"
SCRIPT = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
GATE = 'x"><svg onload="window.pwned=3">'


def hostile_inputs(samples: int) -> ReportInputs:
    ticks = tuple(
        TickSample(at=1_800_000_000.0 + 5 * i, phase=SCRIPT[:32], step=1, weights={"v1": 100, SCRIPT[:40]: 0},
                   verdict="hold", reason=SCRIPT, header_version=SCRIPT[:50],
                   gates=[GateSample(gate=GATE, value=None if i % 2 else 1.0, stable_value=None, e_value=None,
                                     e_limit=None)])
        for i in range(samples)
    )  # fmt: skip
    return ReportInputs(
        rollout=SCRIPT, namespace=SCRIPT, service=SCRIPT, target=SCRIPT, stable=(SCRIPT,), versions=("v1",),
        steps=(SCRIPT,), thresholds=(GateThreshold(GATE, "k_over_alpha", 100.0, "e-value"),),
        gate_units={GATE: SCRIPT}, samples=ticks,
        phases=(PhaseMark(at=1_800_000_000.0, phase=SCRIPT[:32], reason=SCRIPT),),
        final_phase=SCRIPT, final_reason=SCRIPT, summary=((SCRIPT, SCRIPT),), source=SCRIPT, notes=(SCRIPT,),
    )  # fmt: skip


def test_hostile_text_never_runs_and_gaps_render(chromium: HeadlessChromium, tmp_path: Path) -> None:
    for samples in (0, 1, 7):
        report = write_report(hostile_inputs(samples), tmp_path / f"hostile-{samples}.html")
        with chromium.open(report, ready_js=READY) as page:
            assert page.console_errors == [], samples
            assert page.requests == [page.url]  # the <img src=x> stayed text: nothing was requested
            assert page.evaluate("window.pwned === undefined && !document.querySelector('svg, img')") is True
            assert page.evaluate("document.querySelectorAll('section.chart').length") == 3
            rendered = page.evaluate("Array.from(document.querySelectorAll('section.chart'))"
                                     ".map(function (s) { return s.dataset.rendered; })")  # fmt: skip
            assert rendered == (["empty"] * 3 if samples == 0 else ["true"] * 3), samples
            assert SCRIPT in page.evaluate("document.getElementById('summary').textContent")

"""The report page: self-contained (vendored uPlot, checked against its recorded digest; nothing loaded from
elsewhere), hostile text escaped, non-finite numbers never drawn, big timelines thinned. The page in a real
browser: tests/browser/test_report_browser.py."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from controller.analysis.gate_thresholds import GateThreshold
from controller.report.build import MAX_POINTS, build_report
from controller.report.html import CSP, UPLOT_VERSION, page_data, render_html
from controller.report.model import GateSample, PhaseMark, ReportInputs, TickSample

VENDOR = Path(__file__).resolve().parents[2] / "controller" / "report" / "vendor" / "uplot"
HOSTILE = '</script><script>alert("x")</script><img src=x onerror=alert(1)>&amp;\u2028'


def inputs(samples: int = 5, reason: str = "step 2/3: 10%") -> ReportInputs:
    ticks = tuple(
        TickSample(at=1000.0 + 5 * i, phase="Progressing", step=1, weights={"v1": 90, "v2": 10}, verdict="pass",
                   reason=reason, gates=[GateSample(gate="error_rate", value=0.5, stable_value=0.4, e_value=0.8,
                                                    e_limit=100.0)])
        for i in range(samples)
    )  # fmt: skip
    return ReportInputs(
        rollout="shop", namespace="prod", service="shop", target="v2", stable=("v1",), versions=("v1", "v2"),
        steps=("header x-version: v2", "10%"),
        thresholds=(GateThreshold("error_rate", "max", 2.0, "%"), GateThreshold("error_rate", "k_over_alpha", 100.0,
                                                                                 "e-value")),
        gate_units={"error_rate": "%"}, samples=ticks,
        phases=(PhaseMark(at=1000.0, phase="Progressing", step=1, reason=reason),),
        final_phase="Progressing", final_reason=reason, summary=(("note", reason),), source="test",
    )  # fmt: skip


def test_vendored_uplot_is_the_recorded_release() -> None:
    source = (VENDOR / "SOURCE.md").read_text()
    assert f"Version: {UPLOT_VERSION}" in source and "Licence: MIT" in source
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE"):
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert f"{name} {digest}" in source, name
    banner = f"/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION})"
    assert (VENDOR / "uPlot.iife.min.js").read_text().startswith(banner)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = render_html(build_report(inputs()), generated_at=1000.0)
    parser = Tags()
    parser.feed(page)
    tags = parser.tags
    assert ("meta", {"http-equiv": "Content-Security-Policy", "content": CSP}) in tags
    assert "default-src 'none'" in CSP and "connect-src" not in CSP  # default-src 'none' forbids fetches too
    assert not [t for t, attrs in tags if "src" in attrs or "href" in attrs], "no src/href at all"
    assert not [t for t, _ in tags if t in ("link", "iframe", "object", "embed", "img")]
    assert not re.search(r"@import|url\(", page), "no stylesheet imports or fonts"
    assert sum(1 for t, _ in tags if t == "script") == 3  # the data, uPlot, ours


def test_hostile_text_is_escaped_everywhere() -> None:
    page = render_html(build_report(inputs(reason=HOSTILE)), generated_at=1000.0)
    assert "<img" not in page and 'alert("x")</script>' not in page
    assert page.count("</script>") == 3  # only the page's own scripts close
    parser = Tags()
    parser.feed(page)
    assert [t for t, _ in parser.tags].count("script") == 3
    data = re.search(r'<script id="ramp-data" type="application/json">(.*?)</script>', page, re.S)
    assert data is not None and "\u2028" not in data.group(1)  # a line separator inside a script breaks old parsers
    assert json.loads(data.group(1))["charts"][0]["id"] == "chart-weights"  # still valid JSON once escaped


def test_non_finite_numbers_are_gaps_and_big_timelines_are_thinned() -> None:
    big = inputs(samples=MAX_POINTS * 3)
    bad = TickSample.model_validate({"at": 2e9, "weights": {"v1": 100}, "gates": [
        {"gate": "error_rate", "value": float("nan"), "stable_value": float("inf"), "e_value": -float("inf")}]})
    report = build_report(big.model_copy(update={"samples": (*big.samples, bad)}))
    for chart in report.charts:
        assert len(chart.x) == MAX_POINTS and chart.x[-1] == 2e9  # the newest sample is always drawn
    assert f"{MAX_POINTS * 3 + 1} samples thinned to {MAX_POINTS} for drawing" in report.notes
    gate = {s.label: s.values for s in report.charts[1].series}
    assert gate["v2"][-1] is None and gate["stable (v1)"][-1] is None
    data = page_data(report)
    json.dumps(data, allow_nan=False)  # raises on NaN/inf


def test_an_empty_rollout_still_renders_with_a_note() -> None:
    empty = inputs(samples=0).model_copy(update={"phases": ()})
    report = build_report(empty)
    assert "no samples: the rollout was never observed in this window" in report.notes
    page = render_html(report, generated_at=1000.0)
    assert 'id="chart-weights"' in page and "never observed" in page


def test_higher_is_better_margins_are_drawn_below_stable() -> None:
    base = inputs()
    custom = base.model_copy(update={
        "thresholds": (GateThreshold("error_rate", "stable_margin", 0.1, "%"),), "higher_is_better": ("error_rate",)})
    series = {s.label: s.values for s in build_report(custom).charts[1].series}
    assert series["stable - 0.1"][0] == 0.4 - 0.1
    normal = base.model_copy(update={"thresholds": (GateThreshold("error_rate", "stable_margin", 0.1, "%"),)})
    assert {s.label: s.values for s in build_report(normal).charts[1].series}["stable + 0.1"][0] == 0.4 + 0.1


def test_gate_names_that_read_alike_as_element_ids_get_their_own_charts() -> None:
    base = inputs()
    ticks = tuple(s.model_copy(update={"gates": [GateSample(gate=name, value=1.0) for name in ("a.b", "a-b", "A_B")]})
                  for s in base.samples)  # fmt: skip
    ids = [c.id for c in build_report(base.model_copy(update={"samples": ticks, "thresholds": ()})).charts]
    assert ids == ["chart-weights", "chart-gate-a-b", "chart-gate-a-b-2", "chart-gate-a-b-3"]

"""The Grafana dashboards: their structure, and every query of theirs run against a real rollout.

The structure tests read dashboards/*.json. The end-to-end tests run the demo rollout (faulty: rolled
back in the header step; healthy: promoted) on the local stack, whose Prometheus scrapes both Envoy
(relabelled to Istio's metrics) and the controller's own /metrics. While the stack still runs, every
panel target and annotation query is executed with the template variables substituted as Grafana
would, once with the demo's namespace/service/rollout selected and once with "All". The gate lines
(thresholds, stable + margin, e-values against K/alpha) come from the controller's metrics, never from a
variable set by hand: each such query must draw exactly what the demo spec sets.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.gate_thresholds import gate_thresholds
from controller.demo import DEMO_SPEC, DemoRun, run_demo
from controller.plan import build_plan
from controller.spec import RolloutSpec
from controller.spec_loader import load_spec
from tests.browser.chromium import HeadlessChromium
from tests.browser.demo_report_checks import check_demo_report
from tests.dashboards.grafana_model import (
    BUILTINS,
    DATASOURCE,
    PANEL_STEP_SECONDS,
    DashboardQuery,
    all_panels,
    dashboard_queries,
    finite_values,
    is_gate_query,
    label_values,
    load_dashboards,
    manual_threshold_variables,
    referenced_variables,
    run_query,
    samples,
    substitute,
    threshold_selector,
    variable_query,
    variable_values,
    variables,
)
from tests.e2e.conftest import leftover_demo_processes, require_local_stack

DASHBOARDS = load_dashboards()
OVERVIEW = "ramp-rollout-overview.json"
GOLDEN = "ramp-golden-signals.json"
VARIANTS = ("selected", "all")
EVALUE_PANEL = "Statistical gates: e-value (log scale)"
# What the demo spec (rollout-specs/demo.yaml) sets, written out: the tests also read it from the spec itself.
DEMO_LINES = {
    ("error_rate", "max", "%"): 2.0,
    ("error_rate", "stable_margin", "%"): 1.0,
    ("error_rate", "k_over_alpha", "e-value"): 100.0,
    ("latency-p99", "max", "ms"): 250.0,
}


# -- structure -------------------------------------------------------------------------------------
def test_both_dashboards_exist_with_unique_uids() -> None:
    assert set(DASHBOARDS) >= {OVERVIEW, GOLDEN}
    uids = [d.get("uid") for d in DASHBOARDS.values()]
    assert all(isinstance(uid, str) and 0 < len(uid) <= 40 for uid in uids), uids
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    assert dashboard["title"] and "id" not in dashboard  # importable anywhere: no database id
    defined = variables(dashboard)
    datasource = defined["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for var_name in ("namespace", "service"):
        var = defined[var_name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        text = variable_query(var)
        assert text.startswith("label_values(istio_requests_total{") and var["definition"] == text
    panel_ids = [p["id"] for p in all_panels(dashboard)]
    assert len(panel_ids) == len(set(panel_ids)) and panel_ids
    known = set(defined) | set(BUILTINS)
    for panel in all_panels(dashboard):
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), f"panel {panel['title']!r} target {target['refId']} has no expr"
    for query in dashboard_queries(name, dashboard):
        assert query.expr.strip(), query.label
        assert referenced_variables(query.expr) <= known, query.label
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == DATASOURCE and annotation["expr"].strip()
    _assert_no_overlap(list(all_panels(dashboard)))


def _assert_no_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_dashboard_needs_a_threshold_set_by_hand(name: str) -> None:
    dashboard = DASHBOARDS[name]
    assert manual_threshold_variables(dashboard) == []
    assert {var["type"] for var in variables(dashboard).values()} <= {"datasource", "query"}
    for query in dashboard_queries(name, dashboard):
        assert "vector(" not in query.expr, query.label  # a constant line is a threshold copied by hand


def _gate_lines(name: str) -> set[tuple[str, str, str | None, str | None]]:
    """(panel, refId, kind, unit) of every target reading ramp_gate_threshold."""
    lines = set()
    for panel in all_panels(DASHBOARDS[name]):
        for target in panel["targets"]:
            selector = threshold_selector(target["expr"])
            if selector is not None:
                lines.add((panel["title"], target["refId"], *selector))
    return lines


def test_golden_signals_are_per_version_with_gate_lines_from_the_controller() -> None:
    dashboard = DASHBOARDS[GOLDEN]
    rollout = variables(dashboard)["rollout"]  # the service's rollout, to read its gates' metrics
    assert rollout["type"] == "query" and rollout["datasource"] == DATASOURCE and not rollout.get("includeAll")
    assert variable_query(rollout) == rollout["definition"] == (
        'label_values(ramp_rollout_info{namespace=~"$namespace", service=~"$service"}, rollout)'
    )
    for panel in all_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if "ramp_" in expr:
                assert 'namespace=~"$namespace", rollout=~"$rollout"' in expr, (panel["title"], expr)
                continue
            for needle in ('reporter="destination"', 'destination_workload_namespace=~"$namespace"',
                           'destination_service_name=~"$service"', "by (destination_version"):
                assert needle in expr, (panel["title"], needle)
            assert target["legendFormat"] == "{{destination_version}}", panel["title"]
    assert _gate_lines(GOLDEN) == {
        ("Error % by version", "T", "max", "%"),
        ("Error % by version", "M", "stable_margin", "%"),
        ("Latency p99 by version", "T", "max", "ms"),
        ("Latency p99 by version", "M", "stable_margin", "ms"),
        (EVALUE_PANEL, "K", "k_over_alpha", None),
    }


def test_overview_draws_each_gates_values_against_its_thresholds() -> None:
    assert _gate_lines(OVERVIEW) == {
        ("Error-rate gates: new, stable and thresholds", ref, kind, "%")
        for ref, kind in (("A", None), ("B", None), ("T", "max"), ("M", "stable_margin"))
    } | {
        ("Latency gates: new, stable and thresholds", ref, kind, "ms")
        for ref, kind in (("A", None), ("B", None), ("T", "max"), ("M", "stable_margin"))
    } | {(EVALUE_PANEL, "K", "k_over_alpha", None)}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_margin_lines_add_the_margin_to_stables_value_and_e_values_are_on_a_log_scale(name: str) -> None:
    panels = {p["title"]: p for p in all_panels(DASHBOARDS[name])}
    for title, panel in panels.items():
        for target in panel["targets"]:
            selector = threshold_selector(target["expr"])
            if selector is not None and selector[0] == "stable_margin":
                assert target["expr"].startswith("ramp_gate_stable_value{"), title
                assert " + on (rollout, namespace, gate) ramp_gate_threshold{" in target["expr"], title
    evalue = panels[EVALUE_PANEL]
    assert evalue["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert [t["expr"].split("{")[0] for t in evalue["targets"]] == ["ramp_gate_evalue", "ramp_gate_threshold"]


# -- end to end ------------------------------------------------------------------------------------
@dataclass
class Capture:
    """Everything the dashboards showed for one demo rollout, read while its stack was running."""

    run: DemoRun
    start: float
    end: float
    controller_up: list[Any]
    thresholds: list[Any]  # every ramp_gate_threshold series of the demo rollout at the end
    variable_values: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    results: dict[tuple[DashboardQuery, str], list[Any] | str] = field(default_factory=dict)

    def result(self, dashboard: str, title: str, ref: str = "A", variant: str = "selected") -> list[Any]:
        where = f"panel {title!r} {ref}"
        for (query, v), result in self.results.items():
            if query.dashboard == dashboard and query.where == where and v == variant:
                assert not isinstance(result, str), f"{query.label}: {result}"
                return result
        raise KeyError(f"{dashboard}: no query {where}")


def _wait_for(prometheus_url: str, expr: str, timeout: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        result = run_query(prometheus_url, expr, True, now, now, 1.0)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def _capture(run: DemoRun, into: list[Capture]) -> None:
    prometheus = run.stack.prometheus_url
    spec = run.spec
    # The final phase must have been scraped from the controller, and (as on a live dashboard) one panel
    # step must have passed since, so that the step-aligned range queries include it.
    final = f'ramp_rollout_phase{{rollout="{spec.rollout_name}", phase="{run.summary["outcome"]}"}} == 1'
    assert _wait_for(prometheus, final), f"the controller's final phase never reached Prometheus: {final}"
    time.sleep(PANEL_STEP_SECONDS + 1.0)
    end = time.time()
    capture = Capture(run, run.recorder.started_at, end,
                      controller_up=_wait_for(prometheus, 'up{job="ramp-controller"} == 1'),
                      thresholds=run_query(prometheus, f'ramp_gate_threshold{{rollout="{spec.rollout_name}"}}',
                                           True, end, end, 1.0))
    selected = {"namespace": spec.namespace, "service": spec.service, "rollout": spec.rollout_name}
    for name, dashboard in DASHBOARDS.items():
        for var_name, var in variables(dashboard).items():
            if var["type"] == "query":
                text = substitute(variable_query(var), variable_values(dashboard, selected, use_all=False))
                capture.variable_values[(name, var_name)] = label_values(prometheus, text, capture.start, end)
        for variant in VARIANTS:
            values = variable_values(dashboard, selected, use_all=variant == "all")
            for query in dashboard_queries(name, dashboard):
                try:
                    expr = substitute(query.expr, values)
                    capture.results[(query, variant)] = run_query(
                        prometheus, expr, query.instant, capture.start, end, query.step_seconds
                    )
                except Exception as exc:  # reported per query by the tests
                    capture.results[(query, variant)] = f"{type(exc).__name__}: {exc}"
    into.append(capture)


def _run_scenario(scenario: str, report: Path | None = None) -> Capture:
    require_local_stack()
    captured: list[Capture] = []
    out = io.StringIO()
    summary = run_demo(scenario, out=out, timeout=60.0, on_finished=lambda run: _capture(run, captured),
                       report=report)  # fmt: skip
    assert summary["outcome"] == summary["expected_outcome"], out.getvalue()
    assert len(captured) == 1
    return captured[0]


@pytest.fixture(scope="module")
def faulty() -> Iterator[Capture]:
    yield _run_scenario("faulty")


@pytest.fixture(scope="module")
def healthy(artifacts_dir: Path) -> Iterator[Capture]:
    """The healthy demo, writing its report as `ramp demo --report` does (drawn in Chromium below)."""
    report = artifacts_dir / "report-healthy.html"
    report.unlink(missing_ok=True)
    yield _run_scenario("healthy", report)


def _is_rollback_query(query: DashboardQuery) -> bool:
    return "ramp_rollbacks_total" in query.expr


def _drawn_lines(spec: RolloutSpec, query: DashboardQuery) -> dict[str, float] | None:
    """Gate -> threshold of the spec's lines that a threshold query selects (by its kind and unit matchers);
    None for a query reading no threshold."""
    selector = threshold_selector(query.expr)
    if selector is None:
        return None
    kind, unit = selector
    return {
        t.gate: t.value for t in gate_thresholds(spec) if kind in (None, t.kind) and unit in (None, t.unit)
    }


def _problems(capture: Capture, expect_rollbacks: bool) -> list[str]:
    problems = []
    for (query, variant), result in capture.results.items():
        if isinstance(result, str):
            problems.append(f"{query.label} [{variant}]: {result}")
        elif _drawn_lines(capture.run.spec, query) == {}:  # a line the spec does not set (e.g. a latency margin)
            if result:
                problems.append(f"{query.label} [{variant}]: draws a line the spec does not set: {result}")
        elif not expect_rollbacks and _is_rollback_query(query):
            if result:
                problems.append(f"{query.label} [{variant}]: a rollback shown for a promoted rollout: {result}")
        elif not finite_values(result):
            problems.append(f"{query.label} [{variant}]: no data ({result})")
    return problems


def _last(series: dict[str, Any]) -> float:
    return samples(series)[-1][1]


def _by(result: list[Any], label: str) -> dict[str, dict[str, Any]]:
    return {series["metric"][label]: series for series in result}


def _assert_variables_offer_the_demo(capture: Capture) -> None:
    spec = capture.run.spec
    assert capture.controller_up, "Prometheus does not scrape the controller's /metrics (job ramp-controller)"
    assert capture.controller_up[0]["metric"]["instance"] == capture.run.metrics_target
    for name in DASHBOARDS:
        assert spec.namespace in capture.variable_values[(name, "namespace")]
        assert spec.service in capture.variable_values[(name, "service")]
    assert capture.variable_values[(OVERVIEW, "rollout")] == [spec.rollout_name]
    assert capture.variable_values[(GOLDEN, "rollout")] == [spec.rollout_name]  # the service's rollout


def _gate(series: dict[str, Any]) -> str:
    gate: str = series["metric"]["gate"]
    return gate


def _assert_gate_lines_follow_the_demo_spec(capture: Capture, healthy: bool) -> None:
    """Every threshold, stable-value and e-value query of both dashboards, with the demo selected and with "All":
    it draws exactly the demo spec's gates at exactly the spec's values, from the controller's metrics."""
    spec = capture.run.spec
    assert spec == load_spec(DEMO_SPEC)
    expected: dict[tuple[str, str, str], float] = {(t.gate, t.kind, t.unit): t.value for t in gate_thresholds(spec)}
    assert {key: expected.get(key) for key in DEMO_LINES} == DEMO_LINES  # the spec, written out
    exported = {(s["metric"]["gate"], s["metric"]["kind"], s["metric"]["unit"]): _last(s) for s in capture.thresholds}
    assert exported == expected  # the controller exports the whole spec, tolerance included
    statistical = {gate for gate, kind, _ in expected if kind == "k_over_alpha"}
    margins = {gate: value for (gate, kind, _), value in expected.items() if kind == "stable_margin"}
    checked = 0
    for (query, variant), result in capture.results.items():
        if not is_gate_query(query):
            continue
        checked += 1
        where = f"{query.label} [{variant}]"
        assert not isinstance(result, str), f"{where}: {result}"
        values = {_gate(s): [v for _, v in samples(s)] for s in result}
        assert all(v and all(math.isfinite(x) for x in v) for v in values.values()), (where, result)
        assert all(s["metric"]["rollout"] == spec.rollout_name for s in result), where
        lines = _drawn_lines(spec, query)
        kind = (threshold_selector(query.expr) or (None, None))[0]
        if lines is None:  # e-values
            assert query.expr.startswith("ramp_gate_evalue{"), where
            assert set(values) == statistical, (where, result)
            assert all(0 < v < 100.0 for v in values["error_rate"]) or not healthy, (where, result)
        elif not lines:
            assert values == {}, where  # e.g. a latency stable_margin: the demo sets none
        elif kind in ("max", "k_over_alpha"):
            assert {gate: set(v) for gate, v in values.items()} == {gate: {line} for gate, line in lines.items()}, where
        elif kind == "stable_margin":  # stable's value + the margin; the demo's stable version (v1) never errs
            assert {gate: set(v) for gate, v in values.items()} == {
                gate: {0.0 + margins[gate]} for gate in lines
            }, where
        else:  # the new version's or stable's value of the gates with a line in this unit
            assert set(values) == set(lines), where
    assert checked == len(VARIANTS) * sum(1 for n, d in DASHBOARDS.items() for q in dashboard_queries(n, d)
                                          if is_gate_query(q))
    assert checked >= 2 * 12
    # the overview's margin line is stable's value (B) plus the margin, step by step
    for variant in VARIANTS:
        title = "Error-rate gates: new, stable and thresholds"
        stable = {t: v for s in capture.result(OVERVIEW, title, "B", variant) for t, v in samples(s)}
        margin_line = capture.result(OVERVIEW, title, "M", variant)
        assert margin_line and all(t in stable and v == stable[t] + margins["error_rate"]
                                   for s in margin_line for t, v in samples(s)), (stable, margin_line)


@pytest.mark.e2e
def test_faulty_rollout_every_panel_and_annotation_query_returns_data(faulty: Capture) -> None:
    assert len(faulty.results) == len(VARIANTS) * sum(len(dashboard_queries(n, d)) for n, d in DASHBOARDS.items())
    assert _problems(faulty, expect_rollbacks=True) == []
    _assert_variables_offer_the_demo(faulty)
    _assert_gate_lines_follow_the_demo_spec(faulty, healthy=False)


@pytest.mark.e2e
def test_faulty_rollout_dashboards_show_the_rollback(faulty: Capture) -> None:
    phase = faulty.result(OVERVIEW, "Phase")
    assert [(s["metric"]["rollout"], s["metric"]["phase"]) for s in phase] == [("demo", "RolledBack")]
    # The step it rolled back in, 1-based: nearly always the header step, but v2's first 20 requests (the gate's
    # min_requests) can all succeed at a 20% error rate (0.8^20 = 1.2%), and then the header step passes.
    rolled_back = faulty.run.summary["phases"][-1]
    assert rolled_back["phase"] == "RolledBack" and rolled_back["step"] in (0, 1)
    assert [_last(s) for s in faulty.result(OVERVIEW, "Step")] == [rolled_back["step"] + 1.0]
    verdicts = _by(faulty.result(OVERVIEW, "Gate verdicts"), "gate")
    assert _last(verdicts["error_rate"]) == -1.0
    weights = _by(faulty.result(OVERVIEW, "Traffic weight per version"), "version")
    assert (_last(weights["v1"]), _last(weights["v2"])) == (100.0, 0.0)
    in_range = faulty.result(OVERVIEW, "Rollbacks in range")
    assert [(s["metric"]["cause"], _last(s)) for s in in_range] == [("gate:error_rate", 1.0)]

    annotation = next(r for (q, v), r in faulty.results.items() if q.is_annotation and v == "selected")
    assert not isinstance(annotation, str)
    assert [s["metric"]["cause"] for s in annotation] == ["gate:error_rate"]
    first_mark = samples(annotation[0])[0][0]
    rolled_back = faulty.run.recorder.rollback_applied_at
    assert rolled_back is not None
    # The counter appears at the next 1 s scrape; the mark is on the first step at or after it.
    assert rolled_back - 1.0 <= first_mark <= rolled_back + 1.0 + 5.0 + 1.0, (first_mark, rolled_back)

    errors = _by(faulty.result(GOLDEN, "Error % by version"), "destination_version")
    assert max(v for _, v in samples(errors["v2"]) if math.isfinite(v)) > 2.0  # above the gate line
    gate_line = faulty.result(GOLDEN, "Error % by version", "T")
    assert {v for _, v in samples(gate_line[0])} == {2.0}
    rps = faulty.result(GOLDEN, "Requests per second by version")
    assert {s["metric"]["destination_version"] for s in rps} == {"v1", "v2"}


@pytest.mark.e2e
def test_healthy_rollout_every_query_returns_data_and_no_rollback_is_shown(healthy: Capture) -> None:
    assert _problems(healthy, expect_rollbacks=False) == []
    _assert_variables_offer_the_demo(healthy)


@pytest.mark.e2e
def test_healthy_rollout_dashboards_draw_the_demo_specs_gate_lines_and_e_values(healthy: Capture) -> None:
    _assert_gate_lines_follow_the_demo_spec(healthy, healthy=True)


@pytest.mark.e2e
def test_the_healthy_demo_is_promoted_and_cleans_up(healthy: Capture) -> None:
    """The main job's healthy run (`ramp demo` runs exactly `run_demo`; tests/browser/test_demo_report.py runs the
    CLI itself, in a subprocess, on the faulty scenario): one demo run serves this and the dashboards' tests."""
    summary = healthy.run.summary
    assert summary["outcome"] == "Promoted"
    phases = summary["phases"]
    assert isinstance(phases, list)
    assert [p["phase"] for p in phases] == ["HeaderTest", "Progressing", "Progressing", "Progressing", "Promoted"]
    assert summary["rollback_reason"] is None and summary["failed_requests"] == 0
    assert summary["final_traffic"] == {"v2": 200}
    assert leftover_demo_processes() == []


@pytest.mark.e2e
def test_healthy_rollout_dashboards_show_the_promotion(healthy: Capture) -> None:
    phase = healthy.result(OVERVIEW, "Phase")
    assert [s["metric"]["phase"] for s in phase] == ["Promoted"]
    weights = _by(healthy.result(OVERVIEW, "Traffic weight per version"), "version")
    assert (_last(weights["v1"]), _last(weights["v2"])) == (0.0, 100.0)
    assert {v for _, v in samples(weights["v2"])} >= {0.0, 10.0, 50.0, 100.0}
    steps = healthy.result(OVERVIEW, "Step")
    # decide() records Promoted at step index len(steps); ramp_rollout_step is that index + 1.
    assert _last(steps[0]) == len(build_plan(healthy.run.spec).steps) + 1
    # No 5xx at all: the error panel still shows every version, at 0 % (not "no data").
    errors = _by(healthy.result(GOLDEN, "Error % by version"), "destination_version")
    assert set(errors) == {"v1", "v2"}
    assert {v for s in errors.values() for _, v in samples(s)} == {0.0}
    p99 = _by(healthy.result(GOLDEN, "Latency p99 by version"), "destination_version")
    assert all(0 < v < 250 for s in p99.values() for _, v in samples(s) if math.isfinite(v))
    latency_line = healthy.result(GOLDEN, "Latency p99 by version", "T")
    assert {v for _, v in samples(latency_line[0])} == {250.0}


@pytest.mark.e2e
def test_the_healthy_demo_report_renders_in_chromium(
    healthy: Capture, chromium: HeadlessChromium, artifacts_dir: Path
) -> None:
    summary = healthy.run.summary
    assert summary["report"] == str(artifacts_dir / "report-healthy.html")
    check_demo_report(chromium, Path(summary["report"]), summary, "healthy", artifacts_dir / "report-healthy.png")

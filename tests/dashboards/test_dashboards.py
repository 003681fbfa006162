"""The Grafana dashboards: their structure, and every query of theirs run against a real rollout.

The structure tests read dashboards/*.json. The end-to-end tests run the demo rollout (faulty: rolled
back in the header step; healthy: promoted) on the local stack, whose Prometheus scrapes both Envoy
(relabelled to Istio's metrics) and the controller's own /metrics. While the stack still runs, every
panel target and annotation query is executed with the template variables substituted as Grafana
would, once with the demo's namespace/service/rollout selected and once with "All".
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.demo import DemoRun, run_demo
from controller.plan import build_plan
from tests.dashboards.grafana_model import (
    BUILTINS,
    DATASOURCE,
    PANEL_STEP_SECONDS,
    DashboardQuery,
    all_panels,
    dashboard_queries,
    finite_values,
    label_values,
    load_dashboards,
    referenced_variables,
    run_query,
    samples,
    substitute,
    variable_query,
    variable_values,
    variables,
)
from tests.e2e.conftest import leftover_demo_processes, require_local_stack

DASHBOARDS = load_dashboards()
OVERVIEW = "ramp-rollout-overview.json"
GOLDEN = "ramp-golden-signals.json"
VARIANTS = ("selected", "all")


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


def test_golden_signals_are_per_version_with_settable_gate_lines() -> None:
    dashboard = DASHBOARDS[GOLDEN]
    defined = variables(dashboard)
    assert (defined["error_threshold"]["type"], defined["error_threshold"]["query"]) == ("textbox", "2")
    assert (defined["latency_threshold"]["type"], defined["latency_threshold"]["query"]) == ("textbox", "250")
    gate_lines = set()
    for panel in all_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if expr.startswith("vector($"):
                gate_lines.add((panel["title"], expr))
                continue
            for needle in ('reporter="destination"', 'destination_workload_namespace=~"$namespace"',
                           'destination_service_name=~"$service"', "by (destination_version"):
                assert needle in expr, (panel["title"], needle)
            assert target["legendFormat"] == "{{destination_version}}", panel["title"]
    assert gate_lines == {
        ("Error % by version", "vector($error_threshold)"),
        ("Latency p99 by version", "vector($latency_threshold)"),
    }


# -- end to end ------------------------------------------------------------------------------------
@dataclass
class Capture:
    """Everything the dashboards showed for one demo rollout, read while its stack was running."""

    run: DemoRun
    start: float
    end: float
    controller_up: list[Any]
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
                      controller_up=_wait_for(prometheus, 'up{job="ramp-controller"} == 1'))
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


def _run_scenario(scenario: str) -> Capture:
    require_local_stack()
    captured: list[Capture] = []
    out = io.StringIO()
    summary = run_demo(scenario, out=out, timeout=60.0, on_finished=lambda run: _capture(run, captured))
    assert summary["outcome"] == summary["expected_outcome"], out.getvalue()
    assert len(captured) == 1
    return captured[0]


@pytest.fixture(scope="module")
def faulty() -> Iterator[Capture]:
    yield _run_scenario("faulty")


@pytest.fixture(scope="module")
def healthy() -> Iterator[Capture]:
    yield _run_scenario("healthy")


def _is_rollback_query(query: DashboardQuery) -> bool:
    return "ramp_rollbacks_total" in query.expr


def _problems(capture: Capture, expect_rollbacks: bool) -> list[str]:
    problems = []
    for (query, variant), result in capture.results.items():
        if isinstance(result, str):
            problems.append(f"{query.label} [{variant}]: {result}")
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


@pytest.mark.e2e
def test_faulty_rollout_every_panel_and_annotation_query_returns_data(faulty: Capture) -> None:
    assert len(faulty.results) == len(VARIANTS) * sum(len(dashboard_queries(n, d)) for n, d in DASHBOARDS.items())
    assert _problems(faulty, expect_rollbacks=True) == []
    _assert_variables_offer_the_demo(faulty)


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
def test_the_healthy_demo_is_promoted_and_cleans_up(healthy: Capture) -> None:
    """The main job's healthy run (`ramp demo` runs exactly `run_demo`; tests/e2e/test_demo_cli.py runs the CLI
    itself, in a subprocess, on the faulty scenario): one demo run serves this and the dashboards' tests."""
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

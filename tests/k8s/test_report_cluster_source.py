"""`ramp report`'s cluster source with real components: a real cluster controller (RolloutRunner on the cluster
backend, real clock) rolls out against the Kubernetes emulator; its real ControllerMetrics are served by the real
EndpointServer and scraped every second by a real Prometheus; `cluster_report_inputs` then reads the rollout's
state from the VirtualService and its timeline back through PrometheusHTTP.query_range.

The other tests use the emulator with a hand-written state and a scripted range client (hostile answers, failures).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter

from controller.analysis.gate_thresholds import gate_thresholds
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.analysis.prometheus import MetricsRequest
from controller.analysis.prometheus_http import PrometheusAnswerError, PrometheusHTTP
from controller.cli import main
from controller.cluster_backend import cluster_backend
from controller.controller_metrics import ControllerMetrics
from controller.deadline import Deadline
from controller.engine.phases import Phase, PhaseChange, RolloutState
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.http_endpoints import EndpointServer
from controller.local.ports import free_port
from controller.local.processes import ProcessError, ProcessGroup
from controller.local.prometheus_process import prometheus_argv, prometheus_binary, write_prometheus_config
from controller.report.build import build_report
from controller.report.cluster_source import ReportSourceError, cluster_report_inputs
from controller.report.model import ReportInputs
from controller.routing.istio_merge import STATE_ANNOTATION, encode_state
from tests.k8s.cli_controller import write_kubeconfig
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, custom_objects, kube_api, stored, wait_until
from tests.unit.engine_fixtures import spec

NS, SERVICE = "prod", "shop"
ROLLOUT_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 20, duration: 2s}
  - {weight: 50, duration: 30s}
gates:
  - {metric: error_rate, mode: both, max: 5, stable_margin: 2}
  - {metric: latency, quantile: p99, max: 300}
schedule: {interval: 0.5s}
"""
BUCKETS = {50.0: 0.0, 100.0: 0.0, 250.0: 0.0, math.inf: 0.0}


def _prometheus_missing() -> str | None:
    try:
        prometheus_binary()
    except ProcessError as exc:
        return str(exc)
    return None


@dataclass
class Traffic:
    """The rollout's traffic, tick by tick: v1 serves 400 requests (2 errors), v2 100 (none, then 30 once `bad`).
    Every request is also counted in an `istio_requests_total` counter the controller's registry exports."""

    istio: Counter
    bad: threading.Event = field(default_factory=threading.Event)
    totals: dict[str, VersionMetrics] = field(default_factory=dict)
    sent: dict[tuple[str, str], float] = field(default_factory=dict)

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        now = {"v1": (400.0, 2.0), "v2": (100.0, 30.0 if self.bad.is_set() else 0.0)}
        window: dict[str, VersionMetrics] = {}
        for version, (count, errors) in now.items():
            buckets = {le: count for le in BUCKETS}  # every request under 50 ms
            window[version] = VersionMetrics(count, errors, buckets)
            total = self.totals.get(version, VersionMetrics(0.0, 0.0, dict(BUCKETS)))
            self.totals[version] = VersionMetrics(total.requests + count, total.errors + errors,
                                                  {le: total.buckets[le] + count for le in BUCKETS})  # fmt: skip
            for code, n in (("200", count - errors), ("503", errors)):
                self.istio.labels(SERVICE, NS, NS, version, code, "destination").inc(n)
                self.sent[(version, code)] = self.sent.get((version, code), 0.0) + n
        out = {}
        for request in requests:
            snapshot = MetricsSnapshot(window_seconds=request.window_seconds)
            for version in now:
                snapshot.by_workload[(NS, SERVICE, version)] = window[version]
                snapshot.cumulative[(NS, SERVICE, version)] = self.totals[version]
            out[request] = snapshot
        return out


@pytest.fixture()
def prometheus_and_metrics(tmp_path: Path) -> Iterator[tuple[str, ControllerMetrics]]:
    """A real Prometheus scraping, every second, a real ControllerMetrics served by the real EndpointServer."""
    missing = _prometheus_missing()
    if missing is not None:
        pytest.skip(missing)
    metrics = ControllerMetrics()
    server = EndpointServer(metrics.registry, lambda: (True, "ok"), lambda: (True, "ok"), host="127.0.0.1", port=0)
    server.start()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ramp-controller", "static_configs": [
            {"targets": [f"127.0.0.1:{server.port}"]}]}],
    }  # fmt: skip
    config_path = write_prometheus_config(tmp_path / "prometheus.yml", config)
    try:
        with ProcessGroup(tmp_path) as group:
            process = group.start("prometheus", prometheus_argv(config_path, tmp_path / "data", port))
            process.wait_http_ready(f"http://127.0.0.1:{port}/-/ready", 20)
            url = f"http://127.0.0.1:{port}"
            client = PrometheusHTTP(url)
            # Prometheus hands new targets to its scrapers up to 5 s after it starts: wait for the first scrape
            wait_until(lambda: bool(client.query('up{job="ramp-controller"} == 1', Deadline(2))), 15,
                       "Prometheus scraping the controller", poll=0.2)  # fmt: skip
            yield url, metrics
    finally:
        server.stop()


def test_a_real_rollout_scraped_by_a_real_prometheus_reads_back_as_its_report(
    kube: KubeHarness, prometheus_and_metrics: tuple[str, ControllerMetrics], tmp_path: Path
) -> None:
    url, metrics = prometheus_and_metrics
    rollout_spec = spec(ROLLOUT_YAML)
    istio = Counter("istio_requests", "Istio's request counter (as the mesh exports it)",
                    ["destination_service_name", "destination_service_namespace", "destination_workload_namespace",
                     "destination_version", "response_code", "reporter"], registry=metrics.registry)  # fmt: skip
    traffic = Traffic(istio)
    for version in ("v1", "v2"):  # the services served before the rollout: their counters exist, scraped at 0
        for code in ("200", "503"):
            istio.labels(SERVICE, NS, NS, version, code, "destination")
    scraped = PrometheusHTTP(url)

    def seen(promql: str) -> bool:
        return bool(scraped.query(promql, Deadline(2)))

    wait_until(lambda: len(scraped.query("istio_requests_total", Deadline(2))) == 4, 5, "the counters scraped", 0.1)
    backend = cluster_backend(kube_api(kube))
    runner = RolloutRunner(router=backend, metrics=traffic, store=backend, observers=[metrics])
    runner.set_rollouts([ManagedRollout.from_spec(rollout_spec)])
    stop = threading.Event()

    def ticking() -> None:
        while not stop.is_set() and not runner.all_terminal():
            runner.tick()
            stop.wait(0.25)

    thread = threading.Thread(target=ticking, name="controller", daemon=True)
    thread.start()
    try:
        wait_until(lambda: seen('ramp_rollout_weight_percent{version="v2"} == 50'), 15, "the 50% step scraped", 0.1)
        traffic.bad.set()  # then v2 fails
        wait_until(runner.all_terminal, 10, "the rollout rolled back")
    finally:
        stop.set()
        thread.join(10)
    wait_until(lambda: seen('ramp_rollout_phase{phase="RolledBack"} == 1'), 5, "the rollback scraped", 0.1)
    prometheus = PrometheusHTTP(url)
    inputs = cluster_report_inputs(kube_api(kube), NS, SERVICE, prometheus, window=None, now=time.time(),
                                   deadline=Deadline(20))  # fmt: skip
    state = backend.read_routing(NS, SERVICE).state
    assert state is not None and state.phase == Phase.ROLLED_BACK

    assert (inputs.rollout, inputs.namespace, inputs.service) == (SERVICE, NS, SERVICE)
    assert inputs.final_phase == "RolledBack" and inputs.final_reason == state.reason
    assert inputs.final_reason.startswith("gate failed: error_rate")
    assert [(m.phase, m.step, m.reason) for m in inputs.phases] == [(c.phase.value, c.step, c.reason)
                                                                  for c in state.history]  # fmt: skip
    assert [m.phase for m in inputs.phases] == ["Progressing", "Progressing", "RolledBack"]
    # the weights, in the order they happened (each step scraped at least once)
    shown = [tuple(sorted(s.weights.items())) for s in inputs.samples if s.weights]
    changes = [w for i, w in enumerate(shown) if i == 0 or w != shown[i - 1]]
    assert changes == [(("v1", 80), ("v2", 20)), (("v1", 50), ("v2", 50)), (("v1", 100), ("v2", 0))], changes
    assert inputs.target == "v2" and inputs.stable == ("v1",) and inputs.versions == ("v1", "v2")
    # phases and steps per sample, as exported
    assert [s.phase for s in inputs.samples][-1] == "RolledBack"
    assert {s.step for s in inputs.samples if s.weights == {"v1": 80, "v2": 20}} == {0}
    assert {s.step for s in inputs.samples if s.weights == {"v1": 50, "v2": 50}} == {1}
    # gates: values, stable values, e-values with their K/alpha, verdicts
    expected = {(t.gate, t.kind, t.value, t.unit) for t in gate_thresholds(rollout_spec)}
    assert {(t.gate, t.kind, t.value, t.unit) for t in inputs.thresholds} == expected
    assert inputs.gate_units == {"error_rate": "%", "latency-p99": "ms"}
    healthy = [s for s in inputs.samples if s.weights == {"v1": 50, "v2": 50}]
    first = {g.gate: g for g in healthy[0].gates}
    assert set(first) == {"error_rate", "latency-p99"}
    assert first["error_rate"].verdict == "pass" and first["error_rate"].value == 0.0
    assert first["error_rate"].stable_value == pytest.approx(0.5)
    assert first["error_rate"].e_value is not None and first["error_rate"].e_limit == 100.0
    assert first["latency-p99"].verdict == "pass" and first["latency-p99"].e_value is None
    last = {g.gate: g for g in inputs.samples[-1].gates}
    assert last["error_rate"].verdict == "fail" and last["error_rate"].value == pytest.approx(30.0)
    assert inputs.samples[-1].verdict == "fail"
    # the summary: requests and 5xx per version over the window, from istio_requests_total
    rows = dict(inputs.summary)
    assert list(rows) == ["requests v1", "5xx v1", "requests v2", "5xx v2"]
    for version in ("v1", "v2"):
        sent = traffic.sent[(version, "200")] + traffic.sent[(version, "503")]
        requests = float(rows[f"requests {version}"])
        assert sent * 0.8 <= requests <= sent * 1.2, (version, requests, sent)
        errors, share = rows[f"5xx {version}"].split(" ")
        true_share = 100 * traffic.sent[(version, "503")] / sent
        assert float(share.strip("(%)")) == pytest.approx(true_share, rel=0.3), (version, share, true_share)
        assert float(errors) == pytest.approx(traffic.sent[(version, "503")], rel=0.3)
    assert rows["5xx v1"].endswith(" (0.50%)")  # 2 of 400 every tick: extrapolated alike, the share is exact
    assert inputs.notes == ()
    assert inputs.source == f"VirtualService {NS}/{SERVICE}, Prometheus {url}"

    # and as a user runs it: `ramp report SERVICE --prometheus URL --spec FILE -o PATH`
    (tmp_path / "shop.yaml").write_text(ROLLOUT_YAML)
    out = tmp_path / "report.html"
    argv = ["report", SERVICE, "-n", NS, "--kubeconfig", write_kubeconfig(kube, tmp_path / "kubeconfig"),
            "--prometheus", url, "--spec", str(tmp_path / "shop.yaml"), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    page = out.read_text()
    assert all(f'id="{chart}"' in page for chart in ("chart-weights", "chart-gate-error-rate",
                                                      "chart-gate-latency-p99", "chart-evalues"))  # fmt: skip
    assert "20% → 50%" in page and "gate failed: error_rate" in page  # the spec's steps; the rollback's reason
    with pytest.raises(SystemExit) as refused:
        main([*argv[:-2], "--window", "0s", "-o", str(tmp_path / "not-written.html")])
    assert refused.value.code == 2 and not (tmp_path / "not-written.html").exists()


# -- the emulator with a hand-written state, and a scripted range client -------------------------------------------

AT = 1_700_000_000.0
FAILED = "gate failed: error_rate 9% > 5%"
HISTORY = [PhaseChange(phase=Phase.PROGRESSING, step=0, at=AT, reason="step 1/2: 20%"),
           PhaseChange(phase=Phase.ROLLED_BACK, step=0, at=AT + 20, reason=FAILED)]  # fmt: skip


def write_state(kube: KubeHarness, state: RolloutState | None, *, raw: str | None = None) -> None:
    """The VirtualService of prod/shop as the controller writes it (baseline routing, `state`); with `raw`, its
    state annotation replaced by that text afterwards (as a person or a broken tool could)."""
    backend = cluster_backend(kube_api(kube))
    backend.track({SERVICE: (NS, SERVICE)})
    backend.load(SERVICE)
    if state is not None:
        backend.save(state)
    backend.apply(ManagedRollout.from_spec(spec(ROLLOUT_YAML)).plan.baseline)
    if raw is not None:
        vs = stored(kube, VS, NS, SERVICE)
        assert vs is not None
        vs["metadata"].setdefault("annotations", {})[STATE_ANNOTATION] = raw
        custom_objects(kube).replace_namespaced_custom_object("networking.istio.io", "v1", NS, VS, SERVICE, vs)


def rolled_back() -> RolloutState:
    return RolloutState(rollout=SERVICE, spec_digest="d", phase=Phase.ROLLED_BACK, step=0, history=HISTORY,
                        reason=HISTORY[-1].reason, observed_at=AT + 20)  # fmt: skip


def matrix(labels: dict[str, str], *values: Any, start: float = AT) -> dict[str, Any]:
    return {"metric": labels, "values": [[start + i, v] for i, v in enumerate(values)]}


@dataclass
class ScriptedRange:
    """A range client answering by a substring of the PromQL (first match); records every call."""

    answers: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, float, float, float]] = field(default_factory=list)
    delay: float = 0.0  # seconds each answer takes

    def query_range(self, promql: str, start: float, end: float, step: float, deadline: Deadline) -> list[Any]:
        self.calls.append((promql, start, end, step))
        time.sleep(self.delay)
        for contains, answer in self.answers:
            if contains in promql:
                if isinstance(answer, BaseException):
                    raise answer
                return answer  # type: ignore[no-any-return]
        return []


def report(kube: KubeHarness, prometheus: Any, **kwargs: Any) -> ReportInputs:
    kwargs.setdefault("window", None)
    kwargs.setdefault("deadline", Deadline(10))
    return cluster_report_inputs(kube_api(kube), NS, SERVICE, prometheus, now=AT + 3600, **kwargs)


def test_the_window_and_step_follow_the_history_and_the_queries_are_one_per_metric(kube: KubeHarness) -> None:
    write_state(kube, rolled_back())
    client = ScriptedRange()
    inputs = report(kube, client)
    ranges = {(start, end, step) for _, start, end, step in client.calls}
    # from the first phase change minus 30 s to the last plus 30 s (finished), every second (< 1000 points)
    assert ranges == {(AT - 30, AT + 50, 1.0), (AT + 50, AT + 50, 1.0)}
    names = [promql.split("{")[0].split("(")[-1] for promql, *_ in client.calls]
    assert names == ["ramp_rollout_weight_percent", "ramp_rollout_phase", "ramp_rollout_step", "ramp_gate_value",
                     "ramp_gate_stable_value", "ramp_gate_evalue", "ramp_gate_verdict", "ramp_gate_threshold",
                     "ramp_rollout_header_route", "istio_requests_total", "istio_requests_total"]  # fmt: skip
    assert all('rollout="shop", namespace="prod"' in promql for promql, *_ in client.calls[:9])
    assert client.calls[-1][0] == (
        'sum by (destination_version) (increase(istio_requests_total{reporter="destination", '
        'destination_service_name="shop", destination_workload_namespace="prod", response_code=~"5.."}[80s]))'
    )
    assert [(m.phase, m.reason) for m in inputs.phases] == [("Progressing", "step 1/2: 20%"), ("RolledBack", FAILED)]
    assert inputs.samples == () and inputs.final_phase == "RolledBack"
    assert "Prometheus has no ramp_gate_threshold for this rollout: thresholds not drawn" in inputs.notes
    # a window given: that far back from now (or a little more: now is on the grid), at most 1000 points
    client.calls.clear()
    report(kube, client, window=86400.0)
    assert {(start, end, step) for _, start, end, step in client.calls[:8]} == {(AT + 3600 - 994 * 87, AT + 3600, 87.0)}


def test_hostile_answers_are_skipped_or_gaps_and_noted_never_a_crash(kube: KubeHarness) -> None:
    write_state(kube, rolled_back())
    weights = [matrix({"version": "v1"}, "100", "80", "NaN", "abc", "-1", "+Inf"),
               matrix({"version": "v2"}, "0", "20", "20", "20", "250", "20"),
               matrix({"versio": "v3"}, "5"), {"metric": "junk", "values": [[AT, "1"]]}, 7,
               matrix({"version": "x" * 300}, "1")]  # fmt: skip
    client = ScriptedRange([
        ("ramp_rollout_weight_percent", weights),
        ("ramp_rollout_phase", [matrix({"phase": "Progressing"}, "1", "1"), matrix({"phase": "Bogus"}, "1")]),
        ("ramp_rollout_step", [matrix({}, "1", "2", "1e9", "NaN")]),
        ("ramp_gate_value", [matrix({"gate": "error_rate"}, "0.5", "NaN", "9")]),
        ("ramp_gate_stable_value", {"not": "a list"}),
        ("ramp_gate_evalue", PrometheusAnswerError("resultType is 'vector', not 'matrix'")),
        ("ramp_gate_verdict", [matrix({"gate": "error_rate"}, "1", "0.5", "-1", "0.7")]),
        ("ramp_gate_threshold", [matrix({"gate": "error_rate", "kind": "max", "unit": "%"}, "4", "5"),
                                 matrix({"gate": "error_rate", "kind": "whatever", "unit": "%"}, "1"),
                                 matrix({"gate": "error_rate", "kind": "k_over_alpha", "unit": "e-value"}, "Inf")]),
        ("istio_requests_total", RuntimeError("connection reset")),
    ])  # fmt: skip
    inputs = report(kube, client)
    by_time = {s.at - AT: s for s in inputs.samples}
    assert by_time[0].weights == {"v1": 100, "v2": 0} and by_time[1].weights == {"v1": 80, "v2": 20}
    assert by_time[2].weights == {"v2": 20} and by_time[3].weights == {"v2": 20}  # NaN: a gap; "abc": skipped
    assert by_time[4].weights == {} and by_time[5].weights == {"v2": 20}  # -1 and 250 are no weights
    assert [by_time[t].phase for t in range(3)] == ["Progressing", "Progressing", ""]
    assert [by_time[t].step for t in range(4)] == [0, 1, -1, -1]
    gates = [(t, g.verdict, g.value) for t in range(4) for g in by_time[t].gates]
    assert gates == [(0, "pass", 0.5), (1, "hold", None), (2, "fail", 9.0), (3, "", None)]
    assert [by_time[t].reason for t in range(4)] == [
        "", "held: error_rate (from ramp_gate_verdict; the full reasons are kept in local timelines only)", "", ""
    ]
    assert [t.kind for t in inputs.thresholds] == ["max"] and inputs.thresholds[0].value == 5.0
    assert inputs.gate_units == {"error_rate": "%"}
    assert inputs.summary == ()
    notes = "\n".join(inputs.notes)
    # "junk" labels and a non-object are no series; "abc" no value; a 300-character label is dropped
    assert "weights: 2 series, 1 points, 1 labels unreadable or over the limits, skipped" in notes
    assert "weights: 2 series without a 'version' label, skipped" in notes  # "versio", and the dropped label
    assert "gate stable_values: not read from Prometheus: a range answer's result is dict, not a list" in notes
    assert "gate e_values: not read from Prometheus: resultType is 'vector', not 'matrix'" in notes
    assert "requests: not read from Prometheus: RuntimeError: connection reset" in notes


def test_a_prometheus_that_cannot_answer_leaves_the_state_s_report_and_never_its_credentials(
    kube: KubeHarness,
) -> None:
    write_state(kube, rolled_back())
    closed = free_port()
    inputs = report(kube, PrometheusHTTP(f"http://reader:s3cr3t-pw@127.0.0.1:{closed}"))
    assert inputs.final_phase == "RolledBack" and len(inputs.phases) == 2 and inputs.samples == ()
    assert len([n for n in inputs.notes if "not read from Prometheus" in n]) == 11  # one note per query
    assert all("s3cr3t" not in note for note in inputs.notes)
    assert "s3cr3t" not in inputs.source and inputs.source.startswith("VirtualService prod/shop, Prometheus http://")
    # a Prometheus slower than the report's deadline: what is left is not even asked
    # (the deadline also covers reading the route object first: 1 s leaves that read ample time under load)
    slow = ScriptedRange(delay=1.5)
    inputs = report(kube, slow, deadline=Deadline(1.0))
    assert len(slow.calls) == 1 and inputs.final_phase == "RolledBack"
    ran_out = [n for n in inputs.notes if n.endswith(": not asked: the 1s allowed for the queries ran out")]
    assert len(ran_out) == 10  # all but the first


def test_no_route_object_or_no_state_is_a_clear_error_naming_the_service(kube: KubeHarness) -> None:
    with pytest.raises(ReportSourceError, match="no VirtualService or HTTPRoute prod/shop: nothing to report"):
        report(kube, ScriptedRange())
    write_state(kube, None)
    with pytest.raises(ReportSourceError, match=r"VirtualService prod/shop holds no rollout state \(no ramp.dev/state"):
        report(kube, ScriptedRange())
    write_state(kube, None, raw="{not json")
    with pytest.raises(ReportSourceError, match="VirtualService prod/shop holds no rollout state: "):
        report(kube, ScriptedRange())
    with pytest.raises(ReportSourceError, match="service 'Shop!' is not a Kubernetes name"):
        cluster_report_inputs(kube_api(kube), NS, "Shop!", ScriptedRange(), window=None, now=AT,
                              deadline=Deadline(1))  # fmt: skip


def test_a_hostile_state_history_and_rollout_name_are_not_trusted(kube: KubeHarness) -> None:
    doc = json.loads(encode_state(rolled_back()))
    doc["rollout"] = 'shop"} or vector(1) #'
    doc["history"] += [{"phase": "Failed", "step": 99_999, "at": math.inf, "reason": "x" * 10_000},
                       {"phase": "Failed", "step": 1, "at": -5.0}, {"phase": "Failed", "step": 1, "at": math.nan}]
    doc["dropped_history"] = 3
    write_state(kube, rolled_back(), raw=json.dumps(doc))
    client = ScriptedRange()
    inputs = report(kube, client)
    assert client.calls == []  # a rollout name that is no Kubernetes name is never put into PromQL
    assert [m.phase for m in inputs.phases] == ["Progressing", "RolledBack"]  # the unreadable times are left out
    assert any("is not a Kubernetes name: not queried" in note for note in inputs.notes)
    assert "3 earlier phase changes are no longer kept in the rollout state" in inputs.notes
    assert inputs.final_phase == "RolledBack"
    doc["rollout"] = "shop\n"  # a name that only a lax `$` would let through
    write_state(kube, rolled_back(), raw=json.dumps(doc))
    client = ScriptedRange()
    report(kube, client)
    assert client.calls == []


def test_a_spec_given_names_target_steps_and_stands_in_for_missing_thresholds(kube: KubeHarness) -> None:
    write_state(kube, rolled_back())
    rollout_spec = spec(ROLLOUT_YAML)
    client = ScriptedRange([("ramp_rollout_weight_percent", [matrix({"version": "v1"}, "100"),
                                                            matrix({"version": "v2"}, "0")])])  # fmt: skip
    inputs = report(kube, client, spec=rollout_spec)
    assert (inputs.target, inputs.stable, inputs.versions) == ("v2", ("v1",), ("v1", "v2"))
    assert inputs.steps == ("20%", "50%")
    assert set(inputs.thresholds) == set(gate_thresholds(rollout_spec))
    assert "Prometheus has no ramp_gate_threshold for this rollout: thresholds from the spec given" in inputs.notes
    assert any("another digest" in note for note in inputs.notes)
    other = spec(ROLLOUT_YAML.replace("service: shop", "service: cart"))
    assert any("not this rollout: not used" in n for n in report(kube, client, spec=other).notes)


def test_the_header_only_step_is_read_from_its_metric_and_shaded(kube: KubeHarness) -> None:
    write_state(kube, rolled_back())
    client = ScriptedRange(answers=[
        ("ramp_rollout_header_route", [matrix({"version": "v2"}, "1", "1"),
                                       matrix({"version": "v3"}, "0.5")]),  # not 1: not a header route
        ("ramp_rollout_weight_percent", [matrix({"version": "v1"}, "100", "100", "80"),
                                         matrix({"version": "v2"}, "0", "0", "20")]),
    ])  # fmt: skip
    inputs = report(kube, client)
    assert [(s.at - AT, s.header_version) for s in inputs.samples] == [(0, "v2"), (1, "v2"), (2, None)]
    spans = build_report(inputs).spans
    assert [(s.kind, s.start - AT, s.end - AT) for s in spans] == [("header", 0, 2)]

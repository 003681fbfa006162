from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest

from controller.analysis.metrics import VersionMetrics
from controller.controller_metrics import ControllerMetrics, rollback_cause
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.http_endpoints import EndpointServer
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, RecordingRouter, spec


def test_metrics_follow_the_rollout_and_count_rollbacks_by_cause(tmp_path: Path) -> None:
    metrics = ControllerMetrics(backends={"prometheus": lambda: (7, 1)})
    clock = FakeClock()
    source = FixedMetrics({"v1": VersionMetrics(200, 0), "v2": VersionMetrics(100, 0)})
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(tmp_path), clock=clock, observers=[metrics])
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    for _ in range(4):
        runner.tick()
        clock.advance(5)
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_rollout_weight_percent{namespace="prod",rollout="shop",version="v2"} 10.0' in text
    assert 'ramp_rollout_phase{namespace="prod",phase="Progressing",rollout="shop"} 1.0' in text
    assert 'ramp_rollout_step{namespace="prod",rollout="shop"} 2.0' in text
    assert 'ramp_gate_value{gate="error_rate",namespace="prod",rollout="shop"} 0.0' in text
    assert 'ramp_gate_verdict{gate="error_rate",namespace="prod",rollout="shop"} 1.0' in text
    assert 'ramp_backend_requests_total{backend="prometheus"} 7.0' in text
    assert 'ramp_backend_errors_total{backend="prometheus"} 1.0' in text
    assert 'ramp_rollbacks_total{cause="gate:error_rate",namespace="prod",rollout="shop"} 0.0' in text  # pre-created
    source.by_version["v2"] = VersionMetrics(100, 30)
    runner.tick()
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_rollbacks_total{cause="gate:error_rate",namespace="prod",rollout="shop"} 1.0' in text
    assert 'ramp_rollout_weight_percent{namespace="prod",rollout="shop",version="v1"} 100.0' in text


def test_rollback_causes_are_bounded() -> None:
    assert rollback_cause("gate failed: latency-p99 of v2 is 900ms > max 500ms") == "gate:latency-p99"
    assert rollback_cause("no data for 120s (limit 120s): ...") == "missing_data"
    assert rollback_cause("aborted by user") == "aborted"


def test_endpoints_serve_metrics_health_and_readiness() -> None:
    metrics = ControllerMetrics()
    ready = {"ok": False}
    server = EndpointServer(metrics.registry, lambda: (True, "ticking"), lambda: (ready["ok"], "specs: 0 loaded"),
                            host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert b"ramp_tick_duration_seconds" in urllib.request.urlopen(f"{base}/metrics").read()
        assert urllib.request.urlopen(f"{base}/healthz").read() == b"ticking\n"
        try:
            urllib.request.urlopen(f"{base}/readyz")
            raise AssertionError("readyz must fail while not ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.read() == b"specs: 0 loaded\n"
        ready["ok"] = True
        assert urllib.request.urlopen(f"{base}/readyz").status == 200
    finally:
        server.stop()


def test_tick_metrics_start_at_zero_and_cover_the_tick_deadline() -> None:
    metrics = ControllerMetrics()
    text = generate_latest(metrics.registry).decode()
    for line in (
        'ramp_ticks_skipped_total{reason="standby"} 0.0',
        'ramp_ticks_skipped_total{reason="previous_tick_running"} 0.0',
        "ramp_ticks_abandoned_total 0.0",
        "ramp_tick_errors_total 0.0",
        "ramp_last_loop_iteration_timestamp_seconds 0.0",
    ):
        assert line in text
    metrics.tick_seconds.observe(25.0)  # a tick that overran a 20 s deadline still lands in a finite bucket
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_tick_duration_seconds_bucket{le="20.0"} 0.0' in text
    assert 'ramp_tick_duration_seconds_bucket{le="30.0"} 1.0' in text


def test_safety_metrics_count_damage_unconfirmed_routing_and_command_outcomes(tmp_path: Path) -> None:
    from controller.engine.commands import CommandRequest
    from controller.engine.phases import Command

    metrics = ControllerMetrics()
    clock, router = FakeClock(), RecordingRouter()
    source = FixedMetrics({"v1": VersionMetrics(200, 0), "v2": VersionMetrics(100, 0)})
    store = FileStateStore(tmp_path)
    runner = RolloutRunner(router, source, store, clock=clock, observers=[metrics])
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    runner.tick()
    clock.advance(5)
    sound = json.loads((tmp_path / "shop.state.json").read_text())
    (tmp_path / "shop.state.json").write_text(json.dumps({**sound, "step": 99}))
    runner.tick()  # damaged: failed safe to the baseline
    clock.advance(5)
    store.request("shop", CommandRequest(id="p", command=Command.PROMOTE))
    router.fail_next = 1
    runner.tick()  # refused (the rollout Failed), and the baseline routing was not confirmed this tick
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_state_damaged_total{namespace="prod",rollout="shop"} 1.0' in text
    assert 'ramp_routing_unconfirmed{namespace="prod",rollout="shop"} 1.0' in text
    assert 'ramp_commands_total{command="promote",namespace="prod",outcome="refused",rollout="shop"} 1.0' in text
    assert 'ramp_routing_drift_total{namespace="prod",rollout="shop"} 0.0' in text
    clock.advance(5)
    runner.tick()
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_routing_unconfirmed{namespace="prod",rollout="shop"} 0.0' in text


def test_the_header_only_step_is_exported_per_version(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    source = FixedMetrics({"v1": VersionMetrics(200, 0), "v2": VersionMetrics(100, 0)})
    runner = RolloutRunner(RecordingRouter(), source, FileStateStore(tmp_path), clock=FakeClock(), observers=[metrics])
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    runner.tick()  # the header step: requests with x-version: v2 go to v2
    text = generate_latest(metrics.registry).decode()
    assert 'ramp_rollout_header_route{namespace="prod",rollout="shop",version="v2"} 1.0' in text
    assert 'ramp_rollout_header_route{namespace="prod",rollout="shop",version="v1"} 0.0' in text

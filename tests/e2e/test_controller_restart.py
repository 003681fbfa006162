"""`ramp run` killed with SIGKILL mid-rollout and restarted: it resumes exactly where it was.

Real processes throughout: sample apps, Envoy, Prometheus, and the controller as a
subprocess. The restarted controller must neither replay nor skip a step, must keep
the interrupted step's start time, and must not rewrite routes that are already right.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from controller.engine.phases import Phase, RolloutState
from controller.local.loadgen import LoadGenerator, send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.plan import build_plan
from controller.report.local_source import local_report_inputs
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from controller.state.timeline_file import read_timeline, timeline_path
from tests.e2e.conftest import require_local_stack
from tests.e2e.test_rollouts import FAST_SPEC

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def start_controller(stack: LocalStack, specs: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "controller", "run",
        "--specs", str(specs),
        "--prometheus", stack.prometheus_url,
        "--envoy-routes-dir", str(stack.router.routes_dir),
        "--envoy-admin", stack.envoy_admin_url,
        "--state-dir", str(state),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_for(store: FileStateStore, done: object, timeout: float) -> RolloutState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = store.load("shop")
        if state is not None and done(state):  # type: ignore[operator]
            return state
        time.sleep(0.1)
    raise AssertionError(f"timed out; last state: {store.load('shop')}")


def test_kill_9_mid_rollout_then_restart_resumes_without_replay_or_skip(tmp_path: Path) -> None:
    spec = parse_spec_text(FAST_SPEC, "fast.yaml")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "shop.yaml").write_text(FAST_SPEC)
    (specs / "broken.yaml").write_text("service: [unclosed\n")  # reported and ignored, never fatal
    store = FileStateStore(tmp_path / "state")
    log = tmp_path / "controller.log"
    baseline = build_plan(spec).baseline
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    with LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", baseline) as stack, LoadGenerator(
        stack.api_url, stack.host_header, rate_rps=40, max_requests=4000, max_seconds=100,
        header_fraction=0.3, header=("x-version", "v2"), seed=8,
    ):
        initial_version = stack.router.envoy_route_version()
        first = start_controller(stack, specs, store.directory, log)
        try:
            # State is saved before routing is applied (`unconfirmed`), and again once the data plane has
            # confirmed it. Kill only after that second save, when Envoy serves the 10% step (route versions:
            # initial, header step, 10%), so the "during" sample below sees it. (Killed between the two saves,
            # a restart rightly starts the step's clock at its own confirmation: the entry is re-stamped.)
            at_ten = wait_for(store, lambda s: s.step == 1 and s.unconfirmed is None, timeout=45)
            deadline = time.monotonic() + 10
            while stack.router.envoy_route_version() != str(int(initial_version or 0) + 2):
                assert time.monotonic() < deadline, "the 10% routing was never applied"
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        assert at_ten.phase == Phase.PROGRESSING
        killed_state = store.load("shop")
        assert killed_state is not None
        # While no controller runs, Envoy keeps the last applied routing: the 10% step.
        during = Counter(v for _, v in send_requests(stack.api_url, stack.host_header, 400, random_seed=4))

        second = start_controller(stack, specs, store.directory, log)
        try:
            # settled: terminal AND confirmed (the promoting tick saves, applies, then saves the confirmation)
            final = wait_for(store, lambda s: s.settled, timeout=60)
            final_version = stack.router.envoy_route_version()
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                second.wait(timeout=10)
            except subprocess.TimeoutExpired:
                second.kill()

    assert final.phase == Phase.PROMOTED, final.reason
    entered = [(c.phase, c.step) for c in final.history]
    assert entered == [
        (Phase.HEADER_TEST, 0), (Phase.PROGRESSING, 1), (Phase.PROGRESSING, 2),
        (Phase.PROGRESSING, 3), (Phase.PROMOTED, 4),
    ]
    step_one = [c for c in final.history if c.step == 1]
    killed_step_one = [c for c in killed_state.history if c.step == 1]
    assert step_one == killed_step_one  # resumed the same step; not re-entered
    assert set(during) == {"v1", "v2"} and during["v2"] < 100  # 10% of 400, far below 50%
    # Exactly five route writes: header, 10, 50, 100, promoted. The restart rewrote nothing.
    assert initial_version is not None and final_version == str(int(initial_version) + 5)
    controller_log = log.read_text()
    assert "ignored: " in controller_log and "broken.yaml:2: (document): invalid YAML" in controller_log
    assert os.path.exists(store.directory / "shop.state.json")
    assert json.loads((store.directory / "shop.state.json").read_text())["phase"] == "Promoted"
    # The timeline `ramp run` keeps for `ramp report` spans both controllers: a SIGKILL leaves at most one
    # torn line, skipped and counted; both processes wrote their rollout line.
    timeline = read_timeline(timeline_path(store.directory, "shop"))
    assert timeline.skipped <= 1 and timeline.header is not None
    assert timeline_path(store.directory, "shop").read_text().count('{"kind": "rollout"') == 2
    weights = [s.weights["v2"] for s in timeline.samples]
    assert weights[0] == 0 and 10 in weights and 50 in weights and weights[-1] == 100
    inputs = local_report_inputs(store.directory)
    assert inputs.final_phase == "Promoted" and [m.phase for m in inputs.phases][-1] == "Promoted"

"""Local mode CLI on the real stack: `status`, `set-weights` and `ping` against real Envoy and sample apps.

The controller is the real RolloutRunner on the stack's EnvoyFileRouter and Envoy health checks (fake
clock, fixed passing metrics: this test is about the commands), ticking on a background thread while
the CLI runs in-process with `--state-dir`, exactly as `ramp run` would be driven. Splits are measured
from real responses with a seeded `x-ramp-random` header, inside binomial bounds at alpha = 0.001.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.local.loadgen import send_requests
from controller.local.stack import LocalStack, VersionKnobs
from controller.observability import configure_logging
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from controller.state.local_info import write_local_info
from tests.e2e.conftest import binomial_bounds, require_local_stack
from tests.k8s.cli_controller import run_to_end, ticking
from tests.unit.engine_fixtures import FakeClock, FixedMetrics

require_local_stack()
pytestmark = pytest.mark.e2e

N = 400
SPEC = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 50, duration: 10s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 5s}
"""


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["VERSION", "WEIGHT"])
    return [line.split() for line in lines[start + 1 :] if line.split() and line.split()[0] in ("v1", "v2")]


def test_status_set_weights_and_ping_in_local_mode_on_real_envoy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="warning")
    rollout = ManagedRollout.from_spec(parse_spec_text(SPEC, "shop.yaml"))
    clock, state_dir = FakeClock(), tmp_path / "state"
    store = FileStateStore(state_dir)
    knobs = {v: VersionKnobs() for v in ("v1", "v2")}
    with LocalStack("shop", "prod", knobs, tmp_path / "stack", rollout.plan.baseline, with_prometheus=False) as stack:
        write_local_info(state_dir, stack.envoy_admin_url, stack.routes_dir)
        metrics = FixedMetrics({v: VersionMetrics(requests=100) for v in ("v1", "v2")})
        runner = RolloutRunner(stack.router, metrics, store, clock=clock, availability=stack.availability)
        runner.set_rollouts([rollout])
        run_to_end(runner, clock)
        state_arg = ["--state-dir", str(state_dir)]

        assert main(["status", "shop", *state_arg]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith("rollout shop (prod/shop): Promoted, step 2: ")
        assert rows(out) == [["v1", "0", "0.0%", "Idle", "1/1"], ["v2", "100", "100.0%", "Serving", "1/1"]]

        with ticking(runner, clock):
            assert main(["set-weights", "shop", "v1=100", *state_arg, "--wait", "30"]) == 0
        assert capsys.readouterr().out.strip() == "manual weights v1=100 (50%), v2=100 (50%) set by user"
        for _ in range(3):  # later ticks keep the override
            runner.tick()
            clock.advance(5)
        served = stack.router.observed("prod", "shop")
        assert served is not None and dict(served.weights) == {"v1": 50, "v2": 50}
        results = send_requests(stack.api_url, stack.host_header, N, random_seed=7)
        split = Counter(version for _, version in results)
        low, high = binomial_bounds(N, 0.5)
        assert all(status == 200 for status, _ in results)
        assert low <= split["v1"] <= high and split["v1"] + split["v2"] == N
        assert main(["status", "shop", *state_arg]) == 0
        out = capsys.readouterr().out
        assert rows(out) == [["v1", "100", "50.0%", "Serving", "1/1"], ["v2", "100", "50.0%", "Serving", "1/1"]]
        assert "last command: set-weights (" in out and ") applied at " in out

        assert main(["ping", "shop", *state_arg, "--count", "1"]) == 0
        line = capsys.readouterr().out.strip()
        assert "v1: 1/1 ready, HTTP 200 in " in line and "v2: 1/1 ready, HTTP 200 in " in line, line

        stack.stop_version("v1")
        deadline = time.monotonic() + 20
        while "v1" not in stack.unavailable_versions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert main(["ping", "shop", *state_arg, "--count", "1", "--timeout", "1"]) == 1
        line = capsys.readouterr().out.strip()
        assert "v1: 0/1 ready, FAILED (" in line and " DOWN; v2: 1/1 ready, HTTP 200 in " in line, line
        assert main(["status", "shop", *state_arg]) == 0
        assert rows(capsys.readouterr().out)[0] == ["v1", "100", "50.0%", "NoReadyPods", "0/1"]

"""Every people's command across processes in local mode: `ramp run` as a subprocess, each CLI command as
another (`python -m controller ... --state-dir`), on the real stack (sample apps, Envoy, Prometheus).

The CLI finds Envoy through the info file `ramp run` writes into its state directory, waits for each
command's recorded outcome and exits 0 (applied) or 1 (refused); `status` shows what Envoy serves.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.local.stack import LocalStack, VersionKnobs
from controller.plan import build_plan
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# No load: the header step holds on missing data (it never promotes on it) for 10 minutes, so the rollout
# stays where the commands put it.
SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 2s}
  - {weight: 50, duration: 2s}
gates: [{metric: error_rate, max: 5}]
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {missing_data_timeout: 10m}
"""


def ramp(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("VERSION"))
    return [line.split()[:5] for line in lines[start + 1 : start + 3]]


def test_ramp_run_and_the_cli_in_separate_processes(tmp_path: Path) -> None:
    spec = parse_spec_text(SPEC, "shop.yaml")
    specs, state_dir = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    (specs / "shop.yaml").write_text(SPEC)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    with LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", build_plan(spec).baseline) as stack:
        argv = [
            sys.executable, "-m", "controller", "run", "--specs", str(specs), "--prometheus", stack.prometheus_url,
            "--envoy-routes-dir", str(stack.routes_dir), "--envoy-admin", stack.envoy_admin_url,
            "--state-dir", str(state_dir),
        ]  # fmt: skip
        with (tmp_path / "controller.log").open("ab") as log:
            controller = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            store, deadline = FileStateStore(state_dir), time.monotonic() + 30
            while (state := store.load("shop")) is None or state.phase.value != "HeaderTest":
                assert time.monotonic() < deadline and controller.poll() is None, "the controller did not start"
                time.sleep(0.1)
            at = ["--state-dir", str(state_dir)]

            paused = ramp("pause", "shop", *at)
            assert (paused.returncode, paused.stdout.strip()) == (0, "paused by user"), paused.stderr
            second = ramp("pause", "shop", *at)
            assert second.returncode == 1 and second.stderr.strip() == "ramp pause: refused: already paused"
            status = ramp("status", "shop", *at)
            assert status.returncode == 0 and "rollout shop (e2e/shop): Paused" in status.stdout, status.stderr
            assert table(status.stdout) == [
                ["v1", "100", "100.0%", "Serving", "1/1"],
                ["v2", "0", "0.0%", "HeaderOnly", "(x-version:"],
            ]

            promoted = ramp("promote", "shop", *at)
            assert (promoted.returncode, promoted.stdout.strip()) == (0, "promoted by user"), promoted.stderr
            weights = ramp("set-weights", "shop", "v1=100", *at)
            assert weights.returncode == 0, weights.stderr
            assert weights.stdout.strip() == "manual weights v1=100 (50%), v2=100 (50%) set by user"
            time.sleep(1.5)  # a few more ticks: the override stays
            status = ramp("status", "shop", *at)
            assert table(status.stdout) == [
                ["v1", "100", "50.0%", "Serving", "1/1"], ["v2", "100", "50.0%", "Serving", "1/1"]]  # fmt: skip
            assert "Promoted" in status.stdout.splitlines()[0]

            ping = ramp("ping", "shop", *at, "--count", "1")
            assert ping.returncode == 0 and "v1: 1/1 ready, HTTP 200 in " in ping.stdout, ping.stdout + ping.stderr

            aborted = ramp("abort", "shop", *at)
            assert aborted.returncode == 0 and aborted.stdout.startswith("aborted after promotion by user: traffic")
            resumed = ramp("resume", "shop", *at)
            assert (resumed.returncode, resumed.stderr.strip()) == (
                1, "ramp resume: refused: the rollout is RolledBack: nothing to resume")  # fmt: skip
            status = ramp("status", "shop", *at)
            assert table(status.stdout)[0] == ["v1", "100", "100.0%", "Serving", "1/1"]
            assert "last command: resume (" in status.stdout and "REFUSED" in status.stdout
        finally:
            controller.send_signal(signal.SIGTERM)
            try:
                controller.wait(timeout=15)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait(timeout=5)

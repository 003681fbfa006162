"""`ramp run` as a user runs it (a subprocess) on a real Envoy, against a Prometheus that answers one byte
per second (tests/fakes/prometheus.py).

Every tick still ends within its deadline: the rollout enters its header step on Envoy, then the
missing-data policy rolls it back and Envoy serves v1 again; /healthz stays 200 (the loop is alive) and no
tick is abandoned. The state directory is locked (a second `ramp run` on it is refused) and holds the
local info file; SIGTERM stops the controller cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from controller.local.loadgen import send_requests
from controller.local.ports import free_port
from controller.local.stack import LocalStack, VersionKnobs
from controller.plan import build_plan
from controller.spec_loader import parse_spec_text
from controller.state.file_store import FileStateStore
from controller.state.local_info import read_local_info
from tests.e2e.conftest import require_local_stack
from tests.fakes.prometheus import FakePrometheus, Reply, vector

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SPEC = """
service: shop
namespace: e2e
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 30s}
  - {weight: 50, duration: 30s}
gates: [{metric: error_rate, max: 5}]
schedule: {interval: 1s}
analysis: {window: 5s, min_requests: 10}
rollback: {on_missing_data: rollback, missing_data_timeout: 6s}
"""


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def test_ramp_run_keeps_ticking_against_a_dripping_prometheus(tmp_path: Path) -> None:
    spec = parse_spec_text(SPEC, "shop.yaml")
    specs, state = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    (specs / "shop.yaml").write_text(SPEC)
    store = FileStateStore(state)
    knobs = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    with (
        LocalStack(spec.service, spec.namespace, knobs, tmp_path / "stack", build_plan(spec).baseline,
                   with_prometheus=False) as stack,
        FakePrometheus() as prom,
    ):
        prom.answer("", Reply(body=vector(), bytes_per_second=1))  # ~60 s per answer, one byte at a time
        port = free_port()
        argv = [
            sys.executable, "-m", "controller", "run", "--specs", str(specs),
            "--prometheus", prom.url, "--prometheus-timeout", "1", "--tick-deadline", "3",
            "--envoy-routes-dir", str(stack.routes_dir), "--envoy-admin", stack.envoy_admin_url,
            "--state-dir", str(state), "--listen-address", f"127.0.0.1:{port}",
        ]  # fmt: skip
        log = tmp_path / "controller.log"
        with log.open("wb") as out:
            controller = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            health: list[int] = []
            header_seen: Counter[str] = Counter()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # bounded
                health.append(get(port, "/healthz")[0])
                current = store.load("shop")
                live = current is not None and current.phase.value == "HeaderTest" and current.unconfirmed is None
                if live and not header_seen:  # the header step is confirmed in place on Envoy
                    got = send_requests(stack.api_url, stack.host_header, 5, headers={"x-version": "v2"})
                    header_seen.update(str(version) for _, version in got)
                if current is not None and current.phase.value == "RolledBack":
                    break
                time.sleep(0.2)
            final = store.load("shop")
            assert final is not None and final.phase.value == "RolledBack", log.read_text()[-3000:]
            assert final.reason.startswith("no data for ") and "Prometheus" in final.reason
            assert header_seen["v2"] == 5  # the header step was live on Envoy before the rollback
            served = send_requests(stack.api_url, stack.host_header, 40, random_seed=5)
            assert Counter(version for _, version in served) == {"v1": 40}
            started = health.index(200)
            assert set(health[started:]) == {200}, health  # the loop was alive all along, and said so
            metrics = get(port, "/metrics")[1]
            assert "ramp_ticks_abandoned_total 0.0" in metrics
            assert get(port, "/readyz")[0] == 200
            info = read_local_info(state)
            assert info is not None and info.envoy_admin == stack.envoy_admin_url

            second = subprocess.run([*argv[:-1], f"127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True,
                                    text=True, timeout=60)
            assert second.returncode == 1 and "in use by another ramp controller" in second.stderr
        finally:
            controller.send_signal(signal.SIGTERM)
            try:
                code = controller.wait(30)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait(10)
                raise
        assert code == 0, log.read_text()[-3000:]

"""`ramp controller` in the image (non-root, read-only root, host network) against the Kubernetes emulator and a
fake Prometheus, both on 127.0.0.1: it takes the Lease, starts the rollout, rolls it back when v2's error rate
breaches the gate, and serves /healthz and /metrics. Its kubeconfig and specs are read-only mounts; nothing in
the container is writable.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from bench import image as img
from controller.local.ports import free_port
from tests.fakes.prometheus import FakePrometheus, istio, sample, vector
from tests.image.conftest import podman_rm
from tests.k8s.emulator import KubeHarness, running_emulator
from tests.k8s.helpers import VS, create_deployment, stored

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("podman_ready")

SPEC = """
service: demo
namespace: default
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {header: {name: x-version, value: v2}, duration: 10s}
  - {weight: 50, duration: 10s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 1s}
analysis: {window: 10s, min_requests: 20}
rollback: {on_missing_data: hold}
"""
# v2 answers 40 of its 100 requests with 503 (the stable v1 is clean)
REQUESTS = vector(
    sample(istio("default", "demo", "v1", response_code="200"), 1000),
    sample(istio("default", "demo", "v2", response_code="200"), 60),
    sample(istio("default", "demo", "v2", response_code="503"), 40),
)


def wait_until(check: Callable[[], bool], timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert alive(), "the controller container exited"
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def state(kube: KubeHarness) -> dict[str, object]:
    vs = stored(kube, VS, "default", "demo")
    raw = None if vs is None else vs["metadata"].get("annotations", {}).get("ramp.dev/state")
    return {} if raw is None else dict(json.loads(raw))


def write_readable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_the_controller_in_the_image_takes_a_rollout_and_rolls_it_back_on_a_breach(
    image: str, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    specs.chmod(0o755)
    write_readable(specs / "demo.yaml", SPEC)
    name = f"ramp-image-test-{os.getpid()}"
    with running_emulator() as kube, FakePrometheus() as prom:
        prom.answer("increase(istio_requests_total", REQUESTS)
        for version in ("v1", "v2"):
            create_deployment(kube, "default", "demo", version, 1)
        kubeconfig = write_readable(
            tmp_path / "kubeconfig",
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "e",
                "clusters": [{"name": "e", "cluster": {"server": kube.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
            }),
        )
        port = free_port()
        argv = [
            "podman", "run", "--rm", "--name", name, "--read-only", "--network=host", *img.runtime_flags(),
            "--volume", f"{kubeconfig}:/etc/ramp/kubeconfig:ro", "--volume", f"{specs}:/etc/ramp/specs:ro",
            image, "--specs", "/etc/ramp/specs", "--prometheus", prom.url, "--kubeconfig", "/etc/ramp/kubeconfig",
            "--namespaces", "default", "--lease-namespace", "ramp-system", "--identity", "in-image",
            "--listen-address", f"127.0.0.1:{port}", "--prometheus-timeout", "2", "--tick-deadline", "5",
        ]  # fmt: skip
        logs = tmp_path / "controller.log"
        with logs.open("w") as log:
            container = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            alive = lambda: container.poll() is None  # noqa: E731
            wait_until(lambda: get(port, "/healthz")[0] == 200, 60, alive)
            wait_until(lambda: state(kube).get("phase") == "RolledBack", 60, alive)
            reason = str(state(kube)["reason"])
            assert "error_rate of v2 is 40.00% > max 2.00%" in reason, reason
            phases = [entry["phase"] for entry in state(kube)["history"]]  # type: ignore[attr-defined]
            assert phases[0] == "HeaderTest" and phases[-1] == "RolledBack"
            vs = stored(kube, VS, "default", "demo")
            assert vs is not None
            weights = {r["destination"]["subset"]: r.get("weight", 0) for r in vs["spec"]["http"][-1]["route"]}
            assert weights.get("v1") == 100 and not weights.get("v2")  # traffic back on the stable version
            status, metrics = get(port, "/metrics")
            assert status == 200
            assert 'ramp_rollout_phase{namespace="default",phase="RolledBack",rollout="demo"} 1.0' in metrics
            assert get(port, "/healthz")[0] == 200
            lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease("ramp-controller", "ramp-system")
            assert lease.spec is not None and lease.spec.holder_identity == "in-image"
            assert any("increase(istio_requests_total" in q for q in prom.queries)
        finally:
            podman_rm(name)
            try:
                container.wait(timeout=30)
            except subprocess.TimeoutExpired:
                container.kill()
                container.wait(timeout=10)
    output = logs.read_text()
    assert "Traceback" not in output and "Read-only file system" not in output, output[-3000:]

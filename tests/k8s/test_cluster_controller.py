"""`run_controller` as deployed (two replicas), against the emulator over HTTP.

Prometheus is unreachable here on purpose: the rollout can enter its first step (no metrics
needed) and must then hold on missing data. What is checked: exactly one replica acts, the
other takes over when the leader stops, the rollout resumes without replaying its step, Events
are recorded, and /healthz, /readyz, /metrics answer.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client

from controller.cluster_controller import ControllerOptions, run_controller
from controller.local.ports import free_port
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, create_deployment, stored

SPEC = (Path(__file__).resolve().parents[2] / "rollout-specs" / "demo.yaml").read_text()


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def start(kube: KubeHarness, tmp_path: Path, identity: str) -> tuple[threading.Event, threading.Thread, int]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "e",
                "clusters": [{"name": "e", "cluster": {"server": kube.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
            }
        )
    )
    port = free_port()
    options = ControllerOptions(
        specs=tmp_path / "specs",
        prometheus=f"http://127.0.0.1:{free_port()}",
        kubeconfig=str(kubeconfig),
        namespaces=frozenset({"default"}),
        lease_namespace="ramp-system",
        identity=identity,
        listen_port=port,
        listen_host="127.0.0.1",
    )
    stop = threading.Event()
    thread = threading.Thread(target=run_controller, args=(options, stop), daemon=True)
    thread.start()
    return stop, thread, port


def holder(kube: KubeHarness) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease("ramp-controller", "ramp-system")
    except client.exceptions.ApiException:
        return None
    return lease.spec.holder_identity or None


def rollout_state(kube: KubeHarness) -> dict[str, object] | None:
    vs = stored(kube, VS, "default", "demo")
    if vs is None:
        return None
    raw = vs["metadata"].get("annotations", {}).get("ramp.dev/state")
    return None if raw is None else json.loads(raw)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_replicas_one_acts_then_hand_over_resumes_without_replay(kube: KubeHarness, tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "demo.yaml").write_text(SPEC)
    (tmp_path / "specs" / "elsewhere.yaml").write_text(
        SPEC.replace("namespace: default", "namespace: kube-system").replace("service: demo", "service: other")
    )
    for version in ("v1", "v2"):
        create_deployment(kube, "default", "demo", version, 1)
    stop_a, thread_a, port_a = start(kube, tmp_path, "replica-a")
    wait_until(lambda: holder(kube) == "replica-a")
    stop_b, thread_b, port_b = start(kube, tmp_path, "replica-b")
    try:
        wait_until(lambda: (rollout_state(kube) or {}).get("phase") == "HeaderTest")
        time.sleep(3)  # both replicas tick for a while: only the leader may act
        assert holder(kube) == "replica-a"
        assert get(port_a, "/healthz")[0] == 200
        status, body = get(port_a, "/readyz")
        assert status == 200 and "1 rollouts, 1 spec problems, leader=True" in body
        assert "leader=False" in get(port_b, "/readyz")[1]
        metrics = get(port_a, "/metrics")[1]
        assert 'ramp_rollout_phase{namespace="default",phase="HeaderTest",rollout="demo"} 1.0' in metrics
        assert (
            'ramp_rollout_phase{namespace="default",phase="HeaderTest",rollout="demo"}'
            not in get(port_b, "/metrics")[1]
        )
        assert stored(kube, VS, "kube-system", "other") is None  # outside the allowed namespaces: never applied

        stop_a.set()
        thread_a.join(20)
        wait_until(lambda: holder(kube) == "replica-b", timeout=10)  # released on stop: immediate hand-over
        time.sleep(3)
        state = rollout_state(kube)
        assert state is not None and state["phase"] == "HeaderTest" and state["step"] == 0
        assert [entry["phase"] for entry in state["history"]] == ["HeaderTest"]  # resumed, not replayed
        assert "leader=True" in get(port_b, "/readyz")[1]
        events = client.CoreV1Api(kube.api_client()).list_namespaced_event("default").items
        assert [e.reason for e in events if e.involved_object.name == "demo"] == ["HeaderTest"]
    finally:
        stop_a.set()
        stop_b.set()
        thread_a.join(20)
        thread_b.join(20)

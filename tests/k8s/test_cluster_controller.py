"""`run_controller` as deployed (two replicas), against the emulator over HTTP.

Prometheus is unreachable here on purpose: the rollout can enter its first step (no metrics
needed) and must then hold on missing data. What is checked: exactly one replica acts, the
other takes over when the leader stops, the rollout resumes without replaying its step, Events
are recorded, and /healthz, /readyz, /metrics answer.

Then a Prometheus that answers one byte per second (tests/fakes/prometheus.py): every tick still ends
within its deadline, the missing-data policy applies (rollback for one rollout, hold for the other),
no tick is abandoned, and /healthz stays 200 because the loop really is alive.
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

from controller.analysis.prometheus import PrometheusSource
from controller.cluster_controller import ControllerOptions, run_controller
from controller.local.ports import free_port
from tests.fakes.prometheus import FakePrometheus, Reply, vector
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


def start(
    kube: KubeHarness, tmp_path: Path, identity: str, prometheus: PrometheusSource | None = None,
    tick_deadline: float = 20.0,
) -> tuple[threading.Event, threading.Thread, int]:
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
        prometheus_source=prometheus,
        tick_deadline=tick_deadline,
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


def rollout_state(kube: KubeHarness, service: str = "demo") -> dict[str, object] | None:
    vs = stored(kube, VS, "default", service)
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
    except OSError as exc:  # not listening yet (or any more)
        return 0, str(exc)


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


def test_a_prometheus_dripping_one_byte_a_second_never_wedges_the_controller(
    kube: KubeHarness, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    fast = SPEC.replace("interval: 2s", "interval: 1s").replace("missing_data_timeout: 60s", "missing_data_timeout: 4s")
    (specs / "demo.yaml").write_text(fast)
    (specs / "steady.yaml").write_text(
        fast.replace("service: demo", "service: steady").replace("on_missing_data: rollback", "on_missing_data: hold")
    )
    for service in ("demo", "steady"):
        for version in ("v1", "v2"):
            create_deployment(kube, "default", service, version, 1)
    with FakePrometheus() as prom:
        prom.answer("", Reply(body=vector(), bytes_per_second=1))  # ~60 s per answer, one byte at a time
        source = PrometheusSource(prom.url, timeout_seconds=1.0)
        stop, thread, port = start(kube, tmp_path, "replica-a", prometheus=source, tick_deadline=3.0)
        try:
            wait_until(lambda: get(port, "/healthz")[0] != 0)
            health: list[int] = []

            def rolled_back() -> bool:
                health.append(get(port, "/healthz")[0])
                return (rollout_state(kube) or {}).get("phase") == "RolledBack"

            wait_until(rolled_back, timeout=40)
            demo = rollout_state(kube)
            assert demo is not None and str(demo["reason"]).startswith("no data for ")
            assert "Prometheus" in str(demo["reason"])  # the reason names the unreachable source
            steady = rollout_state(kube, "steady")  # the other rollout ticked too: it holds on missing data
            assert steady is not None and steady["phase"] == "HeaderTest" and "no data" in str(steady["reason"])
            assert set(health) == {200}  # the loop is alive: /healthz said so, truthfully, all along
            metrics = get(port, "/metrics")[1]
            assert "ramp_ticks_abandoned_total 0.0" in metrics  # every tick ended within its deadline
            assert 'ramp_backend_errors_total{backend="prometheus"}' in metrics
            assert 'ramp_backend_errors_total{backend="prometheus"} 0.0' not in metrics
            assert get(port, "/readyz")[0] == 200
        finally:
            stop.set()
            thread.join(30)
    assert not thread.is_alive()


def test_readiness_says_when_leader_election_is_broken_while_liveness_stays_up(
    kube: KubeHarness, tmp_path: Path
) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "demo.yaml").write_text(SPEC)
    forbidden = {"on": True}
    kube.emulator[lambda request: forbidden["on"] and "/leases" in str(request.url)] << 403
    stop, thread, port = start(kube, tmp_path, "replica-a")
    try:
        wait_until(lambda: get(port, "/readyz")[1].startswith("not ready: leader election broken"))
        status, body = get(port, "/readyz")
        assert status == 503 and "leader election forbidden (HTTP 403" in body and "RBAC" in body
        assert "leader=False" in body and holder(kube) is None
        assert get(port, "/healthz")[0] == 200  # the loop is alive (standby): restarting would not fix RBAC
        forbidden["on"] = False  # RBAC fixed: the replica acquires the Lease and becomes ready
        wait_until(lambda: get(port, "/readyz")[0] == 200)
        assert get(port, "/readyz")[1].startswith("leader, 1 rollouts, 0 spec problems, leader=True")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()

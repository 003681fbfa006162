"""`run_controller` with shards = 2, two replicas, against the emulator over HTTP (Prometheus unreachable on purpose,
as in test_cluster_controller: each rollout enters its header step and then holds on missing data).

Checked: one Lease per shard (named <lease-name>-shard-<i>-of-2, no single leader Lease), each replica acts only on
its shard's rollout (its /metrics report only that one), /readyz names the shards held, and a graceful stop hands
the stopped replica's shard over at once: its rollout resumes where it was, not replayed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from kubernetes import client

from controller.cluster_controller import ControllerOptions, run_controller
from controller.local.ports import free_port
from controller.sharding import shard_of
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import create_deployment
from tests.k8s.test_cluster_controller import SPEC, get, rollout_state, wait_until

SERVICES = {0: "svc-2", 1: "demo"}  # shard_of("default", name, 2)


def start(kube: KubeHarness, tmp_path: Path, identity: str) -> tuple[threading.Event, threading.Thread, int]:
    kubeconfig = tmp_path / f"kubeconfig-{identity}"  # one each: the other replica's thread may be reading its own
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e",
        "clusters": [{"name": "e", "cluster": {"server": kube.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
    }))  # fmt: skip
    port = free_port()
    options = ControllerOptions(
        specs=tmp_path / "specs", prometheus=f"http://127.0.0.1:{free_port()}", kubeconfig=str(kubeconfig),
        namespaces=frozenset({"default"}), lease_namespace="ramp-system", identity=identity, listen_port=port,
        listen_host="127.0.0.1", shards=2, lease_duration=4.0, renew_deadline=3.0, retry_period=1.0,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=run_controller, args=(options, stop), daemon=True)
    thread.start()
    return stop, thread, port


def holders(kube: KubeHarness) -> dict[str, str | None]:
    api = client.CoordinationV1Api(kube.api_client())
    return {lease.metadata.name: lease.spec.holder_identity for lease in api.list_namespaced_lease("ramp-system").items}


def phase_metric(service: str) -> str:
    return f'ramp_rollout_phase{{namespace="default",phase="HeaderTest",rollout="{service}"}} 1.0'


def test_two_sharded_replicas_each_act_on_their_shard_and_hand_over_on_stop(kube: KubeHarness, tmp_path: Path) -> None:
    assert {shard: shard_of("default", name, 2) for shard, name in SERVICES.items()} == {0: 0, 1: 1}
    (tmp_path / "specs").mkdir()
    for service in SERVICES.values():
        (tmp_path / "specs" / f"{service}.yaml").write_text(SPEC.replace("service: demo", f"service: {service}"))
        for version in ("v1", "v2"):
            create_deployment(kube, "default", service, version, 1)
    stop_a, thread_a, port_a = start(kube, tmp_path, "replica-a")
    stop_b, thread_b, port_b = start(kube, tmp_path, "replica-b")
    try:
        wait_until(lambda: sorted(v or "" for v in holders(kube).values()) == ["replica-a", "replica-b"])
        leases = holders(kube)
        assert sorted(leases) == ["ramp-controller-shard-0-of-2", "ramp-controller-shard-1-of-2"]
        owner = {shard: leases[f"ramp-controller-shard-{shard}-of-2"] for shard in (0, 1)}
        ports = {"replica-a": port_a, "replica-b": port_b}
        wait_until(lambda: all((rollout_state(kube, s) or {}).get("phase") == "HeaderTest" for s in SERVICES.values()))
        time.sleep(1.5)  # both replicas tick a while: each acts only on its own shard's rollout
        for shard, service in SERVICES.items():
            other = next(name for name in ports if name != owner[shard])
            assert phase_metric(service) in get(ports[owner[shard]], "/metrics")[1]
            assert phase_metric(service) not in get(ports[other], "/metrics")[1]
            status, body = get(ports[owner[shard]], "/readyz")
            assert status == 200 and f"holding shards {shard} of 2" in body, body
            assert f"holding shards {shard} of 2" in get(ports[owner[shard]], "/healthz")[1]
        stop_a.set()
        thread_a.join(20)
        assert not thread_a.is_alive()
        shard_of_a = next(shard for shard, name in owner.items() if name == "replica-a")
        assert holders(kube)[f"ramp-controller-shard-{shard_of_a}-of-2"] is None  # released on stop
        wait_until(lambda: set(holders(kube).values()) == {"replica-b"}, timeout=10)
        wait_until(lambda: "holding shards 0,1 of 2" in get(port_b, "/readyz")[1], timeout=10)
        wait_until(lambda: phase_metric(SERVICES[shard_of_a]) in get(port_b, "/metrics")[1], timeout=10)
        state = rollout_state(kube, SERVICES[shard_of_a])
        assert state is not None and state["phase"] == "HeaderTest" and state["step"] == 0
        assert [entry["phase"] for entry in state["history"]] == ["HeaderTest"]  # resumed, not replayed
    finally:
        stop_a.set()
        stop_b.set()
        thread_a.join(20)
        thread_b.join(20)
    assert set(holders(kube).values()) == {None}

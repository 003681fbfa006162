"""The controller, started with the chart's own arguments (parsed by the real `ramp controller` CLI), against an
apiserver that enforces the chart's rendered RBAC for the controller's ServiceAccount: it acquires and renews its
Lease, creates the routing objects, records Events and applies a command without a single 403, and every
request stays inside the namespaces the chart grants. Requests the chart does not grant are refused (the
enforcement is real: dropping one grant shows up as exactly that 403).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

import controller.cluster_controller
from controller.cli import main as ramp_main
from controller.cluster_controller import ControllerOptions
from controller.engine.phases import Command
from controller.local.ports import free_port
from controller.routing.istio import IstioBackend
from tests.charts.checks import controller_container, service_account_name
from tests.charts.rbac import Grant, RequestAttributes, granted
from tests.charts.rbac_apiserver import RbacPolicy, running_rbac_emulator
from tests.charts.rendering import RAMP_CHART, RAMP_NAMESPACE, Rendered, render
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, create_deployment, stored

TOKEN = "ramp-controller-serviceaccount-token"
POD_ENV = {"POD_NAMESPACE": RAMP_NAMESPACE, "POD_NAME": "ramp-6f7c9-x2x4q"}
SPEC = {
    "service": "reviews",
    "namespace": "shop",
    "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
    "target": "v2",
    "schedule": {"interval": "1s"},
}
LEASES = ("coordination.k8s.io", "leases")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout:.0f}s: {what}")


def chart_values(extra: dict[str, Any]) -> dict[str, Any]:
    # Prometheus: a closed loopback port (the gates report no data and hold; no request leaves the host).
    return {"prometheus": {"url": f"http://127.0.0.1:{free_port()}"}, "rolloutSpecs": {"reviews.yaml": SPEC}, **extra}


def controller_options(rendered: Rendered, kube: KubeHarness, tmp_path: Path) -> ControllerOptions:
    """What `ramp controller <the chart's args>` runs with: the container's args, $(VAR) expanded as the kubelet
    does, parsed by the real CLI; only the spec mount and the listen address are moved to the test's."""
    specs = tmp_path / "specs"  # the ConfigMap, as mounted
    specs.mkdir()
    for name, text in (rendered.one("ConfigMap").get("data") or {}).items():
        (specs / name).write_text(text, encoding="utf-8")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": kube.url}}],
                "users": [{"name": "sa", "user": {"token": TOKEN}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
            }
        ),
        encoding="utf-8",
    )
    args = [re.sub(r"\$\((\w+)\)", lambda m: POD_ENV[m[1]], arg) for arg in controller_container(rendered)["args"]]
    args = [f"--specs={specs}" if arg.startswith("--specs=") else arg for arg in args]
    captured: list[ControllerOptions] = []

    def capture(options: ControllerOptions, stop: threading.Event | None = None) -> int:
        captured.append(options)
        return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(controller.cluster_controller, "run_controller", capture)
        assert ramp_main(["controller", *args, f"--kubeconfig={kubeconfig}"]) == 0
    (options,) = captured
    port = free_port()
    fields = {f.name for f in dataclasses.fields(options)}
    local: dict[str, Any] = {"listen_host": "127.0.0.1", "listen_port": port, "listen_address": f"127.0.0.1:{port}"}
    return dataclasses.replace(options, **{k: v for k, v in local.items() if k in fields})


@contextmanager
def running_controller(options: ControllerOptions) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(
        target=controller.cluster_controller.run_controller, args=(options, stop), name="ramp-controller", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()


def phase(kube: KubeHarness) -> str | None:
    vs = stored(kube, VS, "shop", "reviews")
    raw = None if vs is None else vs["metadata"].get("annotations", {}).get("ramp.dev/state")
    return None if raw is None else str(json.loads(raw).get("phase"))


def kinds(requests: list[RequestAttributes]) -> set[tuple[str, str, str]]:
    return {(r.verb, r.group or "", r.resource) for r in requests}


def run_rollout(rendered: Rendered, grants: set[Grant], tmp_path: Path) -> RbacPolicy:
    """Start the controller as the chart configures it, let it enter the header step, renew its Lease and
    apply a pause; return the apiserver's record of the controller's requests."""
    account = service_account_name(rendered)
    policy = RbacPolicy(TOKEN, f"system:serviceaccount:{RAMP_NAMESPACE}:{account}", grants)
    with running_rbac_emulator(policy) as kube:
        for version in ("v1", "v2"):
            create_deployment(kube, "shop", "reviews", version, 1)
        options = controller_options(rendered, kube, tmp_path)
        with running_controller(options):
            wait_until(lambda: phase(kube) == "HeaderTest", "the rollout enters its header step")
            wait_until(
                lambda: ("update", *LEASES) in kinds([r for r, _ in policy.seen()]), "the leader renews its Lease"
            )
            # A person's command (their own credentials): the controller consumes it with a VirtualService update.
            IstioBackend(kube.api_client()).request_command("shop", "reviews", Command.PAUSE)
            wait_until(lambda: phase(kube) == "Paused", "the controller applies the pause")
    return policy


NEEDED = {
    ("get", *LEASES),
    ("create", *LEASES),
    ("update", *LEASES),
    ("list", "networking.istio.io", "virtualservices"),
    ("create", "networking.istio.io", "virtualservices"),
    ("update", "networking.istio.io", "virtualservices"),
    ("get", "networking.istio.io", "destinationrules"),
    ("create", "networking.istio.io", "destinationrules"),
    ("list", "apps", "deployments"),
    ("create", "", "events"),
}


@pytest.mark.parametrize(
    "extra",
    [{"watchNamespaces": ["shop"], "leaderElection": {"leaseName": "ramp-leader"}}, {"watchAllNamespaces": True}],
    ids=["role-in-shop", "cluster-role"],
)
def test_the_controller_runs_on_exactly_the_charts_rbac(extra: dict[str, Any], tmp_path: Path) -> None:
    rendered = render(RAMP_CHART, chart_values(extra))
    grants = granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))
    policy = run_rollout(rendered, grants, tmp_path)
    assert policy.denied() == []
    requests = [r for r, _ in policy.seen()]
    assert kinds(requests) >= NEEDED  # every write path of the rollout was exercised
    lease = rendered.values["leaderElection"]["leaseName"]
    for request in requests:
        if (request.group, request.resource) == LEASES:
            assert request.namespace == RAMP_NAMESPACE and request.name in (lease, None), request
        elif (request.group, request.resource, request.namespace) == ("ramp.dev", "ramprollouts", None):
            # the RampRollout watch of every namespace: only when the chart asked for all of them
            assert rendered.values["watchAllNamespaces"] and request.verb in ("list", "watch"), request
        elif request.group is not None:
            assert request.namespace == "shop", f"outside the rollout's namespace: {request}"


def test_a_missing_grant_is_a_403_the_test_would_see(tmp_path: Path) -> None:
    """The enforcement has teeth: without `create events` exactly those requests are refused (Events are best
    effort, so the rollout itself still goes on)."""
    rendered = render(RAMP_CHART, chart_values({"watchNamespaces": ["shop"]}))
    grants = granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))
    without_events = {g for g in grants if g[2] != "events"}
    assert without_events != grants
    policy = run_rollout(rendered, without_events, tmp_path)
    assert policy.denied() and kinds(policy.denied()) == {("create", "", "events")}


def test_the_controllers_identity_cannot_reach_beyond_the_chart() -> None:
    """With the chart's defaults (the release namespace only), the ServiceAccount is refused Pods, Secrets, other
    namespaces, other Leases, deletes and cluster-wide lists."""
    rendered = render(RAMP_CHART, {})
    account = service_account_name(rendered)
    grants = granted(rendered, (RAMP_NAMESPACE, account))
    policy = RbacPolicy(TOKEN, f"system:serviceaccount:{RAMP_NAMESPACE}:{account}", grants)
    with running_rbac_emulator(policy) as kube:
        api = kube.api_client()
        api.configuration.api_key = {"authorization": TOKEN}
        api.configuration.api_key_prefix = {"authorization": "Bearer"}
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        coordination = client.CoordinationV1Api(api)
        attempts: list[Callable[[], object]] = [
            lambda: core.list_namespaced_pod(RAMP_NAMESPACE),
            lambda: core.list_namespaced_secret(RAMP_NAMESPACE),
            lambda: custom.list_namespaced_custom_object("networking.istio.io", "v1", "shop", "virtualservices"),
            lambda: custom.list_cluster_custom_object("networking.istio.io", "v1", "virtualservices"),
            lambda: custom.delete_namespaced_custom_object(
                "networking.istio.io", "v1", RAMP_NAMESPACE, "virtualservices", "reviews"
            ),
            lambda: coordination.read_namespaced_lease("someone-elses-lease", RAMP_NAMESPACE),
        ]
        for attempt in attempts:
            with pytest.raises(client.exceptions.ApiException) as refused:
                attempt()
            assert refused.value.status == 403
            assert f"system:serviceaccount:{RAMP_NAMESPACE}:{account}" in str(refused.value.body)
        # ...while what the chart grants is allowed (a 404 here: the object does not exist yet).
        with pytest.raises(client.exceptions.ApiException) as missing:
            coordination.read_namespaced_lease("ramp-controller", RAMP_NAMESPACE)
        assert missing.value.status == 404
        custom.list_namespaced_custom_object("networking.istio.io", "v1", RAMP_NAMESPACE, "virtualservices")
    assert len(policy.denied()) == len(attempts)

"""The TRAFFIC.yaml workflow of the README, step by step: v1/v2 at 50/50, v3 at 0 % tested by header, v3 in
rotation, v2 retired, v1 retired, clean-up. Each step's values (charts/microservice/ci/traffic-*-values.yaml)
are rendered with the real Helm engine and the resulting routing is checked literally; then the whole
workflow runs against the Kubernetes emulator: `helm upgrade` (Helm 3 patches a custom resource with the JSON
merge patch of the previous and the new manifest) alternating with the real `ramp set-weights` and
`ramp status` commands, which must agree with the values of the next step.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.cli import main
from controller.routing.istio_render import destination_rule, virtual_service
from tests.charts.rendering import MICRO_CHART, Rendered, render_ci
from tests.charts.test_microservice_chart import desired_routing, primary_weights
from tests.k8s.cli_controller import write_kubeconfig
from tests.k8s.emulator import KubeHarness, running_emulator
from tests.k8s.helpers import DR, VS, G, V, assert_valid, custom_objects, stored

NS, SERVICE = "shop", "reviews"
HOST = "reviews.shop.svc.cluster.local"
STEPS = [
    "traffic-1-v1-v2-values",
    "traffic-2-v3-by-header-values",
    "traffic-3-v3-in-rotation-values",
    "traffic-4-retire-v2-values",
    "traffic-5-retire-v1-values",
    "traffic-6-cleanup-values",
]
IMAGE = "registry.example.com/shop/reviews"
HEADER_V3 = {"x-version": {"exact": "v3"}}

# step -> (percentages of ramp-primary, header routes (name -> match), subsets, {version: (image tag, replicas)})
EXPECTED: dict[str, tuple[list[tuple[str, int]], dict[str, Any], list[str], dict[str, tuple[str, int]]]] = {
    STEPS[0]: ([("v1", 50), ("v2", 50)], {}, ["v1", "v2"], {"v1": ("1.0.0", 2), "v2": ("1.1.0", 2)}),
    STEPS[1]: (
        [("v1", 50), ("v2", 50)], {"ramp-header-v3": HEADER_V3}, ["v1", "v2", "v3"],
        {"v1": ("1.0.0", 2), "v2": ("1.1.0", 2), "v3": ("2.0.0", 1)},
    ),
    STEPS[2]: (
        [("v1", 34), ("v2", 33), ("v3", 33)], {"ramp-header-v3": HEADER_V3}, ["v1", "v2", "v3"],
        {"v1": ("1.0.0", 2), "v2": ("1.1.0", 2), "v3": ("2.0.0", 2)},
    ),
    STEPS[3]: (
        [("v1", 50), ("v3", 50)], {"ramp-header-v3": HEADER_V3}, ["v1", "v2", "v3"],
        {"v1": ("1.0.0", 2), "v2": ("1.1.0", 0), "v3": ("2.0.0", 2)},
    ),
    STEPS[4]: (
        [("v3", 100)], {}, ["v1", "v2", "v3"], {"v1": ("1.0.0", 0), "v2": ("1.1.0", 0), "v3": ("2.0.0", 2)},
    ),
    STEPS[5]: ([("v3", 100)], {}, ["v3"], {"v3": ("2.0.0", 2)}),
}  # fmt: skip


def rendered_step(name: str) -> Rendered:
    return render_ci(MICRO_CHART / "ci" / f"{name}.yaml")


def deployments(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["version"]: d for d in rendered.of_kind("Deployment")}


# --- each step's values, rendered ----------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_each_steps_values_render_the_routing_of_that_step(step: str) -> None:
    weights, headers, subsets, releases = EXPECTED[step]
    rendered = rendered_step(step)
    vs, dr = rendered.one("VirtualService"), rendered.one("DestinationRule")
    assert primary_weights(vs) == weights
    http = vs["spec"]["http"]
    assert {r["name"]: r["match"][0]["headers"] for r in http[:-1]} == headers
    assert [r["name"] for r in http][-1] == "ramp-primary" and vs["spec"]["hosts"] == [HOST]
    assert all(d["destination"]["host"] == HOST for r in http for d in r["route"])
    assert [s["name"] for s in dr["spec"]["subsets"]] == subsets
    # exactly what the controller renders for the same routing
    routing = desired_routing(rendered.values, NS)
    assert (vs, dr) == (virtual_service(routing), destination_rule(routing))
    found = deployments(rendered)
    assert set(found) == set(releases)
    for version, (tag, replicas) in releases.items():
        (container,) = found[version]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"{IMAGE}:{tag}" and "command" not in container  # the team's ENTRYPOINT
        assert found[version]["spec"]["replicas"] == replicas


def test_moving_traffic_never_changes_a_versions_pods() -> None:
    """From one step to the next a version keeps its pod template (image, env, resources): helm upgrade moves
    traffic and scales, it never restarts a version that keeps running."""
    for before, after in itertools.pairwise(STEPS):
        old, new = deployments(rendered_step(before)), deployments(rendered_step(after))
        for version in set(old) & set(new):
            assert old[version]["spec"]["template"] == new[version]["spec"]["template"], (before, after, version)


# --- the workflow in a (emulated) cluster ---------------------------------------------------------------


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch from `old` to `new` (what Helm 3 computes for a custom resource)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    return patch


def apply_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_patch(result.get(key), value)
    return result


class Helm:
    """`helm upgrade --install` of the microservice chart on the emulator, as far as this workflow needs."""

    def __init__(self, kube: KubeHarness) -> None:
        self.kube = kube
        self.release: Rendered | None = None

    def upgrade(self, step: str) -> Rendered:
        new = rendered_step(step)
        for kind, plural in (("VirtualService", VS), ("DestinationRule", DR)):
            manifest, live = new.one(kind), stored(self.kube, plural, NS, SERVICE)
            api = custom_objects(self.kube)
            if live is None or self.release is None:
                api.create_namespaced_custom_object(G, V, NS, plural, manifest)
            else:
                patched = apply_patch(live, merge_patch(self.release.one(kind), manifest))
                api.replace_namespaced_custom_object(G, V, NS, plural, SERVICE, patched)
        apps = client.AppsV1Api(self.kube.api_client())
        wanted = {d["metadata"]["name"]: d for d in new.of_kind("Deployment")}
        existing = {d["metadata"]["name"] for d in self.release.of_kind("Deployment")} if self.release else set()
        for name in existing - set(wanted):
            apps.delete_namespaced_deployment(name, NS)
        for name, deployment in wanted.items():
            replicas = deployment["spec"]["replicas"]
            body = {**deployment, "status": {"replicas": replicas, "availableReplicas": replicas}}  # all ready
            if name in existing:
                current = json.loads(apps.read_namespaced_deployment(name, NS, _preload_content=False).data)
                body["metadata"] = {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
                apps.replace_namespaced_deployment(name, NS, body, _preload_content=False)
            else:
                apps.create_namespaced_deployment(NS, body, _preload_content=False)
        self.release = new
        return new


@pytest.fixture()
def cluster() -> Iterator[KubeHarness]:
    with running_emulator() as harness:
        yield harness


def http_routes(kube: KubeHarness) -> list[dict[str, Any]]:
    vs = stored(kube, VS, NS, SERVICE)
    assert_valid(vs)
    assert vs is not None
    routes: list[dict[str, Any]] = vs["spec"]["http"]
    return routes


def status_rows(kubeconfig: str, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, int, float, str]]:
    """`ramp status -o json`: (version, relative weight, percentage, status) per version."""
    assert main(["status", SERVICE, "-n", NS, "--kubeconfig", kubeconfig, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    return [(row["version"], row["weight"], row["percentage"], row["status"]) for row in doc["versions"]]


def test_the_workflow_with_helm_upgrade_and_ramp_commands_serves_each_steps_routing(
    cluster: KubeHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = write_kubeconfig(cluster, tmp_path / "kubeconfig")
    helm = Helm(cluster)

    def ramp(*argv: str) -> int:
        code = main([*argv, "-n", NS, "--kubeconfig", kubeconfig])
        capsys.readouterr()
        return code

    def serves(step: str) -> None:
        assert http_routes(cluster) == rendered_step(step).one("VirtualService")["spec"]["http"], step

    # 1. v1 and v2 at 50/50
    helm.upgrade(STEPS[0])
    serves(STEPS[0])
    assert status_rows(kubeconfig, capsys) == [("v1", 50, 50.0, "Serving"), ("v2", 50, 50.0, "Serving")]
    # 2. v3 at 0 %, reachable with x-version: v3 only
    helm.upgrade(STEPS[1])
    serves(STEPS[1])
    # 3. v3 into rotation with ramp, then the values catch up: the upgrade finds the routing already in place
    assert ramp("set-weights", SERVICE, "v3=50") == 0
    serves(STEPS[2])
    helm.upgrade(STEPS[1])  # an upgrade whose VirtualService did not change leaves ramp's weights alone
    serves(STEPS[2])
    helm.upgrade(STEPS[2])
    serves(STEPS[2])
    rows = status_rows(kubeconfig, capsys)
    assert [row[:3] for row in rows] == [("v1", 50, 33.4), ("v2", 50, 33.3), ("v3", 50, 33.3)]
    # 4. retire v2: traffic first (at once), then the values (no pods, subset kept)
    assert ramp("set-weights", SERVICE, "v2=0") == 0
    serves(STEPS[3])
    helm.upgrade(STEPS[3])
    serves(STEPS[3])
    # 5. retire v1: ramp moves the weights; the upgrade also drops the header route
    assert ramp("set-weights", SERVICE, "v1=0") == 0
    assert primary_weights({"spec": {"http": http_routes(cluster)}}) == [("v3", 100)]
    helm.upgrade(STEPS[4])
    serves(STEPS[4])
    # 6. clean-up: v1 and v2 leave the values: their subsets and Deployments go
    helm.upgrade(STEPS[5])
    serves(STEPS[5])
    dr = stored(cluster, DR, NS, SERVICE)
    assert_valid(dr)
    assert dr is not None and [s["name"] for s in dr["spec"]["subsets"]] == ["v3"]
    names = [d.metadata.name for d in client.AppsV1Api(cluster.api_client()).list_namespaced_deployment(NS).items]
    assert names == ["reviews-v3"]
    # v3 serves everyone; v1/v2 may still be listed, Idle at 0 %, from set-weights' record of relative weights
    rows = status_rows(kubeconfig, capsys)
    assert [(v, p, s) for v, _, p, s in rows if p > 0] == [("v3", 100.0, "Serving")]
    assert all(s == "Idle" for v, _, _, s in rows if v != "v3")

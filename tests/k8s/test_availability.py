"""DeploymentAvailability: which versions have ready pods, with one LIST per namespace."""

from __future__ import annotations

import time

import pytest

from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout
from controller.k8s.availability import DeploymentAvailability
from controller.k8s.client import Forbidden, KubeApi, KubeError, RetryPolicy
from controller.spec_loader import parse_spec_text
from tests.fakes.kube_proxy import running_proxy
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import create_deployment, create_pod, fail_next, kube_api


def rollout(service: str, namespace: str, versions: tuple[str, ...] = ("v1", "v2")) -> ManagedRollout:
    listed = ", ".join(f"{{name: {v}, weight: {100 if i == 0 else 0}}}" for i, v in enumerate(versions))
    text = f"""
service: {service}
namespace: {namespace}
versions: [{listed}]
target: {versions[-1]}
steps: [{{weight: 50, duration: 10s}}]
"""
    return ManagedRollout.from_spec(parse_spec_text(text, f"{service}.yaml"))


def deployment_lists(kube: KubeHarness) -> list[tuple[str, str]]:
    return [
        (r.url.path.split("/")[5], r.url.query.get("labelSelector", ""))
        for r in kube.requests("get")
        if r.url.path.endswith("/deployments")
    ]


def test_versions_without_available_replicas_are_unavailable(kube: KubeHarness) -> None:
    create_deployment(kube, "shop", "reviews", "v1", available=2)
    create_deployment(kube, "shop", "reviews", "v2", available=0)
    create_deployment(kube, "shop", "ratings", "v1", available=1)
    create_deployment(kube, "shop", "ratings", "v2", available=None)  # status without availableReplicas
    create_deployment(kube, "shop", "details", "v2", available=5)  # not a managed service
    create_deployment(kube, "books", "catalog", "v1", available=1)
    create_deployment(kube, "books", "catalog", "v3", available=1)
    create_deployment(kube, "other", "reviews", "v2", available=3)  # same name, other namespace
    rollouts = [rollout("reviews", "shop"), rollout("ratings", "shop"), rollout("catalog", "books", ("v1", "v2", "v3"))]
    availability = DeploymentAvailability(kube_api(kube))
    assert availability.unavailable_versions(rollouts) == {
        "reviews": frozenset({"v2"}),
        "ratings": frozenset({"v2"}),
        "catalog": frozenset({"v2"}),  # no Deployment at all
    }
    assert sorted(deployment_lists(kube)) == [("books", "app in (catalog)"), ("shop", "app in (ratings,reviews)")]


def test_a_deployment_becoming_available_is_seen_on_the_next_call(kube: KubeHarness) -> None:
    from tests.k8s.helpers import set_available

    create_deployment(kube, "shop", "reviews", "v1", available=1)
    create_deployment(kube, "shop", "reviews", "v2", available=0)
    availability = DeploymentAvailability(kube_api(kube))
    assert availability.unavailable_versions([rollout("reviews", "shop")]) == {"reviews": frozenset({"v2"})}
    set_available(kube, "shop", "reviews", "v2", 1)
    assert availability.unavailable_versions([rollout("reviews", "shop")]) == {"reviews": frozenset()}


def test_errors_are_typed_and_transient_ones_retried(kube: KubeHarness) -> None:
    create_deployment(kube, "shop", "reviews", "v1", available=1)
    availability = DeploymentAvailability(kube_api(kube))
    fail_next(kube, "get", 503)
    assert availability.unavailable_versions([rollout("reviews", "shop")]) == {"reviews": frozenset({"v2"})}
    kube.emulator["get"] << 403
    with pytest.raises(Forbidden, match=r"cannot list deployments\.apps in namespace 'shop'"):
        availability.unavailable_versions([rollout("reviews", "shop")])


def test_pods_by_version_counts_ready_and_total_from_one_list(kube: KubeHarness) -> None:
    labels = {"app": "reviews"}
    create_pod(kube, "shop", "r1-a", {**labels, "version": "v1"}, ready=True, phase="Running")
    create_pod(kube, "shop", "r1-b", {**labels, "version": "v1"}, ready=True, phase="Running")
    create_pod(kube, "shop", "r2-a", {**labels, "version": "v2"}, ready=False, phase="Pending")
    create_pod(kube, "shop", "r2-b", {**labels, "version": "v2"}, ready=True, phase="Running")
    create_pod(kube, "shop", "r2-old", {**labels, "version": "v2"}, ready=False, phase="Succeeded")
    create_pod(kube, "shop", "other", {"app": "ratings", "version": "v1"}, ready=True, phase="Running")
    create_pod(kube, "shop", "unversioned", labels, ready=True, phase="Running")
    availability = DeploymentAvailability(kube_api(kube))
    assert availability.pods_by_version("shop", "reviews") == {"v1": (2, 2), "v2": (1, 2)}
    pod_lists = [r for r in kube.requests("get") if r.url.path.endswith("/pods")]
    assert len(pod_lists) == 1 and pod_lists[0].url.query["labelSelector"] == "app=reviews"


def test_a_dribbled_list_ends_at_the_callers_deadline_and_counts_as_unknown(kube: KubeHarness) -> None:
    create_deployment(kube, "shop", "reviews", "v1", available=1)
    with running_proxy(kube.url) as proxy:
        proxy.faults.dribble_interval = 0.05
        api = KubeApi(proxy.api_client(1.0), retry=RetryPolicy(attempts=10, sleep=time.sleep))
        started = time.monotonic()
        with pytest.raises(KubeError):
            DeploymentAvailability(api).unavailable_versions([rollout("reviews", "shop")], deadline=Deadline(2.0))
        assert time.monotonic() - started < 2.0 + 1.5  # generous slack; the dribbled answer would take far longer


def test_a_reset_list_is_retried_and_read_whole(kube: KubeHarness) -> None:
    create_deployment(kube, "shop", "reviews", "v1", available=1)
    with running_proxy(kube.url) as proxy:
        proxy.faults.reset_replies = 1
        api = KubeApi(proxy.api_client(), retry=RetryPolicy(sleep=lambda _s: None))
        assert DeploymentAvailability(api).unavailable_versions([rollout("reviews", "shop")]) == {
            "reviews": frozenset({"v2"})
        }
        assert api.stats.errors_by_kind == {"Transient": 1} and api.stats.retries == 1


@pytest.mark.parametrize(
    "answer", [{"kind": "DeploymentList", "items": "garbage"}, {"kind": "Status"}, ["not", "an", "object"]]
)
def test_an_answer_that_is_not_a_list_is_an_error_not_no_deployments(kube: KubeHarness, answer: object) -> None:
    create_deployment(kube, "shop", "reviews", "v1", available=1)
    kube.emulator["get"] << answer
    with pytest.raises(KubeError, match="LIST response"):
        DeploymentAvailability(kube_api(kube)).unavailable_versions([rollout("reviews", "shop")])

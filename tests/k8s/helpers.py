"""Builders shared by the Kubernetes tests: clients with recorded backoff, fault injection, fixtures in the emulator."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from controller.k8s.client import KubeApi, RetryPolicy
from controller.routing.crd_schema import IstioSchemas
from controller.spec import RolloutSpec
from controller.spec_loader import load_spec
from tests.k8s.emulator import KubeHarness

G, V = "networking.istio.io", "v1"
VS, DR = "virtualservices", "destinationrules"
REPO = Path(__file__).resolve().parents[2]


def three_versions() -> RolloutSpec:
    return load_spec(REPO / "rollout-specs" / "three-versions.yaml")


def kube_api(kube: KubeHarness, delays: list[float] | None = None, timeout: float = 5.0, seed: int = 7) -> KubeApi:
    """A KubeApi on the emulator whose backoff sleeps are recorded instead of slept (deterministic jitter)."""
    sink = delays if delays is not None else []
    return KubeApi(kube.api_client(timeout), retry=RetryPolicy(sleep=sink.append, rng=random.Random(seed)))


def fail_next(kube: KubeHarness, method: str, payload: Any, times: int = 1) -> None:
    """Answer the next `times` requests with `method` with `payload` (a status, a delay...), then behave again."""
    view = kube.emulator[method]
    start = len(kube.requests(method))
    view[start : start + times] << payload


def count(kube: KubeHarness, method: str, plural: str) -> int:
    return sum(1 for r in kube.requests(method) if f"/{plural}" in str(r.url.path))


def stored(kube: KubeHarness, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    for obj in kube.objects(G, V, plural):
        meta = obj.get("metadata", {})
        if meta.get("namespace") == namespace and meta.get("name") == name:
            return obj
    return None


def custom_objects(kube: KubeHarness) -> client.CustomObjectsApi:
    """A plain client for the test's 'foreign writer' (a person or another tool editing the objects)."""
    return client.CustomObjectsApi(kube.api_client())


def assert_valid(obj: dict[str, Any] | None) -> None:
    assert obj is not None
    problems = IstioSchemas.load().validate(obj)
    assert problems == [], problems


def create_deployment(kube: KubeHarness, namespace: str, app: str, version: str, available: int | None) -> None:
    labels = {"app": app, "version": version}
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{app}-{version}", "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": app, "image": "x"}]}},
        },
        "status": {"replicas": 1} if available is None else {"replicas": 1, "availableReplicas": available},
    }
    client.AppsV1Api(kube.api_client()).create_namespaced_deployment(namespace, body, _preload_content=False)


def set_available(kube: KubeHarness, namespace: str, app: str, version: str, available: int) -> None:
    apps = client.AppsV1Api(kube.api_client())
    name = f"{app}-{version}"
    current = json.loads(apps.read_namespaced_deployment(name, namespace, _preload_content=False).data)
    current["status"] = {"replicas": 1, "availableReplicas": available}
    apps.replace_namespaced_deployment(name, namespace, current, _preload_content=False)


def create_pod(kube: KubeHarness, namespace: str, name: str, labels: dict[str, str], ready: bool, phase: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    client.CoreV1Api(kube.api_client()).create_namespaced_pod(namespace, body, _preload_content=False)


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> float:
    """Poll `check` until it holds; the monotonic time it did. AssertionError naming `what` after `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return time.monotonic()
        time.sleep(poll)
    raise AssertionError(f"not reached within {timeout}s: {what}")

"""Which versions have ready pods: Deployments (for the engine) and Pods (for `ramp status`).

A version of a service is available iff some Deployment labelled `app=<service>, version=<version>`
reports `status.availableReplicas >= 1`. One LIST per namespace per tick covers every rollout in
it (label selector `app in (...)`). Failures raise `KubeError`; the runner then treats every
version as unavailable (no weight moves while pod health is unknown). Every LIST has a total deadline
(KubeApi's request timeout, cut to the optional caller's `Deadline`), and its body is read inside it.
An answer that is not a LIST (no `items` list) is an error, never "no deployments".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout
from controller.k8s.client import KubeApi, KubeError

APP_LABEL, VERSION_LABEL = "app", "version"
_TERMINATED_POD_PHASES = frozenset({"Succeeded", "Failed"})


def _items(response: Any, what: str) -> list[dict[str, Any]]:
    """The items of a LIST response read with `_preload_content=False` (raw JSON, no model parsing)."""
    raw = response.data if hasattr(response, "data") else response
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise KubeError("list", what, None, None, None, f"unreadable LIST response: {exc}") from exc
    items = payload.get("items") if isinstance(payload, dict) else None
    if items is None and isinstance(payload, dict) and "items" in payload:
        return []  # `items: null`: an empty list as some servers write it
    if not isinstance(items, list):
        raise KubeError("list", what, None, None, None, "unexpected LIST response: no `items` list")
    return [i for i in items if isinstance(i, dict)]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class DeploymentAvailability:
    """VersionAvailability from Deployment status; also per-version pod readiness for status output."""

    def __init__(self, api: ApiClient | KubeApi) -> None:
        self.api = KubeApi.wrap(api)

    def available(
        self, namespace: str, services: Sequence[str], deadline: Deadline | None = None
    ) -> set[tuple[str, str]]:
        """(service, version) pairs with at least one available replica, from one Deployment LIST."""
        wanted = sorted(set(services))
        selector = f"{APP_LABEL} in ({','.join(wanted)})"
        response = self.api.retrying(
            "list", "deployments.apps", namespace, None,
            self.api.apps.list_namespaced_deployment, namespace, label_selector=selector, _preload_content=False,
            deadline=deadline,
        )  # fmt: skip
        replicas: dict[tuple[str, str], int] = {}
        for deployment in _items(response, "deployments.apps"):
            labels = _labels(deployment)
            app, version = labels.get(APP_LABEL), labels.get(VERSION_LABEL)
            if app not in wanted or not version:
                continue  # the selector already excludes these; stay correct if an apiserver ignores it
            status = deployment.get("status") or {}
            replicas[(app, version)] = replicas.get((app, version), 0) + _count(status.get("availableReplicas"))
        return {key for key, count in replicas.items() if count >= 1}

    def unavailable_versions(
        self, rollouts: Sequence[ManagedRollout], deadline: Deadline | None = None
    ) -> dict[str, frozenset[str]]:
        """Per rollout, the versions without an available replica; all LISTs share `deadline`."""
        by_namespace: dict[str, list[str]] = {}
        for rollout in rollouts:
            by_namespace.setdefault(rollout.spec.namespace, []).append(rollout.spec.service)
        available = {ns: self.available(ns, services, deadline) for ns, services in sorted(by_namespace.items())}
        return {
            r.name: frozenset(
                v.name for v in r.spec.versions if (r.spec.service, v.name) not in available[r.spec.namespace]
            )
            for r in rollouts
        }

    def pods_by_version(
        self, namespace: str, service: str, deadline: Deadline | None = None
    ) -> dict[str, tuple[int, int]]:
        """version -> (ready pods, pods), from one Pod LIST; finished pods (Succeeded/Failed) are not counted."""
        response = self.api.retrying(
            "list", "pods", namespace, None,
            self.api.core.list_namespaced_pod, namespace, label_selector=f"{APP_LABEL}={service}",
            _preload_content=False, deadline=deadline,
        )  # fmt: skip
        counts: dict[str, tuple[int, int]] = {}
        for pod in _items(response, "pods"):
            labels = _labels(pod)
            version = labels.get(VERSION_LABEL)
            status = pod.get("status") or {}
            if labels.get(APP_LABEL) != service or not version or status.get("phase") in _TERMINATED_POD_PHASES:
                continue
            conditions = status.get("conditions") or []
            ready = any(
                isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            )
            ready_count, total = counts.get(version, (0, 0))
            counts[version] = (ready_count + int(ready), total + 1)
        return dict(sorted(counts.items()))

"""The test harness itself: the emulator must behave like an apiserver where Ramp relies on it."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.k8s.emulator import KubeHarness

G, V, P = "networking.istio.io", "v1", "virtualservices"


def test_replace_is_full_and_stale_resource_version_conflicts(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    body = {"apiVersion": f"{G}/{V}", "kind": "VirtualService", "metadata": {"name": "s", "namespace": "n",
            "annotations": {"a": "1"}}, "spec": {"hosts": ["s"], "http": [{"name": "x"}]}}
    created = api.create_namespaced_custom_object(G, V, "n", P, body)
    stale = dict(created)
    created["metadata"]["annotations"] = {}
    replaced = api.replace_namespaced_custom_object(G, V, "n", P, "s", created)
    assert replaced["metadata"]["annotations"] == {}  # replace, not merge
    assert replaced["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as conflict:
        api.replace_namespaced_custom_object(G, V, "n", P, "s", stale)
    assert conflict.value.status == 409


def test_reactions_inject_faults_before_the_emulated_behaviour(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    kube.emulator["get"] << 503
    with pytest.raises(ApiException) as unavailable:
        api.get_namespaced_custom_object(G, V, "n", P, "s")
    assert unavailable.value.status == 503

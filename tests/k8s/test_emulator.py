"""The test harness itself: the emulator must behave like an apiserver where Ramp relies on it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller import rollout_resource as rr
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


RG, RV_, RP = rr.GROUP, rr.VERSION, rr.PLURAL


def rollout(name: str = "reviews", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": rr.API_VERSION, "kind": rr.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": {"service": name, "target": "v2", **spec}}  # fmt: skip


def meta(obj: dict[str, Any]) -> tuple[str, int]:
    return obj["metadata"]["resourceVersion"], obj["metadata"]["generation"]


def test_ramprollouts_are_discovered_with_their_names_and_status_subresource(kube: KubeHarness) -> None:
    found = client.CustomObjectsApi(kube.api_client()).get_api_resources(RG, RV_)
    by_name = {r.name: r for r in found.resources}
    main = by_name[RP]
    assert (main.kind, main.namespaced, main.singular_name) == (rr.KIND, True, rr.SINGULAR)
    assert main.short_names == list(rr.SHORT_NAMES) and main.categories == list(rr.CATEGORIES)
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(main.verbs)
    assert f"{RP}/status" in by_name


def test_ramprollout_crud_through_the_custom_objects_api(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    created, code, _ = api.create_namespaced_custom_object_with_http_info(RG, RV_, "shop", RP, rollout())
    assert code == 201 and created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    api.create_namespaced_custom_object(RG, RV_, "other", RP, rollout("ratings", "other"))
    assert api.get_namespaced_custom_object(RG, RV_, "shop", RP, "reviews")["spec"]["target"] == "v2"
    listed = api.list_namespaced_custom_object(RG, RV_, "shop", RP)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["reviews"]
    assert listed["kind"] == rr.LIST_KIND and int(listed["metadata"]["resourceVersion"]) >= int(meta(created)[0])
    everywhere = api.list_cluster_custom_object(RG, RV_, RP)
    assert sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere["items"]) == [
        ("other", "ratings"), ("shop", "reviews")]  # fmt: skip
    merged = api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", {"spec": {"target": "v3"}})
    assert merged["spec"] == {"service": "reviews", "target": "v3"}  # a merge patch keeps the other fields
    ops = [{"op": "replace", "path": "/spec/target", "value": "v4"}, {"op": "remove", "path": "/spec/service"}]
    patched = api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", ops,
                                                 _content_type="application/json-patch+json")  # fmt: skip
    assert patched["spec"] == {"target": "v4"}
    patched["spec"] = {"service": "reviews", "target": "v5"}
    replaced = api.replace_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", patched)
    assert replaced["spec"]["target"] == "v5" and replaced["metadata"]["uid"] == created["metadata"]["uid"]
    api.delete_namespaced_custom_object(RG, RV_, "shop", RP, "reviews")
    with pytest.raises(ApiException) as gone:
        api.get_namespaced_custom_object(RG, RV_, "shop", RP, "reviews")
    assert gone.value.status == 404 and json.loads(gone.value.body)["reason"] == "NotFound"
    with pytest.raises(ApiException) as exists:
        api.create_namespaced_custom_object(RG, RV_, "other", RP, rollout("ratings", "other"))
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"


def test_generation_counts_spec_changes_only(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    rv0, gen0 = meta(api.create_namespaced_custom_object(RG, RV_, "shop", RP, rollout()))
    assert gen0 == 1
    labelled = api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", {"metadata": {"labels": {"a": "b"}}})
    rv1, gen1 = meta(labelled)
    assert gen1 == 1 and int(rv1) > int(rv0)  # metadata only: a new resourceVersion, the same generation
    status = api.patch_namespaced_custom_object_status(RG, RV_, "shop", RP, "reviews", {"status": {"phase": "Pending"}})
    assert meta(status)[1] == 1 and status["status"] == {"phase": "Pending"}
    rv3, gen3 = meta(api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", {"spec": {"target": "v3"}}))
    assert gen3 == 2
    same = api.get_namespaced_custom_object(RG, RV_, "shop", RP, "reviews")
    again = api.replace_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", same)
    assert meta(again) == (rv3, 2)  # an update that changes nothing writes nothing: same resourceVersion
    vs = client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        G, V, "n", P, {"metadata": {"name": "s"}, "spec": {"hosts": ["s"]}})  # fmt: skip
    assert vs["metadata"]["generation"] == 1 and vs["metadata"]["namespace"] == "n"  # every kind has one


def test_the_status_subresource_writes_only_status_and_main_writes_keep_it(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    created = api.create_namespaced_custom_object(RG, RV_, "shop", RP, {**rollout(), "status": {"phase": "Promoted"}})
    assert "status" not in created  # status given on create is dropped
    body = {"metadata": {"labels": {"x": "y"}}, "spec": {"target": "hacked"}, "status": {"phase": "Progressing"}}
    written = api.patch_namespaced_custom_object_status(RG, RV_, "shop", RP, "reviews", body)
    assert written["status"] == {"phase": "Progressing"} and written["spec"]["target"] == "v2"
    assert "labels" not in written["metadata"] and meta(written)[1] == 1
    main = api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews",
                                              {"spec": {"target": "v3"}, "status": {"phase": "Failed"}})  # fmt: skip
    assert main["status"] == {"phase": "Progressing"} and main["spec"]["target"] == "v3"
    stale = dict(written, status={"phase": "Paused"})
    with pytest.raises(ApiException) as conflict:  # `written` predates the spec change: its resourceVersion is stale
        api.replace_namespaced_custom_object_status(RG, RV_, "shop", RP, "reviews", stale)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"
    fresh = dict(main, status={"phase": "Paused"}, spec={"service": "x", "target": "ignored"})
    replaced = api.replace_namespaced_custom_object_status(RG, RV_, "shop", RP, "reviews", fresh)
    assert replaced["status"] == {"phase": "Paused"} and replaced["spec"] == main["spec"]
    precondition = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "status": {"phase": "X"}}
    with pytest.raises(ApiException) as stale_patch:
        api.patch_namespaced_custom_object_status(RG, RV_, "shop", RP, "reviews", precondition)
    assert stale_patch.value.status == 409


def test_strategic_merge_patch_is_refused_for_custom_resources(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    api.create_namespaced_custom_object(RG, RV_, "shop", RP, rollout())
    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object(RG, RV_, "shop", RP, "reviews", {"spec": {"target": "v3"}},
                                           _content_type="application/strategic-merge-patch+json")  # fmt: skip
    assert refused.value.status == 415


def test_deletion_waits_for_finalizers_and_generate_name_names_objects(kube: KubeHarness) -> None:
    api = client.CustomObjectsApi(kube.api_client())
    body = rollout()
    body["metadata"] = {"generateName": "reviews-", "namespace": "shop", "finalizers": ["ramp.dev/keep"]}
    created = api.create_namespaced_custom_object(RG, RV_, "shop", RP, body)
    name = created["metadata"]["name"]
    assert name.startswith("reviews-") and len(name) == len("reviews-") + 5
    marked = api.delete_namespaced_custom_object(RG, RV_, "shop", RP, name)
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["generation"] == 2
    assert api.get_namespaced_custom_object(RG, RV_, "shop", RP, name)["metadata"]["finalizers"] == ["ramp.dev/keep"]
    api.patch_namespaced_custom_object(RG, RV_, "shop", RP, name, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        api.get_namespaced_custom_object(RG, RV_, "shop", RP, name)
    assert gone.value.status == 404

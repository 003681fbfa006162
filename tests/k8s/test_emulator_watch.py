"""Watches and lists in the emulator behave like the apiserver's: resourceVersions, bookmarks, 410 Gone, drops.

Every test goes through the real `kubernetes` client over HTTP, and bounds its watches with timeoutSeconds (or
stops them), so none lasts more than about a second.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from controller import rollout_resource as rr
from tests.k8s.emulator import KubeHarness

G, V, P = rr.GROUP, rr.VERSION, rr.PLURAL


def rollout(name: str, namespace: str = "shop", target: str = "v2") -> dict[str, Any]:
    return {"apiVersion": rr.API_VERSION, "kind": rr.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": {"service": name, "target": target}}  # fmt: skip


def api(kube: KubeHarness) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def events(kube: KubeHarness, namespace: str | None = "shop", seconds: float = 0.3, **kwargs: Any) -> list[Any]:
    """All events of one watch the server ends after `seconds` (kwargs: resource_version, allow_watch_bookmarks...).

    The client's timeout_seconds (whole seconds) makes it return at the end instead of reconnecting."""
    kube.emulator.history.max_watch_seconds = seconds
    kwargs.setdefault("timeout_seconds", 1)
    objects = api(kube)
    if namespace is None:
        stream = watch.Watch().stream(objects.list_cluster_custom_object, G, V, P, **kwargs)
    else:
        stream = watch.Watch().stream(objects.list_namespaced_custom_object, G, V, namespace, P, **kwargs)
    return list(stream)


def summary(seen: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in seen]


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_a_watch_from_a_resource_version_streams_only_the_later_changes(kube: KubeHarness) -> None:
    objects = api(kube)
    objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    b = objects.create_namespaced_custom_object(G, V, "shop", P, rollout("b"))
    modified = objects.patch_namespaced_custom_object(G, V, "shop", P, "a", {"spec": {"target": "v3"}})
    objects.create_namespaced_custom_object(G, V, "elsewhere", P, rollout("c", "elsewhere"))
    objects.delete_namespaced_custom_object(G, V, "shop", P, "b")
    seen = events(kube, resource_version=str(rv(b)), seconds=0.3)
    assert summary(seen) == [("MODIFIED", "a"), ("DELETED", "b")]  # not "c": another namespace
    assert seen[0]["raw_object"] == modified
    assert rv(seen[1]["raw_object"]) > rv(modified)  # a deletion has a resourceVersion of its own
    everywhere = events(kube, None, resource_version=str(rv(b)), seconds=0.3)
    assert summary(everywhere) == [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "b")]


def test_a_watch_without_resource_version_starts_with_the_current_objects(kube: KubeHarness) -> None:
    objects = api(kube)
    for name in ("b", "a"):
        objects.create_namespaced_custom_object(G, V, "shop", P, rollout(name))
    objects.delete_namespaced_custom_object(G, V, "shop", P, "b")
    assert summary(events(kube, seconds=0.3)) == [("ADDED", "a")]
    named = events(kube, field_selector="metadata.name=a", resource_version="0", seconds=0.3)
    assert summary(named) == [("ADDED", "a")]


def test_bookmarks_carry_only_a_newer_resource_version(kube: KubeHarness) -> None:
    kube.emulator.history.bookmark_interval = 0.1
    objects = api(kube)
    first = objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    other = rollout("x", "other")
    threading.Timer(0.15, lambda: objects.create_namespaced_custom_object(G, V, "other", P, other)).start()
    kube.emulator.history.max_watch_seconds = 0.6
    stream = watch.Watch()
    seen = list(stream.stream(objects.list_namespaced_custom_object, G, V, "shop", P, resource_version=str(rv(first)),
                              allow_watch_bookmarks=True, timeout_seconds=1))  # fmt: skip
    marks = [e["raw_object"] for e in seen if e["type"] == "BOOKMARK"]
    assert 2 <= len(marks) <= 7 and len(marks) == len(seen)  # the other namespace's change is not streamed
    assert all(m == {"apiVersion": rr.API_VERSION, "kind": rr.KIND, "metadata": m["metadata"]} for m in marks)
    versions = [int(m["metadata"]["resourceVersion"]) for m in marks]
    assert versions == sorted(versions) and versions[0] == rv(first)
    assert versions[-1] == int(kube.latest_resource_version())  # past the other namespace's change
    assert stream.resource_version == str(versions[-1])  # the client resumes from the last bookmark
    assert summary(events(kube, seconds=0.3, allow_watch_bookmarks=False)) == [("ADDED", "a")]


def raw_watch(kube: KubeHarness, query: str) -> tuple[int, list[dict[str, Any]]]:
    """A watch through plain HTTP (for parameters the client lacks): its status and events."""
    kube.emulator.history.max_watch_seconds = 0.3
    answer = urllib3.PoolManager().request("GET", f"{kube.url}/apis/{G}/{V}/namespaces/shop/{P}?watch=true&{query}",
                                           timeout=2)  # fmt: skip
    return answer.status, [json.loads(line) for line in answer.data.decode().splitlines() if line]


def test_initial_events_end_with_an_annotated_bookmark(kube: KubeHarness) -> None:
    api(kube).create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    status, seen = raw_watch(kube, "allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
    assert status == 200 and [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
    assert seen[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_a_compacted_resource_version_is_410_gone_inside_the_stream(kube: KubeHarness) -> None:
    objects = api(kube)
    old = objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    objects.patch_namespaced_custom_object(G, V, "shop", P, "a", {"spec": {"target": "v3"}})
    horizon = kube.compact()
    with pytest.raises(ApiException) as gone:  # with timeout_seconds the client does not retry: it raises
        events(kube, resource_version=str(rv(old)))
    assert gone.value.status == 410 and "Expired: too old resource version" in str(gone.value.reason)
    status, seen = raw_watch(kube, f"resourceVersion={rv(old)}")
    assert status == 200 and len(seen) == 1  # the apiserver answers 410 inside the stream, as an ERROR event
    assert seen[0]["type"] == "ERROR" and seen[0]["object"]["code"] == 410 and seen[0]["object"]["reason"] == "Expired"
    assert events(kube, resource_version=horizon, seconds=0.2) == []  # the latest is still fine


def test_the_history_limit_is_a_compaction_horizon(kube: KubeHarness) -> None:
    kube.emulator.history.history_limit = 2  # the last two changes are kept
    objects = api(kube)
    written = [objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))]
    for target in ("v3", "v4", "v5"):
        written.append(objects.patch_namespaced_custom_object(G, V, "shop", P, "a", {"spec": {"target": target}}))
    resumed = events(kube, resource_version=str(rv(written[1])), seconds=0.2)  # the changes after it are all kept
    assert [e["raw_object"]["spec"]["target"] for e in resumed] == ["v4", "v5"]
    with pytest.raises(ApiException) as gone:  # the change after it (to v3) is forgotten
        events(kube, resource_version=str(rv(written[0])), seconds=0.2)
    assert gone.value.status == 410


def test_a_future_resource_version_is_refused(kube: KubeHarness) -> None:
    with pytest.raises(ApiException) as future:
        events(kube, resource_version=str(int(kube.latest_resource_version()) + 10))
    assert future.value.status == 504 and "Too large resource version" in str(future.value.body)


def test_lists_have_a_collection_resource_version_and_old_exact_lists_are_gone(kube: KubeHarness) -> None:
    objects = api(kube)
    a = objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    objects.patch_namespaced_custom_object(G, V, "shop", P, "a", {"spec": {"target": "v3"}})
    objects.create_namespaced_custom_object(G, V, "shop", P, rollout("b"))
    now = objects.list_namespaced_custom_object(G, V, "shop", P)
    assert now["metadata"]["resourceVersion"] == kube.latest_resource_version()
    assert [(o["metadata"]["name"], o["spec"]["target"]) for o in now["items"]] == [("a", "v3"), ("b", "v2")]
    then = objects.list_namespaced_custom_object(G, V, "shop", P, resource_version=str(rv(a)),
                                                 resource_version_match="Exact")  # fmt: skip
    assert then["metadata"]["resourceVersion"] == str(rv(a)) and then["items"] == [a]  # the state as of then
    kube.compact()
    with pytest.raises(ApiException) as gone:
        objects.list_namespaced_custom_object(G, V, "shop", P, resource_version=str(rv(a)),
                                              resource_version_match="Exact")  # fmt: skip
    assert gone.value.status == 410 and json.loads(gone.value.body)["reason"] == "Expired"
    newer = objects.list_namespaced_custom_object(G, V, "shop", P, resource_version=str(rv(a)))  # NotOlderThan
    assert newer["metadata"]["resourceVersion"] == kube.latest_resource_version() and len(newer["items"]) == 2


def test_lists_page_with_limit_and_continue_and_an_expired_token_is_gone(kube: KubeHarness) -> None:
    objects = api(kube)
    for name in ("c", "a", "b"):
        objects.create_namespaced_custom_object(G, V, "shop", P, rollout(name))
    first = objects.list_namespaced_custom_object(G, V, "shop", P, limit=2)
    assert [o["metadata"]["name"] for o in first["items"]] == ["a", "b"] and first["metadata"]["continue"]
    objects.delete_namespaced_custom_object(G, V, "shop", P, "c")  # the pages stay one consistent snapshot
    rest = objects.list_namespaced_custom_object(G, V, "shop", P, limit=2, _continue=first["metadata"]["continue"])
    assert [o["metadata"]["name"] for o in rest["items"]] == ["c"] and "continue" not in rest["metadata"]
    kube.compact()
    with pytest.raises(ApiException) as gone:
        objects.list_namespaced_custom_object(G, V, "shop", P, limit=2, _continue=first["metadata"]["continue"])
    assert gone.value.status == 410


def test_timeout_seconds_ends_the_stream(kube: KubeHarness) -> None:
    started = time.monotonic()
    assert events(kube, seconds=5, timeout_seconds=1) == []
    assert 0.95 <= time.monotonic() - started < 2.5  # not sooner, and not never


def test_a_dropped_watch_is_resumed_by_the_client_from_its_last_resource_version(kube: KubeHarness) -> None:
    objects = api(kube)
    stream = watch.Watch()
    seen: list[tuple[str, str]] = []
    failures: list[BaseException] = []

    def consume() -> None:  # no timeout_seconds: the client itself reconnects when the stream ends
        try:
            for event in stream.stream(objects.list_namespaced_custom_object, G, V, "shop", P):
                seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
        except urllib3.exceptions.ProtocolError as exc:  # Watch.stop() shuts the socket down under the read
            failures.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    kube.wait_for_watches(1, P)
    a = objects.create_namespaced_custom_object(G, V, "shop", P, rollout("a"))
    wait(lambda: seen == [("ADDED", "a")])
    assert kube.drop_watches() == 1
    wait(lambda: len(kube.watch_requests(P)) == 2 and kube.open_watches(P) == 1)
    assert kube.watch_requests(P)[1].params.get("resourceVersion") == str(rv(a))
    objects.create_namespaced_custom_object(G, V, "shop", P, rollout("b"))
    wait(lambda: seen == [("ADDED", "a"), ("ADDED", "b")])  # nothing lost, nothing repeated
    assert len(kube.watch_requests(P)) == 2 and not failures
    stream.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_an_abrupt_drop_resets_the_connection(kube: KubeHarness) -> None:
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            events(kube, seconds=5, timeout_seconds=5)
        except Exception as exc:  # what the client raises on a reset connection
            failure.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    kube.wait_for_watches(1)
    kube.drop_watches(abrupt=True)
    thread.join(2)
    assert not thread.is_alive() and len(failure) == 1
    assert isinstance(failure[0], urllib3.exceptions.HTTPError | ConnectionError), repr(failure[0])


def test_the_server_ends_watches_at_its_own_request_timeout(kube: KubeHarness) -> None:
    started = time.monotonic()
    assert events(kube, seconds=0.2, timeout_seconds=5) == []
    assert time.monotonic() - started < 1.0


def wait(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)

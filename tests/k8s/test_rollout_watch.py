"""The RampRollout watch through the real `kubernetes` client over HTTP, against a fault-injecting fake apiserver.

Every scenario asserts on what the fake received (which resourceVersion a re-watch asked for, how many requests
a failure storm caused) as well as on the cache. Timeouts and backoffs are scaled down (FAST) so each test takes
well under 3 s; every watch is stopped and joined in teardown.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from kmock._internal import enums
from kubernetes.client import CustomObjectsApi

from controller.k8s.errors import Forbidden, Transient
from controller.k8s.rollout_stream import Gone, object_key, parse_event, stream_lines
from controller.k8s.rollout_watch import RolloutResourceWatch, WatchConfig
from controller.rollout_resource import GROUP, PLURAL, VERSION
from tests.fakes.kube_watch import FakeKube, rollout, running_fake_kube
from tests.k8s.emulator import KubeHarness

FAST = WatchConfig(
    watch_timeout_seconds=30, read_timeout=0.5, connect_timeout=1.0, list_timeout=2.0, relist_interval=60.0,
    backoff_base=0.05, backoff_max=0.2, forbidden_retry=0.3, healthy_stream=5.0,
)  # fmt: skip
SHOP = frozenset({"shop"})


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    """The fault-injecting fake apiserver (the emulator is the `kube` fixture of conftest.py)."""
    with running_fake_kube() as fake:
        yield fake


@contextmanager
def watching(
    fake: FakeKube, namespaces: frozenset[str] | None = SHOP, config: WatchConfig = FAST, wait_synced: bool = True
) -> Iterator[RolloutResourceWatch]:
    watch = RolloutResourceWatch(fake.api_client(timeout=2.0), namespaces, config, rng=random.Random(3))
    stop = threading.Event()
    watch.start(stop)
    try:
        if wait_synced:
            assert eventually(watch.synced), watch.status()
        yield watch
    finally:
        stop.set()
        assert watch.join(3.0), "watch threads did not stop"


def eventually(predicate: Callable[[], Any], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def names(watch: RolloutResourceWatch) -> list[str]:
    return sorted(f"{ns}/{name}" for ns, name in watch.snapshot()[1])


def spec_of(watch: RolloutResourceWatch, namespace: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = watch.snapshot()[1][(namespace, name)]["spec"]
    return spec


def set_target(target: str) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj["spec"]["target"] = target

    return change


# --- the protocol ------------------------------------------------------------------------------------------------


def test_lists_then_applies_added_modified_deleted(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    fake.create(rollout("shop", "b"))
    fake.create(rollout("other", "c"))  # another namespace: not watched
    with watching(fake) as watch:
        assert names(watch) == ["shop/a", "shop/b"]
        listed_rv = fake.lists()[0]
        assert listed_rv.path == "/apis/ramp.dev/v1/namespaces/shop/ramprollouts"
        assert fake.wait_streams(1)
        first = fake.watches()[0]
        assert first.query["allowWatchBookmarks"] == "true"
        assert first.query["resourceVersion"] == "103"  # the list's resourceVersion, not "from the beginning"
        assert 1 <= int(first.query["timeoutSeconds"]) <= 30
        counter, objects = watch.snapshot()
        objects[("shop", "a")]["spec"]["target"] = "mutated"  # a deep copy: the cache is not touched
        assert spec_of(watch, "shop", "a")["target"] == "v2"

        fake.create(rollout("shop", "d"))
        fake.update("shop", "a", set_target("v3"))
        fake.delete("shop", "b")
        assert eventually(lambda: names(watch) == ["shop/a", "shop/d"])
        assert eventually(lambda: spec_of(watch, "shop", "a")["target"] == "v3")
        assert watch.snapshot()[0] >= counter + 3
        assert watch.snapshot()[1][("shop", "a")]["metadata"]["generation"] == 2
        ok, message = watch.status()
        assert ok, message
        assert watch.metrics()["events"] == 3 and watch.metrics()["lists"] == 1


def test_cluster_wide_when_every_namespace_is_allowed(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    fake.create(rollout("other", "c"))
    with watching(fake, namespaces=None) as watch:
        assert names(watch) == ["other/c", "shop/a"]
        assert fake.lists()[0].path == "/apis/ramp.dev/v1/ramprollouts"
        fake.create(rollout("third", "e"))
        assert eventually(lambda: "third/e" in names(watch))
        assert fake.watches()[0].path == "/apis/ramp.dev/v1/ramprollouts"


def test_change_counter_only_moves_when_content_changes(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        before = watch.snapshot()[0]
        fake.bookmark()
        assert eventually(lambda: watch.metrics()["bookmarks"] == 1)
        assert watch.snapshot()[0] == before
        fake.update("shop", "a", set_target("v3"))
        assert eventually(lambda: watch.snapshot()[0] == before + 1)


def test_bookmark_moves_the_resource_version_used_after_a_drop(fake: FakeKube) -> None:
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        for i in range(3):
            fake.create(rollout("other", f"x{i}"))  # moves the collection's version; nothing for shop's stream
        fake.bookmark()
        bookmarked = fake.resource_version
        assert eventually(lambda: watch.resource_version("shop") == bookmarked)
        fake.drop()
        assert eventually(lambda: len(fake.watches()) == 2)
        assert fake.watches()[1].query["resourceVersion"] == bookmarked
        assert watch.metrics()["relists"] == 0 and len(fake.lists()) == 1


def test_dropped_stream_resumes_from_the_last_version_without_losing_events(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        created = fake.create(rollout("shop", "x"))
        assert eventually(lambda: "shop/x" in names(watch))
        fake.fail_status = 500  # the apiserver is briefly unavailable: the re-watch fails, then backs off
        fake.drop()
        fake.update("shop", "a", set_target("v9"))  # while disconnected
        fake.create(rollout("shop", "y"))
        fake.delete("shop", "x")
        assert eventually(lambda: len(fake.watches()) >= 2)
        fake.fail_status = None
        assert eventually(lambda: names(watch) == ["shop/a", "shop/y"])
        assert eventually(lambda: spec_of(watch, "shop", "a")["target"] == "v9")
        resumed = [w.query.get("resourceVersion") for w in fake.watches()[1:]]
        assert set(resumed) == {created["metadata"]["resourceVersion"]}  # every retry resumed where it stopped
        assert len(fake.lists()) == 1  # no relist was needed: nothing was lost
        assert watch.metrics()["watch_restarts"] >= 2


def test_410_inside_the_stream_relists_and_forgets_what_was_deleted_meanwhile(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    fake.create(rollout("shop", "b"))
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        fake.watch_faults.append("stall")  # the next stream delivers nothing: this client misses what follows
        fake.drop()
        assert eventually(lambda: len(fake.watches()) == 2)
        fake.delete("shop", "b")
        fake.create(rollout("shop", "c"))
        fake.compact()  # the version the client holds is now too old: the re-watch gets ERROR 410
        assert eventually(lambda: names(watch) == ["shop/a", "shop/c"], timeout=2.5)
        metrics = watch.metrics()
        assert metrics["gone"] == 1 and metrics["relists"] == 1
        assert len(fake.lists()) == 2
        assert eventually(lambda: len(fake.watches()) >= 4)  # stalled, 410, then a watch from the new list
        assert fake.watches()[3].query["resourceVersion"] == fake.resource_version


def test_other_error_events_rewatch_from_the_same_version(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        version = watch.resource_version("shop")
        fake.error_event(500, "InternalError", "etcd leader changed")
        assert eventually(lambda: len(fake.watches()) == 2)
        assert fake.watches()[1].query["resourceVersion"] == version
        assert len(fake.lists()) == 1 and watch.metrics()["gone"] == 0 and watch.metrics()["errors"] == 1


def test_http_410_on_watch_and_on_list(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    fake.watch_faults.append(410)
    fake.list_faults.extend([200, 410])  # the first list works, the relist after the 410 watch is refused once
    with watching(fake) as watch:
        assert eventually(lambda: len(fake.lists()) == 3 and fake.open_streams() == 1)
        assert watch.metrics()["gone"] == 2
        fake.create(rollout("shop", "b"))
        assert eventually(lambda: names(watch) == ["shop/a", "shop/b"])
        assert watch.status()[0]


def test_a_stalled_stream_is_abandoned_after_the_read_timeout(fake: FakeKube) -> None:
    fake.watch_faults.append("stall")
    with watching(fake) as watch:
        fake.create(rollout("shop", "a"))
        assert eventually(lambda: "shop/a" in names(watch), timeout=2.0)
        first, second = fake.watches()[:2]
        gap = second.at - first.at
        assert FAST.read_timeout * 0.9 <= gap <= FAST.read_timeout + 0.5, gap
        assert second.query["resourceVersion"] == first.query["resourceVersion"]


def test_a_5xx_storm_is_met_with_bounded_backoff(fake: FakeKube) -> None:
    fake.fail_status = 500
    config = replace(FAST, backoff_max=0.4)
    with watching(fake, config=config, wait_synced=False) as watch:
        time.sleep(1.5)
        seen = fake.lists()
        # capped at 0.4 s, jittered to >= 0.2 s: at most a handful in 1.5 s (a tight loop would make thousands)
        assert 3 <= len(seen) <= 12, len(seen)
        gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
        assert all(g <= 0.4 + 0.35 for g in gaps), gaps  # never more than the cap (plus scheduling on a busy CPU)
        assert gaps[-1] >= 0.2 - 0.02, gaps
        ok, message = watch.status()
        assert not ok and "not listed yet" in message and "HTTP 500" in message
        fake.fail_status = None
        assert eventually(watch.synced, timeout=3.0)
        assert watch.status()[0]


def test_a_missing_crd_is_named_with_the_fix(fake: FakeKube) -> None:
    fake.fail_status = 404
    with watching(fake, wait_synced=False) as watch:
        assert eventually(lambda: "CRD (ramprollouts.ramp.dev) is not installed" in watch.status()[1])
        assert not watch.status()[0] and "--no-resources" in watch.status()[1]


def test_403_keeps_the_cache_and_reports_the_missing_rule(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    with watching(fake) as watch:
        assert fake.wait_streams(1)
        fake.forbidden.add("shop")
        fake.drop()
        assert eventually(lambda: not watch.status()[0])
        message = watch.status()[1]
        assert "namespace 'shop'" in message and "verb 'watch'" in message and "'ramprollouts'" in message
        assert "API group 'ramp.dev'" in message
        assert names(watch) == ["shop/a"]  # stale beats empty
        before = len(fake.requests)
        time.sleep(0.7)
        assert len(fake.requests) - before <= 3  # slow retries (every forbidden_retry), not a backoff storm
        fake.forbidden.clear()
        fake.create(rollout("shop", "b"))
        assert eventually(lambda: names(watch) == ["shop/a", "shop/b"] and watch.status()[0])
        assert watch.metrics()["forbidden"] >= 1


def test_forbidden_in_one_namespace_does_not_blind_the_others(fake: FakeKube) -> None:
    fake.create(rollout("team-a", "a"))
    fake.create(rollout("team-b", "b"))
    fake.forbidden.add("team-b")
    with watching(fake, namespaces=frozenset({"team-a", "team-b"}), wait_synced=False) as watch:
        assert eventually(lambda: names(watch) == ["team-a/a"])
        assert eventually(lambda: "verb 'list'" in watch.status()[1])  # after the first 403 ("list pending" before)
        ok, message = watch.status()
        assert not ok and "namespace 'team-b'" in message and "team-a" not in message
        assert not watch.synced()


def test_malformed_events_and_objects_are_skipped_and_counted(fake: FakeKube) -> None:
    fake.put_raw("shop", "zz-junk", {"kind": "RampRollout", "metadata": "not a mapping"})
    fake.create(rollout("shop", "a"))
    with watching(fake) as watch:
        assert names(watch) == ["shop/a"]
        assert watch.metrics()["skipped"] == 1
        assert fake.wait_streams(1)
        junk = [
            "not json", "[]", "42", '{"type": "ADDED"}', '{"type": 7, "object": {}}',
            '{"type": "ADDED", "object": {"kind": "RampRollout"}}',
            '{"type": "ADDED", "object": {"metadata": {"namespace": "shop"}}}',
            '{"type": "ADDED", "object": {"metadata": {"name": "p", "namespace": "other"}}}',
            '{"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}}}',
            '{"type": "MODIFIED", "object": {"metadata": {"name": ["x"], "namespace": "shop"}}}',
            '{"type": "BOOKMARK", "object": {"metadata": {}}}',
            '{"type": "SURPRISE", "object": {"metadata": {"name": "s", "namespace": "shop"}}}',
            "{" * 5000,  # longer than nothing at all: still just a line
        ]  # fmt: skip
        for line in junk:
            fake.inject(line)
        fake.create(rollout("shop", "b"))
        assert eventually(lambda: names(watch) == ["shop/a", "shop/b"])
        metrics = watch.metrics()
        assert metrics["skipped"] == 1 + len(junk), metrics
        assert metrics["watch_restarts"] == 0 and metrics["errors"] == 0  # the same stream carried on
        assert watch.status()[0]


def test_periodic_relist_catches_a_missed_delete(fake: FakeKube) -> None:
    fake.create(rollout("shop", "a"))
    fake.create(rollout("shop", "b"))
    with watching(fake, config=replace(FAST, relist_interval=0.6)) as watch:
        assert fake.wait_streams(1)
        assert fake.watches()[0].query["timeoutSeconds"] == "1"  # cut so the stream ends when the relist is due
        fake.delete_silently("shop", "b")  # no event: only a relist can tell
        assert eventually(lambda: names(watch) == ["shop/a"], timeout=2.5)
        assert watch.metrics()["relists"] >= 1


def test_paged_list(fake: FakeKube) -> None:
    for i in range(7):
        fake.create(rollout("shop", f"r{i}"))
    with watching(fake, config=replace(FAST, page_size=3)) as watch:
        assert len(names(watch)) == 7
        pages = fake.lists()
        assert [p.query.get("continue") for p in pages] == [None, "3", "6"]
        assert all(p.query["limit"] == "3" for p in pages)


def test_stop_interrupts_an_idle_stream_at_once(fake: FakeKube) -> None:
    watch = RolloutResourceWatch(fake.api_client(), SHOP, replace(FAST, read_timeout=30.0))
    stop = threading.Event()
    watch.start(stop)
    assert eventually(watch.synced) and fake.wait_streams(1)
    started = time.monotonic()
    stop.set()
    assert watch.join(1.0)
    assert time.monotonic() - started < 1.0


def test_status_before_the_first_list(fake: FakeKube) -> None:
    watch = RolloutResourceWatch(fake.api_client(), SHOP, FAST)
    assert not watch.synced()
    ok, message = watch.status()
    assert not ok and "not listed yet" in message
    with pytest.raises(ValueError, match="cluster-wide"):
        RolloutResourceWatch(fake.api_client(), frozenset(f"ns{i}" for i in range(201)), FAST)


# --- parsing, line by line (no server) -----------------------------------------------------------------------------


def test_parse_event() -> None:
    def line(kind: str, obj: object) -> bytes:
        return json.dumps({"type": kind, "object": obj}).encode()

    obj = {"kind": "RampRollout", "metadata": {"name": "a", "namespace": "shop", "resourceVersion": "9"}}
    added = parse_event(line("ADDED", obj), "shop")
    assert added is not None and (added.key, added.resource_version, added.obj) == (("shop", "a"), "9", obj)
    elsewhere = parse_event(line("ADDED", {"metadata": {"name": "a", "namespace": "x", "resourceVersion": "10"}}),
                            "shop")  # fmt: skip
    assert elsewhere is not None and elsewhere.key is None and elsewhere.resource_version == "10"
    assert parse_event(b"\xff\xfe", None) is None
    bookmark = parse_event(b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "77"}}}', None)
    assert bookmark is not None and bookmark.type == "BOOKMARK" and bookmark.resource_version == "77"
    with pytest.raises(Gone):
        parse_event(b'{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}', None)
    with pytest.raises(Forbidden):
        parse_event(b'{"type": "ERROR", "object": {"code": 403, "message": "no"}}', "shop")
    with pytest.raises(Transient):
        parse_event(b'{"type": "ERROR", "object": {"code": "weird"}}', "shop")
    assert object_key({"metadata": {"name": "a", "namespace": "b"}}, None) == ("b", "a")
    assert object_key({"kind": "Other", "metadata": {"name": "a", "namespace": "b"}}, None) is None


def test_stream_lines_bounds_time_and_size() -> None:
    skipped: list[int] = []
    chunks = [b'{"a"', b": 1}\n\n", b"x" * 3000, b"y\nlast"]
    lines = list(stream_lines(chunks, clock=lambda: 0.0, limit=1.0, max_bytes=1024,
                              on_oversized=lambda: skipped.append(1), namespace=None))  # fmt: skip
    assert lines == [b'{"a": 1}', b"last"] and skipped == [1]
    ticks = iter([0.0, 0.5, 2.0])
    with pytest.raises(Transient, match="outlived"):
        list(stream_lines([b"a\n", b"b\n", b"c\n"], clock=lambda: next(ticks), limit=1.0, max_bytes=1024,
                          on_oversized=lambda: None, namespace="shop"))  # fmt: skip


# --- against the emulator (tests/k8s/emulator.py: the apiserver semantics shared by the k8s tests) ----------------


def _emulated(harness: KubeHarness, config: WatchConfig = FAST) -> tuple[RolloutResourceWatch, threading.Event]:
    watch = RolloutResourceWatch(harness.api_client(timeout=2.0), SHOP, config, rng=random.Random(3))
    stop = threading.Event()
    watch.start(stop)
    return watch, stop


def test_against_the_emulator_events_bookmarks_and_410(kube: KubeHarness) -> None:
    harness = kube
    api = CustomObjectsApi(harness.api_client())
    harness.on_loop(lambda: setattr(harness.emulator.history, "bookmark_interval", 0.1))
    api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, rollout("shop", "a"))
    api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, rollout("shop", "b"))
    watch, stop = _emulated(harness)
    try:
        assert eventually(watch.synced) and names(watch) == ["shop/a", "shop/b"]
        harness.wait_for_watches(1, PLURAL)
        api.patch_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "a", {"spec": {"target": "v1"}})
        api.delete_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "b")
        assert eventually(lambda: names(watch) == ["shop/a"] and spec_of(watch, "shop", "a")["target"] == "v1")
        assert watch.snapshot()[1][("shop", "a")]["metadata"]["generation"] == 2
        api.create_namespaced_custom_object(GROUP, VERSION, "other", PLURAL, rollout("other", "z"))
        latest = harness.latest_resource_version()
        assert eventually(lambda: watch.resource_version("shop") == latest)  # a bookmark carried it
        harness.drop_watches(abrupt=True)
        assert eventually(lambda: len(harness.watch_requests(PLURAL)) >= 2)
        assert harness.watch_requests(PLURAL)[1].params["resourceVersion"] == latest
        # disconnected (watches answer 500) while a resource is deleted and the history compacted:
        # the re-watch gets ERROR 410, the relist shows the deletion
        harness.wait_for_watches(1, PLURAL)
        down = [True]
        harness.emulator[lambda request: bool(down) and request.action == enums.action.WATCH] << 500
        harness.drop_watches()
        api.delete_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, "a")
        api.create_namespaced_custom_object(GROUP, VERSION, "shop", PLURAL, rollout("shop", "c"))
        harness.compact()
        down.clear()
        assert eventually(lambda: names(watch) == ["shop/c"], timeout=2.5)
        assert watch.metrics()["gone"] == 1 and watch.metrics()["relists"] == 1
        assert watch.status()[0], watch.status()
    finally:
        stop.set()
        assert watch.join(3.0)

"""ShardLeases and ShardSelection on the emulator: fair share, the tick's guard, release, re-acquisition."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command, RolloutState
from controller.engine.ports import ResourceRef
from controller.engine.runner import ManagedRollout
from controller.engine.state_port import CommandPending
from controller.k8s.client import LEADERSHIP_ATTR, KubeApi
from controller.k8s.events import EventRecorder, EventType, ObjectRef
from controller.k8s.shards import ShardedResources, ShardLeases, ShardSelection
from controller.sharding import lease_name_for, shard_of
from controller.spec_loader import parse_spec_text
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import wait_until

LEASE = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
SPEC = """
service: {service}
namespace: shop
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps: [{{weight: 10, duration: 10s}}]
gates: [{{metric: error_rate, max: 2}}]
"""
BY_SHARD = {0: "svc-2", 1: "svc-0", 2: "svc-3"}  # shard_of("shop", name, 3)


def leases(kube: KubeHarness, identity: str, shards: int = 3) -> ShardLeases:
    return ShardLeases(kube.api_client(2.0), namespace="ramp-system", base_name="ramp-controller",
                       identity=identity, shards=shards, **LEASE)  # fmt: skip


def holder(kube: KubeHarness, shard: int, shards: int = 3) -> str | None:
    name = lease_name_for("ramp-controller", shard, shards)
    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(name, "ramp-system")
    return lease.spec.holder_identity


def rollouts() -> list[ManagedRollout]:
    return [ManagedRollout.from_spec(parse_spec_text(SPEC.format(service=s), f"{s}.yaml")) for s in BY_SHARD.values()]


def test_a_lone_replica_takes_every_shard_one_stagger_apart(kube: KubeHarness) -> None:
    alone = leases(kube, "a")
    stop = threading.Event()
    started = time.monotonic()
    alone.start(stop)
    try:
        times = [wait_until(lambda n=n: len(alone.held()) >= n, 10, f"{n} shards") - started for n in (1, 2, 3)]  # type: ignore[misc]
    finally:
        stop.set()
        alone.join(5)
    # k held shards: a free shard is taken once seen free for k x stagger (stagger = 2 x retry = 1 s).
    assert times[0] < 1.0  # the lower bounds are the rule; the upper ones leave room for a loaded machine
    assert 1.0 <= times[1] < 2.5 and 2.0 <= times[2] < 4.5, times


def test_replicas_started_together_split_the_shards_and_a_graceful_stop_hands_them_over(kube: KubeHarness) -> None:
    a, b, c = leases(kube, "a"), leases(kube, "b"), leases(kube, "c")
    stops = {name: threading.Event() for name in "abc"}
    for name, replica in zip("abc", (a, b, c), strict=True):
        replica.start(stops[name])
    try:
        wait_until(lambda: all(len(r.held()) == 1 for r in (a, b, c)), 5, "one shard each")
        owned = {shard: name for name, r in zip("abc", (a, b, c), strict=True) for shard in r.held()}
        assert sorted(owned) == [0, 1, 2]
        assert {shard: holder(kube, shard) for shard in range(3)} == owned
        shard_of_a = next(iter(a.held()))
        stops["a"].set()
        a.join(5)
        stopped = time.monotonic()
        assert holder(kube, shard_of_a) is None  # released: no waiting for expiry
        taken = wait_until(lambda: shard_of_a in b.held() or shard_of_a in c.held(), 5, "released shard taken")
        # Seen free (released) for 1 x stagger by a replica holding one shard: far less than the lease duration.
        assert taken - stopped < LEASE["lease_duration"]
        assert len(b.held()) + len(c.held()) == 3 and b.held().keys().isdisjoint(c.held().keys())
    finally:
        for stop in stops.values():
            stop.set()
        for replica in (a, b, c):
            replica.join(5)
    assert {holder(kube, shard) for shard in range(3)} == {None}


def test_the_tick_guard_covers_every_shard_of_the_snapshot_and_ends_with_the_earliest_term(kube: KubeHarness) -> None:
    one = leases(kube, "a")
    assert getattr(one.electors[0]._api.api_client, LEADERSHIP_ATTR) is one  # KubeApi writes ask the tick's guard
    one.attempt(0)
    one.attempt(1)
    assert set(one.held()) == {0}  # holding one: a second free shard waits one stagger
    time.sleep(one.stagger)
    one.attempt(1)
    one.attempt(0)  # renewed (nothing runs the election threads here): both terms have ~renew_deadline left
    assert set(one.held()) == {0, 1}
    assert not one.may_write()  # no tick started: nothing may be written
    assert one.write_deadline().expired
    one.begin_tick()
    assert one.may_write()
    terms = [one.electors[shard].write_deadline() for shard in (0, 1)]
    assert one.write_deadline().at == min(t.at for t in terms)
    guard = KubeApi(one.electors[0]._api.api_client)
    assert guard.write_guard is not None and guard.write_guard()
    one.electors[1].release()  # one shard of the snapshot lost: the whole tick stops writing
    assert 0 in one.held() and not one.may_write() and one.write_deadline().expired
    assert guard.write_guard is not None and not guard.write_guard()


def test_a_shard_lost_and_retaken_between_ticks_is_left_out_once_so_its_rollouts_are_read_afresh(
    kube: KubeHarness, tmp_path: Path
) -> None:
    one = leases(kube, "a")
    gained: list[list[str]] = []

    def note(rollouts: Sequence[ManagedRollout]) -> None:
        gained.append(sorted(r.spec.service for r in rollouts))

    selection = ShardSelection(one, on_gained=note)
    every = rollouts()
    assert selection(every) == []
    one.attempt(0)
    assert [r.spec.service for r in selection(every)] == ["svc-2"]
    assert gained == [["svc-2"]] and selection.owns("shop", "svc-2") and not selection.owns("shop", "svc-0")
    assert [r.spec.service for r in selection(every)] == ["svc-2"] and len(gained) == 1  # same term: kept
    one.electors[0]._step_down("lost")  # e.g. it could not renew in time; then it wins the Lease again
    one.attempt(0)
    assert 0 in one.held()
    assert selection(every) == []  # a new term: left out for one tick, so the runner forgets its rollouts
    assert not selection.owns("shop", "svc-2")
    assert [r.spec.service for r in selection(every)] == ["svc-2"]
    assert gained == [["svc-2"], ["svc-2"]]  # ... and the backend is told to re-read them


class Recorded:
    """The bridge's real collaborators as far as this test needs: what reached them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], deadline: Deadline) -> object:
        self.calls.append(("status", namespace, name))
        return {}

    def remove_command(self, namespace: str, name: str, raw_value: str, deadline: Deadline) -> bool:
        self.calls.append(("remove", namespace, name))
        return True

    def request_command(self, namespace: str, service: str, command: CommandRequest, router: str | None = None) -> None:
        self.calls.append(("command", namespace, service))

    def load(self, rollout: str) -> RolloutState | None:
        return None


class RecordedEvents(EventRecorder):
    def __init__(self, calls: list[tuple[str, str, str]]) -> None:  # no apiserver: records what it is asked
        self.calls = calls

    def record(
        self, namespace: str, involved: ObjectRef, reason: str, message: str, type: EventType = "Normal"
    ) -> bool:
        self.calls.append(("event", namespace, involved.name))
        return True


def test_the_rollout_resource_bridge_acts_only_for_the_resources_of_the_shards_held(kube: KubeHarness) -> None:
    """Commands, status writes and Events of RampRollouts: only for this tick's shards; another shard's command is
    left for its holder (CommandPending: the bridge tries again next tick, never drops it)."""
    one = leases(kube, "a")
    one.attempt(0)
    every = [dataclasses.replace(r, resource=ResourceRef("shop", f"rr-{r.spec.service}", "uid", 1)) for r in rollouts()]
    selection = ShardSelection(one)
    objects = {("shop", "refused-1"): {"spec": {"service": "svc-0"}}, ("shop", "refused-2"): {"spec": {}}}
    owned = ShardedResources(selection, lambda: every, lambda: objects)
    inner = Recorded()
    writes, commands = owned.writes(inner), owned.commands(inner)
    events = owned.events(RecordedEvents(inner.calls))
    selection(every)
    deadline = Deadline(5)
    request = CommandRequest(command=Command.PAUSE)
    commands.request_command("shop", "svc-2", request)  # shard 0: ours
    with pytest.raises(CommandPending):
        commands.request_command("shop", "svc-0", request)  # shard 1: its holder forwards it
    for name in ("rr-svc-2", "rr-svc-0", "rr-svc-3", "refused-1"):
        writes.patch_status("shop", name, {}, deadline)
        writes.remove_command("shop", name, "x", deadline)
        events.record("shop", ObjectRef("ramp.dev/v1", "RampRollout", name, None), "R", "m")
    assert inner.calls == [
        ("command", "shop", "svc-2"),
        ("status", "shop", "rr-svc-2"), ("remove", "shop", "rr-svc-2"), ("event", "shop", "rr-svc-2"),
    ]  # fmt: skip
    assert owned.owns("shop", "refused-1") is False  # refused, spec.service svc-0: shard 1
    assert owned.owns("shop", "refused-2") is (shard_of("shop", "refused-2", 3) == 0)  # no service: its name
    one.electors[0].release()  # the shard is lost: nothing more, even for the tick's own rollouts
    assert not owned.owns("shop", "rr-svc-2")
    with pytest.raises(CommandPending):
        commands.request_command("shop", "svc-2", request)

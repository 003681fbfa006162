"""Sharded controller replicas against the emulator: one actor per rollout, takeover of a crashed replica's shard.

Three replicas, each wired as `ramp controller --shards 3` wires one (controller.cluster_controller): ShardLeases
(one LeaderElector thread per shard Lease), the ControllerLoop with the ShardSelection filter, the real
RolloutRunner on the real cluster backend (VirtualService + DestinationRule), `runner.may_write` = the tick's
shards still held, and the KubeApi write guard installed by ShardLeases. Each replica talks to the emulator
through its own fault-injecting proxy, whose records say which replica's write reached the apiserver when: that is
the evidence for "never two writers at once". Metrics are fixed and healthy (no Prometheus); timings are scaled
down (lease 4 s, renew deadline 3 s, retry 1 s: room for a loaded machine).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

from controller.analysis.metrics import VersionMetrics
from controller.cluster_backend import cluster_backend
from controller.controller_loop import ControllerLoop
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.client import KubeApi
from controller.k8s.shards import ShardLeases, ShardSelection
from controller.routing.istio import IstioBackend
from controller.sharding import lease_name_for, shard_of
from controller.spec_loader import parse_spec_text
from controller.spec_sources import StaticSpecSource
from tests.fakes.kube_proxy import Faults, KubeProxy, running_proxy
from tests.k8s import helpers
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, kube_api, stored
from tests.unit.engine_fixtures import FixedMetrics

LEASE = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 1.0}
SHARDS, NS = 3, "shop"
# Four services per shard (shard_of("shop", name, 3), checked below).
SERVICES = {
    0: ("svc-2", "svc-6", "svc-7", "svc-9"),
    1: ("svc-0", "svc-1", "svc-11", "svc-12"),
    2: ("svc-3", "svc-4", "svc-5", "svc-8"),
}
STEPS = 4
SPEC = """
service: {service}
namespace: shop
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{weight: 10, duration: 2s}}
  - {{weight: 25, duration: 2s}}
  - {{weight: 50, duration: 2s}}
  - {{weight: 75, duration: 2s}}
gates: [{{metric: error_rate, max: 2}}]
analysis: {{window: 5s}}
schedule: {{interval: 1s}}
"""
WRITES = ("PUT", "POST", "PATCH", "DELETE")


def rollouts() -> list[ManagedRollout]:
    return [
        ManagedRollout.from_spec(parse_spec_text(SPEC.format(service=s), f"{s}.yaml"))
        for names in SERVICES.values()
        for s in names
    ]


@dataclass
class Replica:
    identity: str
    proxy: KubeProxy
    leases: ShardLeases
    loop: ControllerLoop
    stop_leases: threading.Event = field(default_factory=threading.Event)
    stop_loop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, release_on_stop: bool = False) -> None:
        self.leases.start(self.stop_leases, release_on_stop=release_on_stop)

        def drive() -> None:
            for _ in range(2000):  # bounded: at most ~200 s
                if self.stop_loop.is_set():
                    return
                self.loop.iterate()
                self.stop_loop.wait(0.1)

        self.thread = threading.Thread(target=drive, name=f"loop-{self.identity}", daemon=True)
        self.thread.start()

    def crash(self) -> None:
        """A process that dies: nothing it had in flight lands, nothing is released."""
        self.proxy.faults = Faults(hold=30.0, deliver_held=False)
        self.stop_loop.set()
        self.stop_leases.set()

    def stop(self) -> None:
        self.stop_loop.set()
        self.stop_leases.set()
        if self.thread is not None:
            self.thread.join(5)
        self.leases.join(5)


def make_replica(identity: str, proxy: KubeProxy, tmp_path: Path) -> Replica:
    api_client = proxy.api_client(timeout=3.0)
    backend = cluster_backend(KubeApi(api_client))
    healthy = {v: VersionMetrics(500, 0, {}) for v in ("v1", "v2")}
    runner = RolloutRunner(router=backend, metrics=FixedMetrics(healthy), store=backend)
    leases = ShardLeases(api_client, namespace="ramp-system", base_name="ramp-controller", identity=identity,
                         shards=SHARDS, **LEASE)  # fmt: skip
    runner.may_write = leases.may_write

    def forget(gained: Sequence[ManagedRollout]) -> None:
        for r in gained:
            backend.invalidate(r.spec.namespace, r.spec.service)

    loop = ControllerLoop(
        runner, specs=StaticSpecSource(tmp_path, rollouts()), should_act=leases.may_write, leadership=leases.status,
        tick_deadline=5.0, interval=0.1, select=ShardSelection(leases, on_gained=forget),
    )  # fmt: skip
    return Replica(identity, proxy, leases, loop)


@pytest.fixture()
def replicas(kube: KubeHarness, tmp_path: Path) -> Iterator[list[Replica]]:
    seed = IstioBackend(kube_api(kube))
    for rollout in rollouts():
        seed.track({rollout.name: (NS, rollout.spec.service)})
        seed.apply(rollout.plan.all_routings()[0])  # the baseline, as before the rollout
    with ExitStack() as stack:
        made = [make_replica(f"replica-{c}", stack.enter_context(running_proxy(kube.url)), tmp_path) for c in "abc"]
        try:
            yield made
        finally:
            for replica in made:
                replica.stop()


# -- observation ---------------------------------------------------------------------------------------------


def lease_holder(kube: KubeHarness, shard: int) -> str:
    name = lease_name_for("ramp-controller", shard, SHARDS)
    try:
        lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(name, "ramp-system")
    except client.exceptions.ApiException:
        return ""
    return lease.spec.holder_identity or ""


def state(kube: KubeHarness, service: str) -> dict[str, object]:
    vs = stored(kube, VS, NS, service)
    raw = (vs or {}).get("metadata", {}).get("annotations", {}).get("ramp.dev/state")
    return {} if raw is None else dict(json.loads(raw))


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    return helpers.wait_until(check, timeout, what, poll=0.05)


@dataclass
class StepWatch:
    """Polls every rollout's saved (step, phase) in the background: the sequence each went through."""

    kube: KubeHarness
    seen: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        for names in SERVICES.values():
            for service in names:
                saved = state(self.kube, service)
                if saved:
                    now = (int(saved["step"]), str(saved["phase"]))  # type: ignore[call-overload]
                    history = self.seen.setdefault(service, [])
                    if not history or history[-1] != now:
                        history.append(now)

    def run(self) -> None:
        for _ in range(4000):
            if self.stop.is_set():
                return
            self.poll()
            self.stop.wait(0.05)


def writes_by_rollout(replicas: list[Replica]) -> dict[str, list[tuple[float, str]]]:
    """(when it reached the apiserver, who) of every successful write to a rollout's VirtualService/DestinationRule."""
    out: dict[str, list[tuple[float, str]]] = {}
    for replica in replicas:
        for record in list(replica.proxy.records):
            if record.method not in WRITES or record.forwarded_at is None:
                continue
            if record.upstream_status is None or record.upstream_status >= 300:
                continue
            parts = record.path.split("?")[0].strip("/").split("/")
            if "virtualservices" in parts or "destinationrules" in parts:
                out.setdefault(parts[-1], []).append((record.forwarded_at, replica.identity))
    return {name: sorted(writes) for name, writes in out.items()}


def assert_one_writer_at_a_time(writes: dict[str, list[tuple[float, str]]]) -> None:
    """Per rollout, each replica's writes form one unbroken run: their time intervals never overlap."""
    for name, sequence in writes.items():
        runs = [who for i, (_, who) in enumerate(sequence) if i == 0 or sequence[i - 1][1] != who]
        assert len(runs) == len(set(runs)), f"{name}: writers interleave: {runs}"


# -- tests ---------------------------------------------------------------------------------------------------


def test_the_services_are_spread_as_declared() -> None:
    for shard, names in SERVICES.items():
        assert {shard_of(NS, name, SHARDS) for name in names} == {shard}


def test_three_replicas_split_the_shards_and_a_crashed_replicas_shard_resumes_elsewhere(
    kube: KubeHarness, replicas: list[Replica]
) -> None:
    watch = StepWatch(kube)
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    for replica in replicas:
        replica.start()
    try:
        # Each shard is held by exactly one replica, and (started together) each replica holds one.
        wait_until(lambda: all(len(r.leases.held()) == 1 for r in replicas), 20, "one shard per replica")
        holders = {shard: lease_holder(kube, shard) for shard in range(SHARDS)}
        assert sorted(holders.values()) == [r.identity for r in replicas]
        for shard in range(SHARDS):
            assert [r.identity for r in replicas if shard in r.leases.held()] == [holders[shard]]
        # Every rollout progresses; then the holder of shard 0 dies with its rollouts mid-way.
        wait_until(lambda: all(int(state(kube, s).get("step", -1)) >= 1 for s in SERVICES[0]), 30,  # type: ignore[call-overload]
                   "shard 0's rollouts at step 1")  # fmt: skip
        victim = next(r for r in replicas if r.identity == holders[0])
        survivors = [r for r in replicas if r is not victim]
        steps_before = {s: int(state(kube, s)["step"]) for s in SERVICES[0]}  # type: ignore[call-overload]
        crashed_at = time.monotonic()
        victim.crash()
        taken = wait_until(lambda: any(0 in r.leases.held() for r in survivors), 10, "shard 0 taken over")
        # Seen unchanged for the lease duration, then taken at the next attempt (+ request time on a busy machine).
        assert taken - crashed_at <= LEASE["lease_duration"] + LEASE["retry_period"] + 1.0
        assert taken - crashed_at >= LEASE["lease_duration"] - LEASE["renew_deadline"]
        wait_until(lambda: all(state(kube, s).get("phase") == "Promoted" for n in SERVICES.values() for s in n), 60,
                   "every rollout promoted")  # fmt: skip
    finally:
        watch.stop.set()
        watcher.join(5)
        watch.poll()
    for names in SERVICES.values():
        for service in names:
            steps = [step for step, _ in watch.seen[service]]
            assert steps == sorted(steps), f"{service} went back a step: {watch.seen[service]}"
            assert all(b - a <= 1 for a, b in itertools.pairwise(steps)), f"{service} skipped: {watch.seen[service]}"
            assert sorted(set(steps)) == list(range(STEPS + 1)), watch.seen[service]  # every step, then promoted
    for service, before in steps_before.items():  # the taken-over rollouts resumed from their saved step
        history = watch.seen[service]
        assert history[-1] == (STEPS, "Promoted") and before >= 1 and history.count((0, "Progressing")) == 1, history
    writes = writes_by_rollout(replicas)
    assert set(writes) == {s for names in SERVICES.values() for s in names}
    assert_one_writer_at_a_time(writes)
    new_owner = next(r.identity for r in survivors if 0 in r.leases.held())
    for service in SERVICES[0]:
        assert {who for _, who in writes[service]} == {victim.identity, new_owner}, writes[service]
    for shard in (1, 2):  # the survivors' own shards never changed hands
        for service in SERVICES[shard]:
            assert len({who for _, who in writes[service]}) == 1, writes[service]


def test_a_partitioned_holder_stops_writing_before_its_shard_is_taken_over(
    kube: KubeHarness, replicas: list[Replica]
) -> None:
    """Its requests are held 5 s (> lease duration) and then delivered, like packets still in flight."""
    for replica in replicas:
        replica.start()
    wait_until(lambda: all(len(r.leases.held()) == 1 for r in replicas), 20, "one shard per replica")
    victim = next(r for r in replicas if 0 in r.leases.held())
    survivors = [r for r in replicas if r is not victim]
    wait_until(lambda: all(int(state(kube, s).get("step", -1)) >= 1 for s in SERVICES[0]), 30,  # type: ignore[call-overload]
               "shard 0's rollouts at step 1")  # fmt: skip
    moments: dict[str, float] = {}
    done = threading.Event()

    def observe() -> None:
        for _ in range(3000):
            if done.is_set():
                return
            now = time.monotonic()
            if "victim_stopped" not in moments and not victim.leases.may_write() and 0 not in victim.leases.held():
                moments["victim_stopped"] = now
            if "taken" not in moments and any(0 in r.leases.held() for r in survivors):
                moments["taken"] = now
            time.sleep(0.01)

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    partitioned_at = time.monotonic()
    victim.proxy.faults = Faults(hold=5.0)
    try:
        wait_until(lambda: "taken" in moments, 15, "shard 0 taken over")
        # The victim stopped acting on its own clock before anyone could take over, by about
        # lease_duration - renew_deadline (less scheduling jitter on a busy machine).
        assert moments["victim_stopped"] - partitioned_at <= LEASE["renew_deadline"] + 1.0
        assert moments["taken"] - moments["victim_stopped"] >= LEASE["lease_duration"] - LEASE["renew_deadline"] - 0.3
        victim.proxy.faults = Faults()  # healed: it finds shard 0 held by another and stands by for it
        wait_until(lambda: all(state(kube, s).get("phase") == "Promoted" for n in SERVICES.values() for s in n), 60,
                   "every rollout promoted")  # fmt: skip
        assert victim.proxy.wait_idle(10)
    finally:
        done.set()
        observer.join(5)
    assert 0 not in victim.leases.held()
    writes = writes_by_rollout(replicas)
    assert_one_writer_at_a_time(writes)
    new_owner = next(r.identity for r in survivors if 0 in r.leases.held())
    for service in SERVICES[0]:
        assert writes[service][-1][1] == new_owner, writes[service]

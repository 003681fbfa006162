"""The real RolloutRunner in cluster mode: IstioBackend as router and store, Deployments as availability."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.availability import DeploymentAvailability
from controller.routing.istio import IstioBackend
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import (
    DR,
    VS,
    assert_valid,
    count,
    create_deployment,
    fail_next,
    kube_api,
    set_available,
    stored,
)
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
ROLLOUT = ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))


def make_runner(kube: KubeHarness, clock: FakeClock) -> RolloutRunner:
    """A controller process: its own clients, an IstioBackend with empty memory."""
    backend = IstioBackend(kube_api(kube))
    runner = RolloutRunner(
        router=backend, metrics=FixedMetrics(dict(HEALTHY)), store=backend, clock=clock,
        availability=DeploymentAvailability(kube_api(kube)),
    )  # fmt: skip
    runner.set_rollouts([ROLLOUT])
    return runner


def routing_in_cluster(kube: KubeHarness) -> tuple[Any, ...]:
    """(header routes to subsets, weighted subsets) as the data plane would see them."""
    vs = stored(kube, VS, "prod", "shop")
    assert vs is not None
    headers = tuple((json.dumps(r["match"]), r["route"][0]["destination"]["subset"]) for r in vs["spec"]["http"][:-1])
    weights = tuple((d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][-1]["route"])
    return headers, weights


def stored_state(kube: KubeHarness) -> dict[str, Any]:
    vs = stored(kube, VS, "prod", "shop")
    assert vs is not None
    return dict(json.loads(vs["metadata"]["annotations"]["ramp.dev/state"]))


def expected(index: int) -> tuple[Any, ...]:
    routing = [*ROLLOUT.plan.all_routings()][index]
    headers = tuple(
        (json.dumps([{"headers": {r.header: {r.match: r.value}}}]), r.version) for r in routing.header_routes
    )
    return headers, tuple(routing.live_weights())


def deploy(kube: KubeHarness, v2_available: int) -> None:
    create_deployment(kube, "prod", "shop", "v1", available=3)
    create_deployment(kube, "prod", "shop", "v2", available=v2_available)


def test_a_rollout_walks_to_promoted_writing_only_when_it_moves(kube: KubeHarness) -> None:
    deploy(kube, 2)
    clock = FakeClock()
    runner = make_runner(kube, clock)
    seen: list[tuple[Any, ...]] = []
    ticks = 0
    while not runner.all_terminal():
        assert ticks < 30, "rollout did not finish"
        runner.tick()
        ticks += 1
        assert_valid(stored(kube, VS, "prod", "shop"))
        if not seen or seen[-1] != routing_in_cluster(kube):
            seen.append(routing_in_cluster(kube))
        clock.advance(5)
    assert seen == [expected(i) for i in range(1, 5)]  # header step, 10%, 50%, promoted: in order, none skipped
    state = stored_state(kube)
    assert state["phase"] == "Promoted"
    assert [c["step"] for c in state["history"]] == [0, 1, 2, 3]
    assert count(kube, "post", VS) == 1 and count(kube, "put", VS) == len(state["history"]) - 1 < ticks - 1
    assert (count(kube, "post", DR), count(kube, "put", DR)) == (1, 0)


def test_a_new_controller_resumes_mid_rollout_without_replaying_a_step(kube: KubeHarness) -> None:
    deploy(kube, 1)
    clock = FakeClock()
    first = make_runner(kube, clock)
    for _ in range(3):  # header step entered, then 10 s later the 10% step
        first.tick()
        clock.advance(5)
    before = stored_state(kube)
    assert (before["phase"], before["step"]) == ("Progressing", 1)
    puts = count(kube, "put", VS)
    second = make_runner(kube, clock)  # a restarted process (or a new leader): nothing in memory
    events = second.tick()
    assert events[0].decision.state.step == 1 and events[0].routing_written is False
    assert count(kube, "put", VS) == puts  # resuming a steady step writes nothing
    assert stored_state(kube)["step_started_at"] == before["step_started_at"]
    while not second.all_terminal():
        clock.advance(5)
        second.tick()
    history = stored_state(kube)["history"]
    assert [c["step"] for c in history] == [0, 1, 2, 3] and history[-1]["phase"] == "Promoted"


def test_a_version_without_ready_pods_never_gets_traffic(kube: KubeHarness) -> None:
    deploy(kube, 0)
    clock = FakeClock()
    runner = make_runner(kube, clock)
    for _ in range(4):
        events = runner.tick()
        clock.advance(5)
        assert events[0].decision.state.reason == "holding before step 1/3: no ready pods for v2"
        assert routing_in_cluster(kube) == ((), (("v1", 100),))  # baseline only: no header route, no weight
    state = stored_state(kube)
    assert (state["phase"], state["reason"]) == ("Pending", "holding before step 1/3: no ready pods for v2")
    set_available(kube, "prod", "shop", "v2", 1)
    events = runner.tick()
    assert events[0].decision.phase == Phase.HEADER_TEST
    assert routing_in_cluster(kube) == expected(1)


def test_a_steady_tick_reads_each_namespace_once_and_writes_nothing(kube: KubeHarness) -> None:
    clock = FakeClock()
    backend = IstioBackend(kube_api(kube))
    runner = RolloutRunner(router=backend, metrics=FixedMetrics(dict(HEALTHY)), store=backend, clock=clock)
    runner.set_rollouts(
        [ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("service: shop", f"service: s{i}"))) for i in range(5)]
    )
    runner.tick()  # creates 5 DestinationRules and 5 VirtualServices
    clock.advance(5)
    before = {m: len(kube.requests(m)) for m in ("get", "put", "post")}
    runner.tick()  # header step still running: nothing changes
    after = {m: len(kube.requests(m)) for m in ("get", "put", "post")}
    calls = {m: after[m] - before[m] for m in after}
    listed = [r for r in kube.requests("get")[before["get"] :] if str(r.url.path).endswith("/virtualservices")]
    assert calls == {"get": 1, "put": 0, "post": 0} and len(listed) == 1  # one LIST, no GET per rollout


TWENTY_SECOND_STEPS = """
service: shop
namespace: prod
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
steps:
  - {weight: 10, duration: 20s}
  - {weight: 50, duration: 20s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 5s}
"""
SKEW_ROLLOUT = ManagedRollout.from_spec(spec(TWENTY_SECOND_STEPS))


def replica(kube: KubeHarness, true_time: FakeClock, wall_offset: float, mono_offset: float) -> RolloutRunner:
    """A controller process whose wall clock is `wall_offset` off the true time (its monotonic clock: any origin)."""
    backend = IstioBackend(kube_api(kube))
    runner = RolloutRunner(
        router=backend, metrics=FixedMetrics(dict(HEALTHY)), store=backend,
        clock=lambda: true_time() + wall_offset, monotonic=lambda: true_time() + mono_offset,
    )  # fmt: skip
    runner.set_rollouts([SKEW_ROLLOUT])
    return runner


@pytest.mark.parametrize("skew", [600.0, -600.0])
def test_a_replica_with_a_skewed_wall_clock_takes_over_a_step_without_shortening_it(
    kube: KubeHarness, skew: float
) -> None:
    true_time = FakeClock()
    interval = SKEW_ROLLOUT.spec.schedule.interval
    a = replica(kube, true_time, wall_offset=0.0, mono_offset=50.0)
    entered = true_time()
    assert a.tick()[0].decision.state.step == 0  # the 20 s step is entered and confirmed
    for _ in range(2):  # A runs the step for 10 s, then dies
        true_time.advance(interval)
        event = a.tick()[0]
        assert event.decision.state.step == 0
        confirmed = event.decision.state.step_elapsed
    assert confirmed == 10.0 and "step_elapsed" not in stored_state(kube)  # per-tick time is not persisted
    b = replica(kube, true_time, wall_offset=skew, mono_offset=-7777.0)  # wall clock 10 minutes off
    ended, counted_by_b = None, 0.0
    for _ in range(20):
        true_time.advance(interval)
        event = b.tick()[0]
        if event.decision.state.step == 1:
            ended = true_time()
            break
        counted_by_b = event.decision.state.step_elapsed
    assert ended is not None
    # B's first tick counts nothing (no earlier tick of its own), then every interval: the step ends on the tick
    # where B's confirmed time reaches 20 s. A's 10 s were not persisted, so they are observed again.
    assert counted_by_b + interval == 20.0
    # At least the step's 20 s; at most 20 s + B's first (uncounted) interval + the 10 s A observed unpersisted.
    assert 20.0 <= ended - entered <= 20.0 + interval + confirmed
    history = stored_state(kube)["history"]
    assert [(c["step"], c["at"]) for c in history] == [(0, entered), (1, ended + skew)]  # B stamps its own wall time


def test_a_step_whose_writes_always_conflict_never_runs_without_its_routing(kube: KubeHarness) -> None:
    clock = FakeClock()
    interval = SKEW_ROLLOUT.spec.schedule.interval
    runner = replica(kube, clock, 0.0, 0.0)
    for _ in range(4):  # step 0 entered, then 15 s of it: the next tick moves to step 1
        runner.tick()
        clock.advance(interval)
    fail_next(kube, "put", 409, times=4 * 5)  # every attempt of the next 4 ticks: 5 conflicting PUTs each
    for _ in range(4):
        event = runner.tick()[0]
        clock.advance(interval)
        state = event.decision.state
        assert state.step == 1 and state.unconfirmed is not None and "Conflict" in state.unconfirmed
        assert state.step_elapsed == 0.0 and event.routing_written is False  # its time does not count
        saved = stored_state(kube)
        assert saved["step"] == 0 and [c["step"] for c in saved["history"]] == [0]  # not claimed as run
        assert routing_in_cluster(kube)[1] == (("v1", 90), ("v2", 10))  # step 0's routing still serves
    confirming = clock()
    event = runner.tick()[0]  # the write goes through: step 1's routing is in place from now on
    assert event.routing_written is True and event.decision.state.unconfirmed is None
    assert routing_in_cluster(kube)[1] == (("v1", 50), ("v2", 50))
    for _ in range(10):
        clock.advance(interval)
        if runner.tick()[0].decision.state.phase == Phase.PROMOTED:
            break
    promoted_at = next(c["at"] for c in stored_state(kube)["history"] if c["phase"] == "Promoted")
    assert 20.0 <= promoted_at - confirming <= 20.0 + interval

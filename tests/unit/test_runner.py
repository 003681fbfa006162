from __future__ import annotations

import itertools
from pathlib import Path

from controller.analysis.metrics import VersionMetrics
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command, Phase
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}


def make_runner(tmp_path: Path, clock: FakeClock, router: RecordingRouter, metrics: FixedMetrics) -> RolloutRunner:
    runner = RolloutRunner(router=router, metrics=metrics, store=FileStateStore(tmp_path), clock=clock)
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    return runner


def run_until_terminal(runner: RolloutRunner, clock: FakeClock, limit: int = 100) -> None:
    for _ in range(limit):
        runner.tick()
        if runner.all_terminal():
            return
        clock.advance(5)
    raise AssertionError("rollout did not finish")


def test_healthy_rollout_walks_every_step_in_order(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    run_until_terminal(runner, clock)
    plan = next(iter(runner.rollouts.values())).plan
    assert router.applied == [plan.steps[0].routing, plan.steps[1].routing, plan.steps[2].routing, plan.promoted]
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.phase == Phase.PROMOTED


def test_restart_resumes_exactly_where_it_was(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    metrics = FixedMetrics(dict(HEALTHY))
    first = make_runner(tmp_path, clock, router, metrics)
    for _ in range(3):  # header step entered, then 10s pass -> 10%
        first.tick()
        clock.advance(5)
    before = FileStateStore(tmp_path).load("shop")
    assert before is not None and before.step == 1
    second = make_runner(tmp_path, clock, router, metrics)  # a new process: empty memory
    second.tick()
    after = FileStateStore(tmp_path).load("shop")
    assert after is not None and after.step == 1 and after.step_started_at == before.step_started_at
    run_until_terminal(second, clock)
    steps_entered = [c.step for c in FileStateStore(tmp_path).load("shop").history]  # type: ignore[union-attr]
    assert steps_entered == [0, 1, 2, 3]


def test_routing_failure_is_retried_from_saved_state(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter(fail_next=1)
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    events = runner.tick()
    assert events[0].apply_error == "ConnectionError: router down" and router.applied == []
    clock.advance(5)
    runner.tick()
    assert len(router.applied) == 1 and router.applied[0].header_routes


def test_one_metrics_batch_per_tick_for_many_rollouts(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    metrics = FixedMetrics(dict(HEALTHY))
    runner = RolloutRunner(router=router, metrics=metrics, store=FileStateStore(tmp_path), clock=clock)
    runner.set_rollouts(
        [ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("service: shop", f"service: s{i}"))) for i in range(30)]
    )
    runner.tick()  # Pending -> first step: no metrics needed
    clock.advance(5)
    runner.tick()
    assert metrics.batches == [30]


def test_spec_change_starts_the_rollout_over(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    metrics = FixedMetrics(dict(HEALTHY))
    runner = make_runner(tmp_path, clock, router, metrics)
    for _ in range(3):
        runner.tick()
        clock.advance(5)
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("weight: 50", "weight: 60")))])
    runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.step == 0 and state.phase == Phase.HEADER_TEST
    assert any(c.reason == "spec changed: rollout starts over" for c in state.history)


def test_command_file_is_applied_once(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    store = FileStateStore(tmp_path)
    runner.tick()
    store.request("shop", CommandRequest(command=Command.ABORT))
    clock.advance(5)
    runner.tick()
    state = store.load("shop")
    assert state is not None and state.phase == Phase.ROLLED_BACK and state.reason == "aborted by user"
    assert store.pending_command("shop") is None


def test_routing_that_keeps_failing_fails_the_rollout_then_keeps_restoring_baseline(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    runner.tick()  # header step applied
    router.fail_next = 5
    for _ in range(5):
        clock.advance(5)
        runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    # Never progress on routing the data plane has not confirmed: the header step's clock stood still.
    assert state is not None and state.phase == Phase.HEADER_TEST and state.apply_failures == 5
    clock.advance(5)
    runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.phase == Phase.FAILED
    assert state.reason == (
        "routing could not be applied 5 times in a row, traffic sent to the baseline: ConnectionError: router down"
    )
    plan = next(iter(runner.rollouts.values())).plan
    assert router.applied[-1] == plan.baseline and state.apply_failures == 0


def test_finished_rollout_keeps_its_outcome_when_only_gates_change(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    run_until_terminal(runner, clock)
    writes = len(router.applied)
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("max: 2", "max: 3")))])
    clock.advance(5)
    runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.phase == Phase.PROMOTED
    assert len(router.applied) == writes  # no traffic moved


def test_new_target_after_promotion_is_a_new_rollout(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    run_until_terminal(runner, clock)
    next_release = NO_APPROVAL_YAML.replace(
        "versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]\ntarget: v2",
        "versions: [{name: v2, weight: 100}, {name: v3, weight: 0}]\ntarget: v3",
    ).replace("{header: {value: v2}", "{header: {value: v3}")
    runner.set_rollouts([ManagedRollout.from_spec(spec(next_release))])
    clock.advance(5)
    runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and (state.phase, state.step) == (Phase.HEADER_TEST, 0)
    assert any(c.reason == "new rollout: spec changed" for c in state.history)
    assert router.applied[-1].weight_of("v2") == 100 and router.applied[-1].header_routes[0].version == "v3"


def test_no_write_once_leadership_is_lost_mid_tick(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    runner.may_write = lambda: False
    events = runner.tick()
    assert events[0].apply_error == "not leader" and not events[0].routing_written
    assert router.applied == [] and FileStateStore(tmp_path).load("shop") is None


def test_one_damaged_state_fails_safe_to_baseline_and_does_not_stop_the_others(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = RolloutRunner(
        router=router, metrics=FixedMetrics(dict(HEALTHY)), store=FileStateStore(tmp_path), clock=clock
    )
    runner.set_rollouts(
        [ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("service: shop", f"service: s{i}"))) for i in range(2)]
    )
    (tmp_path / "s0.state.json").write_text("{not json")
    events = {e.rollout.name: e for e in runner.tick()}
    assert set(events) == {"s0", "s1"}
    damaged = events["s0"]
    assert damaged.damaged is not None and "s0.state.json" in damaged.damaged
    assert damaged.decision.phase == Phase.FAILED and damaged.decision.routing.weight_of("v1") == 100
    reason = damaged.decision.state.reason
    assert "state damaged" in reason and "traffic sent to the baseline" in reason
    kept = list(tmp_path.glob("s0.state.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"  # kept aside for inspection, never lost
    assert events["s1"].decision.phase == Phase.HEADER_TEST


def test_polling_faster_than_the_interval_still_ticks_at_the_interval(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = make_runner(tmp_path, clock, router, FixedMetrics(dict(HEALTHY)))
    ticked_at = []
    for _ in range(200):  # poll every 0.1 s for 20 s
        if runner.tick():
            ticked_at.append(clock.now)
        clock.advance(0.1)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(ticked_at)]
    assert gaps and all(4.8 <= gap <= 5.0 for gap in gaps), gaps

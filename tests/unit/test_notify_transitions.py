"""TickEvent.transitions: computed once per tick from the decision, driven by the real runner (fake edges only)."""

from __future__ import annotations

from pathlib import Path

from controller.analysis.metrics import VersionMetrics
from controller.deadline import Deadline
from controller.engine.phases import Command, Phase
from controller.engine.routing_model import DesiredRouting
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.state.file_store import FileStateStore
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, SPEC_YAML, FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
FAILING = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 10, {})}  # v2: 10% errors


class Rig:
    def __init__(self, tmp_path: Path, text: str = NO_APPROVAL_YAML) -> None:
        self.clock = FakeClock()
        self.router = RecordingRouter()
        self.metrics = FixedMetrics(dict(HEALTHY))
        self.store = FileStateStore(tmp_path)
        self.events: list[TickEvent] = []
        self.runner = RolloutRunner(self.router, self.metrics, self.store, clock=self.clock,
                                    observers=[self.events.append])  # fmt: skip
        self.runner.set_rollouts([ManagedRollout.from_spec(spec(text))])

    def tick(self) -> TickEvent:
        (event,) = self.runner.tick()
        self.clock.advance(5.0)
        return event

    def until(self, phase: Phase, limit: int = 40) -> None:
        for _ in range(limit):
            if self.tick().decision.phase == phase:
                return
        raise AssertionError(f"never reached {phase}")

    def kinds(self) -> list[str]:
        return [t.kind for e in self.events for t in e.transitions]


def test_a_healthy_rollout_reports_start_each_step_and_promotion_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.until(Phase.PROMOTED)
    for _ in range(3):
        rig.tick()  # a finished rollout has nothing more to say
    assert rig.kinds() == ["started", "step", "step", "promoted"]
    started, *_, promoted = [t for e in rig.events for t in e.transitions]
    assert (
        started.from_phase == Phase.PENDING and started.phase == Phase.HEADER_TEST and started.step_label == "step 1/3"
    )
    assert promoted.weights == (("v1", 0), ("v2", 100)) and promoted.step_label == ""
    assert (promoted.rollout, promoted.namespace, promoted.target) == ("shop", "prod", "v2")


def test_transitions_are_computed_once_per_tick_and_shared(tmp_path: Path) -> None:
    event = Rig(tmp_path).tick()
    assert event.transitions is event.transitions  # cached: every observer sees the same tuple


def test_a_rollback_names_the_gate_and_its_value(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.until(Phase.PROGRESSING)
    rig.metrics.by_version = dict(FAILING)
    rig.until(Phase.ROLLED_BACK)
    (rollback,) = [t for e in rig.events for t in e.transitions if t.kind == "rolled_back"]
    assert rollback.reason.startswith("gate failed: error_rate of v2 is 10.00%") and "max 2" in rollback.reason
    assert [(g.gate, g.verdict, g.value) for g in rollback.gates] == [("error_rate", "fail", 10.0)]
    assert rollback.weights == (("v1", 100), ("v2", 0)) and rollback.from_phase == Phase.PROGRESSING


def test_a_step_whose_routing_is_confirmed_later_is_reported_once(tmp_path: Path) -> None:
    """The runner re-stamps a history entry when its routing is confirmed in a later tick: not a new change."""
    rig = Rig(tmp_path)
    rig.router.fail_next = 2
    rig.tick()  # enters the header step; routing fails
    rig.tick()  # fails again
    confirmed = rig.tick()  # applied: the entry is re-stamped with this tick's time
    assert confirmed.decision.state.history[-1].at == confirmed.at
    assert confirmed.transitions == ()
    rig.until(Phase.PROMOTED)
    assert rig.kinds() == ["started", "step", "step", "promoted"]


def test_rollback_and_promotion_confirmed_late_are_reported_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.metrics.by_version = dict(FAILING)
    rig.router.fail_next = 3  # the header step and the rollback are confirmed only in the 4th tick
    events = [rig.tick() for _ in range(6)]
    restamped = events[3]
    assert restamped.apply_error is None and restamped.decision.state.history[-1].at == restamped.at
    assert rig.kinds() == ["started", "rolled_back"]

    class FailsPromotionOnce(RecordingRouter):
        failed = False

        def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
            if routing.weight_of("v2") == 100 and not self.failed:
                self.failed = True
                raise ConnectionError("router down")
            return super().apply(routing, deadline)

    rig2 = Rig(tmp_path / "2")
    rig2.router = rig2.runner.router = FailsPromotionOnce()
    rig2.until(Phase.PROMOTED)
    late = [rig2.tick() for _ in range(3)]
    assert late[0].decision.state.history[-1].at == late[0].at  # re-stamped when confirmed
    assert rig2.kinds() == ["started", "step", "step", "promoted"]


def test_approval_pause_and_resume(tmp_path: Path) -> None:
    rig = Rig(tmp_path, SPEC_YAML)
    rig.until(Phase.PAUSED)
    rig.store.request("shop", Command.PAUSE)
    rig.tick()  # refused: already waiting for approval
    rig.store.request("shop", Command.RESUME)  # the approval
    rig.tick()
    rig.store.request("shop", Command.PAUSE)
    rig.tick()
    rig.tick()
    rig.store.request("shop", Command.RESUME)
    rig.tick()
    assert rig.kinds() == ["started", "step", "approval", "step", "paused", "resumed"]


def test_a_hold_for_missing_data_is_reported_when_it_starts(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tick()
    rig.metrics.error = "prometheus down"
    holds = [t for _ in range(3) for t in rig.tick().transitions]
    assert [t.kind for t in holds] == ["holding"]
    assert "holding, no data" in holds[0].reason and holds[0].phase == Phase.HEADER_TEST


def test_an_abandoned_tick_reports_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.runner.may_write = lambda: False  # no longer the leader: nothing is written, so nothing happened
    event = rig.tick()
    assert event.decision.state.history and event.transitions == ()
    rig.runner.may_write = None
    assert [t.kind for t in rig.tick().transitions] == ["started"]


def test_a_changed_spec_restarts_and_starts_again_in_one_tick(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.until(Phase.PROGRESSING)
    rig.runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("max: 2", "max: 3")))])
    event = rig.tick()
    assert [t.kind for t in event.transitions] == ["restarted", "started"]

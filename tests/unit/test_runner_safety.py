"""The runner's safety rules: confirmed routing, skew-free step time, damaged or unwritable state,
drift after a rollout, one controller per state directory, tick deadlines, bounded history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.phases import MAX_HISTORY, Command, Phase
from controller.engine.routing_model import DesiredRouting
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.state.file_store import CommandPending, FileStateStore, StateDirLocked
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
ROLLOUT = ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))  # header 10 s, 10 % 10 s, 50 % 10 s; tick 5 s


def runner_for(tmp_path: Path, router: object, clock: FakeClock, monotonic: FakeClock | None = None) -> RolloutRunner:
    runner = RolloutRunner(router=router, metrics=FixedMetrics(dict(HEALTHY)), store=FileStateStore(tmp_path),  # type: ignore[arg-type]
                           clock=clock, monotonic=monotonic)  # fmt: skip
    runner.set_rollouts([ROLLOUT])
    return runner


@dataclass
class UnconfirmingRouter:
    """A data plane that never confirms anything (like an Envoy whose admin never reports the version)."""

    calls: int = 0

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        self.calls += 1
        raise TimeoutError("Envoy did not confirm route version 7 within 5.0s")


@dataclass
class DriftingDataPlane(RecordingRouter):
    """Confirms writes, but someone may replace what it serves behind Ramp's back."""

    serving: DesiredRouting | None = None
    invalidated: list[tuple[str, str]] = field(default_factory=list)
    believed: DesiredRouting | None = None

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        if self.believed == routing:
            return False
        self.believed, self.serving = routing, routing
        self.applied.append(routing)
        return True

    def observed(self, namespace: str, service: str, deadline: Deadline | None = None) -> DesiredRouting | None:
        return self.serving

    def invalidate(self, namespace: str, service: str) -> None:
        self.invalidated.append((namespace, service))
        self.believed = None


def test_unconfirmed_routing_never_progresses_and_fails_to_the_baseline(tmp_path: Path) -> None:
    clock = FakeClock()
    runner = runner_for(tmp_path, UnconfirmingRouter(), clock)
    phases = []
    for _ in range(12):
        event = runner.tick()[0]
        phases.append((event.decision.phase, event.decision.state.step))
        clock.advance(5)
    # Entered the header step on paper, never beyond: no time counted without confirmation...
    assert all(p in {(Phase.HEADER_TEST, 0), (Phase.FAILED, 0)} for p in phases), phases
    state = FileStateStore(tmp_path).load("shop")
    # ... then failed, routed to the baseline, with the reason; never Promoted.
    assert state is not None and state.phase == Phase.FAILED and "traffic sent to the baseline" in state.reason
    assert "did not confirm" in state.reason and state.unconfirmed is not None and not state.settled
    assert not runner.all_terminal()  # a demo or test waiting for the end is not told it is over


def test_step_time_counts_only_confirmed_time_from_the_monotonic_clock(tmp_path: Path) -> None:
    wall, mono = FakeClock(1_000.0), FakeClock(50.0)
    router = RecordingRouter()
    runner = runner_for(tmp_path, router, wall, mono)
    runner.tick()  # header step entered and confirmed
    for _ in range(2):
        wall.advance(600)  # the wall clock jumps 10 minutes per tick ...
        mono.advance(5)  # ... while 5 s really pass
        runner.tick()
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and (state.phase, state.step) == (Phase.PROGRESSING, 1)  # after 10 s, not before
    assert len(router.applied) == 2


def test_a_successor_with_a_skewed_wall_clock_neither_shortens_nor_stretches_the_step(tmp_path: Path) -> None:
    mono = FakeClock(0.0)
    first = runner_for(tmp_path, RecordingRouter(), FakeClock(1_000.0), mono)
    first.tick()
    mono.advance(5)
    first.tick()  # 5 s of the header step's 10 s observed and saved
    ahead = FakeClock(1_000.0 + 600)  # the new process' wall clock is 10 minutes ahead
    second = runner_for(tmp_path, RecordingRouter(), ahead, mono)
    mono.advance(5)
    ahead.advance(5)
    event = second.tick()[0]  # its first tick has no previous tick of its own: counts nothing
    assert (event.decision.phase, event.decision.state.step) == (Phase.HEADER_TEST, 0)
    mono.advance(5)
    ahead.advance(5)
    event = second.tick()[0]
    assert event.decision.state.step == 1  # 10 s observed in all: the step ends, one interval later at most


def test_damaged_states_of_every_kind_fail_safe_and_are_kept_aside(tmp_path: Path) -> None:
    bad_documents = {
        "empty": "",
        "truncated": '{"rollout": "shop", "spec_digest": "x", "pha',
        "binary": "\x00\x01\x02",
        "wrong type": '{"rollout": "shop", "spec_digest": "x", "step": "two"}',
        "step past the plan": None,  # filled below from a real state
        "NaN time": None,
    }
    clock = FakeClock()
    good = runner_for(tmp_path / "good", RecordingRouter(), clock)
    good.tick()
    sound = json.loads((tmp_path / "good" / "shop.state.json").read_text())
    bad_documents["step past the plan"] = json.dumps({**sound, "step": 7})
    bad_documents["NaN time"] = json.dumps({**sound, "step_elapsed": float("nan")})
    for label, document in bad_documents.items():
        directory = tmp_path / label.replace(" ", "-")
        directory.mkdir()
        (directory / "shop.state.json").write_text(document or "")
        router = RecordingRouter()
        event = runner_for(directory, router, clock).tick()[0]
        assert event.damaged is not None, label
        assert event.decision.phase == Phase.FAILED and router.applied == [ROLLOUT.plan.baseline], label
        assert list(directory.glob("shop.state.json.damaged-*")), label
        state = FileStateStore(directory).load("shop")
        assert state is not None and state.phase == Phase.FAILED and "state damaged" in state.reason, label


def test_unusable_state_directory_is_a_clear_error_and_only_ever_the_baseline(tmp_path: Path) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")  # unreadable and unwritable, even for root
    clock, router = FakeClock(), RecordingRouter()
    runner = runner_for(blocked, router, clock)
    for _ in range(3):
        events = runner.tick()
        clock.advance(5)
        assert len(events) == 1 and events[0].store_error is not None and "state not saved" in events[0].store_error
        assert events[0].damaged is not None and "Not a directory" in events[0].damaged
    assert router.applied == [ROLLOUT.plan.baseline]  # no crash, no progress: only the fail-safe baseline


def test_state_that_cannot_be_saved_holds_instead_of_applying(tmp_path: Path) -> None:
    class BrokenStore(FileStateStore):
        def save(self, state: object) -> None:  # type: ignore[override]
            raise PermissionError(13, "Permission denied", str(self.directory))

    clock, router = FakeClock(), RecordingRouter()
    runner = RolloutRunner(router=router, metrics=FixedMetrics(dict(HEALTHY)), store=BrokenStore(tmp_path),
                           clock=clock)  # fmt: skip
    runner.set_rollouts([ROLLOUT])
    event = runner.tick()[0]
    assert event.store_error is not None and "Permission denied" in event.store_error
    assert router.applied == []  # never apply a routing that is not recorded


def test_drift_after_promotion_is_reported_and_repaired(tmp_path: Path) -> None:
    clock, router = FakeClock(), DriftingDataPlane()
    runner = runner_for(tmp_path, router, clock)
    for _ in range(20):
        runner.tick()
        clock.advance(5)
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.phase == Phase.PROMOTED
    router.serving = ROLLOUT.plan.steps[2].routing  # someone puts 50/50 back behind Ramp's back
    event = runner.tick()[0]
    assert event.drift is not None and "expected v1=0% v2=100%" in event.drift
    assert router.invalidated == [("prod", "shop")] and router.serving == ROLLOUT.plan.promoted
    clock.advance(5)
    assert runner.tick()[0].drift is None  # repaired: nothing more to report


def test_a_manual_override_is_not_drift(tmp_path: Path) -> None:
    clock, router = FakeClock(), DriftingDataPlane()
    runner = runner_for(tmp_path, router, clock)
    store = FileStateStore(tmp_path)
    for _ in range(20):
        runner.tick()
        clock.advance(5)
    store.request("shop", CommandRequest(id="o1", command=Command.SET_WEIGHTS, weights={"v1": 100, "v2": 0}))
    runner.tick()
    clock.advance(5)
    event = runner.tick()[0]
    assert event.drift is None and router.serving is not None and router.serving.weight_of("v1") == 100


def test_a_second_command_is_refused_while_the_first_is_pending(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.request("shop", CommandRequest(id="a", command=Command.ABORT))
    with pytest.raises(CommandPending, match="abort"):
        store.request("shop", CommandRequest(id="b", command=Command.RESUME))
    pending = store.pending_command("shop")
    assert pending is not None and pending.id == "a"


def test_one_controller_per_state_directory(tmp_path: Path) -> None:
    first, second = FileStateStore(tmp_path), FileStateStore(tmp_path)
    first.lock()
    with pytest.raises(StateDirLocked, match="in use by another ramp controller"):
        second.lock()
    first.unlock()
    second.lock()


def test_a_tick_past_its_deadline_writes_nothing(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = runner_for(tmp_path, router, clock)
    expired = Deadline(0.0)
    events = runner.tick(expired)
    assert events[0].apply_error == "tick deadline passed" and router.applied == []
    assert FileStateStore(tmp_path).load("shop") is None


def test_history_is_bounded_over_many_rollouts(tmp_path: Path) -> None:
    clock = FakeClock()
    store = FileStateStore(tmp_path)
    for i in range(300):
        text = NO_APPROVAL_YAML.replace("versions: [{name: v1, weight: 100}",
                                        f"versions: [{{name: v1, weight: {100 + i}}}")  # a new rollout each time
        runner = RolloutRunner(router=RecordingRouter(), metrics=FixedMetrics(dict(HEALTHY)), store=store, clock=clock)
        runner.set_rollouts([ManagedRollout.from_spec(spec(text))])
        runner.tick()
        store.request("shop", CommandRequest(command=Command.PROMOTE))
        clock.advance(5)
        runner.tick()
        clock.advance(5)
    state = store.load("shop")
    assert state is not None and state.phase == Phase.PROMOTED
    assert len(state.history) == MAX_HISTORY and state.dropped_history > 500
    assert (tmp_path / "shop.state.json").stat().st_size < 32 * 1024


def test_history_says_when_a_step_was_really_entered(tmp_path: Path) -> None:
    clock, router = FakeClock(), RecordingRouter()
    runner = runner_for(tmp_path, router, clock)
    for _ in range(2):  # header step entered (t=1000), observed 5 s
        runner.tick()
        clock.advance(5)
    router.fail_next = 2  # the 10 % step's first two writes fail (t=1010, t=1015)
    for _ in range(3):
        runner.tick()
        clock.advance(5)
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and (state.step, state.unconfirmed) == (1, None)
    assert state.history[-1].step == 1 and state.history[-1].at == 1020.0 == state.step_started_at


def test_a_state_saved_before_its_routing_is_applied_says_it_is_not_yet_confirmed(tmp_path: Path) -> None:
    seen_during_apply: list[str | None] = []

    @dataclass
    class Inspecting(RecordingRouter):
        def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
            saved = FileStateStore(tmp_path).load("shop")
            seen_during_apply.append(None if saved is None else saved.unconfirmed)
            return super().apply(routing, deadline)

    clock = FakeClock()
    runner = runner_for(tmp_path, Inspecting(), clock)
    runner.tick()
    assert seen_during_apply == ["routing saved, not yet confirmed by the data plane"]
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.unconfirmed is None  # confirmed, then saved again


class Killed(BaseException):
    """The process dies (SIGKILL): nothing after this point runs, not even a `finally` that saves."""


def test_killed_between_applying_a_step_and_saving_its_confirmation_the_restart_confirms_it_once(
    tmp_path: Path,
) -> None:
    @dataclass
    class DyingAfterTheTenPercentWrite(RecordingRouter):
        def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
            written = super().apply(routing, deadline)
            if routing.weight_of("v2") == 10:
                raise Killed  # the data plane serves 10 %, the state still says "not yet confirmed"
            return written

    clock, dying = FakeClock(), DyingAfterTheTenPercentWrite()
    first = runner_for(tmp_path, dying, clock)
    for _ in range(2):  # header step entered (t=1000), observed 5 s
        first.tick()
        clock.advance(5)
    with pytest.raises(Killed):
        first.tick()  # t=1010: the 10 % step is decided, saved unconfirmed, applied; then the process dies
    saved = FileStateStore(tmp_path).load("shop")
    assert saved is not None and saved.step == 1
    assert saved.unconfirmed == "routing saved, not yet confirmed by the data plane"
    entered = saved.history[-1]
    clock.advance(3)  # the restart, 3 s later: same data plane, which already serves the 10 % step
    restarted = RecordingRouter(applied=[dying.applied[-1]])
    second = runner_for(tmp_path, restarted, clock)
    second.tick()  # t=1013
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and (state.step, state.unconfirmed) == (1, None)
    assert restarted.applied == [dying.applied[-1]], "nothing rewritten: the data plane already served it"
    # Not re-entered (one history entry for the step), but its clock starts at the confirmation, the first moment
    # this controller knows the step is served: a step is never shortened by a crash.
    assert [(c.phase, c.step) for c in state.history] == [(Phase.HEADER_TEST, 0), (Phase.PROGRESSING, 1)]
    assert state.history[-1].reason == entered.reason and state.history[-1].at == 1013.0 == state.step_started_at
    clock.advance(5)
    second.tick()  # t=1018: 5 s of the 10 s step
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.step == 1
    clock.advance(5)
    second.tick()  # t=1023: 10 s confirmed
    state = FileStateStore(tmp_path).load("shop")
    assert state is not None and state.step == 2


def test_a_fifo_in_place_of_the_state_or_command_file_never_blocks_a_tick(tmp_path: Path) -> None:
    import os as _os
    import threading

    clock, router = FakeClock(), RecordingRouter()
    runner = runner_for(tmp_path, router, clock)
    runner.tick()
    _os.replace(tmp_path / "shop.state.json", tmp_path / "kept.json")
    _os.mkfifo(tmp_path / "shop.state.json")
    _os.mkfifo(tmp_path / "shop.command")
    clock.advance(5)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(runner.tick()), daemon=True)
    worker.start()
    worker.join(10)
    assert done, "the tick blocked on a FIFO"
    (event,) = done[0]  # type: ignore[misc]
    assert event.damaged is not None and "not a regular file" in event.damaged
    assert event.decision.phase == Phase.FAILED and router.applied[-1] == ROLLOUT.plan.baseline
    assert event.decision.state.last_command is not None and not event.decision.state.last_command.applied

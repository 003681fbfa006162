"""The RampRollout bridge's rules, with fakes for our own write client and command channel (the HTTP side is in
tests/k8s/test_rollout_writes.py and end to end in tests/k8s/test_rollout_resources_e2e.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.decide import Decision, routing_for
from controller.engine.phases import CommandOutcome, Phase, RolloutState
from controller.engine.ports import TickEvent
from controller.k8s.events import ObjectRef
from controller.k8s.rollout_bridge import RolloutResourceBridge
from controller.spec_directory import SpecDirectory
from controller.spec_sources import CombinedSpecSource
from controller.state.file_store import CommandPending
from tests.unit.test_spec_sources import FakeCache, resource


@dataclass
class FakeWrites:
    statuses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    fail_status: bool = False

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], deadline: Deadline) -> None:
        assert deadline.remaining() <= 5.0, "each call gets at most its share of the tick's deadline"
        if self.fail_status:
            raise ConnectionError("apiserver down")
        self.statuses.append((namespace, name, dict(status)))

    def remove_command(self, namespace: str, name: str, raw_value: str, deadline: Deadline) -> bool:
        self.removed.append((namespace, name, raw_value))
        return True


@dataclass
class FakeChannel:
    requests: list[tuple[str, str, CommandRequest]] = field(default_factory=list)
    pending: bool = False

    def request_command(
        self, namespace: str, service: str, command: CommandRequest, router: str | None = None
    ) -> None:
        if self.pending:
            raise CommandPending("abort (id x) is still waiting")
        self.requests.append((namespace, service, command))

    decided: str | None = None  # the id of the last command the engine decided

    def load(self, rollout: str) -> RolloutState | None:
        if self.decided is None:
            return None
        outcome = CommandOutcome(id=self.decided, command="pause", applied=True, reason="paused by user", at=1.0)
        return RolloutState(rollout=rollout, spec_digest="d", last_command=outcome)


@dataclass
class FakeEvents:
    recorded: list[tuple[str, str, str, str]] = field(default_factory=list)

    def record(self, namespace: str, involved: ObjectRef, reason: str, message: str, type: str = "Normal") -> bool:
        self.recorded.append((involved.kind, involved.name, reason, type))
        return True


def bridge(tmp_path: Path) -> tuple[RolloutResourceBridge, FakeCache, FakeWrites, FakeChannel, FakeEvents]:
    cache = FakeCache()
    source = CombinedSpecSource(SpecDirectory(tmp_path), cache)
    writes, channel, events = FakeWrites(), FakeChannel(), FakeEvents()
    b = RolloutResourceBridge(source, writes, channel, events, clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]
    return b, cache, writes, channel, events


def with_command(obj: dict[str, Any], value: str) -> dict[str, Any]:
    obj["metadata"]["annotations"]["ramp.dev/command"] = value
    return obj


def tick_event(source: CombinedSpecSource, phase: Phase = Phase.HEADER_TEST) -> TickEvent:
    (rollout,) = source.rollouts
    state = RolloutState(rollout=rollout.name, spec_digest=rollout.digest, phase=phase, step=0, reason="r")
    decision = Decision(state, routing_for(rollout.plan, state), "r")
    return TickEvent(rollout, 1.0, Phase.PENDING, decision, None, None, False)


def test_a_command_is_forwarded_with_an_id_and_removed_only_after(tmp_path: Path) -> None:
    b, cache, writes, channel, _ = bridge(tmp_path)
    cache.put(with_command(resource(), "pause"))
    b.source.refresh()
    b.before_tick(Deadline(10))
    ((namespace, service, request),) = channel.requests
    assert (namespace, service, request.command.value, request.id) == ("shop", "cart", "pause", "rr-77")
    assert writes.removed == [("shop", "cart", "pause")]


def test_a_command_waits_while_another_is_pending_and_is_never_dropped(tmp_path: Path) -> None:
    b, cache, writes, channel, _ = bridge(tmp_path)
    cache.put(with_command(resource(), '{"command": "resume", "id": "cli-1"}'))
    b.source.refresh()
    channel.pending = True
    b.before_tick(Deadline(10))
    assert channel.requests == [] and writes.removed == [], "left on the resource for a later tick"
    channel.pending = False
    b.before_tick(Deadline(10))
    assert [r.id for _, _, r in channel.requests] == ["cli-1"], "the CLI's id is kept, so it finds its outcome"
    assert len(writes.removed) == 1


def test_a_command_on_an_invalid_resource_is_refused_at_once_with_the_reason(tmp_path: Path) -> None:
    b, cache, writes, channel, events = bridge(tmp_path)
    cache.put(with_command(resource(target="v9"), '{"command": "promote", "id": "cli-2"}'))
    b.source.refresh()
    b.before_tick(Deadline(10))
    assert channel.requests == [] and writes.removed == [("shop", "cart", '{"command": "promote", "id": "cli-2"}')]
    last = writes.statuses[-1][2]
    assert last["phase"] == "Invalid" and last["lastCommand"]["id"] == "cli-2"
    assert last["lastCommand"]["applied"] is False and "InvalidSpec" in last["lastCommand"]["reason"]
    assert ("RampRollout", "cart", "CommandRefused", "Warning") in events.recorded


def test_an_unreadable_command_is_refused_and_shown_after_the_engines_last_outcome(tmp_path: Path) -> None:
    b, cache, writes, channel, events = bridge(tmp_path)
    cache.put(with_command(resource(), "explode"))
    b.source.refresh()
    b.before_tick(Deadline(10))
    assert channel.requests == [] and ("RampRollout", "cart", "CommandRefused", "Warning") in events.recorded
    b.after_tick([tick_event(b.source)], Deadline(10))
    status = writes.statuses[-1][2]
    assert status["phase"] == "HeaderTest" and "unknown command 'explode'" in status["lastCommand"]["reason"]


def test_status_is_written_only_when_it_changes_and_a_failed_write_is_retried(tmp_path: Path) -> None:
    b, cache, writes, _, _ = bridge(tmp_path)
    cache.put(resource())
    b.source.refresh()
    writes.fail_status = True
    b.after_tick([tick_event(b.source)], Deadline(10))  # logged, never raised into the tick
    assert writes.statuses == []
    writes.fail_status = False
    b.after_tick([tick_event(b.source)], Deadline(10))
    b.after_tick([tick_event(b.source)], Deadline(10))
    assert len(writes.statuses) == 1, "the same status is not written twice"
    assert writes.statuses[0][2]["observedGeneration"] == 3
    b.after_tick([tick_event(b.source, Phase.PROGRESSING)], Deadline(10))
    assert len(writes.statuses) == 2


def test_a_refused_resource_gets_one_event_per_distinct_refusal(tmp_path: Path) -> None:
    b, cache, writes, _, events = bridge(tmp_path)
    cache.put(resource(target="v9"))
    b.source.refresh()
    for _ in range(3):
        b.after_tick([], Deadline(10))
    assert [e for e in events.recorded if e[2] == "InvalidSpec"] == [("RampRollout", "cart", "InvalidSpec", "Warning")]
    assert len(writes.statuses) == 1 and writes.statuses[0][2]["phase"] == "Invalid"


def test_nothing_is_done_once_the_deadline_has_passed(tmp_path: Path) -> None:
    b, cache, writes, channel, _ = bridge(tmp_path)
    cache.put(with_command(resource(), "pause"))
    b.source.refresh()
    spent = Deadline(0.0)
    b.before_tick(spent)
    b.after_tick([tick_event(b.source)], spent)
    assert channel.requests == [] and writes.statuses == [] and writes.removed == []


def test_a_command_forwarded_before_whose_removal_failed_is_never_applied_twice(tmp_path: Path) -> None:
    b, cache, writes, channel, _ = bridge(tmp_path)
    cache.put(with_command(resource(), "pause"))  # resourceVersion 77: its id is rr-77
    b.source.refresh()
    channel.decided = "rr-77"  # the engine already recorded its outcome
    b.before_tick(Deadline(10))
    assert channel.requests == [] and writes.removed == [("shop", "cart", "pause")]

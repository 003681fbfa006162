"""The VirtualService as state store: restart round-trip, unwritten progress, commands, status reads."""

from __future__ import annotations

import json

import pytest

from controller.engine.commands import CommandError
from controller.engine.phases import Command, GateSnapshot, Phase, PhaseChange, RolloutState
from controller.k8s.client import Transient
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from controller.state.file_store import StateStoreError
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, G, V, count, custom_objects, fail_next, kube_api, stored, three_versions

ROUTINGS = build_plan(three_versions()).all_routings()


def fresh(kube: KubeHarness) -> IstioBackend:
    """A new controller process: no memory, its own client."""
    b = IstioBackend(kube_api(kube))
    b.track({"reviews": ("shop", "reviews")})
    return b


def command_of(b: IstioBackend) -> Command | None:
    request = b.pending_command("reviews")
    return None if request is None else request.command


def rich_state() -> RolloutState:
    return RolloutState(
        rollout="reviews", spec_digest="abc123", phase=Phase.PAUSED, step=2, step_started_at=1234.5,
        missing_data_since=1200.0, paused_by_user=True, reason="paused by user",
        history=[PhaseChange(phase=Phase.HEADER_TEST, step=0, at=1000.0, reason="step 1/5"),
                 PhaseChange(phase=Phase.PAUSED, step=2, at=1234.5, reason="paused by user")],
        last_gates=[GateSnapshot(gate="error_rate", verdict="pass", value=0.1)], ticks=42,
    )  # fmt: skip


def set_annotation(kube: KubeHarness, key: str, value: str) -> None:
    api = custom_objects(kube)
    obj = api.get_namespaced_custom_object(G, V, "shop", VS, "reviews")
    obj["metadata"].setdefault("annotations", {})[key] = value
    api.replace_namespaced_custom_object(G, V, "shop", VS, "reviews", obj)


def annotations(kube: KubeHarness) -> dict[str, str]:
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None
    return dict(vs["metadata"].get("annotations", {}))


def test_a_restarted_controller_loads_the_durable_state(kube: KubeHarness) -> None:
    first = fresh(kube)
    first.load("reviews")
    state = rich_state()
    first.save(state)
    first.apply(ROUTINGS[3])
    loaded = fresh(kube).load("reviews")
    assert loaded is not None
    assert loaded.durable() == state.durable() and loaded.reason == state.reason
    assert (loaded.ticks, loaded.last_gates) == (0, [])  # per-tick details are not persisted


def test_progress_of_a_tick_whose_write_failed_is_kept_in_memory_only(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.load("reviews")
    b.save(rich_state())
    b.apply(ROUTINGS[3])
    loaded = b.load("reviews")
    assert loaded is not None
    moved = loaded.model_copy(update={"step": 3, "phase": Phase.PROGRESSING})
    b.save(moved)
    fail_next(kube, "put", 500, times=5)
    with pytest.raises(Transient, match="gave up after 5 attempts"):
        b.apply(ROUTINGS[4])
    failed = moved.model_copy(update={"apply_failures": 1, "last_apply_error": "Transient: ..."})
    b.save(failed)  # what the runner does after a failed apply
    assert b.load("reviews") == failed  # same process, nobody wrote: the failure count survives
    restarted = fresh(kube).load("reviews")  # the cluster still holds the last written state (and its routing)
    assert restarted is not None and restarted.step == 2 and restarted.apply_failures == 0
    set_annotation(kube, "unrelated", "x")  # someone else wrote: memory is stale, the annotation wins
    reloaded = b.load("reviews")
    assert reloaded is not None and reloaded.step == 2


def test_a_command_is_read_once_and_cleared_in_the_next_write(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.load("reviews")
    b.save(rich_state())
    b.apply(ROUTINGS[3])
    fresh(kube).request_command("shop", "reviews", Command.RESUME)
    assert json.loads(annotations(kube)["ramp.dev/command"]) == {"command": "resume"}
    state = b.load("reviews")
    assert state is not None and command_of(b) == Command.RESUME
    resumed = state.model_copy(update={"phase": Phase.PROGRESSING, "paused_by_user": False})
    b.save(resumed)
    b.clear_command("reviews")
    puts = count(kube, "put", VS)
    assert b.apply(ROUTINGS[3]) is True
    assert count(kube, "put", VS) == puts + 1  # state and command removal in one write
    notes = annotations(kube)
    assert "ramp.dev/command" not in notes and json.loads(notes["ramp.dev/state"])["phase"] == "Progressing"
    b.load("reviews")
    assert b.pending_command("reviews") is None


def test_a_command_arriving_during_the_tick_is_kept_for_the_next(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.load("reviews")
    b.save(rich_state())
    b.apply(ROUTINGS[3])
    set_annotation(kube, "ramp.dev/command", "pause")
    state = b.load("reviews")
    assert state is not None and command_of(b) == Command.PAUSE
    b.save(state)
    b.clear_command("reviews")
    set_annotation(kube, "ramp.dev/command", "abort")  # a second request, after our read
    b.apply(ROUTINGS[3])  # 409 -> re-read: 'pause' was consumed, 'abort' is new and stays
    assert annotations(kube)["ramp.dev/command"] == "abort"
    b.load("reviews")
    assert command_of(b) == Command.ABORT


def test_garbage_commands_are_ignored_and_cleared(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.load("reviews")
    b.save(rich_state())
    b.apply(ROUTINGS[3])
    set_annotation(kube, "ramp.dev/command", "explode")
    state = b.load("reviews")
    with pytest.raises(CommandError, match="unknown command 'explode'"):
        b.pending_command("reviews")  # refused (the runner records why), never acted on
    assert state is not None
    b.save(state)
    assert b.apply(ROUTINGS[3]) is True  # nothing else changed: the write only drops the garbage
    assert "ramp.dev/command" not in annotations(kube)
    assert b.apply(ROUTINGS[3]) is False


def test_unreadable_state_is_a_clear_error(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.apply(ROUTINGS[0])
    set_annotation(kube, "ramp.dev/state", '{"rollout": "reviews", "phase": "Sideways"}')
    with pytest.raises(StateStoreError, match=r"VirtualService shop/reviews: annotation ramp.dev/state is unreadable"):
        b.load("reviews")
    status = b.read_routing("shop", "reviews")
    assert status.state is None and status.state_error is not None and "unreadable" in status.state_error


def test_read_routing_reports_weights_headers_state_and_foreign_routes(kube: KubeHarness) -> None:
    b = fresh(kube)
    assert b.read_routing("shop", "reviews").found is False
    b.load("reviews")
    b.save(rich_state())
    b.apply(ROUTINGS[1])
    api = custom_objects(kube)
    obj = api.get_namespaced_custom_object(G, V, "shop", VS, "reviews")
    obj["spec"]["http"].insert(1, {"name": "x-debug", "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                                   "route": [{"destination": {"host": "reviews-debug"}}]})  # fmt: skip
    replaced = api.replace_namespaced_custom_object(G, V, "shop", VS, "reviews", obj)
    fail_next(kube, "get", 503)  # retried transparently
    seen = b.read_routing("shop", "reviews")
    assert seen.found and seen.weights == (("v1", 50), ("v2", 50))
    assert seen.header_routes == ROUTINGS[1].header_routes
    assert seen.foreign_routes == ("x-debug",)
    assert seen.state is not None and seen.state.durable() == rich_state().durable()
    assert seen.command is None and seen.resource_version == replaced["metadata"]["resourceVersion"]

"""The real RolloutRunner over IstioBackend when the cluster hands back hostile data or the writes misbehave.

A malformed VirtualService or a damaged state affects only its own rollout (the others keep progressing);
a damaged state fails safe to the baseline and is kept aside in the same write; a write whose stored object
does not hold the routing is not confirmed; drift is read back and repaired; after a 409 nothing is re-read
or re-merged once leadership is gone or the deadline leaves no time; one pending command at a time.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.deadline import Deadline
from controller.engine.phases import Command, Phase, RolloutState
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.client import KubeApi, KubeDeadlineExceeded, NotLeader, RetryPolicy
from controller.routing.istio import IstioBackend
from controller.state.file_store import CommandPending
from tests.fakes.kube_proxy import Faults, running_proxy
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, G, V, count, custom_objects, fail_next, kube_api, stored
from tests.k8s.test_istio_hostile import answer_next
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}


def rollout(service: str) -> ManagedRollout:
    return ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("service: shop", f"service: {service}")))


def make_runner(api: KubeApi, clock: FakeClock, *services: str) -> tuple[RolloutRunner, IstioBackend]:
    backend = IstioBackend(api)
    runner = RolloutRunner(router=backend, metrics=FixedMetrics(dict(HEALTHY)), store=backend, clock=clock)
    runner.set_rollouts([rollout(s) for s in services])
    return runner, backend


def vs_body(service: str, http: Any, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": service, "namespace": "prod"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": f"{G}/{V}", "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": [service], "http": http}}  # fmt: skip


def state_of(kube: KubeHarness, service: str) -> dict[str, Any]:
    vs = stored(kube, VS, "prod", service)
    assert vs is not None
    return dict(json.loads(vs["metadata"]["annotations"]["ramp.dev/state"]))


def weights(kube: KubeHarness, service: str) -> list[tuple[str, int]]:
    vs = stored(kube, VS, "prod", service)
    assert vs is not None
    return [(d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][-1]["route"]]


def test_hostile_objects_affect_only_their_own_rollout_and_a_damaged_state_fails_safe(
    kube: KubeHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    api = custom_objects(kube)
    malformed = api.create_namespaced_custom_object(G, V, "prod", VS, vs_body("broken", {"ramp-primary": {}}))
    damaged_raw = '{"rollout": "damaged", "phase": "Sideways", "step": 99}'
    primary = {"name": "ramp-primary", "route": [{"destination": {"host": "damaged", "subset": "v2"}, "weight": 100}]}
    notes = {"ramp.dev/state": damaged_raw}
    api.create_namespaced_custom_object(G, V, "prod", VS, vs_body("damaged", [primary], notes))
    odd = vs_body("odd", [primary])
    odd["metadata"]["annotations"] = ["ramp.dev/state"]  # not a mapping: nothing can be read from it
    odd_before = api.create_namespaced_custom_object(G, V, "prod", VS, odd)
    clock = FakeClock()
    runner, _ = make_runner(kube_api(kube), clock, "good", "broken", "damaged", "odd")
    real = kube.objects(G, V, VS)
    answer_next(kube, "list", {"kind": "List", "items": [*real, "junk", {"metadata": ["x"]}]})  # first tick only
    by_tick: list[dict[str, Any]] = []
    for _ in range(12):
        by_tick.append({e.rollout.name: e for e in runner.tick()})
        clock.advance(5)
    assert state_of(kube, "good")["phase"] == "Promoted" and weights(kube, "good") == [("v2", 100)]
    for events in by_tick:  # the malformed one: a clear error every tick, nothing written over it
        error = events["broken"].apply_error
        assert error is not None and "VirtualService prod/broken: spec.http must be a list, got a mapping" in error
        assert events["broken"].routing_written is False
    assert stored(kube, VS, "prod", "broken") == malformed
    assert all("odd" not in events for events in by_tick)  # unreadable: it waits, logged with the field
    assert "VirtualService prod/odd: metadata.annotations must be a mapping, got a list" in capsys.readouterr().out
    assert stored(kube, VS, "prod", "odd") == odd_before
    first = by_tick[0]["damaged"]  # the damaged one: fails safe to the baseline, the damage kept aside
    assert first.damaged is not None and "is unreadable" in first.damaged
    assert first.decision.phase == Phase.FAILED and first.routing_written is True and first.apply_error is None
    assert weights(kube, "damaged") == [("v1", 100)]
    saved = state_of(kube, "damaged")
    assert saved["phase"] == "Failed" and "kept at annotation ramp.dev/state-damaged" in saved["reason"]
    vs = stored(kube, VS, "prod", "damaged")
    assert vs is not None and vs["metadata"]["annotations"]["ramp.dev/state-damaged"] == damaged_raw
    assert all(t["damaged"].damaged is None and t["damaged"].decision.phase == Phase.FAILED for t in by_tick[1:])


def test_a_huge_damaged_state_is_kept_truncated_and_the_object_stays_under_the_annotation_limit(
    kube: KubeHarness,
) -> None:
    raw = json.dumps({"rollout": "damaged", "junk": "é" * 120_000})
    primary = {"name": "ramp-primary", "route": [{"destination": {"host": "damaged", "subset": "v1"}, "weight": 100}]}
    custom_objects(kube).create_namespaced_custom_object(
        G, V, "prod", VS, vs_body("damaged", [primary], {"ramp.dev/state": raw})
    )
    runner, _ = make_runner(kube_api(kube), FakeClock(), "damaged")
    event = runner.tick()[0]
    assert event.decision.phase == Phase.FAILED and event.damaged is not None
    notes = (stored(kube, VS, "prod", "damaged") or {})["metadata"]["annotations"]
    kept = notes["ramp.dev/state-damaged"]
    assert len(kept.encode()) <= 16 * 1024 and raw.startswith(kept)
    assert sum(len(k) + len(v.encode()) for k, v in notes.items()) < 64 * 1024


def test_a_stored_object_that_does_not_hold_the_routing_is_not_confirmed(kube: KubeHarness) -> None:
    clock = FakeClock()
    runner, _ = make_runner(kube_api(kube), clock, "shop")
    runner.tick()  # created at the header step
    clock.advance(10)
    current = stored(kube, VS, "prod", "shop")
    assert current is not None
    mutated = copy.deepcopy(current)  # what a mutating webhook could hand back: the write, then its edit
    mutated["spec"]["http"][-1]["route"] = [{"destination": {"host": "shop", "subset": "v1"}, "weight": 100}]
    fail_next(kube, "put", mutated)
    event = runner.tick()[0]
    assert event.decision.state.step == 1 and event.routing_written is False
    held = "the stored object routes v1=100% [x-version:v2->v2], not v1=90% v2=10%"
    assert event.apply_error is not None and held in event.apply_error
    assert event.decision.state.unconfirmed is not None and event.decision.state.step_elapsed == 0.0
    clock.advance(5)
    again = runner.tick()[0]  # the next tick writes again and confirms it
    assert again.apply_error is None and again.routing_written is True
    assert weights(kube, "shop") == [("v1", 90), ("v2", 10)]


def test_drift_the_apiserver_did_not_announce_is_read_back_and_repaired(kube: KubeHarness) -> None:
    clock = FakeClock()
    runner, _ = make_runner(kube_api(kube), clock, "shop")
    assert runner.tick()[0].drift is None  # created at the header step
    drifted = copy.deepcopy(stored(kube, VS, "prod", "shop"))
    assert drifted is not None
    drifted["spec"]["http"] = drifted["spec"]["http"][-1:]  # header route gone, same resourceVersion
    answer_next(kube, "list", {"kind": "List", "items": [drifted]})
    answer_next(kube, "fetch", drifted)
    clock.advance(5)
    puts = count(kube, "put", VS)
    event = runner.tick()[0]
    assert event.drift == "data plane serves v1=100%, expected v1=100% v2=0% [x-version:v2->v2]"
    assert event.apply_error is None and event.routing_written is True and count(kube, "put", VS) == puts + 1
    vs = stored(kube, VS, "prod", "shop")
    assert vs is not None and [r["name"] for r in vs["spec"]["http"]] == ["ramp-header-v2", "ramp-primary"]


def test_after_a_409_a_replica_that_lost_leadership_neither_re_reads_nor_re_merges(kube: KubeHarness) -> None:
    checks_left: list[int] = []  # empty: leader for good; [n]: leader for n more checks

    def guard() -> bool:  # asked before every write, and after a 409 before re-reading
        if not checks_left:
            return True
        checks_left[0] -= 1
        return checks_left[0] >= 0

    api = KubeApi(kube.api_client(), retry=RetryPolicy(sleep=lambda _d: None), write_guard=guard)
    clock = FakeClock()
    runner, backend = make_runner(api, clock, "shop")
    runner.tick()
    clock.advance(10)
    gets, puts = count(kube, "get", VS), count(kube, "put", VS)
    checks_left.append(1)  # the next write may go; leadership is lost right after it
    fail_next(kube, "put", 409)
    backend.begin_tick()
    state = backend.load("shop")
    assert state is not None
    backend.save(state.model_copy(update={"step": 1, "phase": Phase.PROGRESSING}))
    with pytest.raises(NotLeader, match="no longer the leader: not re-read, not re-merged"):
        backend.apply(rollout("shop").plan.steps[1].routing)
    assert count(kube, "put", VS) == puts + 1 and count(kube, "get", VS) == gets + 1  # the LIST only


def test_after_a_409_no_retry_starts_that_would_outlast_the_deadline(kube: KubeHarness) -> None:
    runner, backend = make_runner(kube_api(kube), FakeClock(), "shop")
    runner.tick()
    state = backend.load("shop")
    assert state is not None
    backend.save(state.model_copy(update={"step": 1, "phase": Phase.PROGRESSING}))
    fail_next(kube, "put", 409)
    gets, puts = count(kube, "get", VS), count(kube, "put", VS)
    frozen = Deadline(0.09, clock=lambda: 0.0)  # 90 ms left, always: less than the first backoff (100-200 ms)
    with pytest.raises(KubeDeadlineExceeded, match="leaves no time to re-read and retry"):
        backend.apply(rollout("shop").plan.steps[1].routing, deadline=frozen)
    assert (count(kube, "get", VS), count(kube, "put", VS)) == (gets, puts + 1)
    with pytest.raises(KubeDeadlineExceeded):
        backend.apply(rollout("shop").plan.steps[1].routing, deadline=Deadline(0.0))
    assert (count(kube, "get", VS), count(kube, "put", VS)) == (gets, puts + 1)


def test_a_second_command_is_refused_while_one_is_pending_and_the_outcome_is_written_with_its_removal(
    kube: KubeHarness,
) -> None:
    clock = FakeClock()
    runner, _ = make_runner(kube_api(kube), clock, "shop")
    runner.tick()
    cli = IstioBackend(kube_api(kube))
    cli.request_command("prod", "shop", Command.PAUSE)
    with pytest.raises(CommandPending, match=r"^pause \(id \?\) is still waiting for the controller of VirtualService"):
        cli.request_command("prod", "shop", Command.ABORT)
    clock.advance(5)
    puts = count(kube, "put", VS)
    event = runner.tick()[0]
    assert event.decision.phase == Phase.PAUSED and count(kube, "put", VS) == puts + 1
    vs = stored(kube, VS, "prod", "shop")
    assert vs is not None and "ramp.dev/command" not in vs["metadata"]["annotations"]
    saved = RolloutState.model_validate(state_of(kube, "shop"))
    assert saved.last_command is not None
    assert (saved.last_command.command, saved.last_command.applied) == ("pause", True)
    cli.request_command("prod", "shop", Command.RESUME)  # accepted again once the first was consumed


def test_a_command_written_between_our_read_and_our_write_is_never_replaced(kube: KubeHarness) -> None:
    runner, _ = make_runner(kube_api(kube), FakeClock(), "shop")
    runner.tick()
    puts = {"seen": 0}

    def first_put(method: str, path: str) -> bool:
        if method != "PUT":
            return False
        puts["seen"] += 1
        return puts["seen"] == 1

    with running_proxy(kube.url, Faults(hold=0.5, match=first_put)) as proxy:
        cli = IstioBackend(KubeApi(proxy.api_client(), retry=RetryPolicy(sleep=lambda _d: None)))
        outcome: dict[str, BaseException | None] = {}

        def ask() -> None:
            try:
                cli.request_command("prod", "shop", Command.PROMOTE)
                outcome["error"] = None
            except BaseException as exc:  # reported to the test thread
                outcome["error"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        for _ in range(200):  # bounded wait for the PUT to be held
            if proxy.held:
                break
            threading.Event().wait(0.01)
        assert proxy.held == 1
        IstioBackend(kube_api(kube)).request_command("prod", "shop", Command.ABORT)  # the racing writer
        asker.join(10)
    assert isinstance(outcome.get("error"), CommandPending)
    vs = stored(kube, VS, "prod", "shop")
    assert vs is not None and json.loads(vs["metadata"]["annotations"]["ramp.dev/command"])["command"] == "abort"


def test_a_readable_state_that_does_not_fit_the_plan_fails_safe_and_is_kept_aside(kube: KubeHarness) -> None:
    target = rollout("shop")
    unfit = RolloutState(rollout="shop", spec_digest=target.digest, phase=Phase.PROGRESSING, step=7,
                         step_started_at=1.0).model_dump_json()  # step 8 of a 3-step plan: gates would be off
    primary = {"name": "ramp-primary", "route": [{"destination": {"host": "shop", "subset": "v2"}, "weight": 100}]}
    custom_objects(kube).create_namespaced_custom_object(
        G, V, "prod", VS, vs_body("shop", [primary], {"ramp.dev/state": unfit})
    )
    runner, _ = make_runner(kube_api(kube), FakeClock(), "shop")
    event = runner.tick()[0]
    assert event.damaged is not None and "step index 7, but the plan has 3 steps" in event.damaged
    assert event.decision.phase == Phase.FAILED and weights(kube, "shop") == [("v1", 100)]
    notes = (stored(kube, VS, "prod", "shop") or {})["metadata"]["annotations"]
    assert notes["ramp.dev/state-damaged"] == unfit and json.loads(notes["ramp.dev/state"])["phase"] == "Failed"

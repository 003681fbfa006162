"""Rollout Events: driven by the real runner, stored in the emulator, read back as the apiserver holds them."""

from __future__ import annotations

import datetime
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from structlog.testing import capture_logs

from controller.analysis.metrics import VersionMetrics
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command, Phase
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.k8s.client import KubeApi
from controller.k8s.events import PHASE_EVENTS, EventRecorder, ObjectRef, RolloutEventObserver
from controller.state.file_store import FileStateStore
from tests.k8s.emulator import KubeHarness
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, SPEC_YAML, FakeClock, FixedMetrics, RecordingRouter, spec

HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
FAILING = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 10, {})}  # v2: 10% errors
VS_API = "networking.istio.io/v1"
VIRTUAL_SERVICE = {"apiVersion": VS_API, "kind": "VirtualService", "name": "shop", "namespace": "prod"}


class Rig:
    def __init__(self, kube: KubeHarness, tmp_path: Path, text: str = NO_APPROVAL_YAML) -> None:
        self.kube = kube
        self.clock = FakeClock()
        self.router = RecordingRouter()
        self.metrics = FixedMetrics(dict(HEALTHY))
        self.store = FileStateStore(tmp_path)
        self.recorder = EventRecorder(kube.api_client(), clock=self.clock)
        self.seen: list[TickEvent] = []  # an observer after ours: proves the tick went on
        self.runner = RolloutRunner(
            router=self.router,
            metrics=self.metrics,
            store=self.store,
            clock=self.clock,
            observers=[RolloutEventObserver(self.recorder), self.seen.append],
        )
        self.runner.set_rollouts([ManagedRollout.from_spec(spec(text))])

    def tick(self, advance: float = 5.0) -> TickEvent:
        (event,) = self.runner.tick()
        self.clock.advance(advance)
        return event

    def run_until_terminal(self, limit: int = 50) -> None:
        for _ in range(limit):
            self.tick()
            if self.runner.all_terminal():
                return
        raise AssertionError("rollout did not finish")

    def events(self) -> list[dict[str, Any]]:
        return self.kube.objects("", "v1", "events")

    def history(self) -> list[tuple[str, str, str]]:
        state = self.store.load("shop")
        assert state is not None
        return [(PHASE_EVENTS[c.phase][0], PHASE_EVENTS[c.phase][1], c.reason) for c in state.history]


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["reason"], e["type"], e["message"]) for e in events]


def epoch(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_one_event_per_phase_or_step_change_on_the_virtual_service(kube: KubeHarness, tmp_path: Path) -> None:
    rig = Rig(kube, tmp_path)
    rig.run_until_terminal()
    events = rig.events()
    assert [e["reason"] for e in events] == ["HeaderTest", "Progressing", "Progressing", "Promoted"]
    assert summary(events) == rig.history()  # message = the state's reason for each change
    assert events[-1]["message"] == "all steps passed: v2 promoted"
    changed_at = [c.at for c in rig.store.load("shop").history]  # type: ignore[union-attr]
    for event, at in zip(events, changed_at, strict=True):
        assert event["involvedObject"] == VIRTUAL_SERVICE
        assert event["metadata"]["namespace"] == "prod"
        assert re.fullmatch(r"shop\.[0-9a-f]{16}", event["metadata"]["name"])
        assert event["type"] == "Normal" and event["count"] == 1
        assert event["source"] == {"component": "ramp"} and event["reportingComponent"] == "ramp"
        assert epoch(event["firstTimestamp"]) == epoch(event["lastTimestamp"]) == at
    assert rig.recorder.recorded == 4 and rig.recorder.failures == 0
    listed = client.CoreV1Api(kube.api_client()).list_namespaced_event("prod").items  # as kubectl would read them
    assert sorted(e.reason for e in listed) == ["HeaderTest", "Progressing", "Progressing", "Promoted"]
    assert {(e.involved_object.kind, e.involved_object.name) for e in listed} == {("VirtualService", "shop")}


def test_approval_pause_and_resume_are_recorded(kube: KubeHarness, tmp_path: Path) -> None:
    rig = Rig(kube, tmp_path, SPEC_YAML)
    for _ in range(5):
        rig.tick()
    assert rig.store.load("shop").phase == Phase.PAUSED  # type: ignore[union-attr]
    rig.store.request("shop", CommandRequest(command=Command.RESUME))
    rig.run_until_terminal()
    reasons = [e["reason"] for e in rig.events()]
    assert reasons == ["HeaderTest", "Progressing", "Paused", "Progressing", "CommandApplied", "Promoted"]
    phase_events = [e for e in rig.events() if not e["reason"].startswith("Command")]
    assert summary(phase_events) == rig.history()
    assert rig.events()[2]["message"] == "step 3/4: waiting for manual approval"
    assert rig.events()[4]["message"] == "resume: approved by user"  # what became of the person's command


def test_rollback_is_a_warning_naming_the_gate_and_value(kube: KubeHarness, tmp_path: Path) -> None:
    rig = Rig(kube, tmp_path)
    rig.tick()  # header step entered
    rig.metrics.by_version = dict(FAILING)
    event = rig.tick()
    assert event.decision.phase == Phase.ROLLED_BACK
    for _ in range(3):  # terminal: no further changes, no further events
        rig.tick()
    reasons = [(e["reason"], e["type"]) for e in rig.events()]
    assert reasons == [("HeaderTest", "Normal"), ("RolledBack", "Warning")]
    message = rig.events()[1]["message"]
    assert message == event.decision.state.reason
    assert re.search(r"error_rate of v2 is 10(\.0+)?% > max 2", message), message


def test_a_failing_event_write_never_breaks_the_tick(kube: KubeHarness, tmp_path: Path) -> None:
    rig = Rig(kube, tmp_path)
    posts = kube.emulator["post"]
    seen = len(posts)
    posts[seen : seen + 1] << 500  # the first event write fails
    first = rig.tick()
    assert first.decision.phase == Phase.HEADER_TEST and len(rig.router.applied) == 1
    assert rig.seen == [first]  # the observers after ours ran
    assert rig.recorder.failures == 1 and rig.recorder.recorded == 0
    rig.run_until_terminal()  # later events are written again
    assert rig.recorder.recorded == 3 and rig.store.load("shop").phase == Phase.PROMOTED  # type: ignore[union-attr]
    assert [e["reason"] for e in rig.events()][-3:] == ["Progressing", "Progressing", "Promoted"]


def test_an_unreachable_apiserver_costs_one_bounded_request_per_event(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = client.Configuration()
    config.host, config.retries = f"http://127.0.0.1:{port}", False
    clock = FakeClock()
    recorder = EventRecorder(client.ApiClient(config), clock=clock)
    runner = RolloutRunner(RecordingRouter(), FixedMetrics(dict(HEALTHY)), FileStateStore(tmp_path), clock,
                           observers=[RolloutEventObserver(recorder)])  # fmt: skip
    runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
    (event,) = runner.tick()
    assert event.decision.phase == Phase.HEADER_TEST and recorder.failures == 1


def test_forbidden_is_logged_once_per_namespace_with_the_rbac_rule(kube: KubeHarness) -> None:
    kube.emulator["post"] << 403
    recorder = EventRecorder(kube.api_client())
    ref = ObjectRef(VS_API, "VirtualService", "shop")
    with capture_logs() as logs:
        results = [recorder.record(ns, ref, "Progressing", "m") for ns in ("prod", "prod", "prod", "staging")]
    assert results == [False] * 4 and recorder.failures == 4
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["namespace"] for e in errors] == ["prod", "staging"]
    assert "verb 'create' on resource 'events'" in errors[0]["hint"] and "'prod'" in errors[0]["hint"]


def test_routing_failures_are_reported_once_per_distinct_error(kube: KubeHarness, tmp_path: Path) -> None:
    rig = Rig(kube, tmp_path)
    rig.router.fail_next = 2
    rig.tick()
    rig.tick()  # the same error again: no second event
    rig.tick()  # applied: recovered
    for _ in range(10):  # steps count only confirmed time: the header step now runs its full duration
        if rig.tick().decision.phase == Phase.PROGRESSING:
            break
    rig.router.fail_next = 1
    rig.tick()  # fails again after recovering: reported again
    routing = [e for e in rig.events() if e["reason"] == "RoutingFailed"]
    assert len(routing) == 2
    assert all(e["type"] == "Warning" and "ConnectionError: router down" in e["message"] for e in routing)
    assert all(e["involvedObject"] == VIRTUAL_SERVICE for e in routing)
    assert [e["reason"] for e in rig.events()] == ["HeaderTest", "RoutingFailed", "Progressing", "RoutingFailed"]


def test_record_truncates_long_messages_and_sets_the_uid(kube: KubeHarness) -> None:
    recorder = EventRecorder(kube.api_client(), component="ramp-test", clock=lambda: 1_700_000_000.0)
    ref = ObjectRef(VS_API, "VirtualService", "shop", uid="1234")
    assert recorder.record("prod", ref, "Failed", "x" * 5000, "Warning") is True
    (event,) = kube.objects("", "v1", "events")
    assert len(event["message"]) == 1024 and event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == "1234" and event["source"] == {"component": "ramp-test"}
    assert epoch(event["firstTimestamp"]) == 1_700_000_000.0


@pytest.mark.parametrize("via", ["api_client", "kube_api"])
def test_a_replica_that_is_not_the_leader_records_no_event(kube: KubeHarness, via: str) -> None:
    leading = [True]
    guard = lambda: leading[0]  # noqa: E731
    if via == "kube_api":
        recorder = EventRecorder(KubeApi(kube.api_client(), write_guard=guard))
    else:
        recorder = EventRecorder(kube.api_client(), write_guard=guard)
    ref = ObjectRef(VS_API, "VirtualService", "shop")
    assert recorder.record("prod", ref, "Progressing", "m") is True
    leading[0] = False  # a former leader: its Events would suggest two controllers act
    assert recorder.record("prod", ref, "RolledBack", "m", "Warning") is False
    assert (recorder.recorded, recorder.suppressed, recorder.failures) == (1, 1, 0)
    assert [e["reason"] for e in kube.objects("", "v1", "events")] == ["Progressing"]
    assert len(kube.requests("post")) == 1  # nothing was sent


def test_damaged_state_drift_and_refused_commands_are_warning_events(kube: KubeHarness, tmp_path: Path) -> None:
    import json as _json

    from tests.unit.test_runner_safety import DriftingDataPlane

    rig = Rig(kube, tmp_path)
    rig.router = DriftingDataPlane()
    rig.runner.router = rig.router
    rig.tick()
    sound = _json.loads((tmp_path / "shop.state.json").read_text())
    (tmp_path / "shop.state.json").write_text(_json.dumps({**sound, "step": 42}))
    rig.tick()  # damaged: failed safe to the baseline
    rig.store.request("shop", CommandRequest(id="p1", command=Command.PROMOTE))
    rig.tick()  # refused: the rollout Failed
    rig.router.serving = rig.router.serving.model_copy(update={"weights": (("v1", 50), ("v2", 50))})  # type: ignore[union-attr]
    rig.tick()  # drift, repaired
    found = {e["reason"]: (e["type"], e["message"]) for e in rig.events()}
    assert found["StateDamaged"][0] == "Warning" and "step index 42" in found["StateDamaged"][1]
    assert found["CommandRefused"][0] == "Warning" and found["CommandRefused"][1].startswith("promote: ")
    assert found["RoutingDrift"][0] == "Warning" and "v1=50% v2=50%" in found["RoutingDrift"][1]
    assert found["Failed"][0] == "Warning"


def test_a_gateway_api_rollouts_events_go_on_its_httproute(kube: KubeHarness, tmp_path: Path) -> None:
    """The controller tells the observer each router's route object (from the cluster backend), so a spec file
    with `router: gateway-api` records its Events on the HTTPRoute, not on a VirtualService that does not exist."""
    from controller.cluster_backend import cluster_backend

    backend = cluster_backend(KubeApi.wrap(kube.api_client()))

    def route_object(router: str) -> tuple[str, str]:
        resource = backend.router(router).resource
        return resource.api_version, resource.kind

    text = NO_APPROVAL_YAML + "router: gateway-api\ngateway_api: {port: 8080}\n"
    rig = Rig(kube, tmp_path, text)
    rig.runner.observers[0] = RolloutEventObserver(rig.recorder, route_object)
    rig.run_until_terminal()
    involved = {tuple(sorted(e["involvedObject"].items())) for e in rig.events()}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "name": "shop", "namespace": "prod"}
    assert involved == {tuple(sorted(route.items()))}

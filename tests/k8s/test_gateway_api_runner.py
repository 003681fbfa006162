"""The real RolloutRunner with router gateway-api in cluster mode: the cluster backend (all routers) as router and
store, HTTPRoutes validated by the emulator under the real CRD, a fake gateway controller answering in
status.parents, and the CLI (`ramp status`, `ramp pause`, `ramp set-weights`) through a real kubeconfig.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.cluster_backend import cluster_backend
from controller.engine.phases import Phase
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.availability import DeploymentAvailability
from controller.observability import configure_logging
from controller.routing.httproute_render import managed_rules
from tests.k8s.cli_controller import write_kubeconfig
from tests.k8s.emulator import KubeHarness
from tests.k8s.gateway_api import (
    GATEWAY_API_YAML,
    FakeGatewayController,
    assert_valid_route,
    create_route,
    create_service,
    create_version_services,
    gateway_api_spec,
    install_httproute_crd,
    route_puts,
    stored_route,
    ticking,
    traffic,
)
from tests.k8s.helpers import DR, VS, count, create_deployment, create_pod, kube_api, stored
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics, spec

NS = "prod"
HEALTHY = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 0, {})}
FAILING = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 40, {})}
ISTIO = ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))  # prod/shop on a VirtualService
GATEWAY = ManagedRollout.from_spec(gateway_api_spec())  # the same rollout on an HTTPRoute (Services shop-v1/-v2)
# A minute per step: the two rollouts of one controller stay on their header step for a few ticks.
SLOW_SHOP = ManagedRollout.from_spec(spec(NO_APPROVAL_YAML.replace("duration: 10s", "duration: 60s")))
SLOW_CART_YAML = GATEWAY_API_YAML.replace("service: shop", "service: cart").replace("duration: 10s", "duration: 60s")
SLOW_CART = ManagedRollout.from_spec(gateway_api_spec(SLOW_CART_YAML))
# The 10 % step lasts an hour: a controller ticking in the background cannot finish it while the CLI runs.
LONG_TEN_PERCENT = ManagedRollout.from_spec(
    gateway_api_spec(GATEWAY_API_YAML.replace("{weight: 10, duration: 10s}", "{weight: 10, duration: 1h}"))
)
HOLDING = "holding: routing not confirmed by the data plane: RoutingNotInEffect"


@pytest.fixture()
def gateway(kube: KubeHarness) -> FakeGatewayController:
    """The HTTPRoute CRD, the versions' Services and Deployments of prod/shop, and a gateway controller."""
    install_httproute_crd(kube)
    create_version_services(kube, NS, "shop", ("v1", "v2"))
    for version in ("v1", "v2"):
        create_deployment(kube, NS, "shop", version, available=2)
    return FakeGatewayController(kube)


def make_runner(
    kube: KubeHarness, clock: FakeClock, rollouts: list[ManagedRollout], metrics: dict[str, Any] | None = None
) -> RolloutRunner:
    """A controller process: its own clients, a cluster backend with every router and empty memory."""
    backend = cluster_backend(kube_api(kube))
    runner = RolloutRunner(
        router=backend, metrics=FixedMetrics(dict(metrics or HEALTHY)), store=backend, clock=clock,
        availability=DeploymentAvailability(kube_api(kube)),
    )  # fmt: skip
    runner.set_rollouts(rollouts)
    return runner


def route(kube: KubeHarness, service: str = "shop") -> dict[str, Any]:
    found = stored_route(kube, NS, service)
    assert found is not None
    return found


def stored_state(obj: dict[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return dict(json.loads(obj["metadata"]["annotations"]["ramp.dev/state"]))


def phases(states: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(phase, step) as they changed, consecutive repeats dropped."""
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def test_a_healthy_rollout_goes_through_the_same_phases_and_traffic_under_both_routers(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    clock = FakeClock()
    runners = {"istio": make_runner(kube, clock, [ISTIO]), "gateway-api": make_runner(kube, clock, [GATEWAY])}
    objects: dict[str, Callable[[], dict[str, Any] | None]] = {
        "istio": lambda: stored(kube, VS, NS, "shop"),
        "gateway-api": lambda: stored_route(kube, NS, "shop"),
    }
    seen: dict[str, list[tuple[str, int]]] = {name: [] for name in runners}
    served_traffic: dict[str, list[tuple[Any, ...]]] = {name: [] for name in runners}
    unconfirmed = dict.fromkeys(runners, 0)
    for _ in range(40):
        if all(r.all_terminal() for r in runners.values()):
            break
        for name, runner in runners.items():
            if runner.all_terminal():
                continue
            state = runner.tick()[0].decision.state
            seen[name].append((state.phase.value, state.step))
            unconfirmed[name] += state.unconfirmed is not None
            if not served_traffic[name] or served_traffic[name][-1] != traffic(objects[name]()):
                served_traffic[name].append(traffic(objects[name]()))
        assert_valid_route(stored_route(kube, NS, "shop"))
        gateway.reconcile()  # the gateway's answer to what the tick wrote, before the next tick
        clock.advance(5)
    assert all(r.all_terminal() for r in runners.values()), "a rollout did not finish"
    assert phases(seen["gateway-api"]) == phases(seen["istio"]) == [
        ("HeaderTest", 0), ("Progressing", 1), ("Progressing", 2), ("Promoted", 3)]  # fmt: skip
    assert served_traffic["gateway-api"] == served_traffic["istio"]  # header step, 10 %, 50 %, v2 only
    assert len(served_traffic["istio"]) == 4 and served_traffic["istio"][-1] == ((("v2", 100),), ())
    finals = {name: objects[name]() for name in runners}
    histories = {name: [(c["phase"], c["step"]) for c in stored_state(obj)["history"]] for name, obj in finals.items()}
    assert histories["gateway-api"] == histories["istio"]
    assert unconfirmed["istio"] == 0 and unconfirmed["gateway-api"] == 4  # one tick per step awaits the gateway
    assert route(kube)["spec"]["rules"] == managed_rules(GATEWAY.plan.promoted)


def test_a_failing_gate_rolls_back_to_the_baseline_route(kube: KubeHarness, gateway: FakeGatewayController) -> None:
    clock = FakeClock()
    runner = make_runner(kube, clock, [GATEWAY], FAILING)
    for _ in range(10):
        if runner.all_terminal():
            break
        runner.tick()
        gateway.reconcile()
        clock.advance(5)
    assert runner.all_terminal()  # rolled back AND the gateway has accepted the baseline route
    rolled_back = route(kube)
    assert rolled_back["spec"]["rules"] == managed_rules(GATEWAY.plan.baseline)  # no header rule; v1 100, v2 0
    assert [(b["name"], b["weight"]) for b in rolled_back["spec"]["rules"][0]["backendRefs"]] == [
        ("shop-v1", 100), ("shop-v2", 0)]  # fmt: skip
    state = stored_state(rolled_back)
    assert state["phase"] == "RolledBack" and "error_rate" in state["reason"]
    assert [c["phase"] for c in state["history"]] == ["HeaderTest", "RolledBack"]
    assert all(e["conditions"][0]["observedGeneration"] == rolled_back["metadata"]["generation"]
               for e in rolled_back["status"]["parents"])  # fmt: skip


def test_no_status_or_a_stale_one_holds_the_rollout_and_its_clock_until_the_gateway_answers(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    clock = FakeClock()
    runner = make_runner(kube, clock, [GATEWAY])
    for _ in range(4):  # no gateway controller has seen the route: the header step never starts counting
        state = runner.tick()[0].decision.state
        clock.advance(5)
        assert (state.phase, state.step, state.step_elapsed) == (Phase.HEADER_TEST, 0, 0.0)
        assert state.unconfirmed is not None and "no status from Service shop yet" in state.unconfirmed
    assert HOLDING in state.reason and state.reason.endswith("not in effect: no status from Service shop yet")
    assert count(kube, "post", "httproutes") == 1 and route_puts(kube) == 0  # written once
    gateway.reconcile()
    event = runner.tick()[0]  # accepted for this generation: confirmed now
    assert event.decision.state.unconfirmed is None and event.routing_written is False
    for _ in range(6):  # the header step's 10 s pass; the 10 % step is written (generation 2), then held
        clock.advance(5)
        state = runner.tick()[0].decision.state
        if state.step == 1:
            break
    held = []
    for _ in range(3):  # the gateway stopped answering: its status is for generation 1
        clock.advance(5)
        held.append(runner.tick()[0].decision.state)
    assert all(s.step == 1 and s.step_elapsed == 0.0 for s in held)
    assert held[-1].reason.endswith("Service shop: status for generation 1 not yet written (route is at generation 2)")
    assert traffic(route(kube)) == GATEWAY.plan.steps[1].routing.traffic()  # stored, not yet in effect
    gateway.reconcile()
    for _ in range(6):
        clock.advance(5)
        runner.tick()
        gateway.reconcile()
    assert stored_state(route(kube))["phase"] == "Promoted"



@pytest.mark.parametrize(
    ("reason", "condition", "shown"),
    [("NotAllowedByListeners", "Accepted", "Service shop not Accepted (NotAllowedByListeners)"),
     ("BackendNotFound", "ResolvedRefs", "Service shop not ResolvedRefs (BackendNotFound)")],
)  # fmt: skip
def test_a_refused_route_holds_every_tick_and_the_step_runs_its_full_time_from_the_gateways_acceptance(
    kube: KubeHarness, gateway: FakeGatewayController, reason: str, condition: str, shown: str
) -> None:
    """Status writes change the route's resourceVersion every time: the held state (unconfirmed, no step time)
    must survive them, so the header step's 10 s count only from the tick the gateway accepted the route."""
    gateway.refuse("shop", reason, "refused for the test", condition)
    clock = FakeClock()
    runner = make_runner(kube, clock, [GATEWAY])
    held = []
    for _ in range(4):  # written, then refused on every tick (fewer than the 5 that fail safe)
        held.append(runner.tick()[0].decision.state)
        gateway.reconcile()
        clock.advance(5)
    assert all(s.step == 0 and s.step_elapsed == 0.0 and s.unconfirmed is not None for s in held)
    # A tick's reason is the previous apply's answer (decide runs before apply): the refusal shows from the third.
    assert all(HOLDING in s.reason for s in held[1:]) and all(shown in s.reason for s in held[2:]), held
    gateway.allow("shop")
    gateway.reconcile()
    accepted_at = clock()
    state = runner.tick()[0].decision.state  # accepted now: confirmed, and the step starts here
    assert state.unconfirmed is None and state.step == 0
    assert state.step_started_at == accepted_at and state.history[-1].at == accepted_at
    clock.advance(5)
    assert runner.tick()[0].decision.state.step == 0  # 5 s of the 10 s step with the route in effect
    clock.advance(5)
    moved = runner.tick()[0].decision.state
    assert moved.step == 1 and moved.history[-1].at == accepted_at + 10  # the full 10 s, from the acceptance


def test_a_route_the_gateway_never_accepts_fails_safe_to_the_baseline(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    gateway.refuse("shop", "NotAllowedByListeners")
    clock = FakeClock()
    runner = make_runner(kube, clock, [GATEWAY])
    for _ in range(10):
        event = runner.tick()[0]
        gateway.reconcile()
        clock.advance(5)
        if event.decision.phase in (Phase.FAILED, Phase.ROLLED_BACK):
            break
    assert event.decision.phase in (Phase.FAILED, Phase.ROLLED_BACK)
    assert "could not be applied 5 times in a row" in event.decision.state.reason
    assert traffic(route(kube)) == GATEWAY.plan.baseline.traffic()  # the baseline is what the route holds


def test_a_new_controller_resumes_mid_rollout_without_replaying_a_step(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    clock = FakeClock()
    first = make_runner(kube, clock, [GATEWAY])
    for _ in range(20):  # until the 10 % step is written, accepted and confirmed
        event = first.tick()[0]
        gateway.reconcile()
        if event.decision.state.step == 1 and event.decision.state.unconfirmed is None:
            break
        clock.advance(5)
    clock.advance(1)
    first.tick()  # writes what the confirmation changed (the step's start)
    before = stored_state(route(kube))
    assert (before["phase"], before["step"]) == ("Progressing", 1)
    writes = route_puts(kube)
    second = make_runner(kube, clock, [GATEWAY])  # a restarted process (or a new leader): nothing in memory
    clock.advance(5)
    event = second.tick()[0]
    assert event.decision.state.step == 1 and event.routing_written is False
    assert event.decision.state.unconfirmed is None  # the route it finds is accepted: confirmed at once
    assert route_puts(kube) == writes  # resuming writes nothing
    assert stored_state(route(kube))["step_started_at"] == before["step_started_at"]
    while not second.all_terminal():
        clock.advance(5)
        second.tick()
        gateway.reconcile()
    history = stored_state(route(kube))["history"]
    assert [c["step"] for c in history] == [0, 1, 2, 3] and history[-1]["phase"] == "Promoted"


def test_one_controller_runs_an_istio_and_a_gateway_api_rollout_each_on_its_own_kind(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    create_version_services(kube, NS, "cart", ("v1", "v2"))
    for version in ("v1", "v2"):
        create_deployment(kube, NS, "cart", version, available=1)
    clock = FakeClock()
    runner = make_runner(kube, clock, [SLOW_SHOP, SLOW_CART])
    runner.tick()  # shop: VirtualService + DestinationRule; cart: HTTPRoute
    gateway.reconcile()
    assert stored(kube, VS, NS, "shop") is not None and stored(kube, DR, NS, "shop") is not None
    assert route(kube, "cart")["spec"]["rules"] == managed_rules(SLOW_CART.plan.steps[0].routing)
    assert stored_route(kube, NS, "shop") is None and stored(kube, VS, NS, "cart") is None
    assert stored(kube, DR, NS, "cart") is None  # the gateway-api rollout prepares nothing
    for _ in range(2):  # cart confirmed; both run their header step (and record when it took effect)
        clock.advance(5)
        events = runner.tick()
        assert [e.decision.state.unconfirmed for e in events] == [None, None]
    clock.advance(5)
    start = {m: len(kube.requests(m)) for m in ("get", "put", "post")}
    events = runner.tick()  # steady: nothing changes
    calls = {m: len(kube.requests(m)) - start[m] for m in start}
    paths = [str(r.url.path) for r in kube.requests("get")[start["get"] :]]
    lists = sorted(p.rsplit("/", 1)[-1] for p in paths if p.endswith(("/virtualservices", "/httproutes")))
    assert lists == ["httproutes", "virtualservices"]  # one LIST per resource and namespace, no GET per rollout
    assert (calls["put"], calls["post"]) == (0, 0)
    assert calls["get"] == 2 + sum(1 for p in paths if p.endswith(("/deployments", "/pods")))
    assert [e.routing_written for e in events] == [False, False]


# --- the CLI against a gateway-api rollout ------------------------------------------------------------------


def ramp(kubeconfig: str, *argv: str, namespace: str = NS) -> int:
    return main([*argv, "-n", namespace, "--kubeconfig", kubeconfig])


def test_status_and_pause_work_on_a_gateway_api_rollout(
    kube: KubeHarness, gateway: FakeGatewayController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="warning")
    kubeconfig = write_kubeconfig(kube, tmp_path / "kubeconfig")
    for version in ("v1", "v2"):
        create_pod(kube, NS, f"shop-{version}-0", {"app": "shop", "version": version}, True, "Running")
    clock = FakeClock()
    runner = make_runner(kube, clock, [LONG_TEN_PERCENT])
    for _ in range(4):  # header step, confirmed; then the 10 % step, confirmed
        runner.tick()
        gateway.reconcile()
        clock.advance(5)
    assert ramp(kubeconfig, "status", "shop") == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in out[1:3]] == [["v1", "90", "90.0%", "Serving"], ["v2", "10", "10.0%",
                                                                                           "Serving"]]  # fmt: skip
    assert out[-1].startswith("rollout shop: Progressing, step 2: step 2/3: 10%")
    assert ramp(kubeconfig, "status", "shop", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["router"] == "gateway-api" and doc["rollout"]["phase"] == "Progressing"

    def tick() -> None:
        runner.tick()
        gateway.reconcile()
        clock.advance(5)

    with ticking(tick):
        assert ramp(kubeconfig, "pause", "shop", "--wait", "20") == 0
    assert capsys.readouterr().out == "paused by user\n"  # the outcome the controller recorded
    paused_route = route(kube)
    state = stored_state(paused_route)
    assert state["phase"] == "Paused" and state["last_command"]["command"] == "pause"
    assert state["last_command"]["applied"] is True
    assert "ramp.dev/command" not in paused_route["metadata"]["annotations"]  # cleared in the same write
    assert state["step"] == 1 and traffic(paused_route) == GATEWAY.plan.steps[1].routing.traffic()  # where it was
    assert stored(kube, VS, NS, "shop") is None  # the command went to the HTTPRoute, nothing to a VirtualService


def test_set_weights_on_an_unmanaged_http_route_keeps_its_parents_and_services(
    kube: KubeHarness, gateway: FakeGatewayController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = write_kubeconfig(kube, tmp_path / "kubeconfig")
    create_service(kube, "shop", "reviews-stable", 9080)
    create_service(kube, "shop", "reviews-canary", 9080)
    for version in ("v1", "v2"):
        create_deployment(kube, "shop", "reviews", version, available=1)
    backends = {"reviews-stable": "v1", "reviews-canary": "v2"}
    parents = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra",
                "sectionName": "https"}, {"group": "", "kind": "Service", "name": "reviews"}]  # fmt: skip
    notes = {"ramp.dev/backends": json.dumps(backends)}
    created = create_route(kube, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "shop", "annotations": notes},
        "spec": {"parentRefs": parents, "rules": [{"name": "ramp-primary",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": "reviews-stable", "port": 9080, "weight": 100},
                                 {"name": "reviews-canary", "port": 9080, "weight": 0}]}]},
    })  # fmt: skip
    gateway.reconcile()
    with ticking(gateway.reconcile):  # the gateway keeps answering while the CLI writes
        assert ramp(kubeconfig, "set-weights", "reviews", "v1=50", "v2=50", namespace="shop") == 0
    assert capsys.readouterr().out.strip().startswith("v1=50 (50.0%), v2=50 (50.0%)")
    after = stored_route(kube, "shop", "reviews")
    assert after is not None
    assert after["spec"]["parentRefs"] == created["spec"]["parentRefs"]  # attached where it was
    assert [(b["name"], b["port"], b["weight"]) for b in after["spec"]["rules"][-1]["backendRefs"]] == [
        ("reviews-stable", 9080, 50), ("reviews-canary", 9080, 50)]  # fmt: skip
    assert json.loads(after["metadata"]["annotations"]["ramp.dev/relative-weights"]) == {"v1": 50, "v2": 50}

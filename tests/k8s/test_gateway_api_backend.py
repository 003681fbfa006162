"""The cluster backend with router gateway-api against the emulator serving the real HTTPRoute CRD (schema, CEL,
status subresource), through the real `kubernetes` client over HTTP: create and update flows, merge rules,
conflicts, and the acceptance a Gateway API implementation reports in status.parents (FakeGatewayController).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from controller.cluster_backend import cluster_backend
from controller.engine.phases import Phase, RolloutState
from controller.engine.routing_model import DesiredRouting, ParentRef
from controller.plan import build_plan
from controller.routing.httproute_merge import RouteShadowingError
from controller.routing.httproute_render import http_route, managed_rules
from controller.routing.k8s_objects import MalformedObject
from controller.routing.object_backend import RouteObjectBackend, RoutingNotConfirmed
from tests.k8s.emulator import KubeHarness
from tests.k8s.gateway_api import (
    GW_VERSION,
    HTTPROUTES,
    FakeGatewayController,
    assert_valid_route,
    create_route,
    create_service,
    create_version_services,
    install_httproute_crd,
    parent_status,
    route_puts,
    routes_api,
    stored_route,
    team_route,
    three_versions_gateway_api,
)
from tests.k8s.helpers import VS, count, fail_next, kube_api
from tests.k8s.helpers import stored as stored_istio
from tests.k8s.test_istio_hostile import answer_next

G = "gateway.networking.k8s.io"
ROUTINGS = build_plan(three_versions_gateway_api()).all_routings()  # baseline, header, 3 traffic steps, promoted
HEADER_STEP, THIRDS = ROUTINGS[1], ROUTINGS[2]
PUBLIC = ParentRef(name="public", namespace="infra", section_name="https")


@pytest.fixture()
def gateway(kube: KubeHarness) -> FakeGatewayController:
    """The HTTPRoute CRD installed, the versions' Services (reviews-v1..v3) and a gateway controller."""
    install_httproute_crd(kube)
    create_version_services(kube, "shop", "reviews", ("v1", "v2", "v3"))
    return FakeGatewayController(kube)


def backend(kube: KubeHarness) -> RouteObjectBackend:
    """A controller process's backend (all routers), tracking the gateway-api rollout of shop/reviews."""
    b = cluster_backend(kube_api(kube))
    b.track({"reviews": ("shop", "reviews", "gateway-api")})
    return b


def state_at(step: int, phase: Phase = Phase.PROGRESSING, reason: str = "") -> RolloutState:
    return RolloutState(rollout="reviews", spec_digest="d1", phase=phase, step=step,
                        step_started_at=1000.0 + step, reason=reason or f"step {step + 1}")  # fmt: skip


def route(kube: KubeHarness) -> dict[str, Any]:
    found = stored_route(kube, "shop", "reviews")
    assert found is not None
    return found


def saved_state(kube: KubeHarness) -> dict[str, Any]:
    return dict(json.loads(route(kube)["metadata"]["annotations"]["ramp.dev/state"]))


def tick(b: RouteObjectBackend, routing: DesiredRouting, state: RolloutState) -> bool:
    """What the runner does with the store and router in one tick: the batched read, load, stage the state, apply."""
    b.begin_tick()
    b.load("reviews")
    b.save(state)
    return b.apply(routing)


def apply_and_confirm(
    b: RouteObjectBackend, gateway: FakeGatewayController, routing: DesiredRouting, state: RolloutState
) -> None:
    """A tick that writes `routing`, the gateway controller's answer, then the next tick, which confirms."""
    try:
        tick(b, routing, state)
    except RoutingNotConfirmed as exc:
        assert "not in effect" in str(exc), exc  # written; only the gateway's acceptance is missing
    gateway.reconcile()
    assert tick(b, routing, state) is False  # nothing more to write: the stored route holds it and is accepted


def test_the_first_apply_creates_a_valid_route_with_the_state_in_the_same_write(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    assert b.load("reviews") is None
    b.save(state_at(0, Phase.HEADER_TEST, "step 1/5: header x-version: v3"))
    with pytest.raises(RoutingNotConfirmed, match=r"HTTPRoute shop/reviews .*not in effect: no status from Service "
                       r"reviews yet"):  # fmt: skip
        b.apply(HEADER_STEP)  # written, but no gateway controller has seen it yet
    assert (count(kube, "post", HTTPROUTES), route_puts(kube)) == (1, 0)  # one create: routing and state together
    created = route(kube)
    assert_valid_route(created)
    assert created["spec"] == http_route(HEADER_STEP)["spec"]  # nothing defaulted or pruned by the apiserver
    assert created["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ramp"}
    assert json.loads(created["metadata"]["annotations"]["ramp.dev/backends"]) == {
        "reviews-v1": "v1", "reviews-v2": "v2", "reviews-v3": "v3"}  # fmt: skip
    saved = saved_state(kube)
    assert (saved["phase"], saved["step"], saved["reason"]) == ("HeaderTest", 0, "step 1/5: header x-version: v3")
    header, primary = created["spec"]["rules"]
    assert header["name"] == "ramp-header-v3"
    assert header["matches"] == [{"path": {"type": "PathPrefix", "value": "/"},
                                  "headers": [{"type": "Exact", "name": "x-version", "value": "v3"}]}]  # fmt: skip
    assert [ref["name"] for ref in header["backendRefs"]] == ["reviews-v3"]
    assert [(ref["name"], ref["port"], ref["weight"]) for ref in primary["backendRefs"]] == [
        ("reviews-v1", 9080, 50), ("reviews-v2", 9080, 50), ("reviews-v3", 9080, 0)]  # fmt: skip
    assert stored_istio(kube, VS, "shop", "reviews") is None  # a gateway-api rollout writes no VirtualService
    assert gateway.reconcile() == 1
    assert tick(b, HEADER_STEP, state_at(0, Phase.HEADER_TEST)) is False  # accepted: confirmed, nothing written
    assert (count(kube, "post", HTTPROUTES), route_puts(kube)) == (1, 0)


def test_every_routing_of_the_plan_is_written_read_back_and_confirmed(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    for index, routing in enumerate(ROUTINGS):
        apply_and_confirm(b, gateway, routing, state_at(index))
        stored = route(kube)
        assert_valid_route(stored)
        assert stored["spec"]["rules"] == managed_rules(routing)
        weights = [(r["name"], r["weight"]) for r in stored["spec"]["rules"][-1]["backendRefs"]]
        assert weights == [(f"reviews-{v}", w) for v, w in routing.weights]
        seen = b.read_routing("shop", "reviews")
        assert seen.weights == routing.weights and seen.header_routes == routing.header_routes
        assert seen.state is not None and seen.state.step == index and seen.foreign_routes == ()
        observed = b.observed("shop", "reviews")
        assert observed is not None and observed.traffic() == routing.traffic()
    # one write per step (the state moves each time; the approval step only its state), the first a create
    assert (count(kube, "post", HTTPROUTES), route_puts(kube)) == (1, len(ROUTINGS) - 1)


def test_foreign_rules_fields_parents_labels_and_annotations_survive_every_tick(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    create_service(kube, "shop", "reviews-debug", 9080)
    create_service(kube, "shop", "reviews-legacy", 9080)
    created = create_route(kube, team_route())  # as the apiserver stored it (defaults filled in)
    theirs = created["spec"]
    b = backend(kube)
    steady = [ROUTINGS[-1]] * 3  # then steady ticks on the promoted routing (the state still moves: written)
    for index, routing in enumerate([*ROUTINGS, *steady]):  # 10 writes, each then confirmed: 20 ticks
        apply_and_confirm(b, gateway, routing, state_at(index))
        stored = route(kube)
        assert_valid_route(stored)
        rules, headers = stored["spec"]["rules"], len(routing.header_routes)
        assert [r["name"] for r in rules] == [*(r.route_name for r in routing.header_routes), "x-debug", "legacy",
                                              "ramp-primary"]  # fmt: skip
        assert json.dumps(rules[headers]) == json.dumps(theirs["rules"][0])  # foreign rules byte-identical
        assert json.dumps(rules[headers + 1]) == json.dumps(theirs["rules"][2])
        primary = rules[-1]
        assert primary["backendRefs"] == managed_rules(routing)[-1]["backendRefs"]
        for kept in ("filters", "timeouts"):  # their fields on Ramp's rule stay
            assert json.dumps(primary[kept]) == json.dumps(theirs["rules"][1][kept])
        assert stored["spec"]["parentRefs"] == theirs["parentRefs"]  # the mesh parent is already there
        assert stored["spec"]["hostnames"] == ["reviews.example.com"]
        assert stored["metadata"]["labels"] == {"team": "books"}
        notes = stored["metadata"]["annotations"]
        assert (notes["owner"], notes["note"]) == ("team-books", "hand-tuned")
        assert json.loads(notes["ramp.dev/state"])["step"] == index
    assert [e["parentRef"]["name"] for e in route(kube)["status"]["parents"]] == ["reviews", "public", "public"]


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ({"name": "catch-all", "backendRefs": [{"name": "reviews-legacy", "port": 9080}]}, "'catch-all'"),
        ({"matches": [{"headers": [{"name": "x-debug", "value": "1"}]}, {"path": {"type": "PathPrefix", "value": "/"}}],
          "backendRefs": [{"name": "reviews-old", "port": 9080}]}, "#2 (unnamed)"),
    ],
)  # fmt: skip
def test_a_foreign_catch_all_rule_is_refused_and_nothing_is_written(
    kube: KubeHarness, gateway: FakeGatewayController, rule: dict[str, Any], named: str
) -> None:
    body = team_route()
    body["spec"]["rules"].insert(1, rule)
    created = create_route(kube, body)
    b = backend(kube)
    b.load("reviews")
    b.save(state_at(1))
    with pytest.raises(RouteShadowingError) as refused:
        b.apply(THIRDS)
    text = str(refused.value)
    assert named in text and "ramp-primary" in text and "HTTPRoute shop/reviews" in text
    assert "nothing was written" in text
    assert route_puts(kube) == 0 and route(kube) == created


def test_a_foreign_write_between_read_and_write_is_kept_and_ramps_parts_remerged(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    apply_and_confirm(b, gateway, HEADER_STEP, state_at(0))
    b.load("reviews")  # the tick's read...
    b.save(state_at(1))
    api = routes_api(kube)  # ...then someone edits the route before Ramp writes
    theirs: Any = api.get_namespaced_custom_object(G, GW_VERSION, "shop", HTTPROUTES, "reviews")
    canary_debug = {"headers": [{"name": "x-canary-debug", "value": "1"}]}
    theirs["spec"]["rules"].insert(1, {"name": "x-canary-debug", "matches": [canary_debug],
                                       "backendRefs": [{"name": "reviews-v3", "port": 9080}]})  # fmt: skip
    theirs["metadata"]["labels"]["team"] = "books"
    edited: Any = api.replace_namespaced_custom_object(G, GW_VERSION, "shop", HTTPROUTES, "reviews", theirs)
    before = route_puts(kube)
    with pytest.raises(RoutingNotConfirmed, match=r"generation 1 not yet written \(route is at generation 3\)"):
        b.apply(THIRDS)  # 409 on the stale resourceVersion -> re-read, re-merge, written (their edit was 2)
    assert route_puts(kube) == before + 2
    stored = route(kube)
    assert [r["name"] for r in stored["spec"]["rules"]] == ["ramp-header-v3", "x-canary-debug", "ramp-primary"]
    assert stored["spec"]["rules"][1] == edited["spec"]["rules"][1]
    assert stored["spec"]["rules"][2]["backendRefs"] == managed_rules(THIRDS)[-1]["backendRefs"]
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ramp", "team": "books"}
    assert saved_state(kube)["step"] == 1
    gateway.reconcile()
    assert tick(b, THIRDS, state_at(1)) is False


def test_an_injected_conflict_is_retried_on_the_fresh_object(kube: KubeHarness, gateway: FakeGatewayController) -> None:
    b = backend(kube)
    apply_and_confirm(b, gateway, HEADER_STEP, state_at(0))
    b.load("reviews")
    b.save(state_at(1))
    fail_next(kube, "put", 409)  # the apiserver answers the next PUT with a Conflict
    gets = count(kube, "get", HTTPROUTES)
    with pytest.raises(RoutingNotConfirmed, match="not in effect"):
        b.apply(THIRDS)
    assert route_puts(kube) == 2 and count(kube, "get", HTTPROUTES) == gets + 1  # re-read once, written once
    assert route(kube)["spec"]["rules"] == managed_rules(THIRDS) and saved_state(kube)["step"] == 1


# --- acceptance: the route is confirmed only once every parent of Ramp's accepted it ------------------------


def with_parents(routing: DesiredRouting, *parents: ParentRef) -> DesiredRouting:
    return routing.model_copy(update={"parent_refs": parents})


def test_no_status_holds_naming_the_parent_until_the_gateway_accepts_the_current_generation(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    routing = with_parents(HEADER_STEP, ParentRef(group="", kind="Service", name="reviews"), PUBLIC)
    for _ in range(2):  # no gateway controller answers: every tick says so, nothing more is written
        with pytest.raises(RoutingNotConfirmed, match=r"no status from Service reviews yet"):
            tick(b, routing, state_at(0))
    assert (count(kube, "post", HTTPROUTES), route_puts(kube)) == (1, 0)
    gateway.refuse("public", "NotAllowedByListeners", "listener https allows routes from namespace infra only")
    gateway.reconcile()
    with pytest.raises(RoutingNotConfirmed) as held:  # the mesh accepted it, the Gateway did not
        tick(b, routing, state_at(0))
    assert str(held.value).endswith("Gateway infra/public (https) not Accepted (NotAllowedByListeners): listener "
                                    "https allows routes from namespace infra only")  # fmt: skip
    gateway.allow("public")
    gateway.reconcile()
    assert tick(b, routing, state_at(0)) is False
    thirds = with_parents(THIRDS, *routing.parent_refs)
    with pytest.raises(RoutingNotConfirmed, match=r"Service reviews: status for generation 1 not yet written "
                       r"\(route is at generation 2\)"):  # fmt: skip
        tick(b, thirds, state_at(1))  # the next step: the status is stale until the gateway has seen it
    gateway.reconcile()
    assert tick(b, thirds, state_at(1)) is False
    assert route_puts(kube) == 1


def test_a_missing_version_service_holds_with_backend_not_found(kube: KubeHarness) -> None:
    install_httproute_crd(kube)
    create_version_services(kube, "shop", "reviews", ("v1", "v2"))  # reviews-v3 is not deployed yet
    gateway = FakeGatewayController(kube)
    b = backend(kube)
    with pytest.raises(RoutingNotConfirmed, match="no status from Service reviews yet"):
        tick(b, HEADER_STEP, state_at(0))
    gateway.reconcile()
    with pytest.raises(RoutingNotConfirmed) as held:
        tick(b, HEADER_STEP, state_at(0))
    assert 'Service reviews not ResolvedRefs (BackendNotFound): Service "shop/reviews-v3" not found' in str(held.value)
    create_service(kube, "shop", "reviews-v3", 9080)
    gateway.reconcile()
    assert tick(b, HEADER_STEP, state_at(0)) is False
    assert route_puts(kube) == 0  # nothing was rewritten while it waited


def test_another_controllers_acceptance_of_the_same_parent_is_enough_and_its_entry_is_kept(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    with pytest.raises(RoutingNotConfirmed):
        tick(b, HEADER_STEP, state_at(0))
    mesh = {"group": "", "kind": "Service", "name": "reviews"}
    other = FakeGatewayController(kube, controller_name="mesh.example.org/other")
    other.write_status(route(kube), [parent_status(mesh, 1, accepted=(False, "Pending", "not ready"),
                                                   controller="mesh.example.org/other")])  # fmt: skip
    with pytest.raises(RoutingNotConfirmed, match=r"Service reviews not Accepted \(Pending\): not ready"):
        tick(b, HEADER_STEP, state_at(0))
    gateway.reconcile()  # the fake gateway accepts it: one implementation serving the parent is enough
    assert tick(b, HEADER_STEP, state_at(0)) is False
    assert [e["controllerName"] for e in route(kube)["status"]["parents"]] == [
        "mesh.example.org/other", "gateway.example.com/fake-gateway"]  # fmt: skip


def test_a_confirmed_route_is_not_rewritten_by_status_writes_or_a_restart(
    kube: KubeHarness, gateway: FakeGatewayController
) -> None:
    b = backend(kube)
    apply_and_confirm(b, gateway, HEADER_STEP, state_at(0))
    generation = route(kube)["metadata"]["generation"]
    for index in range(3):  # per-tick details change (reason, ticks); the durable state and the routing do not
        loaded = b.load("reviews")
        assert loaded is not None
        b.save(loaded.model_copy(update={"reason": f"gates pass, {290 - index}s left", "ticks": index}))
        assert b.apply(HEADER_STEP) is False
    restarted = backend(kube)  # a new process: reads, finds it accepted, writes nothing
    loaded = restarted.load("reviews")
    assert loaded is not None and loaded.step == 0
    restarted.save(loaded)
    assert restarted.apply(HEADER_STEP) is False
    assert route_puts(kube) == 0 and route(kube)["metadata"]["generation"] == generation
    assert gateway.reconcile() == 0 and gateway.status_writes == 1


# --- the emulator holds the CRD's rules, and hostile reads -------------------------------------------------


def test_the_emulator_evaluates_the_crds_cel_rules_with_kubernetes_field_escaping(kube: KubeHarness) -> None:
    """`namespace` is `__namespace__` in the CRD's rules: two Gateways named alike in two namespaces are two
    parents, two refs to one Gateway need sectionNames (as a real apiserver with the CRD decides)."""
    install_httproute_crd(kube)
    body = team_route()
    body["spec"]["parentRefs"] = [{"name": "public"}, {"name": "public", "namespace": "infra", "sectionName": "https"}]
    create_route(kube, body)
    body["metadata"]["name"] = "reviews-2"
    body["spec"]["parentRefs"] = [{"name": "public"}, {"name": "public", "sectionName": "https"}]
    with pytest.raises(client.ApiException) as refused:
        create_route(kube, body)
    assert refused.value.status == 422
    assert "sectionName must be specified when parentRefs includes 2 or more references" in str(refused.value.body)
    body["spec"]["parentRefs"] = [{"name": "public"}]
    body["spec"]["rules"][2]["matches"].append({"path": {"type": "PathPrefix", "value": "/old"}})
    with pytest.raises(client.ApiException) as rewrite:  # a prefix rewrite needs exactly one PathPrefix match
        create_route(kube, body)
    assert rewrite.value.status == 422 and "exactly one PathPrefix match must be specified" in str(rewrite.value.body)


def doctored(kube: KubeHarness, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The stored route with `change` applied and a new resourceVersion, as a broken apiserver would answer it."""
    found = copy.deepcopy(route(kube))
    change(found)
    found["metadata"]["resourceVersion"] = "999999"
    return found


@pytest.mark.parametrize(
    ("change", "error", "problem"),
    [
        (lambda r: r["spec"].update(rules={"ramp-primary": {}}), MalformedObject,
         "HTTPRoute shop/reviews: spec.rules must be a list of mappings, got a mapping"),
        (lambda r: r["status"].update(parents=[7]), MalformedObject,
         "HTTPRoute shop/reviews: status.parents[0] must be a mapping, got an integer"),
        (lambda r: r["status"]["parents"][0].update(conditions="Accepted"), RoutingNotConfirmed,
         "Service reviews: status conditions are not a list (got a string)"),
    ],
)  # fmt: skip
def test_a_malformed_route_read_is_a_clear_error_and_nothing_is_written_over_it(
    kube: KubeHarness, gateway: FakeGatewayController, change: Callable[[dict[str, Any]], None],
    error: type[Exception], problem: str,
) -> None:  # fmt: skip
    b = backend(kube)
    apply_and_confirm(b, gateway, HEADER_STEP, state_at(0))
    writes = route_puts(kube)
    broken = doctored(kube, change)
    answer_next(kube, "list", {"apiVersion": f"{G}/{GW_VERSION}", "kind": "HTTPRouteList", "metadata": {},
                               "items": [broken]})  # fmt: skip
    with pytest.raises(error) as refused:  # the same routing: only what was read can make it fail
        tick(b, HEADER_STEP, state_at(0))
    assert problem in str(refused.value)
    assert route_puts(kube) == writes  # never written over

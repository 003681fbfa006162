"""IstioBackend against the emulator: create/update flows, merge rules, no-op ticks, DestinationRule."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controller.engine.phases import Phase, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from controller.routing.istio_merge import IstioMergeError, RouteShadowingError
from controller.routing.istio_render import managed_http_routes, virtual_service
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import (
    DR,
    VS,
    G,
    V,
    assert_valid,
    count,
    custom_objects,
    kube_api,
    stored,
    three_versions,
)

FQDN = "reviews.shop.svc.cluster.local"


def backend(kube: KubeHarness) -> IstioBackend:
    b = IstioBackend(kube_api(kube))
    b.track({"reviews": ("shop", "reviews")})
    return b


def state_at(step: int, phase: Phase = Phase.PROGRESSING, started: float = 1000.0, reason: str = "") -> RolloutState:
    return RolloutState(
        rollout="reviews", spec_digest="d1", phase=phase, step=step, step_started_at=started,
        reason=reason or f"step {step + 1}",
    )  # fmt: skip


def routings() -> list[DesiredRouting]:
    return build_plan(three_versions()).all_routings()


def foreign_virtual_service() -> dict[str, Any]:
    """What a team had before Ramp: a debug route, tuned retries on ramp-primary, gateways, tcp, metadata."""
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "VirtualService",
        "metadata": {
            "name": "reviews",
            "namespace": "shop",
            "labels": {"team": "books"},
            "annotations": {"owner": "team-books", "note": "hand-tuned"},
        },
        "spec": {
            "hosts": ["reviews.example.com"],
            "gateways": ["mesh", "shop/public-gateway"],
            "exportTo": [".", "istio-system"],
            "http": [
                {
                    "name": "x-debug",
                    "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                    "route": [{"destination": {"host": "reviews-debug", "port": {"number": 9080}}}],
                },
                {
                    "name": "ramp-primary",
                    "route": [{"destination": {"host": FQDN, "subset": "v1"}, "weight": 100}],
                    "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
                    "timeout": "10s",
                    "headers": {"response": {"add": {"x-served-by": "ramp"}}},
                },
                {
                    "name": "legacy",
                    "match": [{"uri": {"prefix": "/legacy"}}],
                    "route": [{"destination": {"host": "reviews-legacy"}}],
                },
            ],
            "tcp": [
                {"match": [{"port": 3306}], "route": [{"destination": {"host": "mysql", "port": {"number": 3306}}}]}
            ],
        },
    }


def test_missing_objects_are_created_valid_with_the_state_in_the_same_object(kube: KubeHarness) -> None:
    b = backend(kube)
    assert b.load("reviews") is None
    routing = routings()[1]  # the header step: v3 by header, v1/v2 50/50
    state = state_at(0, Phase.HEADER_TEST, reason="step 1/5: header x-version: v3")
    b.save(state)
    assert count(kube, "post", VS) == 0  # save only stages
    assert b.apply(routing) is True
    vs, dr = stored(kube, VS, "shop", "reviews"), stored(kube, DR, "shop", "reviews")
    assert_valid(vs)
    assert_valid(dr)
    assert vs is not None and dr is not None
    assert vs["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ramp"}
    assert vs["spec"]["hosts"] == [FQDN]
    assert vs["spec"]["http"] == managed_http_routes(routing)
    saved = json.loads(vs["metadata"]["annotations"]["ramp.dev/state"])
    assert (saved["phase"], saved["step"], saved["reason"]) == ("HeaderTest", 0, state.reason)
    assert "ticks" not in saved and "last_gates" not in saved
    assert dr["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ramp"}
    assert dr["spec"] == {
        "host": FQDN,
        "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")],
    }
    assert (count(kube, "post", VS), count(kube, "put", VS), count(kube, "post", DR)) == (1, 0, 1)


def test_every_routing_of_the_three_version_plan_is_written_and_read_back(kube: KubeHarness) -> None:
    b = backend(kube)
    for index, routing in enumerate(routings()):
        b.load("reviews")
        b.save(state_at(index, started=1000.0 + index))
        assert b.apply(routing) is True
        vs = stored(kube, VS, "shop", "reviews")
        assert_valid(vs)
        assert vs is not None and vs["spec"]["http"] == managed_http_routes(routing)
        seen = b.read_routing("shop", "reviews")
        assert seen.weights == tuple(routing.live_weights())
        assert seen.header_routes == routing.header_routes
        assert seen.state is not None and seen.state.step == index and seen.foreign_routes == ()
        assert count(kube, "put", VS) == index  # the first was the create
    assert_valid(stored(kube, DR, "shop", "reviews"))
    assert (count(kube, "post", DR), count(kube, "put", DR)) == (1, 0)  # subsets written once


def test_foreign_routes_fields_and_metadata_survive_every_apply(kube: KubeHarness) -> None:
    original = foreign_virtual_service()
    assert_valid(original)
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, copy.deepcopy(original))
    b = backend(kube)
    spec_before = original["spec"]
    for index, routing in enumerate(routings()):
        b.load("reviews")
        b.save(state_at(index))
        b.apply(routing)
        vs = stored(kube, VS, "shop", "reviews")
        assert_valid(vs)
        assert vs is not None
        http = vs["spec"]["http"]
        headers = [r.route_name for r in routing.header_routes]
        assert [r["name"] for r in http] == [*headers, "x-debug", "legacy", "ramp-primary"]
        # foreign routes byte-identical and in their original order
        assert json.dumps(http[len(headers)]) == json.dumps(spec_before["http"][0])
        assert json.dumps(http[len(headers) + 1]) == json.dumps(spec_before["http"][2])
        primary = http[-1]
        assert primary["route"] == managed_http_routes(routing)[-1]["route"]
        for kept in ("retries", "timeout", "headers"):
            assert json.dumps(primary[kept]) == json.dumps(spec_before["http"][1][kept])
        for key in ("gateways", "exportTo", "tcp"):
            assert json.dumps(vs["spec"][key]) == json.dumps(spec_before[key])
        assert vs["spec"]["hosts"] == ["reviews.example.com", FQDN]  # ours added once, theirs kept first
        assert vs["metadata"]["labels"] == {"team": "books"}
        notes = vs["metadata"]["annotations"]
        assert (notes["owner"], notes["note"]) == ("team-books", "hand-tuned")
        assert json.loads(notes["ramp.dev/state"])["step"] == index


def test_short_host_names_count_as_ours(kube: KubeHarness) -> None:
    vs = foreign_virtual_service()
    vs["spec"]["hosts"] = ["reviews"]
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, vs)
    backend(kube).apply(routings()[0])
    found = stored(kube, VS, "shop", "reviews")
    assert found is not None and found["spec"]["hosts"] == ["reviews"]


@pytest.mark.parametrize(
    ("route", "named"),
    [
        ({"name": "catch-all", "route": [{"destination": {"host": "reviews-legacy"}}]}, "'catch-all'"),
        ({"match": [{"uri": {"prefix": "/"}}], "route": [{"destination": {"host": "old"}}]}, "#2 (unnamed)"),
    ],
)
def test_a_foreign_catch_all_route_is_refused_and_nothing_is_written(
    kube: KubeHarness, route: dict[str, Any], named: str
) -> None:
    vs = foreign_virtual_service()
    vs["spec"]["http"].insert(1, route)
    created = custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, vs)
    b = backend(kube)
    b.load("reviews")
    b.save(state_at(1))
    with pytest.raises(RouteShadowingError) as refused:
        b.apply(routings()[2])
    assert named in str(refused.value) and "ramp-primary" in str(refused.value)
    assert "VirtualService shop/reviews" in str(refused.value)
    assert count(kube, "put", VS) == count(kube, "post", DR) == count(kube, "put", DR) == 0
    assert stored(kube, VS, "shop", "reviews") == created


def test_a_steady_rollout_writes_nothing(kube: KubeHarness) -> None:
    b = backend(kube)
    routing = routings()[2]
    b.load("reviews")
    b.save(state_at(1, reason="step 2/5: 33%; gates pass, 300s left"))
    assert b.apply(routing) is True
    writes = (count(kube, "put", VS), count(kube, "post", VS), count(kube, "put", DR), count(kube, "post", DR))
    for tick in range(3):  # per-tick details change (reason, ticks, gate values); the durable state does not
        loaded = b.load("reviews")
        assert loaded is not None
        b.save(loaded.model_copy(update={"reason": f"gates pass, {290 - tick}s left", "ticks": tick + 5}))
        assert b.apply(routing) is False
    fresh = backend(kube)  # a restarted controller, same durable state: still nothing to write
    loaded = fresh.load("reviews")
    assert loaded is not None
    fresh.save(loaded.model_copy(update={"reason": "other text"}))
    assert fresh.apply(routing) is False
    assert (count(kube, "put", VS), count(kube, "post", VS), count(kube, "put", DR), count(kube, "post", DR)) == writes
    fresh.save(loaded.model_copy(update={"step_started_at": 2000.0, "reason": "new step"}))
    assert fresh.apply(routing) is True  # a durable change is written, with the current reason
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None and json.loads(vs["metadata"]["annotations"]["ramp.dev/state"])["reason"] == "new step"
    assert count(kube, "put", VS) == writes[0] + 1


def test_destination_rule_keeps_foreign_subsets_and_policies(kube: KubeHarness) -> None:
    foreign = {
        "apiVersion": f"{G}/{V}",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop", "annotations": {"owner": "team-books"}},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}},
            "subsets": [
                {"name": "canary", "labels": {"track": "canary"}},
                {"name": "v1", "labels": {"version": "v1", "zone": "a"},
                 "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
            ],
        },
    }  # fmt: skip
    assert_valid(foreign)
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", DR, copy.deepcopy(foreign))
    b = backend(kube)
    assert b.apply(routings()[0]) is True
    dr = stored(kube, DR, "shop", "reviews")
    assert_valid(dr)
    assert dr is not None
    assert dr["spec"]["host"] == "reviews" and dr["spec"]["trafficPolicy"] == foreign["spec"]["trafficPolicy"]
    assert dr["spec"]["subsets"] == [
        *foreign["spec"]["subsets"],
        {"name": "v2", "labels": {"version": "v2"}},
        {"name": "v3", "labels": {"version": "v3"}},
    ]
    assert dr["metadata"]["annotations"] == {"owner": "team-books"}
    b.apply(routings()[0])
    assert count(kube, "put", DR) == 1


def test_destination_rule_for_another_host_is_refused(kube: KubeHarness) -> None:
    foreign = {
        "apiVersion": f"{G}/{V}", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"host": "ratings.shop.svc.cluster.local"},
    }  # fmt: skip
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", DR, foreign)
    with pytest.raises(IstioMergeError, match=r"its host 'ratings\.shop\.svc\.cluster\.local' is not"):
        backend(kube).apply(routings()[0])
    assert count(kube, "put", DR) == count(kube, "post", VS) == 0


def test_two_rollouts_cannot_manage_one_service(kube: KubeHarness) -> None:
    with pytest.raises(ValueError, match="both manage service shop/reviews"):
        IstioBackend(kube_api(kube)).track({"a": ("shop", "reviews"), "b": ("shop", "reviews")})


def test_an_untracked_apply_touches_routes_only_and_is_idempotent(kube: KubeHarness) -> None:
    vs = foreign_virtual_service()
    vs["metadata"]["annotations"] = {}
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, vs)
    b = IstioBackend(kube_api(kube))  # e.g. `ramp set-weights`: no rollout tracked, no state to write
    assert b.apply(routings()[2]) is True
    after = stored(kube, VS, "shop", "reviews")
    assert after is not None and after["metadata"]["annotations"] == {}
    assert after["spec"]["http"][-1]["route"] == managed_http_routes(routings()[2])[-1]["route"]
    puts = count(kube, "put", VS)
    assert IstioBackend(kube_api(kube)).apply(routings()[2]) is False
    assert count(kube, "put", VS) == puts


# --- ingress bindings: gateways and extra hosts ---------------------------------------------------------

INGRESS_GATEWAY = "istio-system/ingress"


def ingress_routings(gateways: tuple[str, ...] = ("mesh", INGRESS_GATEWAY)) -> list[DesiredRouting]:
    """The three-version plan, as a spec with `hosts: [shop.example.com]` and `gateways` would plan it."""
    spec = three_versions().model_copy(update={"hosts": ["shop.example.com"], "gateways": list(gateways)})
    return build_plan(spec).all_routings()


def test_a_created_virtual_service_is_bound_to_the_specs_gateways_and_hosts(kube: KubeHarness) -> None:
    b = backend(kube)
    for index, routing in enumerate(ingress_routings()):
        b.load("reviews")
        b.save(state_at(index))
        b.apply(routing)
        vs = stored(kube, VS, "shop", "reviews")
        assert_valid(vs)
        assert vs is not None
        assert vs["spec"]["hosts"] == [FQDN, "shop.example.com"]
        assert vs["spec"]["gateways"] == ["mesh", INGRESS_GATEWAY]
        assert vs["spec"]["http"] == managed_http_routes(routing)
    assert count(kube, "post", VS) == 1


def test_gateways_and_hosts_merge_into_a_foreign_virtual_service_without_disturbing_it(kube: KubeHarness) -> None:
    original = foreign_virtual_service()  # hosts [reviews.example.com], gateways [mesh, shop/public-gateway]
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, copy.deepcopy(original))
    b = backend(kube)
    # "public-gateway" is shop/public-gateway (the VirtualService's namespace), already bound: not added again
    for index, routing in enumerate(ingress_routings(("public-gateway", INGRESS_GATEWAY, "mesh"))):
        b.load("reviews")
        b.save(state_at(index))
        b.apply(routing)
        vs = stored(kube, VS, "shop", "reviews")
        assert_valid(vs)
        assert vs is not None
        assert vs["spec"]["hosts"] == ["reviews.example.com", FQDN, "shop.example.com"]  # theirs first, ours once
        assert vs["spec"]["gateways"] == ["mesh", "shop/public-gateway", INGRESS_GATEWAY]
        http = vs["spec"]["http"]
        headers = len(routing.header_routes)
        assert [r["name"] for r in http][headers:] == ["x-debug", "legacy", "ramp-primary"]
        assert json.dumps(http[headers]) == json.dumps(original["spec"]["http"][0])
        assert json.dumps(http[headers + 1]) == json.dumps(original["spec"]["http"][2])
        for key in ("exportTo", "tcp"):
            assert json.dumps(vs["spec"][key]) == json.dumps(original["spec"][key])
        assert vs["metadata"]["labels"] == {"team": "books"}
    puts = count(kube, "put", VS)
    assert IstioBackend(kube_api(kube)).apply(ingress_routings()[-1]) is False  # already bound: nothing to write
    assert count(kube, "put", VS) == puts


def test_adding_gateways_keeps_the_implicit_mesh_binding_and_nothing_is_ever_unbound(kube: KubeHarness) -> None:
    """A VirtualService without gateways serves the mesh: binding it to an ingress gateway must not take
    the mesh callers away from the routes they use, and a gateway the spec no longer lists stays bound."""
    mesh_only = foreign_virtual_service()
    del mesh_only["spec"]["gateways"]
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, mesh_only)
    b = IstioBackend(kube_api(kube))
    assert b.apply(ingress_routings((INGRESS_GATEWAY,))[0]) is True
    vs = stored(kube, VS, "shop", "reviews")
    assert_valid(vs)
    assert vs is not None and vs["spec"]["gateways"] == ["mesh", INGRESS_GATEWAY]
    b.apply(routings()[2])  # a routing without bindings (e.g. set-weights, or the spec dropped them)
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None and vs["spec"]["gateways"] == ["mesh", INGRESS_GATEWAY]
    assert vs["spec"]["hosts"] == ["reviews.example.com", FQDN, "shop.example.com"]
    assert vs["spec"]["http"][-1]["route"] == managed_http_routes(routings()[2])[-1]["route"]


def test_a_mesh_only_binding_asks_for_no_write_on_a_virtual_service_without_gateways(kube: KubeHarness) -> None:
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, virtual_service(routings()[0]))
    b = IstioBackend(kube_api(kube))
    assert b.apply(ingress_routings(("mesh",))[0]) is True  # the extra host is added...
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None and "gateways" not in vs["spec"]  # ...but mesh is already the default binding
    assert vs["spec"]["hosts"] == [FQDN, "shop.example.com"]


def test_gateways_that_are_not_a_list_of_strings_are_refused_and_nothing_is_written(kube: KubeHarness) -> None:
    broken = foreign_virtual_service()
    broken["spec"]["gateways"] = "mesh"
    created = custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, broken)
    with pytest.raises(IstioMergeError, match=r"VirtualService shop/reviews: spec\.gateways is not a list of strings"):
        IstioBackend(kube_api(kube)).apply(ingress_routings()[0])
    assert count(kube, "put", VS) == 0 and stored(kube, VS, "shop", "reviews") == created

"""Whatever an apiserver (or a person, or another controller) puts in an HTTPRoute, Ramp's readers answer with a
clear error or a reason, never a bare Python exception: a hypothesis fuzz over arbitrary JSON and over mutations
of a real route (each field replaced by junk), through every function the Gateway API router calls on objects it
reads: the structure check, the merge, the read-back, the acceptance check and the status view."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine.phases import Phase
from controller.engine.state_port import StateStoreError
from controller.plan import build_plan
from controller.routing.gateway_api import GatewayApiRoutes
from controller.routing.httproute_render import http_route
from controller.routing.k8s_objects import MalformedObject, RouteMergeError
from controller.spec import RolloutSpec

SPEC = RolloutSpec.model_validate({
    "service": "reviews", "namespace": "shop", "target": "v2", "router": "gateway-api",
    "gateway_api": {"port": 9080, "parent_refs": [{"name": "public", "namespace": "infra", "section_name": "https"},
                                                  {"group": "", "kind": "Service", "name": "reviews"}]},
    "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
})  # fmt: skip
PLAN = build_plan(SPEC)
ROUTING = PLAN.steps[0].routing  # header route + weights
EXPECTED = (MalformedObject, RouteMergeError, StateStoreError)
ROUTES = GatewayApiRoutes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def real_route() -> dict[str, Any]:
    route = http_route(ROUTING)
    route["metadata"].update(resourceVersion="7", generation=3)
    route["metadata"]["annotations"]["ramp.dev/state"] = '{"rollout": "reviews"}'
    route["status"] = {"parents": [{"parentRef": dict(p), "controllerName": "x/y", "conditions": [
        {"type": "Accepted", "status": "True", "observedGeneration": 3},
        {"type": "ResolvedRefs", "status": "True", "observedGeneration": 3}]} for p in route["spec"]["parentRefs"]]}
    return route


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


PATHS = paths(real_route())


def replaced(route: dict[str, Any], path: tuple[Any, ...], junk: Any) -> dict[str, Any]:
    mutated = copy.deepcopy(route)
    node = mutated
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = junk
    return mutated


def exercise(obj: Any) -> None:
    """Every reader of the router on `obj`: only the expected, clear errors may come out."""
    for call in (
        lambda: ROUTES.check(obj, "HTTPRoute shop/reviews"),
        lambda: ROUTES.observed(obj, "shop", "reviews", ROUTING),
        lambda: ROUTES.observed(obj, "shop", "reviews", None),
        lambda: ROUTES.merge(obj, ROUTING, {"ramp.dev/state": "{}"}, {"ramp.dev/command": "x"}),
    ):
        try:
            call()
        except EXPECTED as exc:
            assert str(exc), "an error without a message"
    reason = ROUTES.not_in_effect(obj, ROUTING) if isinstance(obj, dict) else None
    assert reason is None or isinstance(reason, str)
    view = ROUTES.parse("shop", "reviews", obj if isinstance(obj, dict) else None)
    assert view.found == isinstance(obj, dict)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), json_values)
def test_junk_anywhere_in_a_real_route_is_a_clear_error_never_a_crash(path: tuple[Any, ...], junk: Any) -> None:
    exercise(replaced(real_route(), path, junk))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(json_values)
def test_arbitrary_json_is_a_clear_error_never_a_crash(obj: Any) -> None:
    exercise(obj)


def test_the_real_route_is_read_back_accepted_and_merged_as_a_no_op() -> None:
    route = real_route()
    assert ROUTES.observed(route, "shop", "reviews", ROUTING).traffic() == ROUTING.traffic()  # type: ignore[union-attr]
    assert ROUTES.not_in_effect(route, ROUTING) is None
    merged = ROUTES.merge(route, ROUTING, {}, {})
    assert merged == route
    assert PLAN.steps[0].kind == "header" and Phase.HEADER_TEST.value == "HeaderTest"

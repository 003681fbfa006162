"""Merging Ramp's rules into an HTTPRoute others own too, and the tolerant read for `ramp status`.

The foreign-route strategy (`foreign_routes`) lives here and is imported by the CRD tests.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.engine.phases import Phase, RolloutState
from controller.engine.routing_model import DesiredRouting, HeaderRoute, ParentRef
from controller.routing.httproute_merge import (
    MAX_HOSTNAMES,
    MAX_PARENT_REFS,
    GatewayMergeError,
    RouteShadowingError,
    merge_http_route,
    parse_http_routing,
)
from controller.routing.httproute_render import BACKENDS_ANNOTATION, http_route, managed_rules
from controller.routing.httproute_shape import observed_http_routing
from controller.routing.k8s_objects import COMMAND_ANNOTATION, MalformedObject, RouteMergeError
from controller.routing.state_codec import STATE_ANNOTATION, encode_state
from tests.unit.test_httproute_render import PROPERTY, reviews, routings

FOREIGN_RULES: list[dict[str, Any]] = [
    {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
     "backendRefs": [{"name": "api", "port": 8080}],
     "filters": [{"type": "RequestHeaderModifier",
                  "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}]}}],
     "timeouts": {"request": "10s", "backendRequest": "2s"}},
    {"name": "debug", "matches": [{"headers": [{"name": "x-debug", "value": "1"}]}],
     "backendRefs": [{"group": "", "kind": "Service", "name": "debug", "port": 8080, "weight": 1}]},
    {"matches": [{"method": "POST", "path": {"type": "PathPrefix", "value": "/"}}],  # unnamed, by method
     "backendRefs": [{"name": "writer", "port": 8080}]},
    {"name": "old", "matches": [{"path": {"type": "Exact", "value": "/old"}}],
     "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath",
                                                                          "replaceFullPath": "/new"},
                                                                 "statusCode": 301}}]},
    {"name": "search", "matches": [{"queryParams": [{"name": "q", "value": "x"}]},
                                   {"path": {"type": "RegularExpression", "value": "/s/[0-9]+"}}],
     "backendRefs": [{"name": "search", "port": 80, "weight": 3}, {"name": "search-next", "port": 80, "weight": 1}]},
    {"name": "mirror", "matches": [{"path": {"type": "PathPrefix", "value": "/m"}}],
     "backendRefs": [{"name": "m", "port": 80}],
     "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 80},
                                                             "percent": 5}}]},
]  # fmt: skip


@st.composite
def foreign_routes(draw: st.DrawFn, routing: DesiredRouting) -> dict[str, Any]:
    """An HTTPRoute of the same service that a person (or another tool) wrote first: foreign rules (none of
    which takes every request), labels, annotations, its own parent and hostnames, a status, maybe a
    `ramp-primary` rule of its own with a filter and a timeout (handed to Ramp by renaming it)."""
    room = 16 - len(routing.header_routes) - 1
    rules = draw(st.lists(st.sampled_from(FOREIGN_RULES), min_size=1, max_size=min(room, len(FOREIGN_RULES)),
                          unique_by=repr))  # fmt: skip
    rules = draw(st.permutations(rules))
    if draw(st.booleans()):
        handed = {"name": "ramp-primary", "backendRefs": [{"name": "legacy", "port": 80}],
                  "filters": [{"type": "ResponseHeaderModifier",
                               "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "ramp"}]}}],
                  "timeouts": {"request": "30s"}}  # fmt: skip
        rules.insert(draw(st.integers(0, len(rules))), handed)
    parents: list[dict[str, Any]] = [{"name": "internal", "namespace": "infra", "sectionName": "http"}]
    spec: dict[str, Any] = {"parentRefs": parents, "rules": rules}
    if draw(st.booleans()):
        spec["hostnames"] = ["legacy.example.com"]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": routing.service, "namespace": routing.namespace, "resourceVersion": "41", "generation": 3,
            "labels": {"team": "storefront"}, "annotations": {"owner": "storefront", COMMAND_ANNOTATION: "pause"},
        },
        "spec": spec,
        "status": {"parents": [{"parentRef": parents[0], "controllerName": "example.net/gateway", "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "observedGeneration": 3,
             "lastTransitionTime": "2025-01-01T00:00:00Z"}]}]},
    }  # fmt: skip


def merged_over(current: dict[str, Any] | None, routing: DesiredRouting | None = None, **notes: Any) -> dict[str, Any]:
    return merge_http_route(current, routing or reviews(), notes.get("notes", {}), notes.get("remove", {}))


def foreign_route(*rules: dict[str, Any]) -> dict[str, Any]:
    obj = http_route(reviews(header_routes=()))
    obj["spec"]["rules"] = [*rules]
    obj["metadata"]["annotations"] = {"owner": "storefront"}
    return obj


# --- create, and what is kept ---------------------------------------------------------------------------


def test_create_is_the_rendered_route_with_the_notes() -> None:
    merged = merged_over(None, notes={STATE_ANNOTATION: "{}"})
    expected = http_route(reviews())
    expected["metadata"]["annotations"][STATE_ANNOTATION] = "{}"
    assert merged == expected


@PROPERTY
@given(data=st.data(), routing=routings())
def test_foreign_parts_are_kept_exactly_and_ramps_rules_placed_around_them(
    data: st.DataObject, routing: DesiredRouting
) -> None:
    current = data.draw(foreign_routes(routing))
    before = copy.deepcopy(current)
    merged = merge_http_route(current, routing, {STATE_ANNOTATION: "s"}, {})
    assert current == before  # never mutated
    foreign = [r for r in current["spec"]["rules"] if r.get("name") != "ramp-primary"]
    header_count = len(routing.header_routes)
    rules = merged["spec"]["rules"]
    assert rules[header_count:-1] == foreign  # foreign rules, exactly and in their order
    ramp = [{k: v for k, v in r.items() if k in ("name", "matches", "backendRefs")} for r in
            [*rules[:header_count], rules[-1]]]  # fmt: skip
    assert ramp == managed_rules(routing)
    handed = next((r for r in current["spec"]["rules"] if r.get("name") == "ramp-primary"), None)
    if handed is not None:  # a rule renamed ramp-primary keeps its filters and timeouts
        assert rules[-1]["filters"] == handed["filters"] and rules[-1]["timeouts"] == handed["timeouts"]
    meta = merged["metadata"]
    assert meta["labels"] == {"team": "storefront"}
    assert {k: v for k, v in meta["annotations"].items() if k not in (STATE_ANNOTATION, BACKENDS_ANNOTATION)} == (
        current["metadata"]["annotations"]
    )
    assert meta["annotations"][STATE_ANNOTATION] == "s"
    assert merged["status"] == current["status"]
    assert merged["spec"]["parentRefs"][0] == current["spec"]["parentRefs"][0]
    assert merged["spec"]["parentRefs"][1:] == [p for p in http_route(routing)["spec"]["parentRefs"]]
    if "hostnames" in current["spec"]:
        assert merged["spec"]["hostnames"] == ["legacy.example.com", *routing.extra_hosts]
    else:
        assert "hostnames" not in merged["spec"]  # a route for every hostname is not narrowed
    seen = observed_http_routing(merged, routing.namespace, routing.service, routing.backends)
    assert seen is not None and seen.traffic() == routing.traffic()
    assert merge_http_route(merged, routing, {STATE_ANNOTATION: "s"}, {}) == merged  # idempotent


def test_fields_people_add_to_ramps_rules_are_kept_and_stale_ramp_rules_dropped() -> None:
    current = http_route(reviews())
    current["spec"]["rules"][0]["timeouts"] = {"request": "5s"}
    current["spec"]["rules"][1]["filters"] = [
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x", "value": "y"}]}}
    ]
    current["spec"]["rules"][1]["backendRefs"][0]["weight"] = 50  # Ramp's: re-rendered
    current["spec"]["rules"].insert(1, {**managed_rules(reviews())[0], "name": "ramp-header-v3"})  # a past step's
    promoted = reviews(header_routes=(), weights=(("v1", 0), ("v2", 100)))
    merged = merged_over(current, promoted)
    assert [r["name"] for r in merged["spec"]["rules"]] == ["ramp-primary"]
    assert merged["spec"]["rules"][0]["filters"] == current["spec"]["rules"][2]["filters"]
    assert [b["weight"] for b in merged["spec"]["rules"][0]["backendRefs"]] == [0, 100]
    again = merged_over(current)
    assert again["spec"]["rules"][0]["timeouts"] == {"request": "5s"}  # ramp-header-v2 kept its timeout


def test_a_route_without_spec_or_rules_gets_ramps() -> None:
    bare = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "reviews", "namespace": "shop"}}  # fmt: skip
    merged = merged_over(bare)
    assert merged["spec"] == {"parentRefs": http_route(reviews())["spec"]["parentRefs"],
                              "rules": managed_rules(reviews())}  # fmt: skip


# --- annotations ------------------------------------------------------------------------------------------


def test_the_command_is_removed_only_while_it_is_the_one_consumed() -> None:
    current = http_route(reviews())
    current["metadata"]["annotations"][COMMAND_ANNOTATION] = '{"id":"b","command":"resume"}'
    kept = merged_over(current, remove={COMMAND_ANNOTATION: '{"id":"a","command":"pause"}'})
    assert kept["metadata"]["annotations"][COMMAND_ANNOTATION] == '{"id":"b","command":"resume"}'
    gone = merged_over(current, remove={COMMAND_ANNOTATION: '{"id":"b","command":"resume"}'})
    assert COMMAND_ANNOTATION not in gone["metadata"]["annotations"]
    assert (
        gone["metadata"]["annotations"][BACKENDS_ANNOTATION] == current["metadata"]["annotations"][BACKENDS_ANNOTATION]
    )


def test_metadata_is_left_exactly_as_it_was_when_nothing_changes() -> None:
    current = http_route(reviews())
    assert merged_over(current) == current
    current["metadata"]["annotations"][BACKENDS_ANNOTATION] = '{"old":"v1"}'
    assert merged_over(current)["metadata"]["annotations"][BACKENDS_ANNOTATION] == (
        '{"reviews-v1":"v1","reviews-v2":"v2"}'
    )


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "all", "backendRefs": [{"name": "x", "port": 80}]},
        {"name": "all", "matches": []},
        {"name": "all", "matches": [{}]},
        {"name": "all", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
        {"name": "all", "matches": [{"path": {"type": "PathPrefix"}}]},
        {"name": "all", "matches": [{"path": {"value": "/"}, "headers": [], "queryParams": []}]},
        {"name": "all", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}, {}]},
    ],
)
def test_a_foreign_rule_that_takes_every_request_is_refused(rule: dict[str, Any]) -> None:
    current = foreign_route(rule)
    before = copy.deepcopy(current)
    with pytest.raises(RouteShadowingError, match="rule 'all' matches every request") as caught:
        merged_over(current)
    assert "nothing was written" in str(caught.value) and "HTTPRoute shop/reviews" in str(caught.value)
    assert isinstance(caught.value, GatewayMergeError) and isinstance(caught.value, RouteMergeError)
    assert isinstance(caught.value, ValueError)
    assert current == before
    unnamed = foreign_route({"backendRefs": [{"name": "x", "port": 80}]})
    with pytest.raises(RouteShadowingError, match=r"rule #1 \(unnamed\) matches every request"):
        merged_over(unnamed)


@pytest.mark.parametrize(
    "match",
    [
        {"path": {"type": "Exact", "value": "/"}},
        {"path": {"type": "PathPrefix", "value": "/api"}},
        {"path": {"type": "RegularExpression", "value": "/.*"}},
        {"method": "GET"},
        {"headers": [{"name": "x-debug", "value": "1"}]},
        {"queryParams": [{"name": "q", "value": "1"}]},
    ],
)
def test_a_foreign_rule_with_any_condition_is_kept(match: dict[str, Any]) -> None:
    merged = merged_over(foreign_route({"name": "mine", "matches": [match]}))
    assert [r["name"] for r in merged["spec"]["rules"]] == ["ramp-header-v2", "mine", "ramp-primary"]


def test_more_than_16_rules_is_refused_with_the_count() -> None:
    rules = [
        {"name": f"api-{i}", "matches": [{"path": {"type": "PathPrefix", "value": f"/api{i}"}}]} for i in range(15)
    ]
    assert len(merged_over(foreign_route(*rules[:14]))["spec"]["rules"]) == 16
    with pytest.raises(GatewayMergeError, match=r"would have 17 rules \(15 of others \+ 2 of Ramp's\); Gateway API "
                                                "allows 16"):  # fmt: skip
        merged_over(foreign_route(*rules))


def test_more_than_128_matches_is_refused() -> None:
    many = [{"path": {"type": "PathPrefix", "value": f"/p{i}"}} for i in range(64)]
    rules = [{"name": "a", "matches": many}, {"name": "b", "matches": many[:63]}]
    with pytest.raises(GatewayMergeError, match="would have 129 matches in all its rules; Gateway API allows 128"):
        merged_over(foreign_route(*rules))
    assert len(merged_over(foreign_route(rules[0], {**rules[1], "matches": many[:62]}))["spec"]["rules"]) == 4


def test_malformed_current_routes_are_refused() -> None:
    current = foreign_route({"name": "api", "backendRefs": [{"name": "api", "weight": "10"}]})
    with pytest.raises(MalformedObject, match=r"HTTPRoute shop/reviews: spec.rules\[0\].backendRefs\[0\].weight"):
        merged_over(current)
    with pytest.raises(MalformedObject, match=r"spec\.rules must be a list of mappings, got a mapping"):
        merged_over({"metadata": {"name": "reviews"}, "spec": {"rules": {"ramp-primary": {}}}})
    with pytest.raises(MalformedObject, match="metadata must be a mapping"):
        merged_over({"metadata": "reviews"})


def test_no_backends_is_refused_before_anything_is_built() -> None:
    with pytest.raises(ValueError, match="needs the Service of each version"):
        merged_over(http_route(reviews()), reviews(backends=None))


# --- parentRefs and hostnames -------------------------------------------------------------------------------


def test_missing_parents_are_appended_and_none_removed() -> None:
    current = foreign_route({"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]})
    current["spec"]["parentRefs"] = [{"name": "internal", "namespace": "infra", "sectionName": "http"}]
    merged = merged_over(current)
    assert merged["spec"]["parentRefs"] == [
        {"name": "internal", "namespace": "infra", "sectionName": "http"},
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "shop"},
    ]
    # the same parent written with Gateway API's defaults (no group, kind, namespace) is the spec's
    current["spec"]["parentRefs"] = [{"name": "public"}]
    assert merged_over(current)["spec"]["parentRefs"] == [{"name": "public"}]
    assert merged_over(current, reviews(parent_refs=()))["spec"]["parentRefs"] == [{"name": "public"}]


def test_two_refs_to_one_parent_need_distinct_section_names() -> None:
    current = foreign_route({"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]})
    current["spec"]["parentRefs"] = [{"name": "public"}]
    listener = reviews(parent_refs=(ParentRef(name="public", namespace="shop", section_name="https"),))
    with pytest.raises(GatewayMergeError, match=r"would name Gateway shop/public and Gateway shop/public \(https\)"):
        merged_over(current, listener)
    current["spec"]["parentRefs"] = [{"name": "public", "sectionName": "http"}]
    assert merged_over(current, listener)["spec"]["parentRefs"][1]["sectionName"] == "https"
    by_port = reviews(parent_refs=(ParentRef(name="public", namespace="shop", section_name="http", port=8080),))
    with pytest.raises(GatewayMergeError, match="distinct sectionName"):
        merged_over(current, by_port)


def test_at_most_32_parents() -> None:
    current = foreign_route({"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]})
    current["spec"]["parentRefs"] = [{"name": f"gw-{i}"} for i in range(MAX_PARENT_REFS)]
    with pytest.raises(GatewayMergeError, match=r"parentRefs would make 33 \(Gateway API allows 32"):
        merged_over(current)


def test_hostnames_are_appended_only_to_a_route_that_lists_some() -> None:
    routing = reviews(extra_hosts=("reviews.example.com", "shop.example.com"))
    current = foreign_route({"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]})
    current["spec"].pop("hostnames", None)
    assert "hostnames" not in merged_over(current, routing)["spec"]
    current["spec"]["hostnames"] = ["shop.example.com", "legacy.example.com"]
    assert merged_over(current, routing)["spec"]["hostnames"] == [
        "shop.example.com", "legacy.example.com", "reviews.example.com"
    ]  # fmt: skip
    current["spec"]["hostnames"] = [f"h{i}.example.com" for i in range(MAX_HOSTNAMES - 1)]
    with pytest.raises(GatewayMergeError, match="hostnames would make 17"):
        merged_over(current, routing)


# --- parse_http_routing (ramp status) ---------------------------------------------------------------------


def test_status_view_of_a_merged_route() -> None:
    state = RolloutState(rollout="reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1)
    current = foreign_route({"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]},
                            {"matches": [{"method": "POST"}]})  # fmt: skip
    current["metadata"]["resourceVersion"] = "7"
    current["metadata"]["annotations"][COMMAND_ANNOTATION] = "pause"
    merged = merged_over(current, notes={STATE_ANNOTATION: encode_state(state)})
    view = parse_http_routing("shop", "reviews", merged)
    assert view.found and view.problem is None and view.state_error is None
    assert view.weights == (("v1", 90), ("v2", 10))
    assert view.header_routes == reviews().header_routes
    assert view.foreign_routes == ("api", "#3")
    assert view.state is not None and view.state.phase == Phase.PROGRESSING
    assert view.command == "pause" and view.resource_version == "7"
    assert view.annotations["owner"] == "storefront"
    assert parse_http_routing("shop", "reviews", None).found is False


def test_status_view_is_tolerant_of_damage() -> None:
    obj = http_route(reviews(header_routes=(HeaderRoute(header="x-a", value="1", version="v2"),
                                            HeaderRoute(header="x-b", value="2", version="v1"))))  # fmt: skip
    obj["spec"]["rules"][0]["matches"] = "junk"  # the first header rule cannot be read
    obj["spec"]["rules"][2]["backendRefs"].append("junk")
    obj["spec"]["rules"].append(["junk"])
    obj["metadata"]["annotations"][STATE_ANNOTATION] = "{not a state"
    obj["metadata"]["annotations"][BACKENDS_ANNOTATION] = "[]"
    view = parse_http_routing("shop", "reviews", obj)
    assert view.problem == "HTTPRoute shop/reviews: spec.rules[3] must be a mapping, got a list"
    assert view.weights == (("reviews-v1", 90), ("reviews-v2", 10))  # versions unknown: the Services
    assert [h.header for h in view.header_routes] == ["x-b"]
    assert view.state is None and view.state_error is not None
    junk = parse_http_routing("shop", "reviews", {"metadata": "x", "spec": {"rules": {"a": 1}}})
    assert junk.found and junk.weights == () and junk.problem is not None and "metadata" in junk.problem

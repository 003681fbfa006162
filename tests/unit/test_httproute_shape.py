"""Checking HTTPRoutes read from the cluster, reading Ramp's rules back, and whether the route is in effect."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given

from controller.engine.routing_model import DesiredRouting, HeaderRoute, ParentRef, ServiceBackends
from controller.routing.httproute_render import BACKENDS_ANNOTATION, http_route
from controller.routing.httproute_shape import (
    MAX_RULES_READ,
    MESSAGE_LIMIT,
    check_http_route,
    observed_http_routing,
    route_not_accepted,
)
from controller.routing.k8s_objects import MAX_OBJECT_BYTES, MalformedObject
from tests.k8s.crd_validation import defaulted
from tests.unit.test_httproute_render import PROPERTY, reviews, routings

WHERE = "HTTPRoute shop/reviews"
CRD_FILE = Path(__file__).resolve().parents[2] / "controller" / "schemas" / "gateway-api-httproutes-v1.6.1.yaml"
SCHEMA = next(v for v in yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"] if v["name"] == "v1")["schema"][
    "openAPIV3Schema"
]


def route() -> dict[str, Any]:
    return http_route(reviews())


def observed(obj: Any, backends: ServiceBackends | None = None) -> DesiredRouting | None:
    return observed_http_routing(obj, "shop", "reviews", backends)


def malformed(obj: Any) -> str:
    with pytest.raises(MalformedObject) as caught:
        check_http_route(obj, WHERE)
    return str(caught.value)


# --- check_http_route -------------------------------------------------------------------------------------


def test_a_rendered_route_and_a_bare_one_have_the_shape() -> None:
    check_http_route(route(), WHERE)
    check_http_route({"metadata": {"name": "reviews"}}, WHERE)
    check_http_route({"metadata": {"name": "reviews"}, "spec": {"rules": None}, "status": {}}, WHERE)


def foreign(**rule: Any) -> dict[str, Any]:
    obj = route()
    obj["spec"]["rules"].insert(1, {"name": "api", **rule})
    return obj


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o.update(metadata=["x"]), "metadata must be a mapping, got a list"),
        (lambda o: o.pop("metadata"), "metadata is missing"),
        (lambda o: o["metadata"].update(annotations=["a"]), "metadata.annotations must be a mapping, got a list"),
        (lambda o: o["metadata"].update(name=7), "metadata.name must be a string, got an integer"),
        (lambda o: o["metadata"].update(generation="3"), "metadata.generation must be an integer, got a string"),
        (lambda o: o.update(spec=[]), "spec must be a mapping, got a list"),
        (lambda o: o["spec"].update(rules={"a": {}}), "spec.rules must be a list of mappings, got a mapping"),
        (lambda o: o["spec"]["rules"].append("api"), "spec.rules[2] must be a mapping, got a string"),
        (lambda o: o["spec"]["rules"][0].update(name=["x"]), "spec.rules[0].name must be a string, got a list"),
        (lambda o: o["spec"].update(parentRefs={"name": "public"}), "spec.parentRefs must be a list of mappings"),
        (lambda o: o["spec"]["parentRefs"].append("public"), "spec.parentRefs[1] must be a mapping, got a string"),
        (lambda o: o["spec"]["parentRefs"][0].update(port="443"), "spec.parentRefs[0].port must be an integer >= 0"),
        (lambda o: o["spec"]["parentRefs"][0].update(name=None, kind=3), "spec.parentRefs[0].kind must be a string"),
        (lambda o: o["spec"].update(hostnames="a.example.com"), "spec.hostnames must be a list of strings"),
        (lambda o: o["spec"].update(hostnames=["a", 1]), "spec.hostnames must be a list of strings"),
        (lambda o: o.update(status=[]), "status must be a mapping, got a list"),
        (lambda o: o.update(status={"parents": {}}), "status.parents must be a list of mappings, got a mapping"),
        (lambda o: o.update(status={"parents": [None]}), "status.parents[0] must be a mapping, got null"),
    ],
)
def test_malformed_objects_name_the_field(edit: Any, message: str) -> None:
    obj = route()
    edit(obj)
    assert malformed(obj).startswith(f"{WHERE}: {message}")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"backendRefs": {"name": "x"}}, "spec.rules[1].backendRefs must be a list of mappings, got a mapping"),
        ({"backendRefs": ["x"]}, "spec.rules[1].backendRefs[0] must be a mapping, got a string"),
        ({"backendRefs": [{"name": "x", "weight": "10"}]}, "spec.rules[1].backendRefs[0].weight must be an integer"),
        ({"backendRefs": [{"name": "x", "weight": True}]}, "spec.rules[1].backendRefs[0].weight must be an integer"),
        ({"backendRefs": [{"name": "x", "weight": -1}]}, "spec.rules[1].backendRefs[0].weight must be an integer"),
        ({"backendRefs": [{"name": ["x"]}]}, "spec.rules[1].backendRefs[0].name must be a string, got a list"),
        ({"matches": "/api"}, "spec.rules[1].matches must be a list of mappings, got a string"),
        ({"matches": [{"path": "/api"}]}, "spec.rules[1].matches[0].path must be a mapping, got a string"),
        ({"matches": [{"headers": {"x": "1"}}]}, "spec.rules[1].matches[0].headers must be a list of mappings"),
        ({"matches": [{"queryParams": [1]}]}, "spec.rules[1].matches[0].queryParams[0] must be a mapping"),
        ({"filters": {"type": "x"}}, "spec.rules[1].filters must be a list of mappings, got a mapping"),
    ],
)
def test_malformed_foreign_rules_name_the_field(rule: dict[str, Any], message: str) -> None:
    assert malformed(foreign(**rule)).startswith(f"{WHERE}: {message}")


def test_ramps_own_rules_are_left_to_the_read_back_and_the_next_write() -> None:
    """Re-rendered on every write (which repairs them), so the merge may take them; reading them back may not."""
    obj = route()
    obj["spec"]["rules"][1]["backendRefs"][0]["weight"] = "90"
    check_http_route(obj, WHERE)
    with pytest.raises(MalformedObject, match=r"spec.rules\[1\].backendRefs\[0\].weight must be an integer"):
        observed(obj)


def test_size_bounds() -> None:
    obj = route()
    obj["spec"]["rules"] = [{"name": f"r{i}"} for i in range(MAX_RULES_READ + 1)]
    assert malformed(obj) == f"{WHERE}: spec.rules has {MAX_RULES_READ + 1} items (more than {MAX_RULES_READ})"
    obj = route()
    obj["metadata"]["annotations"]["junk"] = "x" * MAX_OBJECT_BYTES
    assert "bytes, more than Kubernetes stores" in malformed(obj)
    assert malformed("reviews") == f"{WHERE}: the object must be a mapping, got a string"


# --- reading Ramp's rules back ---------------------------------------------------------------------------


def names_by_service(routing: DesiredRouting) -> dict[str, str]:
    assert routing.backends is not None
    return {version: name for version, name in routing.backends.services}


def renamed(routing: DesiredRouting, names: dict[str, str]) -> DesiredRouting:
    """`routing` with each version called by `names` (what a read without any version names sees)."""
    headers = tuple(h.model_copy(update={"version": names[h.version]}) for h in routing.header_routes)
    weights = tuple((names[v], w) for v, w in routing.weights)
    return routing.model_copy(update={"header_routes": headers, "weights": weights})


@PROPERTY
@given(routing=routings())
def test_round_trip_every_rendered_routing_reads_back_as_the_same_traffic(routing: DesiredRouting) -> None:
    """Whatever names the versions (the spec's backends, the annotation, nothing) and also after the
    apiserver's defaulting (group, kind, weight... filled in), the read back serves the same requests."""
    rendered = http_route(routing)
    stored = defaulted(SCHEMA, rendered)
    for obj in (rendered, stored):
        by_spec = observed_http_routing(obj, routing.namespace, routing.service, routing.backends)
        by_note = observed_http_routing(obj, routing.namespace, routing.service, None)
        assert by_spec is not None and by_note is not None
        assert by_spec.traffic() == routing.traffic() == by_note.traffic()
        assert by_spec.backends == routing.backends == by_note.backends
        assert by_spec.parent_refs == routing.parent_refs
        assert by_spec.extra_hosts == routing.extra_hosts
        bare = copy.deepcopy(obj)
        del bare["metadata"]["annotations"][BACKENDS_ANNOTATION]
        by_name = observed_http_routing(bare, routing.namespace, routing.service, None)
        assert by_name is not None
        assert by_name.traffic() == renamed(routing, names_by_service(routing)).traffic()


def test_no_primary_rule_is_no_routing() -> None:
    obj = route()
    obj["spec"]["rules"] = [r for r in obj["spec"]["rules"] if r["name"] != "ramp-primary"]
    assert observed(obj) is None
    assert observed({"metadata": {"name": "reviews"}}) is None


def test_weights_as_written_with_gateway_api_defaults() -> None:
    obj = route()
    primary = obj["spec"]["rules"][1]
    del primary["backendRefs"][1]
    del primary["backendRefs"][0]["weight"]
    found = observed(obj)
    assert found is not None and found.weights == (("v1", 100),)  # a lone backendRef takes all traffic
    primary["backendRefs"] = [{"name": "reviews-v1", "port": 9080}, {"name": "reviews-v2", "port": 9080}]
    found = observed(obj)
    assert found is not None and found.weights == (("v1", 1), ("v2", 1))  # default weight 1 each: drift
    primary["backendRefs"][1]["port"] = 9081
    found = observed(obj)
    assert found is not None and found.backends is None  # Ramp's backendRefs disagree on the port: drift


def test_a_service_the_spec_does_not_name_stands_for_itself() -> None:
    obj = route()
    obj["spec"]["rules"][1]["backendRefs"][1]["name"] = "ratings-v2"
    found = observed(obj, reviews().backends)
    assert found is not None and found.weights == (("v1", 90), ("ratings-v2", 10))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rules: rules.append(copy.deepcopy(rules[1])), r"spec.rules\[2\]: a second ramp-primary rule"),
        (lambda rules: rules[1]["matches"][0].update(method="GET"), r"spec.rules\[1\].matches must match every"),
        (lambda rules: rules[1]["matches"][0]["path"].update(value="/api"), r"spec.rules\[1\].matches must match"),
        (lambda rules: rules[1].update(backendRefs=[]), r"spec.rules\[1\].backendRefs must be a non-empty list"),
        (lambda rules: rules[1]["backendRefs"][0].update(kind="ServiceImport"), r"backendRefs\[0\] must be a Service"),
        (lambda rules: rules[1]["backendRefs"][0].update(namespace="other"), r"backendRefs\[0\].namespace must be"),
        (lambda rules: rules[0]["matches"].append({}), r"spec.rules\[0\].matches must be one match"),
        (
            lambda rules: rules[0]["matches"][0]["headers"].append({"name": "x-b", "value": "1"}),
            r"spec.rules\[0\].matches\[0\].headers must be a list of one header match",
        ),
        (
            lambda rules: rules[0]["matches"][0]["headers"][0].update(type="Prefix"),
            r"headers\[0\].type must be Exact or RegularExpression, got 'Prefix'",
        ),
        (
            lambda rules: rules[0]["matches"][0]["headers"][0].update(type="RegularExpression", value="v2.*"),
            r"headers\[0\].value 'v2.\*' is not a pattern Ramp writes",
        ),
        (lambda rules: rules[0]["matches"][0]["headers"][0].update(value=3), r"must have a string name and value"),
        (
            lambda rules: rules[0]["backendRefs"].append(rules[0]["backendRefs"][0]),
            r"spec.rules\[0\].backendRefs must have exactly one Service, got 2",
        ),
        (lambda rules: rules[0]["backendRefs"][0].update(weight=0), r"backendRefs\[0\].weight is 0"),
        (
            lambda rules: rules[0]["matches"][0].update(queryParams=[{"name": "a", "value": "b"}]),
            r"spec.rules\[0\].matches must be one match of PathPrefix / and one header",
        ),
    ],
)
def test_ramp_rules_that_cannot_be_read_are_malformed(edit: Any, message: str) -> None:
    obj = route()
    edit(obj["spec"]["rules"])
    with pytest.raises(MalformedObject, match=f"^{WHERE}: .*{message}"):
        observed(obj)


def test_a_damaged_backends_annotation_is_malformed_only_when_it_is_needed() -> None:
    obj = route()
    obj["metadata"]["annotations"][BACKENDS_ANNOTATION] = '["reviews-v1"]'
    with pytest.raises(MalformedObject, match=r"annotations\['ramp.dev/backends'\] must be a JSON object"):
        observed(obj)
    found = observed(obj, reviews().backends)  # the spec's names need no annotation
    assert found is not None and found.traffic() == reviews().traffic()
    obj["metadata"]["annotations"][BACKENDS_ANNOTATION] = "{not json"
    with pytest.raises(MalformedObject, match="must be a JSON object of Service name to version"):
        observed(obj)


def test_header_match_kinds_read_back() -> None:
    headers = (HeaderRoute(header="X-Canary", value="a.b*", match="prefix", version="v2"),
               HeaderRoute(header="x-r", value="v[0-9]+", match="regex", version="v1"),
               HeaderRoute(header="x-e", value="^(?:v2)$", version="v2"))  # fmt: skip
    found = observed(http_route(reviews(header_routes=headers)))
    assert found is not None and found.header_routes == headers


# --- is the route in effect? -------------------------------------------------------------------------------

PUBLIC = ParentRef(name="public", namespace="shop")
MESH = ParentRef(group="", kind="Service", name="reviews")


def condition(kind: str, status: str = "True", reason: str = "", message: str = "", generation: int = 4) -> Any:
    return {"type": kind, "status": status, "reason": reason or kind, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2025-01-01T00:00:00Z"}  # fmt: skip


def entry(parent: dict[str, Any], *conditions: Any) -> dict[str, Any]:
    found = list(conditions) or [condition("Accepted"), condition("ResolvedRefs")]
    return {"parentRef": parent, "controllerName": "example.net/gateway", "conditions": found}


def with_status(*parents: Any, generation: int | None = 4) -> dict[str, Any]:
    obj = route()
    if generation is not None:
        obj["metadata"]["generation"] = generation
    obj["status"] = {"parents": list(parents)}
    return obj


def test_accepted_by_every_parent_is_in_effect() -> None:
    obj = with_status(entry({"name": "public", "namespace": "shop"}),
                      entry({"group": "", "kind": "Service", "name": "reviews"}))  # fmt: skip
    assert route_not_accepted(obj, [PUBLIC, MESH], "shop") is None
    # Gateway API's defaults: group gateway.networking.k8s.io, kind Gateway, the route's namespace.
    defaults = with_status(entry({"name": "public"}))
    assert route_not_accepted(defaults, [PUBLIC], "shop") is None
    assert route_not_accepted(defaults, [ParentRef(name="public")], "shop") is None
    assert route_not_accepted(defaults, [ParentRef(name="public", namespace="edge")], "shop") == (
        "no status from Gateway edge/public yet"
    )


def test_no_status_yet() -> None:
    obj = route()
    assert route_not_accepted(obj, [PUBLIC], "shop") == "no status from Gateway shop/public yet"
    obj = with_status(entry({"name": "public", "namespace": "shop"}))
    assert route_not_accepted(obj, [PUBLIC, MESH], "shop") == "no status from Service reviews yet"
    listener = ParentRef(name="public", namespace="shop", section_name="https")
    assert route_not_accepted(obj, [listener], "shop") == "no status from Gateway shop/public (https) yet"


def test_refused_by_a_parent_names_condition_reason_and_message() -> None:
    refused = condition("Accepted", "False", "NotAllowedByListeners", "no listener allows routes from shop")
    obj = with_status(entry({"name": "public", "namespace": "shop"}, refused, condition("ResolvedRefs")))
    assert route_not_accepted(obj, [PUBLIC], "shop") == (
        "Gateway shop/public not Accepted (NotAllowedByListeners): no listener allows routes from shop"
    )
    unresolved = condition("ResolvedRefs", "False", "BackendNotFound", "reviews-v2 not found")
    obj = with_status(entry({"name": "public", "namespace": "shop"}, condition("Accepted"), unresolved))
    assert route_not_accepted(obj, [PUBLIC], "shop") == (
        "Gateway shop/public not ResolvedRefs (BackendNotFound): reviews-v2 not found"
    )
    unknown = {"type": "Accepted", "status": "Unknown"}
    obj = with_status(entry({"name": "public", "namespace": "shop"}, unknown, condition("ResolvedRefs")))
    assert route_not_accepted(obj, [PUBLIC], "shop") == "Gateway shop/public not Accepted (no reason given)"


def test_long_messages_are_cut() -> None:
    refused = condition("Accepted", "False", "Invalid", "x" * 5000)
    obj = with_status(entry({"name": "public", "namespace": "shop"}, refused, condition("ResolvedRefs")))
    reason = route_not_accepted(obj, [PUBLIC], "shop")
    assert reason is not None
    assert reason == "Gateway shop/public not Accepted (Invalid): " + "x" * (MESSAGE_LIMIT - 3) + "..."


def test_a_status_for_an_older_generation_is_not_yet_the_answer() -> None:
    old = [condition("Accepted", generation=3), condition("ResolvedRefs", generation=3)]
    obj = with_status(entry({"group": "", "kind": "Service", "name": "reviews"}, *old), generation=4)
    assert route_not_accepted(obj, [MESH], "shop") == (
        "Service reviews: status for generation 3 not yet written (route is at generation 4)"
    )
    # a stale refusal is not reported as the answer either
    stale = [condition("Accepted", "False", "NotAllowedByListeners", generation=3), condition("ResolvedRefs")]
    obj = with_status(entry({"group": "", "kind": "Service", "name": "reviews"}, *stale), generation=4)
    assert "status for generation 3 not yet written" in str(route_not_accepted(obj, [MESH], "shop"))
    # without a generation on either side, the conditions are taken as they are
    unknown = with_status(entry({"group": "", "kind": "Service", "name": "reviews"}, *old), generation=None)
    assert route_not_accepted(unknown, [MESH], "shop") is None


def test_a_missing_condition_is_not_in_effect() -> None:
    obj = with_status(entry({"name": "public", "namespace": "shop"}, condition("Accepted")))
    assert route_not_accepted(obj, [PUBLIC], "shop") == "Gateway shop/public: no ResolvedRefs condition yet"


def test_one_of_several_controllers_accepting_is_enough() -> None:
    refused = entry({"name": "public", "namespace": "shop"}, condition("Accepted", "False", "Other"),
                    condition("ResolvedRefs"))  # fmt: skip
    accepted = entry({"name": "public", "namespace": "shop"})
    assert route_not_accepted(with_status(refused, accepted), [PUBLIC], "shop") is None
    assert route_not_accepted(with_status(refused), [PUBLIC], "shop") == "Gateway shop/public not Accepted (Other)"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("accepted", "the route's status is not a mapping (got a string)"),
        ({"parents": {"public": "ok"}}, "the route's status.parents is not a list (got a mapping)"),
        ({"parents": [None, 3, {"parentRef": "public"}]}, "no status from Gateway shop/public yet (3 unreadable "
                                                          "status entries)"),
        ({"parents": [{"parentRef": {"name": "public"}, "conditions": "ok"}]},
         "Gateway shop/public: status conditions are not a list (got a string)"),
        ({"parents": [{"parentRef": {"name": "public"}, "conditions": [None, "x", {"type": "Accepted"}]}]},
         "Gateway shop/public not Accepted (no reason given)"),
        ({"parents": [{"parentRef": {"name": "public"}, "conditions": [
            {"type": "Accepted", "status": "False", "reason": ["x"], "message": {"m": 1}}]}]},
         "Gateway shop/public not Accepted (no reason given)"),
    ],
)  # fmt: skip
def test_hostile_status_is_a_reason_not_a_crash(status: Any, reason: str) -> None:
    obj = route()
    obj["status"] = status
    assert route_not_accepted(obj, [PUBLIC], "shop") == reason


def test_hostile_metadata_does_not_crash_the_status_check() -> None:
    obj = with_status(entry({"name": "public", "namespace": "shop"}))
    obj["metadata"]["generation"] = "4"
    assert route_not_accepted(obj, [PUBLIC], "shop") is None
    obj["metadata"] = "junk"
    assert route_not_accepted(obj, [PUBLIC], "shop") is None
    assert json.dumps(route_not_accepted({}, [PUBLIC], "shop")) == '"no status from Gateway shop/public yet"'

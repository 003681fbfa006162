"""IstioBackend under hostile API data, through the real kubernetes client against the emulator.

Malformed VirtualServices/DestinationRules give a clear error naming the object and the field, never a bare
Python exception, and are never written over; one malformed LIST item does not turn off the batched read;
a damaged state annotation is a StateDamaged (the runner fails safe, see test_istio_hostile_runner).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from controller.engine.phases import Phase, RolloutState
from controller.engine.state_check import StateDamaged
from controller.k8s.client import KubeError
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from controller.routing.istio_render import managed_http_routes, virtual_service
from controller.routing.k8s_objects import MalformedObject
from controller.state.file_store import StateStoreError
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import DR, VS, G, V, count, custom_objects, kube_api, stored, three_versions

ROUTINGS = build_plan(three_versions()).all_routings()
REF = "VirtualService shop/reviews"


def answer_next(kube: KubeHarness, action: str, payload: Any, times: int = 1) -> None:
    """Answer the next `times` requests of a Kubernetes action ("fetch", "list") with `payload`."""
    start = sum(1 for r in kube.emulator._requests if str(getattr(r.action, "value", "")).lower() == action)
    kube.emulator[action][start : start + times] << payload


def backend(kube: KubeHarness, *services: str) -> IstioBackend:
    b = IstioBackend(kube_api(kube))
    b.track({s: ("shop", s) for s in (services or ("reviews",))})
    return b


def state_at(step: int, rollout: str = "reviews") -> RolloutState:
    return RolloutState(rollout=rollout, spec_digest="d1", phase=Phase.PROGRESSING, step=step,
                        step_started_at=1000.0 + step, reason=f"step {step + 1}")  # fmt: skip


def good_vs(name: str = "reviews") -> dict[str, Any]:
    routing = ROUTINGS[1].model_copy(update={"service": name})
    return virtual_service(routing)


def create(kube: KubeHarness, body: dict[str, Any], plural: str = VS) -> dict[str, Any]:
    created: dict[str, Any] = custom_objects(kube).create_namespaced_custom_object(G, V, "shop", plural, body)
    return created


def with_spec(**spec: Any) -> dict[str, Any]:
    body = good_vs()
    body["spec"].update(spec)
    return body


def foreign_route(**fields: Any) -> dict[str, Any]:
    return {"name": "x-debug", "route": [{"destination": {"host": "debug"}}], **fields}


MALFORMED = {
    "http-a-mapping": (with_spec(http={"ramp-primary": {}}), "spec.http must be a list, got a mapping"),
    "http-item-a-string": (with_spec(http=["ramp-primary"]), "spec.http[0] must be a mapping, got a string"),
    "http-item-a-number": (with_spec(http=[7]), "spec.http[0] must be a mapping, got an integer"),
    "route-name-a-list": (with_spec(http=[foreign_route(name=["x"])]),
                          "spec.http[0].name must be a string, got a list"),
    "match-a-string": (with_spec(http=[foreign_route(match="x-debug")]),
                       "spec.http[0].match must be a list of mappings, got a string"),
    "foreign-route-a-mapping": (with_spec(http=[foreign_route(route={"destination": {"host": "debug"}})]),
                                "spec.http[0].route must be a list of mappings, got a mapping"),
    "foreign-destination-a-string": (with_spec(http=[foreign_route(route=["debug"])]),
                                     "spec.http[0].route[0] must be a mapping, got a string"),
    "hosts-a-string": (with_spec(hosts="reviews"), "spec.hosts must be a list of strings, got a string"),
    "spec-a-list": ({**good_vs(), "spec": [1, 2]}, "spec must be a mapping, got a list"),
    "too-many-routes": (with_spec(http=[foreign_route(name=f"r{i}", match=[{"uri": {"prefix": f"/{i}"}}])
                                        for i in range(1001)]), "spec.http has 1001 routes (more than 1000)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_virtual_service_is_named_with_its_field_and_never_written_over(
    kube: KubeHarness, case: str
) -> None:
    body, message = MALFORMED[case]
    before = create(kube, copy.deepcopy(body))
    b = backend(kube)
    assert b.load("reviews") is None  # metadata and annotations are sound: no state yet
    b.save(state_at(1))
    with pytest.raises(MalformedObject) as refused:
        b.apply(ROUTINGS[2])
    assert str(refused.value) == f"{REF}: {message}"
    assert stored(kube, VS, "shop", "reviews") == before and count(kube, "put", VS) == 0
    assert b.read_routing("shop", "reviews").problem == f"{REF}: {message}"  # status tolerates it too


METADATA = {
    "annotations-a-list": ({"annotations": ["ramp.dev/state"]}, "metadata.annotations must be a mapping, got a list"),
    "annotation-a-number": ({"annotations": {"owner": 7}},
                            "metadata.annotations['owner'] must be a string, got an integer"),
    "name-a-number": ({"name": 12}, "metadata.name must be a string, got an integer"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(METADATA))
def test_malformed_metadata_is_a_clear_error_on_load_and_on_apply(kube: KubeHarness, case: str) -> None:
    create(kube, good_vs())
    meta, message = METADATA[case]
    answer = good_vs()
    answer["metadata"].update(meta, resourceVersion="1")
    answer_next(kube, "fetch", answer, times=2)
    b = backend(kube)
    with pytest.raises(MalformedObject, match=f"^{re.escape(f'{REF}: {message}')}$"):
        b.load("reviews")
    fresh = backend(kube)
    with pytest.raises(MalformedObject, match=r"^VirtualService shop/reviews: metadata\."):
        fresh.apply(ROUTINGS[1])
    assert count(kube, "put", VS) == 0


def test_missing_metadata_a_non_object_answer_and_a_huge_object_are_clear_errors(kube: KubeHarness) -> None:
    create(kube, good_vs())
    b = backend(kube)
    answer_next(kube, "fetch", {"apiVersion": f"{G}/{V}", "kind": "VirtualService", "spec": {}})
    with pytest.raises(MalformedObject, match=rf"^{REF}: metadata is missing$"):
        b.load("reviews")
    answer_next(kube, "fetch", [1, 2, 3])
    with pytest.raises(KubeError, match=r"get virtualservices\.networking\.istio\.io shop/reviews failed .*unexpected"):
        b.load("reviews")
    huge = good_vs()
    huge["metadata"]["resourceVersion"] = "1"
    huge["spec"]["http"].insert(0, foreign_route(match=[{"uri": {"exact": "x" * 2_000_000}}]))
    answer_next(kube, "fetch", huge)
    with pytest.raises(MalformedObject, match=rf"^{REF}: the object is \d+ bytes, more than Kubernetes stores"):
        b.load("reviews")
    assert b.load("reviews") is None  # the real object again: fine


def test_ramp_routes_that_were_tampered_with_are_a_clear_read_back_error_and_are_rewritten(kube: KubeHarness) -> None:
    b = backend(kube)
    b.begin_tick()
    b.load("reviews")
    b.save(state_at(1))
    assert b.apply(ROUTINGS[1]) is True
    api = custom_objects(kube)
    for tamper, message in (
        (lambda r: r[-1]["route"][0].update(weight="50"),
         "spec.http[1].route[0].weight must be an integer >= 0, got a string"),
        (lambda r: r[-1].update(route={"v1": 100}), "spec.http[1].route must be a non-empty list, got a mapping"),
        (lambda r: r[0].update(match="x-version"), "spec.http[0].match must be a list of one mapping, got a string"),
    ):  # fmt: skip
        obj = api.get_namespaced_custom_object(G, V, "shop", VS, "reviews")
        tamper(obj["spec"]["http"])
        api.replace_namespaced_custom_object(G, V, "shop", VS, "reviews", obj)
        b.begin_tick()
        b.load("reviews")
        with pytest.raises(MalformedObject) as unreadable:
            b.observed("shop", "reviews")
        assert str(unreadable.value) == f"{REF}: {message}"
        assert b.apply(ROUTINGS[1]) is True  # Ramp's own routes are re-rendered: repaired
        vs = stored(kube, VS, "shop", "reviews")
        assert vs is not None and vs["spec"]["http"] == managed_http_routes(ROUTINGS[1])
        b.begin_tick()
        b.load("reviews")
        seen = b.observed("shop", "reviews")
        assert seen is not None and seen.traffic() == ROUTINGS[1].traffic()


def test_a_malformed_destination_rule_is_named_and_not_written(kube: KubeHarness) -> None:
    rule = {"apiVersion": f"{G}/{V}", "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": {"v1": {"labels": {"version": "v1"}}}}}  # fmt: skip
    before = create(kube, rule, DR)
    b = backend(kube)
    b.load("reviews")
    message = "DestinationRule shop/reviews: spec.subsets must be a list, got a mapping"
    with pytest.raises(MalformedObject, match=f"^{re.escape(message)}$"):
        b.apply(ROUTINGS[1])
    assert stored(kube, DR, "shop", "reviews") == before and stored(kube, VS, "shop", "reviews") is None


def test_one_malformed_list_item_does_not_turn_off_the_batched_read_for_the_others(kube: KubeHarness) -> None:
    writer = backend(kube, "a", "b", "c")
    for name in ("a", "b", "c"):
        writer.load(name)
        writer.save(state_at(1, name))
        writer.apply(ROUTINGS[1].model_copy(update={"service": name}))
    b = backend(kube, "a", "b", "c")
    real = [o for o in kube.objects(G, V, VS) if o["metadata"]["name"] in ("a", "c")]
    broken_b = {**stored(kube, VS, "shop", "b"), "spec": {"http": {"oops": 1}}}  # type: ignore[dict-item]
    answer_next(kube, "list", {"apiVersion": "v1", "kind": "List", "items": [*real, broken_b, "junk", {"spec": {}}]})
    gets = count(kube, "get", VS)
    b.begin_tick()
    assert count(kube, "get", VS) == gets + 1  # the one LIST
    states = {name: b.load(name) for name in ("a", "b", "c")}
    assert all(s is not None and s.step == 1 for s in states.values())
    # unnamed items: services missing from the LIST are read one by one (b was listed, under its name)
    assert count(kube, "get", VS) == gets + 1
    with pytest.raises(MalformedObject, match=r"^VirtualService shop/b: spec.http must be a list, got a mapping$"):
        b.apply(ROUTINGS[1].model_copy(update={"service": "b"}))
    assert b.apply(ROUTINGS[1].model_copy(update={"service": "a"})) is False


def test_a_list_without_items_falls_back_to_one_read_per_service(kube: KubeHarness) -> None:
    create(kube, good_vs("a"))
    b = backend(kube, "a")
    answer_next(kube, "list", {"kind": "List", "items": {"a": 1}})
    b.begin_tick()  # logged; nothing prefetched
    gets = count(kube, "get", VS)
    assert b.load("a") is None and count(kube, "get", VS) == gets + 1


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{not json", "is unreadable"),
        ('{"rollout": "reviews", "phase": "Sideways"}', "is unreadable"),
        ('{"rollout": "reviews", "spec_digest": "d", "step": "three"}', "is unreadable"),
        ("x" * (256 * 1024 + 1), "is 262145 bytes, more than Kubernetes allows"),
    ],
)
def test_a_damaged_state_annotation_is_state_damaged_and_can_be_kept_aside(
    kube: KubeHarness, raw: str, problem: str
) -> None:
    body = good_vs()
    body["metadata"]["annotations"] = {"ramp.dev/state": raw}
    create(kube, body)
    b = backend(kube)
    with pytest.raises(StateStoreError, match=rf"^{REF}: annotation ramp.dev/state {problem}") as damaged:
        b.load("reviews")
    assert isinstance(damaged.value, StateDamaged)
    kept = b.quarantine("reviews", str(damaged.value))
    assert kept is not None and kept.startswith(f"annotation ramp.dev/state-damaged of {REF}")
    with pytest.raises(StateStoreError):  # still damaged: nothing of an earlier state is used over it
        b.load("reviews")


def test_a_state_annotation_that_is_not_a_string_is_state_damaged(kube: KubeHarness) -> None:
    create(kube, good_vs())
    answer = good_vs()
    answer["metadata"].update(resourceVersion="5", annotations={"ramp.dev/state": {"phase": "Promoted"}})
    answer_next(kube, "fetch", answer)
    with pytest.raises(StateStoreError, match=rf"^{REF}: annotation ramp.dev/state must be a string, got a mapping"):
        backend(kube).load("reviews")


def test_status_reads_tolerate_hostile_weights(kube: KubeHarness) -> None:
    body = good_vs()
    body["spec"]["http"][-1]["route"][0]["weight"] = "fifty"
    create(kube, body)
    seen = backend(kube).read_routing("shop", "reviews")
    assert seen.found and seen.weights == (("v2", 50),)
    assert seen.problem is None  # Ramp's own route: re-rendered on write; only a read-back names it

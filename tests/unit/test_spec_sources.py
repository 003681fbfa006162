"""Specs from a directory and from RampRollout resources: same validation, one owner per service."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from controller.spec_directory import SpecDirectory
from controller.spec_sources import CombinedSpecSource

FILE_SPEC = """\
service: reviews
namespace: shop
versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
target: v2
"""


def resource(name: str = "cart", namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": name,
        "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "target": "v2",
    }
    body.update(spec)
    return {
        "apiVersion": "ramp.dev/v1", "kind": "RampRollout",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 3,
                     "resourceVersion": "77", "annotations": {"team": "a"}},
        "spec": body,
    }  # fmt: skip


class FakeCache:
    def __init__(self) -> None:
        self.version = 0
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.listed = True  # every watched namespace listed once

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(meta["namespace"], meta["name"])] = obj
        self.version += 1

    def delete(self, namespace: str, name: str) -> None:
        del self.objects[(namespace, name)]
        self.version += 1

    def snapshot(self) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
        return self.version, copy.deepcopy(self.objects)

    def synced(self) -> bool:
        return self.listed


def source(tmp_path: Path, allowed: frozenset[str] | None = None) -> tuple[CombinedSpecSource, FakeCache]:
    cache = FakeCache()
    return CombinedSpecSource(SpecDirectory(tmp_path, allowed), cache), cache


def test_a_valid_resource_runs_with_its_reference_and_the_same_defaults_as_a_file(tmp_path: Path) -> None:
    combined, cache = source(tmp_path)
    cache.put(resource())
    assert combined.refresh()
    (rollout,) = combined.rollouts
    assert rollout.name == "cart" and rollout.spec.namespace == "shop" and rollout.source is None
    assert rollout.resource is not None and (rollout.resource.uid, rollout.resource.generation) == ("uid-cart", 3)
    assert len(rollout.spec.effective_steps) == 4 and rollout.spec.progress_deadline == 600.0
    assert combined.rollout_for(("shop", "cart")) is rollout
    assert not combined.refresh(), "nothing changed: no rebuild"


def test_an_invalid_resource_is_refused_as_a_whole_naming_the_field(tmp_path: Path) -> None:
    combined, cache = source(tmp_path)
    cache.put(resource(target="v9", steps=[{"weight": 10, "duration": "5q"}]))
    combined.refresh()
    assert combined.rollouts == []
    refusal = combined.refusals[("shop", "cart")]
    assert refusal.kind == "InvalidSpec" and refusal.generation == 3
    assert "spec.steps.0.duration: invalid duration '5q'" in refusal.message
    assert any(p.file == "RampRollout shop/cart" for p in combined.problems)


def test_a_resource_and_a_file_for_one_service_are_a_clash_reported_on_both(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(FILE_SPEC)
    combined, cache = source(tmp_path)
    cache.put(resource("reviews"))
    cache.put(resource("cart"))
    combined.refresh()
    assert [r.name for r in combined.rollouts] == ["cart"], "neither owner of reviews runs"
    refusal = combined.refusals[("shop", "reviews")]
    assert refusal.kind == "OwnerClash" and str(tmp_path / "reviews.yaml") in refusal.message
    file_problems = [p for p in combined.problems if p.file == str(tmp_path / "reviews.yaml")]
    assert file_problems and "RampRollout shop/reviews" in file_problems[0].reason
    cache.delete("shop", "reviews")  # the clash resolved: the file runs again
    combined.refresh()
    assert sorted(r.name for r in combined.rollouts) == ["cart", "reviews"]
    assert combined.rollout_for(("shop", "reviews")) is None and combined.refusals == {}


def test_a_resource_outside_the_managed_namespaces_is_refused(tmp_path: Path) -> None:
    combined, cache = source(tmp_path, frozenset({"shop"}))
    cache.put(resource("cart", namespace="other"))
    combined.refresh()
    assert combined.rollouts == [] and combined.refusals[("other", "cart")].kind == "NamespaceNotManaged"


def test_spec_name_and_namespace_must_match_the_metadata(tmp_path: Path) -> None:
    combined, cache = source(tmp_path)
    obj = resource("cart")
    obj["spec"].update(name="other", namespace="elsewhere")
    cache.put(obj)
    combined.refresh()
    message = combined.refusals[("shop", "cart")].message
    assert "spec.name 'other' differs from metadata.name 'cart'" in message
    assert "spec.namespace 'elsewhere' differs from the resource's namespace 'shop'" in message


def test_deleting_a_resource_stops_managing_it(tmp_path: Path) -> None:
    combined, cache = source(tmp_path)
    cache.put(resource())
    combined.refresh()
    cache.delete("shop", "cart")
    assert combined.refresh() and combined.rollouts == []


def test_a_malformed_object_is_refused_never_a_crash(tmp_path: Path) -> None:
    combined, cache = source(tmp_path)
    for broken in (
        {"metadata": "x"},
        {"metadata": {"name": "bad"}, "spec": ["not", "a", "mapping"]},
        {"metadata": {"name": "bad2"}, "spec": {"service": 7}},
    ):
        cache.objects[("shop", f"b{cache.version}")] = {"apiVersion": "ramp.dev/v1", "kind": "RampRollout", **broken}
        cache.version += 1
    combined.refresh()
    assert combined.rollouts == [] and len(combined.refusals) == 3
    assert all(r.kind == "InvalidSpec" for r in combined.refusals.values())


def test_before_the_first_list_nothing_runs_not_even_a_file_and_the_wait_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(FILE_SPEC)
    combined, cache = source(tmp_path)
    cache.listed = False
    assert combined.refresh()
    assert combined.rollouts == [] and combined.refusals == {}
    (waiting,) = combined.problems
    assert waiting.file == str(tmp_path) and "waiting for the first list of RampRollout resources" in waiting.reason
    assert "no spec runs (files included)" in waiting.reason
    assert not combined.refresh(), "still waiting, nothing changed"
    cache.listed = True  # the list completed and found nothing: the version counter did not move
    assert combined.refresh()
    assert [r.name for r in combined.rollouts] == ["reviews"] and combined.problems == []


def test_a_resource_seen_by_a_partial_list_never_lets_a_clashing_file_run_first(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(FILE_SPEC)
    combined, cache = source(tmp_path)
    cache.listed = False
    combined.refresh()
    assert combined.rollouts == []
    cache.put(resource(name="reviews"))  # the list arrives: a resource for the same service
    cache.listed = True
    assert combined.refresh()
    assert combined.rollouts == [], "a clash: neither owner runs"
    assert combined.refusals[("shop", "reviews")].kind == "OwnerClash"
    assert any("also claimed" in p.reason and p.file.endswith("reviews.yaml") for p in combined.problems)

"""Planning: a valid spec -> baseline, one routing per step, promoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.engine.routing_model import HeaderRoute
from controller.plan import Plan, build_plan
from controller.spec_loader import load_spec, parse_spec_text

SPECS = Path(__file__).resolve().parents[2] / "rollout-specs"


def plan_of(name: str) -> Plan:
    return build_plan(load_spec(SPECS / name))


def weights(plan: Plan) -> list[dict[str, int]]:
    return [dict(step.routing.weights) for step in plan.steps]


def test_demo_plan() -> None:
    plan = plan_of("demo.yaml")
    assert (plan.rollout, plan.target) == ("demo", "v2")
    assert [s.kind for s in plan.steps] == ["header", "weight", "weight", "weight"]
    assert weights(plan) == [
        {"v1": 100, "v2": 0},
        {"v1": 90, "v2": 10},
        {"v1": 50, "v2": 50},
        {"v1": 0, "v2": 100},
    ]
    assert [s.target_percent for s in plan.steps] == [0, 10, 50, 100]
    assert [s.duration for s in plan.steps] == [10.0, 10.0, 10.0, 5.0]
    assert [s.label for s in plan.steps] == ["header x-version: v2", "10%", "50%", "100%"]
    header = HeaderRoute(header="x-version", value="v2", match="exact", version="v2")
    # The header step sends only x-version: v2 requests to v2, and that route stays for later steps.
    assert [s.routing.header_routes for s in plan.steps] == [(header,)] * 4
    for step in plan.steps:
        routing = step.routing
        assert (routing.service, routing.namespace) == ("demo", "default")
        assert routing.host == "demo.default.svc.cluster.local"
        assert routing.versions == ("v1", "v2")


def test_three_versions_plan() -> None:
    plan = plan_of("three-versions.yaml")
    assert [s.kind for s in plan.steps] == ["header", "traffic", "approval", "traffic", "traffic"]
    assert weights(plan) == [
        {"v1": 50, "v2": 50, "v3": 0},  # header test: the v1/v2 split is untouched
        {"v1": 34, "v2": 33, "v3": 33},  # 50/50/50: a third each, exact integers
        {"v1": 34, "v2": 33, "v3": 33},  # approval keeps the previous routing
        {"v1": 50, "v2": 0, "v3": 50},  # retire v2
        {"v1": 0, "v2": 0, "v3": 100},  # retire v1
    ]
    for step in plan.steps:
        assert sum(w for _, w in step.routing.weights) == 100
    assert [s.target_percent for s in plan.steps] == [0, 33, 33, 50, 100]
    assert [s.duration for s in plan.steps] == [120.0, 300.0, 0.0, 300.0, 60.0]
    assert plan.steps[2].label == "manual approval"
    # Retired versions keep their subsets but get no destination in the route.
    assert plan.steps[3].routing.versions == ("v1", "v2", "v3")
    assert plan.steps[3].routing.live_weights() == [("v1", 50), ("v3", 50)]
    assert plan.stable_versions == ("v1", "v2")


def test_default_steps() -> None:
    plan = plan_of("defaults.yaml")
    assert [s.kind for s in plan.steps] == ["header", "weight", "weight", "weight"]
    assert weights(plan) == [
        {"v1": 100, "v2": 0},
        {"v1": 90, "v2": 10},
        {"v1": 50, "v2": 50},
        {"v1": 0, "v2": 100},
    ]
    assert [s.duration for s in plan.steps] == [60.0] * 4
    route = plan.steps[0].routing.header_routes[0]
    assert (route.header, route.value, route.match, route.version) == ("x-version", "v2", "exact", "v2")
    assert plan.steps[0].routing.host == "checkout.payments.svc.cluster.local"


@pytest.mark.parametrize("name", ["demo.yaml", "three-versions.yaml", "defaults.yaml"])
def test_baseline_and_promoted_states(name: str) -> None:
    spec = load_spec(SPECS / name)
    plan = build_plan(spec)
    assert plan.baseline.header_routes == ()
    assert plan.promoted.header_routes == ()
    assert dict(plan.promoted.weights) == {v.name: (100 if v.name == spec.target else 0) for v in spec.versions}
    assert plan.promoted.live_weights() == [(spec.target, 100)]
    assert plan.all_routings() == [plan.baseline, *(s.routing for s in plan.steps), plan.promoted]
    assert plan.routing_for_step(1) == plan.steps[1].routing
    assert [s.index for s in plan.steps] == list(range(len(plan.steps)))


def test_baseline_is_the_rollback_target_with_exact_percentages() -> None:
    plan = plan_of("three-versions.yaml")
    assert dict(plan.baseline.weights) == {"v1": 50, "v2": 50, "v3": 0}
    spec = parse_spec_text(
        "service: s\nversions:\n  - {name: a, weight: 1}\n  - {name: b, weight: 1}\n  - {name: c, weight: 1}\n"
        "  - {name: d, weight: 0}\ntarget: d\n",
        "inline.yaml",
    )
    assert dict(build_plan(spec).baseline.weights) == {"a": 34, "b": 33, "c": 33, "d": 0}


def test_weight_step_keeps_stable_proportions() -> None:
    spec = parse_spec_text(
        "service: s\nversions:\n  - {name: v1, weight: 60}\n  - {name: v2, weight: 40}\n"
        "  - {name: v3, weight: 0}\ntarget: v3\nsteps:\n  - weight: 10\n  - approval: {}\n  - weight: 100\n",
        "inline.yaml",
    )
    plan = build_plan(spec)
    assert weights(plan) == [
        {"v1": 54, "v2": 36, "v3": 10},
        {"v1": 54, "v2": 36, "v3": 10},
        {"v1": 0, "v2": 0, "v3": 100},
    ]
    assert [s.duration for s in plan.steps] == [60.0, 0.0, 60.0]
    assert all(s.routing.header_routes == () for s in plan.steps)


def test_header_step_after_an_approval_keeps_the_target_at_zero() -> None:
    spec = parse_spec_text(
        "service: s\nversions:\n  - {name: v1, weight: 100}\n  - {name: v2, weight: 0}\ntarget: v2\nsteps:\n"
        "  - approval: {}\n  - header: {name: x-canary, value: 'yes', match: prefix}\n  - weight: 20\n",
        "inline.yaml",
    )
    plan = build_plan(spec)
    assert weights(plan) == [{"v1": 100, "v2": 0}, {"v1": 100, "v2": 0}, {"v1": 80, "v2": 20}]
    assert plan.steps[0].routing.header_routes == ()
    assert plan.steps[1].routing.header_routes == (
        HeaderRoute(header="x-canary", value="yes", match="prefix", version="v2"),
    )
    assert plan.steps[1].label == "header x-canary: yes"


def test_weight_step_after_traffic_step_keeps_retired_versions_retired() -> None:
    spec = parse_spec_text(
        """
service: reviews
versions: [{name: v1, weight: 50}, {name: v2, weight: 50}, {name: v3, weight: 0}]
target: v3
steps:
  - {traffic: {v1: 50, v2: 0, v3: 10}, duration: 1s}
  - {weight: 60, duration: 1s}
""",
        "retire.yaml",
    )
    plan = build_plan(spec)
    assert dict(plan.steps[0].routing.weights) == {"v1": 83, "v2": 0, "v3": 17}
    assert dict(plan.steps[1].routing.weights) == {"v1": 40, "v2": 0, "v3": 60}


def test_header_step_keeps_traffic_the_target_already_has() -> None:
    spec = parse_spec_text(
        """
service: reviews
versions: [{name: v1, weight: 90}, {name: v2, weight: 10}]
target: v2
steps:
  - {header: {value: v2}, duration: 1s}
  - {weight: 50, duration: 1s}
""",
        "partial.yaml",
    )
    plan = build_plan(spec)
    assert dict(plan.steps[0].routing.weights) == {"v1": 90, "v2": 10}
    assert plan.steps[0].routing.header_routes[0].version == "v2"

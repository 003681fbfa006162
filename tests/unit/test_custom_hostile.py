"""Fuzzed custom-query answers: parsing never raises, keeps only finite non-negative values, and a hostile
element for a rollout's version (or one that cannot be attributed) makes its custom gate *no data*, never a
pass, while the other rollouts sharing the query are judged as usual."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.analysis.custom_metrics import gate_queries, parse_custom
from controller.analysis.gates import Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot, VersionMetrics
from controller.spec_loader import parse_spec_text

SEL = 'destination_service_name=~"{{ service }}", destination_workload_namespace=~"{{ namespace }}"'
BY = "destination_workload_namespace, destination_service_name, destination_version"


def rollout(service: str) -> Any:
    return parse_spec_text(
        f"service: {service}\nnamespace: prod\nversions: [{{name: v1, weight: 90}}, {{name: v2, weight: 10}}]\n"
        f"target: v2\ngates:\n  - {{name: lag, metric: custom, max: 5, query: 'sum by ({BY}) (x{{{SEL}}})'}}\n",
        f"{service}.yaml",
    )


SHOP, CART = rollout("shop"), rollout("cart")
(QUERY,) = gate_queries(SHOP.gates[0], SHOP).all
assert gate_queries(CART.gates[0], CART).value == QUERY  # the two rollouts share the query


def labels(service: str, version: str) -> dict[str, str]:
    return {
        "destination_workload_namespace": "prod", "destination_service_name": service, "destination_version": version
    }


def good(service: str, version: str, value: float = 1.0) -> dict[str, Any]:
    return {"metric": labels(service, version), "value": [1700000000.0, f"{value:g}"]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
bad_numbers = st.sampled_from(["NaN", "nan", "+Inf", "-Inf", "inf", "1e999", "-0.5", "-1", "", "0x10", "1,5", " "])
bad_values = st.one_of(
    bad_numbers.map(lambda n: [1700000000.0, n]),
    json_values.filter(lambda v: not (isinstance(v, list) and len(v) == 2)),
    st.tuples(json_values.filter(lambda t: not isinstance(t, int | float) or isinstance(t, bool)), st.just("1"))
    .map(list),
    st.tuples(st.just(1700000000.0), json_values.filter(lambda v: not isinstance(v, str))).map(list),
)


@st.composite
def hostile_for_shop_v2(draw: st.DrawFn) -> Any:
    """An element that belongs to shop's v2 (or to nobody): bad value, bad labels, or not an element at all."""
    kind = draw(st.sampled_from(["value", "labels", "element", "twice"]))
    if kind == "value":
        return [{"metric": labels("shop", "v2"), "value": draw(bad_values)}]
    if kind == "labels":
        broken = dict(labels("shop", "v2"))
        key = draw(st.sampled_from(sorted(broken)))
        if draw(st.booleans()):
            del broken[key]
        else:
            broken[key] = draw(json_values.filter(lambda v: not isinstance(v, str)))
        return [{"metric": broken, "value": [1700000000.0, "1"]}]
    if kind == "element":
        return [draw(json_values.filter(lambda v: not isinstance(v, dict) or "metric" not in v))]
    return [good("shop", "v2"), good("shop", "v2", 2.0)]


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values | st.builds(good, st.sampled_from(["shop", "cart"]), st.sampled_from(["v1", "v2"]),
                                         st.floats(min_value=0, max_value=1e12)), max_size=8))  # fmt: skip
def test_parsing_never_raises_and_keeps_only_finite_non_negative_values(result: list[Any]) -> None:
    parsed = parse_custom(result, QUERY)
    for key, value in parsed.values.items():
        assert value >= 0 and value == value and value != float("inf"), (key, value)
    for reason in parsed.problems.values():
        assert reason.startswith("Prometheus returned ") and "\n" not in reason


@settings(max_examples=300, deadline=None)
@given(hostile_for_shop_v2(), st.permutations(range(4)))
def test_a_hostile_element_never_passes_the_rollout_it_belongs_to(hostile: list[Any], order: list[int]) -> None:
    healthy = [good("shop", "v1"), good("cart", "v1"), good("cart", "v2"), good("shop", "v2")]
    elements = [healthy[i] for i in order if healthy[i]["metric"] != labels("shop", "v2")] + hostile
    parsed = parse_custom(elements, QUERY)
    snapshot = MetricsSnapshot(
        window_seconds=30,
        by_workload={("prod", s, v): VersionMetrics(requests=100) for s in ("shop", "cart") for v in ("v1", "v2")},
        custom={QUERY.id: parsed.values},
        problems=parsed.problems,
    )
    shop = evaluate_gates(SHOP, ("v1",), snapshot)
    assert shop.verdict == Verdict.NO_DATA, shop.results
    cart = evaluate_gates(CART, ("v1",), snapshot)
    attributable = all(isinstance(e, dict) and isinstance(e.get("metric"), dict)
                       and e["metric"].get("destination_service_name") == "shop"
                       and e["metric"].get("destination_workload_namespace") == "prod" for e in hostile)  # fmt: skip
    if attributable:
        assert cart.verdict == Verdict.PASS, cart.results  # only what the element belongs to is blanked
    else:
        assert cart.verdict in (Verdict.PASS, Verdict.NO_DATA)

"""Weight maths: relative weights -> integer percentages that sum to exactly 100."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.weights import apportion, display_percentages, integer_percentages, target_share

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)
weight_maps = st.dictionaries(names, st.integers(0, 1_000_000), min_size=1, max_size=8).filter(
    lambda w: sum(w.values()) > 0
)


def test_three_equal_weights() -> None:
    assert integer_percentages({"v1": 50, "v2": 50, "v3": 50}) == {"v1": 34, "v2": 33, "v3": 33}
    assert display_percentages({"v1": 50, "v2": 50, "v3": 50}) == {"v1": 33.4, "v2": 33.3, "v3": 33.3}


def test_ties_go_to_the_version_listed_first() -> None:
    assert integer_percentages({"v3": 1, "v2": 1, "v1": 1}) == {"v3": 34, "v2": 33, "v1": 33}
    assert integer_percentages({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1}) == {
        "a": 17, "b": 17, "c": 17, "d": 17, "e": 16, "f": 16,
    }  # fmt: skip


def test_simple_shares() -> None:
    assert integer_percentages({"v1": 100, "v2": 0}) == {"v1": 100, "v2": 0}
    assert integer_percentages({"v1": 1, "v2": 1}) == {"v1": 50, "v2": 50}
    assert integer_percentages({"v1": 50, "v2": 0, "v3": 50}) == {"v1": 50, "v2": 0, "v3": 50}
    assert integer_percentages({"v1": 2, "v2": 1}) == {"v1": 67, "v2": 33}
    assert display_percentages({"v1": 2, "v2": 1}) == {"v1": 66.7, "v2": 33.3}


def test_invalid_weights() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        integer_percentages({"v1": 0, "v2": 0})
    with pytest.raises(ValueError, match="positive sum"):
        integer_percentages({})
    with pytest.raises(ValueError, match=">= 0"):
        integer_percentages({"v1": 10, "v2": -1})


@PROPERTY
@given(weight_maps)
def test_integer_percentages_properties(weights: dict[str, int]) -> None:
    result = integer_percentages(weights)
    total = sum(weights.values())
    assert list(result) == list(weights)
    assert sum(result.values()) == 100
    for name, weight in weights.items():
        exact = Fraction(weight * 100, total)
        assert abs(result[name] - exact) < 1, (name, result[name], exact)
        assert result[name] in (exact.__floor__(), exact.__ceil__())
        if weight == 0:
            assert result[name] == 0
    # Largest remainder: a version rounded up never has a smaller remainder than one rounded down.
    remainder = {n: Fraction(w * 100, total) - Fraction(w * 100 // total) for n, w in weights.items()}
    up = [n for n in weights if result[n] > weights[n] * 100 // total]
    down = [n for n in weights if result[n] == weights[n] * 100 // total]
    if up and down:
        assert min(remainder[n] for n in up) >= max(remainder[n] for n in down)


@PROPERTY
@given(weight_maps, st.randoms(use_true_random=False))
def test_integer_percentages_order_independent_up_to_ties(weights: dict[str, int], rnd: random.Random) -> None:
    items = list(weights.items())
    rnd.shuffle(items)
    shuffled = integer_percentages(dict(items))
    original = integer_percentages(weights)
    total = sum(weights.values())
    remainders = [w * 100 % total for w in weights.values()]
    for name, weight in weights.items():
        assert abs(shuffled[name] - original[name]) <= 1
        if remainders.count(weight * 100 % total) == 1:  # no tie: the order cannot matter
            assert shuffled[name] == original[name], name


@PROPERTY
@given(weight_maps)
def test_display_percentages_sum_to_100_in_tenths(weights: dict[str, int]) -> None:
    shown = display_percentages(weights)
    assert sum(round(v * 10) for v in shown.values()) == 1000
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(Fraction(shown[name]).limit_denominator(10) - Fraction(weight * 100, total)) < Fraction(1, 10)


@PROPERTY
@given(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(0, 100))
def test_apportion_any_unit_count(a: int, b: int, units: int) -> None:
    result = apportion({"a": a, "b": b}, units)
    assert sum(result.values()) == units
    assert abs(result["a"] - Fraction(a * units, a + b)) < 1


def test_target_share_keeps_the_others_proportions() -> None:
    assert target_share({"v1": 100, "v2": 0}, "v2", 10) == {"v1": 90, "v2": 10}
    assert target_share({"v1": 60, "v2": 40, "v3": 0}, "v3", 10) == {"v1": 54, "v2": 36, "v3": 10}
    assert target_share({"v1": 50, "v2": 50, "v3": 0}, "v3", 33) == {"v1": 34, "v2": 33, "v3": 33}
    assert target_share({"v1": 100, "v2": 0}, "v2", 100) == {"v1": 0, "v2": 100}
    # A version with baseline weight 0 stays at 0 (it is not a stable version).
    assert target_share({"v1": 100, "old": 0, "v2": 0}, "v2", 50) == {"v1": 50, "old": 0, "v2": 50}


def test_target_share_errors() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        target_share({"v1": 100, "v2": 0}, "v2", 101)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        target_share({"v1": 100, "v2": 0}, "v2", -1)
    with pytest.raises(ValueError, match="no version besides 'v2'"):
        target_share({"v1": 0, "v2": 100}, "v2", 50)


@PROPERTY
@given(weight_maps, st.integers(0, 100), st.data())
def test_target_share_properties(baseline: dict[str, int], percent: int, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(sorted(baseline)))
    others = {n: w for n, w in baseline.items() if n != target and w > 0}
    if not others and percent < 100:
        with pytest.raises(ValueError):
            target_share(baseline, target, percent)
        return
    result = target_share(baseline, target, percent)
    assert set(result) == set(baseline)
    assert result[target] == percent
    assert sum(result.values()) == 100
    rest = 100 - percent
    other_total = sum(others.values())
    for name in baseline:
        if name == target:
            continue
        if name not in others:
            assert result[name] == 0
        else:
            assert abs(result[name] - Fraction(others[name] * rest, other_total)) < 1

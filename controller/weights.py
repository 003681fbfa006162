"""Weight maths: relative weights -> percentages that sum to exactly 100.

Largest-remainder apportionment: every version gets the floor of its exact share,
then the leftover units go to the largest fractional remainders (ties: the
version listed first). Exact integer arithmetic, so no float drift.
"""

from __future__ import annotations

from collections.abc import Mapping


def apportion(weights: Mapping[str, int], units: int) -> dict[str, int]:
    """Split `units` among `weights` (relative, >= 0, sum > 0) by largest remainder."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must be >= 0")
    names = list(weights)
    floors = {n: weights[n] * units // total for n in names}
    remainders = {n: weights[n] * units % total for n in names}
    leftover = units - sum(floors.values())
    order = sorted(names, key=lambda n: (-remainders[n], names.index(n)))
    for name in order[:leftover]:
        floors[name] += 1
    return floors


def integer_percentages(weights: Mapping[str, int]) -> dict[str, int]:
    """Integer percentages for Istio/Envoy route weights; 50/50/50 -> 34/33/33."""
    return apportion(weights, 100)


def display_percentages(weights: Mapping[str, int]) -> dict[str, float]:
    """One-decimal percentages for people; 50/50/50 -> 33.4/33.3/33.3 (sums to 100.0)."""
    return {n: tenths / 10 for n, tenths in apportion(weights, 1000).items()}


def target_share(
    baseline: Mapping[str, int], target: str, target_percent: int
) -> dict[str, int]:
    """Give `target` exactly `target_percent`; the rest keeps the baseline's proportions."""
    if not 0 <= target_percent <= 100:
        raise ValueError("target_percent must be within 0..100")
    others = {n: w for n, w in baseline.items() if n != target and w > 0}
    result = {n: 0 for n in baseline}
    result[target] = target_percent
    remaining = 100 - target_percent
    if remaining:
        if not others:
            raise ValueError(f"no version besides {target!r} to carry the remaining {remaining}%")
        result.update(apportion(others, remaining))
    return result

"""The Kubernetes retries' backoff: exponential from the base, never over the cap, jittered to 50-100 %."""

from __future__ import annotations

import random

from controller.k8s.client import backoff_delay


def test_the_delay_doubles_from_the_base_is_capped_and_jittered_down_to_half() -> None:
    rng = random.Random(7)
    for attempt in range(60):
        ceiling = min(0.4, 0.05 * 2.0**attempt)
        delays = [backoff_delay(attempt, 0.05, 0.4, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
    # the jitter spreads: 200 draws at the cap are not all in one half of [0.2, 0.4]
    capped = [backoff_delay(30, 0.05, 0.4, rng) for _ in range(200)]
    assert min(capped) < 0.3 < max(capped)

"""Garbage-collector settings for a long-running controller process.

A tick of 1,000 rollouts allocates hundreds of thousands of short-lived objects (parsed Prometheus samples,
Kubernetes objects, states). With CPython's default thresholds (700, 10, 10) that triggers a full collection
about once per tick, and each one walks every long-lived object: the specs, plans, cached route objects (the
scale benchmark measured 0.16 CPU s of collection per judging tick at 1,000 rollouts, 1.1 s at 3,000).

- `tune_for_controller()` raises the first threshold so young collections run less often (50,000 allocations);
  nothing is left uncollected, cycles are found later.
- `freeze_long_lived()` moves what exists now (modules, specs, plans: objects that live as long as the process
  or until the next spec reload) to the permanent generation, so full collections stop walking them. Called
  after specs are (re)loaded; objects frozen are never freed, so it is for entry points, not libraries or tests.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune_for_controller() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_long_lived() -> None:
    gc.collect()
    gc.freeze()

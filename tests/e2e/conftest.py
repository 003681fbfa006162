"""Shared e2e helpers: the local stack's binaries must exist; under CI their absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scipy.stats import binom

from controller.local.envoy_process import envoy_binary
from controller.local.processes import ProcessError
from controller.local.prometheus_process import prometheus_binary

ALPHA = 0.001


def missing_binaries() -> str | None:
    for find in (envoy_binary, prometheus_binary):
        try:
            find()
        except ProcessError as exc:
            return str(exc)
    return None


def require_local_stack() -> None:
    missing = missing_binaries()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the e2e tests, but: {missing}", pytrace=False)
    pytest.skip(f"local stack needs envoy and prometheus: {missing}", allow_module_level=True)


def binomial_bounds(n: int, p: float, alpha: float = ALPHA) -> tuple[int, int]:
    """Two-sided acceptance interval for Binomial(n, p) at level alpha (exact at p = 0 or 1)."""
    if p <= 0:
        return 0, 0
    if p >= 1:
        return n, n
    return int(binom.ppf(alpha / 2, n, p)), int(binom.isf(alpha / 2, n, p))


def leftover_demo_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ramp-demo-" in cmdline:
            found.append(cmdline)
    return found

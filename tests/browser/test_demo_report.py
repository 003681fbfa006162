"""The main job, as a user runs it: `ramp demo --scenario faulty --json` in a subprocess.

The healthy scenario's outcome is checked on the run the dashboards' tests make anyway
(`tests/dashboards/test_dashboards.py::test_the_healthy_demo_is_promoted_and_cleans_up`): one 40 s demo, not two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import leftover_demo_processes, require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--json", "--timeout", "150", *args],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_faulty_demo_rolls_back_with_breaching_value_and_cleans_up() -> None:
    code, summary, progress = run_demo("--scenario", "faulty")
    assert code == 0, progress
    assert summary["outcome"] == "RolledBack" == summary["expected_outcome"]
    reason = str(summary["rollback_reason"])
    assert reason.startswith("gate failed: error_rate of v2 is ") and "> max 2.00%" in reason
    assert isinstance(summary["fault_to_rollback_seconds"], float) and summary["fault_to_rollback_seconds"] > 0
    assert summary["final_traffic"] == {"v1": 200}
    phases = summary["phases"]
    assert isinstance(phases, list) and [p["phase"] for p in phases][-1] == "RolledBack"
    assert "RolledBack" in progress and "error_rate=" in progress  # live progress went to stderr
    assert leftover_demo_processes() == []

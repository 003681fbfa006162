"""The main job, as a user runs it: `ramp demo [--scenario faulty] --json` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


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


def test_healthy_demo_is_promoted_and_cleans_up() -> None:
    code, summary, progress = run_demo()
    assert code == 0, progress
    assert summary["outcome"] == "Promoted"
    phases = summary["phases"]
    assert isinstance(phases, list)
    assert [p["phase"] for p in phases] == ["HeaderTest", "Progressing", "Progressing", "Progressing", "Promoted"]
    assert summary["rollback_reason"] is None and summary["failed_requests"] == 0
    assert summary["final_traffic"] == {"v2": 200}
    assert leftover_demo_processes() == []

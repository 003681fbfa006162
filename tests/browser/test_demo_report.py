"""The main job as a user runs it, `ramp demo --scenario faulty --json --report PATH` in a subprocess, and its
report in a real browser (Debian's headless Chromium, through tests/browser/chromium.py).

The report must render with no console error and no request for anything but itself, every chart must hold the
series uPlot was given (read back from the plots), and a screenshot is kept in tests/artifacts/ (the README's
picture is one). The healthy demo's run, summary and report are checked on the run the dashboards' tests make
anyway (tests/dashboards/test_dashboards.py): one 40 s demo, not two."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.chromium import HeadlessChromium
from tests.browser.demo_report_checks import check_demo_report
from tests.e2e.conftest import leftover_demo_processes, require_local_stack

require_local_stack()
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_faulty_demo_rolls_back_with_breaching_value_writes_its_report_and_cleans_up(
    chromium: HeadlessChromium, artifacts_dir: Path
) -> None:
    report = artifacts_dir / "report-faulty.html"
    report.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--json", "--timeout", "150", "--scenario", "faulty",
         "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    summary, progress = json.loads(done.stdout), done.stderr
    assert done.returncode == 0, progress
    assert summary["outcome"] == "RolledBack" == summary["expected_outcome"]
    reason = str(summary["rollback_reason"])
    # error_rate runs in mode both: its max (2%) or its sequential test (e-value at K/alpha = 100), whichever first
    assert reason.startswith("gate failed: error_rate of v2"), reason
    assert "> max 2.00%" in reason or ">= 100 = K/alpha (1/0.01)" in reason, reason
    assert isinstance(summary["fault_to_rollback_seconds"], float) and summary["fault_to_rollback_seconds"] > 0
    assert summary["final_traffic"] == {"v1": 200}
    phases = summary["phases"]
    assert isinstance(phases, list) and [p["phase"] for p in phases][-1] == "RolledBack"
    assert "RolledBack" in progress and "error_rate=" in progress  # live progress went to stderr
    assert f"report: {report}" in progress and summary["report"] == str(report)
    assert leftover_demo_processes() == []
    check_demo_report(chromium, report, summary, "faulty", artifacts_dir / "report-faulty.png")

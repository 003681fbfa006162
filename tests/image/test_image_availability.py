"""Without podman the image tests skip, saying why; under CI a missing tool fails them instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.image.conftest import decide

REPO = Path(__file__).resolve().parents[2]


def test_a_missing_tool_skips_with_the_reason_outside_ci() -> None:
    assert decide(["podman", "mmdebstrap"], 0, {}) == (
        "skip", "not installed: podman, mmdebstrap (.ci/bootstrap.sh installs them)"
    )
    assert decide(["podman"], 0, {"CI": "false"})[0] == "skip"


def test_a_missing_tool_fails_under_ci() -> None:
    assert decide(["podman"], 0, {"CI": "true"}) == ("fail", "not installed: podman (.ci/bootstrap.sh installs them)")
    assert decide([], 1000, {"CI": "1"})[0] == "fail"


def test_everything_installed_as_root_runs() -> None:
    assert decide([], 0, {"CI": "true"}) == ("run", None)


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_the_image_tests_really_skip_or_fail_without_podman(tmp_path: Path, ci: str, outcome: str) -> None:
    """A real pytest run where bench.image finds no podman: skipped with the reason, or an error under CI."""
    plugin = tmp_path / "no_podman.py"
    plugin.write_text("import bench.image\nbench.image.missing_tools = lambda: ['podman']\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no_podman", "-rsE",
         "tests/image/test_image.py::test_ramp_help_runs_as_the_non_root_user_on_a_read_only_root"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{REPO}", "CI": ci},
    )  # fmt: skip
    assert outcome in result.stdout, result.stdout[-2000:]
    assert "not installed: podman" in result.stdout

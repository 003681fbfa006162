"""A newcomer's check: the committed repository alone validates and plans the example specs.

The repository is cloned into an empty temporary directory (no sibling folders, no `.venv`, nothing beside it) and
`ramp validate` / `ramp plan` run there with the clone's own code (`python -m controller` from the clone puts it
first on the import path), so a file outside the repository can never again be a hidden dependency.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ramp(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(clone), "LANG": "C.UTF-8"}  # no RAMP_ISTIO_CRDS, no PYTHONPATH
    return subprocess.run(
        [sys.executable, "-m", "controller", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_fresh_clone_with_nothing_beside_it_validates_and_plans(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "empty" / "ramp"
    clone.parent.mkdir()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["ramp"]  # nothing beside the clone
    which = subprocess.run([sys.executable, "-c", "import controller; print(controller.__file__)"], cwd=clone,
                           capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert Path(which.stdout.strip()).is_relative_to(clone), which  # the clone's code, not this checkout's
    validated = _ramp(clone, "validate", "rollout-specs")
    assert validated.returncode == 0, validated.stderr
    for spec in sorted((clone / "rollout-specs").glob("*.yaml")):
        planned = _ramp(clone, "plan", f"rollout-specs/{spec.name}")
        assert planned.returncode == 0, (spec.name, planned.stderr)
        kind = "HTTPRoute" if "router: gateway-api" in spec.read_text() else "VirtualService"
        assert planned.stderr == "" and f"kind: {kind}" in planned.stdout  # validated, nothing skipped
    broken = clone / "broken.yaml"
    broken.write_text("service: shop\nversions: []\ntarget: v2\n")
    refused = _ramp(clone, "validate", str(broken))
    assert refused.returncode == 1 and "broken.yaml:" in refused.stderr + refused.stdout

"""The build fails when any step fails, and leaves no image behind: a wheelhouse missing a dependency (pip cannot
install without the network), and a runtime base whose pip refuses to uninstall (Debian's own python3-pip).
The build itself never reaches the network (`--network=none`, `--no-index`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import image as img

pytestmark = pytest.mark.usefixtures("podman_ready")
FAILED_TAG = "localhost/ramp:image-test-must-not-exist"


def build_fails(context: Path, base: str, runtime: str) -> str:
    img.run(["podman", "rmi", "--force", FAILED_TAG], timeout=120)
    result = img.podman_build(context, FAILED_TAG, base, runtime)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert not img.image_exists(FAILED_TAG)
    return output


def test_a_failed_pip_install_fails_the_build(context: Path, bases: tuple[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "ctx"
    shutil.copytree(context, broken)
    [wheel] = list((broken / "wheelhouse").glob("pyyaml-*.whl")) or list((broken / "wheelhouse").glob("PyYAML-*.whl"))
    wheel.unlink()  # offline, pip cannot find it anywhere else
    output = build_fails(broken, *bases)
    assert "pyyaml" in output.lower() and "No matching distribution" in output


def test_a_refused_pip_uninstall_fails_the_build(context: Path, bases: tuple[str, str]) -> None:
    build, _ = bases
    # the build base carries Debian's python3-pip, which pip will not uninstall
    output = build_fails(context, build, build)
    assert "externally-managed-environment" in output  # pip's refusal, wherever it printed it
    assert 'building at STEP "RUN set -eu;     if python3 -m pip --version' in output


def test_the_dockerfile_defaults_to_the_official_base_and_builds_without_network() -> None:
    text = (img.REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "ARG RUNTIME_IMAGE=python:3.11-slim" in text
    assert "--no-index --find-links /wheelhouse" in text
    assert all(line.startswith("RUN set -eu;") for line in text.splitlines() if line.startswith("RUN"))

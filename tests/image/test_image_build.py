"""The build fails when any step fails, and leaves no image behind: a wheelhouse missing a dependency (pip cannot
install without the network), and a runtime base whose pip refuses to uninstall (Debian's own python3-pip).
The build itself never reaches the network (`--network=none`, `--no-index`).
"""

from __future__ import annotations

import ensurepip
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import image as img

pytestmark = pytest.mark.usefixtures("podman_ready")
FAILED_TAG = f"localhost/ramp:image-test-must-not-exist-{os.getpid()}"


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


SLIM_LIKE = """\
FROM {runtime}
COPY wheels /tmp/wheels
RUN set -eu; rm -f /usr/lib/python3*/EXTERNALLY-MANAGED; \\
    python3 /tmp/wheels/pip.whl/pip install --no-index --find-links /tmp/wheels --disable-pip-version-check \\
        --ignore-installed pip setuptools; \\
    rm -r /tmp/wheels; python3 -m pip --version; python3 -c "import setuptools"
"""


@pytest.fixture(scope="module")
def slim_like(bases: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The runtime base with pip and setuptools installed as python:3.11-slim has them (pip's own RECORD, no
    EXTERNALLY-MANAGED marker), from the wheels bundled with the host's Python (ensurepip): no network."""
    context = tmp_path_factory.mktemp("slim-like")
    wheels = context / "wheels"
    wheels.mkdir()
    for wheel in Path(ensurepip.__file__).parent.joinpath("_bundled").glob("*.whl"):
        shutil.copy2(wheel, wheels / wheel.name)
    [pip] = list(wheels.glob("pip-*.whl"))
    shutil.copy2(pip, wheels / "pip.whl")  # a fixed name for the Containerfile
    (context / "Containerfile").write_text(SLIM_LIKE.format(runtime=bases[1]))
    tag = f"localhost/ramp-test-slim-like:{os.getpid()}"
    result = img.run(
        ["podman", "build", "--network=none", "--pull=never", "--layers=false", *img.runtime_flags(), "--tag", tag,
         "--file", str(context / "Containerfile"), str(context)],
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield tag
    img.run(["podman", "rmi", "--force", tag], timeout=120)


def test_on_a_base_that_ships_pip_like_python_slim_pip_and_setuptools_are_removed(
    context: Path, bases: tuple[str, str], slim_like: str
) -> None:
    tag = f"localhost/ramp:image-test-slim-like-{os.getpid()}"
    result = img.podman_build(context, tag, bases[0], slim_like)
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Successfully uninstalled pip" in result.stdout + result.stderr
        check = img.podman_run(
            tag, "-c", "python3 -m pip --version; python3 -c 'import setuptools'; command -v pip pip3; ramp --help",
            flags=["--entrypoint", "/bin/sh"],
        )
        assert "No module named pip" in check.stderr and "No module named 'setuptools'" in check.stderr
        assert check.returncode == 0 and "controller" in check.stdout  # ramp still runs; no pip on PATH
        assert "/pip" not in check.stdout
    finally:
        img.run(["podman", "rmi", "--force", tag], timeout=120)

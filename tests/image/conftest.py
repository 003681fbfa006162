"""The container image, built here with podman and no network (bench/image.py does the building).

Without podman (or mmdebstrap, runc) these tests are skipped with the reason, except under CI (`CI` set), where
a missing tool is a failure: `.ci/bootstrap.sh` installs them. The Debian bases are made once per machine and
kept by podman; the wheelhouse and the image are built once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import image as img

IMAGE_TAG = f"localhost/ramp:image-test-{os.getpid()}"  # one per session: concurrent runs never collide


def decide(missing: list[str], euid: int, env: dict[str, str]) -> tuple[str, str | None]:
    """("run", None), ("skip", reason) or, under CI (`CI` set and not false), ("fail", reason)."""
    reason = None
    if missing:
        reason = f"not installed: {', '.join(missing)} (.ci/bootstrap.sh installs them)"
    elif euid != 0:
        reason = "podman runs as root here (rootless podman is not set up on these machines)"
    if reason is None:
        return "run", None
    under_ci = env.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ("fail" if under_ci else "skip"), reason


@pytest.fixture(scope="session")
def podman_ready() -> None:
    verdict, reason = decide(img.missing_tools(), os.geteuid(), dict(os.environ))
    if verdict == "fail":
        pytest.fail(f"image tests cannot run under CI: {reason}")
    if verdict == "skip":
        pytest.skip(f"image tests skipped: {reason}")


@pytest.fixture(scope="session")
def bases(podman_ready: None) -> tuple[str, str]:
    """(build base, runtime base): made with mmdebstrap on first use, then cached by podman."""
    build, runtime, _ = img.ensure_bases()
    return build, runtime


@pytest.fixture(scope="session")
def wheelhouse(bases: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wheelhouse")
    img.build_wheelhouse(path)
    return path


@pytest.fixture(scope="session")
def context(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context: the repository's Dockerfile and .dockerignore, and the wheelhouse."""
    return img.make_context(tmp_path_factory.mktemp("context") / "ctx", wheelhouse)


@pytest.fixture(scope="session")
def image(context: Path, bases: tuple[str, str]) -> Iterator[str]:
    """Ramp's image, built offline from the wheelhouse; removed at the end of the session."""
    result = img.podman_build(context, IMAGE_TAG, *bases)
    assert result.returncode == 0, f"podman build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    yield IMAGE_TAG
    img.run(["podman", "rmi", "--force", IMAGE_TAG], timeout=120)


def readable_copy(source: Path, dest: Path) -> Path:
    """A copy the image's non-root user (uid 10001) can read through a read-only bind mount."""
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    for path in [dest, *dest.rglob("*")] if dest.is_dir() else [dest]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def podman_rm(name: str) -> None:
    subprocess.run(["podman", "rm", "--force", "--time", "5", name], capture_output=True, timeout=60, check=False)

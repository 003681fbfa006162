"""Fixtures for tests in a real browser: one headless Chromium for the session, and a folder for artifacts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.chromium import HeadlessChromium, chromium_executable

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "artifacts"  # tests/artifacts/, gitignored


@pytest.fixture(scope="session")
def chromium() -> Iterator[HeadlessChromium]:
    executable = chromium_executable()
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        pytest.fail(
            f"no headless Chromium at {executable}: run .ci/bootstrap.sh --browser (installs Debian's chromium)",
            pytrace=False,
        )
    with HeadlessChromium(executable) as browser:
        yield browser


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """tests/artifacts/: screenshots and pages that a person can look at after a run (kept, never committed)."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR

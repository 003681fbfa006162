from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.browser.chromium import HeadlessChromium, chromium_executable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"  # gitignored


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """CLI tests configure structlog globally (level, output); give every test the defaults back."""
    yield None
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def chromium() -> Iterator[HeadlessChromium]:
    """One headless Chromium for the session (tests/browser/chromium.py), for the browser tests and the demo report
    drawn by tests/dashboards; missing, it fails the test (never a skip)."""
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

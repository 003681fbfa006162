from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """CLI tests configure structlog globally (level, output); give every test the defaults back."""
    yield None
    structlog.reset_defaults()

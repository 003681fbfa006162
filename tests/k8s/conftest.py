from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s.emulator import KubeHarness, running_emulator


@pytest.fixture()
def kube() -> Iterator[KubeHarness]:
    """A fresh Kubernetes emulator over real HTTP on 127.0.0.1 (see tests/k8s/emulator.py)."""
    with running_emulator() as harness:
        yield harness

"""A cluster controller (the real RolloutRunner on IstioBackend, fake clock) and the CLI, on the same emulator.

`ticking(...)` runs the controller's ticks on a background thread (bounded, 5 fake seconds per tick) while
the test runs a CLI command in the foreground that waits for the controller's recorded outcome.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from controller.analysis.metrics import VersionMetrics
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.availability import DeploymentAvailability
from controller.routing.istio import IstioBackend
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, kube_api, stored
from tests.unit.engine_fixtures import FakeClock, FixedMetrics, spec

NS, SERVICE = "prod", "shop"
THREE_VERSIONS_YAML = """
service: shop
namespace: prod
versions: [{name: v1, weight: 50}, {name: v2, weight: 50}, {name: v3, weight: 0}]
target: v3
steps:
  - {weight: 20, duration: 10s}
gates: [{metric: error_rate, max: 2}]
schedule: {interval: 5s}
"""


def healthy(*versions: str) -> dict[str, VersionMetrics]:
    return {v: VersionMetrics(200, 0, {}) for v in versions}


def make_controller(kube: KubeHarness, clock: FakeClock, yaml_text: str, metrics: FixedMetrics) -> RolloutRunner:
    backend = IstioBackend(kube_api(kube))
    runner = RolloutRunner(
        router=backend, metrics=metrics, store=backend, clock=clock, availability=DeploymentAvailability(kube_api(kube))
    )
    runner.set_rollouts([ManagedRollout.from_spec(spec(yaml_text))])
    return runner


def run_to_end(runner: RolloutRunner, clock: FakeClock, max_ticks: int = 40) -> None:
    for _ in range(max_ticks):
        if runner.all_terminal():
            return
        runner.tick()
        clock.advance(5)
    raise AssertionError("the rollout did not finish")


@contextmanager
def ticking_step(step: Callable[[], object], max_ticks: int = 300, pause: float = 0.02) -> Iterator[None]:
    """`step` called in the background (at most `max_ticks` times) for the duration of the block; what it raised
    is raised in the test when the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        for _ in range(max_ticks):
            if stop.is_set():
                return
            try:
                step()
            except BaseException as exc:  # surfaced to the test below
                errors.append(exc)
                return
            stop.wait(pause)

    thread = threading.Thread(target=loop, name="controller-ticks", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive(), "the controller thread did not stop"
    assert not errors, errors


@contextmanager
def ticking(runner: RolloutRunner, clock: FakeClock, max_ticks: int = 300, pause: float = 0.02) -> Iterator[None]:
    """The controller ticking in the background (at most `max_ticks`) for the duration of the block."""

    def step() -> None:
        runner.tick()
        clock.advance(5)

    with ticking_step(step, max_ticks, pause):
        yield


def write_kubeconfig(kube: KubeHarness, path: Path) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
        "users": [{"name": "tester", "user": {"token": "t"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
    }))  # fmt: skip
    return str(path)


def served_weights(kube: KubeHarness, namespace: str = NS, service: str = SERVICE) -> dict[str, int]:
    """The weighted subsets of the VirtualService's primary route, as the data plane reads them."""
    vs = stored(kube, VS, namespace, service)
    assert vs is not None
    return {d["destination"]["subset"]: d.get("weight", 100) for d in vs["spec"]["http"][-1]["route"]}


def state_in_cluster(kube: KubeHarness, namespace: str = NS, service: str = SERVICE) -> dict[str, Any]:
    vs = stored(kube, VS, namespace, service)
    assert vs is not None
    return dict(json.loads(vs["metadata"]["annotations"]["ramp.dev/state"]))


def annotations(kube: KubeHarness, namespace: str = NS, service: str = SERVICE) -> dict[str, str]:
    vs = stored(kube, VS, namespace, service)
    assert vs is not None
    return dict(vs["metadata"].get("annotations") or {})

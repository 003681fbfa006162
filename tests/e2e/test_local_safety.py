"""Local data plane safety on a real Envoy and real sample apps: read-back, drift, health-checked availability."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from controller.atomic_file import atomic_write
from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting, HeaderRoute
from controller.local.loadgen import send_requests
from controller.local.stack import LocalStack, VersionKnobs, default_routing
from controller.routing.envoy import EnvoyFileRouter, discovery_response
from controller.spec import RolloutSpec
from tests.e2e.conftest import require_local_stack

pytestmark = pytest.mark.e2e

SERVICE, NAMESPACE = "safe", "default"
V2_HEADER = HeaderRoute(header="x-version", value="v2", match="exact", version="v2")
T = TypeVar("T")

require_local_stack()


def routing(v1: int, v2: int, headers: tuple[HeaderRoute, ...] = ()) -> DesiredRouting:
    base = default_routing(SERVICE, NAMESPACE, ["v1", "v2"])
    return base.model_copy(update={"weights": (("v1", v1), ("v2", v2)), "header_routes": headers})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    versions = {"v1": VersionKnobs(), "v2": VersionKnobs()}
    work_dir = tmp_path_factory.mktemp("safety")
    with LocalStack(SERVICE, NAMESPACE, versions, work_dir, routing(100, 0), with_prometheus=False) as running:
        yield running


def eventually(read: Callable[[], T], accept: Callable[[T], bool], seconds: float = 10.0) -> T:
    """Poll `read` (at most every 0.1 s, for `seconds`) until `accept`; returns the last value."""
    deadline = Deadline(seconds)
    while True:
        value = read()
        if accept(value) or deadline.expired:
            return value
        time.sleep(0.1)


def pinned_split(stack: LocalStack) -> Counter[str]:
    """Which version serves each of the 100 weighted-draw values 0..99 (x-ramp-random pins the draw)."""
    served: Counter[str] = Counter()
    for value in range(0, 100, 5):
        ((status, version),) = send_requests(stack.api_url, stack.host_header, 1, headers={"x-ramp-random": str(value)})
        assert status == 200 and version is not None
        served[version] += 5
    return served


def test_observed_reads_back_what_envoy_serves(stack: LocalStack) -> None:
    desired = routing(70, 30, (V2_HEADER,))
    assert stack.router.apply(desired, Deadline(10)) is True
    assert stack.router.observed(NAMESPACE, SERVICE, Deadline(5)) == desired
    assert stack.router.observed(NAMESPACE, "absent", Deadline(5)) is None
    assert pinned_split(stack) == {"v1": 70, "v2": 30}


def test_routes_replaced_behind_ramps_back_are_seen_and_repaired(stack: LocalStack) -> None:
    desired = routing(100, 0)
    stack.router.apply(desired, Deadline(10))
    assert stack.router.confirmed(NAMESPACE, SERVICE) == desired
    # Someone else writes 50/50 into the watched routes file; Envoy picks it up.
    foreign = discovery_response([routing(50, 50)], "foreign-1")
    atomic_write(stack.router.routes_file, json.dumps(foreign).encode())
    seen = eventually(lambda: stack.router.observed(NAMESPACE, SERVICE, Deadline(5)), lambda r: r != desired)
    assert seen == routing(50, 50)
    assert pinned_split(stack) == {"v1": 50, "v2": 50}  # Envoy really serves the drift
    assert stack.router.confirmed(NAMESPACE, SERVICE) is None  # so the same apply is not a no-op
    assert stack.router.apply(desired, Deadline(10)) is True
    assert stack.router.observed(NAMESPACE, SERVICE, Deadline(5)) == desired
    assert pinned_split(stack) == {"v1": 100}


def test_restarted_router_confirms_only_what_envoy_serves(stack: LocalStack) -> None:
    desired = routing(80, 20)
    stack.router.apply(desired, Deadline(10))
    restarted = EnvoyFileRouter(stack.routes_dir, stack.envoy_admin_url)
    assert restarted.current(NAMESPACE, SERVICE) == desired and restarted.confirmed(NAMESPACE, SERVICE) is None
    version = restarted.version
    assert restarted.apply(desired, Deadline(10)) is False  # Envoy serves it: confirmed in place, no write
    assert restarted.version == version and restarted.confirmed(NAMESPACE, SERVICE) == desired


@dataclass(frozen=True)
class Rollout:
    spec: RolloutSpec

    @property
    def name(self) -> str:
        return self.spec.rollout_name


ROLLOUT = Rollout(
    RolloutSpec.model_validate(
        {
            "service": SERVICE,
            "namespace": NAMESPACE,
            "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}, {"name": "v3", "weight": 0}],
            "target": "v2",
        }
    )
)


def test_stopped_version_is_unavailable_until_it_runs_again(stack: LocalStack) -> None:
    stack.router.apply(routing(100, 0), Deadline(10))  # v2 gets no traffic: only health checks see it
    check = stack.availability
    assert check.unavailable_versions([ROLLOUT], Deadline(5)) == {SERVICE: frozenset({"v3"})}  # v3: no cluster
    endpoints = check.endpoints(NAMESPACE, SERVICE, Deadline(5))
    assert endpoints == {v: [("127.0.0.1", port, True)] for v, port in stack.app_ports.items()}
    stack.stop_version("v2")
    try:
        down = eventually(lambda: check.unavailable_versions([ROLLOUT], Deadline(5)), lambda d: "v2" in d[SERVICE])
        assert down == {SERVICE: frozenset({"v2", "v3"})}
        assert stack.unavailable_versions() == {"v2"}
        assert check.endpoints(NAMESPACE, SERVICE)["v2"] == [("127.0.0.1", stack.app_ports["v2"], False)]
    finally:
        stack.start_version("v2")
    up = eventually(lambda: check.unavailable_versions([ROLLOUT], Deadline(5)), lambda d: "v2" not in d[SERVICE])
    assert up == {SERVICE: frozenset({"v3"})}
    assert Counter(send_requests(stack.api_url, stack.host_header, 5, headers={"x-ramp-random": "99"})) == {
        (200, "v1"): 5
    }

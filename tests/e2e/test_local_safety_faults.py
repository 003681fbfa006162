"""Local data plane under a hostile Envoy admin API (the fake in tests/fakes/envoy_admin.py, no Envoy needed).

The router never reports a routing as in place without Envoy's confirmation, every admin call ends
within its total deadline however the admin misbehaves, and availability never guesses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.local.availability import EnvoyAvailability, EnvoyAvailabilityError
from controller.local.processes import http_get
from controller.local.stack import default_routing
from controller.routing.envoy import EnvoyFileRouter, EnvoyRejectedError, EnvoyRoutingError, discovery_response
from controller.spec import RolloutSpec
from tests.fakes.envoy_admin import FakeEnvoyAdmin

SERVICE, NAMESPACE = "demo", "default"
DEADLINE = 0.8
SLACK = 1.5  # scheduling slack on a loaded machine; a hang would exceed it by far
BAD_ANSWERS = ["drip", "hang", "huge", "garbage", "wrong_json", "error", "not_http"]


def routing(v1: int, v2: int) -> DesiredRouting:
    base = default_routing(SERVICE, NAMESPACE, ["v1", "v2"])
    return base.model_copy(update={"weights": (("v1", v1), ("v2", v2))})


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[FakeEnvoyAdmin]:
    with FakeEnvoyAdmin(routes_file=tmp_path / "routes" / "routes.json") as fake:
        yield fake


def router_for(admin: FakeEnvoyAdmin, tmp_path: Path, confirm_timeout: float = 30.0) -> EnvoyFileRouter:
    return EnvoyFileRouter(tmp_path / "routes", admin.url, confirm_timeout=confirm_timeout, admin_timeout=30.0)


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_healthy_fake_confirms_and_noop_is_false(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(90, 10), Deadline(5)) is True
    assert router.confirmed(NAMESPACE, SERVICE) == routing(90, 10)
    version = router.version
    assert router.apply(routing(90, 10), Deadline(5)) is False
    assert router.version == version  # nothing written


def test_chunked_admin_answers_are_decoded(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    admin.mode = "chunked"
    router = router_for(admin, tmp_path)
    assert router.apply(routing(90, 10), Deadline(5)) is True
    assert router.observed(NAMESPACE, SERVICE, Deadline(5)) == routing(90, 10)


def test_credentials_in_the_admin_url_never_reach_a_message(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    admin.mode = "stale"
    secret_url = admin.url.replace("http://", "http://ops:s3cr3t-token@")
    router = EnvoyFileRouter(tmp_path / "routes", secret_url, confirm_timeout=0.5)
    with pytest.raises(EnvoyRoutingError) as applied:
        router.apply(routing(50, 50))
    admin.mode = "garbage"
    with pytest.raises(EnvoyRoutingError) as read:
        router.observed(NAMESPACE, SERVICE)
    with pytest.raises(EnvoyAvailabilityError) as health:
        EnvoyAvailability(secret_url).endpoints(NAMESPACE, SERVICE)
    for error in (applied.value, read.value, health.value):
        assert "s3cr3t" not in str(error) and "ops:" not in str(error), error
        assert error.__cause__ is None or "s3cr3t" not in str(error.__cause__)


def test_local_http_get_is_bounded_in_total(admin: FakeEnvoyAdmin) -> None:
    admin.mode = "drip"  # one byte every 50 ms: a per-read timeout would never fire
    error, elapsed = timed(lambda: http_get(f"{admin.url}/ready", timeout=DEADLINE))
    assert isinstance(error, OSError) and elapsed < DEADLINE + SLACK, (error, elapsed)


def test_invalidate_makes_the_next_apply_check_envoy_again(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(90, 10), Deadline(5)) is True
    before = len(admin.requests)
    assert router.apply(routing(90, 10), Deadline(5)) is False
    assert len(admin.requests) == before  # confirmed: no admin call at all
    router.invalidate(NAMESPACE, SERVICE)
    assert router.confirmed(NAMESPACE, SERVICE) is None
    assert router.apply(routing(90, 10), Deadline(5)) is False  # read back: Envoy serves it, nothing written
    assert [r.split("?")[0] for r in admin.requests[before:]] == ["/config_dump"]
    assert router.confirmed(NAMESPACE, SERVICE) == routing(90, 10)


def test_never_confirming_envoy_raises_within_the_deadline(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    admin.mode = "stale"  # a wedged Envoy: reports version 0 forever
    router = router_for(admin, tmp_path)
    for _ in range(2):  # the second apply of the same routing must not report "already in place"
        error, elapsed = timed(lambda: router.apply(routing(50, 50), Deadline(DEADLINE)))
        assert isinstance(error, EnvoyRoutingError) and "did not confirm" in str(error), error
        assert "Envoy reports version_info None" in str(error)  # the reason names what Envoy reported
        assert elapsed < DEADLINE + SLACK
        assert router.confirmed(NAMESPACE, SERVICE) is None
    # The unconfirmed routing stays the latest intent in the routes file.
    assert router.current(NAMESPACE, SERVICE) == routing(50, 50)


def test_router_confirm_timeout_caps_a_longer_deadline(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    admin.mode = "stale"
    router = router_for(admin, tmp_path, confirm_timeout=0.5)
    error, elapsed = timed(lambda: router.apply(routing(50, 50), Deadline(60)))
    assert isinstance(error, EnvoyRoutingError) and elapsed < 0.5 + SLACK


@pytest.mark.parametrize("mode", BAD_ANSWERS)
def test_every_admin_call_ends_within_its_total_deadline(admin: FakeEnvoyAdmin, tmp_path: Path, mode: str) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(100, 0), Deadline(5)) is True
    admin.mode = mode
    error, elapsed = timed(lambda: router.apply(routing(10, 90), Deadline(DEADLINE)))
    assert isinstance(error, EnvoyRoutingError), error
    assert elapsed < DEADLINE + SLACK, (mode, elapsed)
    error, elapsed = timed(lambda: router.observed(NAMESPACE, SERVICE, Deadline(DEADLINE)))
    assert isinstance(error, EnvoyRoutingError) and "cannot read Envoy's routes" in str(error), error
    assert elapsed < DEADLINE + SLACK, (mode, elapsed)
    availability = EnvoyAvailability(admin.url, timeout=30.0)
    error, elapsed = timed(lambda: availability.endpoints(NAMESPACE, SERVICE, Deadline(DEADLINE)))
    assert isinstance(error, EnvoyAvailabilityError), error
    assert elapsed < DEADLINE + SLACK, (mode, elapsed)


def test_unconfirmed_after_restart_until_envoy_serves_it(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    first = router_for(admin, tmp_path)
    assert first.apply(routing(100, 0), Deadline(5)) is True
    admin.mode = "stale"  # Envoy keeps serving 100/0 and confirms nothing new
    with pytest.raises(EnvoyRoutingError):
        first.apply(routing(0, 100), Deadline(DEADLINE))
    # A restarted controller reads the desired 0/100 from disk, but Envoy serves 100/0: not in place.
    restarted = router_for(admin, tmp_path)
    assert restarted.current(NAMESPACE, SERVICE) == routing(0, 100)
    assert restarted.confirmed(NAMESPACE, SERVICE) is None
    with pytest.raises(EnvoyRoutingError, match="did not confirm"):
        restarted.apply(routing(0, 100), Deadline(DEADLINE))
    # Envoy catches up with the file: the same apply is now confirmed in place without a write.
    admin.mode = "confirm"
    version = restarted.version
    assert restarted.apply(routing(0, 100), Deadline(5)) is False
    assert restarted.version == version and restarted.confirmed(NAMESPACE, SERVICE) == routing(0, 100)


def test_no_time_left_writes_nothing(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    with pytest.raises(EnvoyRoutingError, match="no time left"):
        router.apply(routing(50, 50), Deadline(0))
    assert not router.routes_file.exists() and router.current(NAMESPACE, SERVICE) is None


def test_rejected_configuration_restores_the_previous_routing(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(100, 0), Deadline(5)) is True
    admin.mode = "stale"
    admin.reject_file_changes = True
    with pytest.raises(EnvoyRejectedError, match="rejected"):
        router.apply(routing(0, 100), Deadline(5))
    assert router.current(NAMESPACE, SERVICE) == routing(100, 0)
    served = json.loads(router.routes_file.read_text())["resources"][0]["virtual_hosts"][0]["routes"][-1]
    assert served["route"]["weighted_clusters"]["clusters"] == [{"name": "default--demo--v1", "weight": 100}]


def test_drift_is_read_back_and_clears_the_confirmation(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(100, 0), Deadline(5)) is True
    assert router.observed(NAMESPACE, SERVICE, Deadline(5)) == routing(100, 0)
    # Someone else replaces the routes file with 50/50; Envoy serves it.
    router.routes_file.write_text(json.dumps(discovery_response([routing(50, 50)], "999")))
    assert router.observed(NAMESPACE, SERVICE, Deadline(5)) == routing(50, 50)
    assert router.confirmed(NAMESPACE, SERVICE) is None
    version = router.version
    assert router.apply(routing(100, 0), Deadline(5)) is True  # repaired: written and confirmed again
    assert router.version == version + 1
    assert router.observed(NAMESPACE, SERVICE, Deadline(5)) == routing(100, 0)


def test_observed_refuses_routes_ramp_cannot_express(admin: FakeEnvoyAdmin, tmp_path: Path) -> None:
    router = router_for(admin, tmp_path)
    assert router.apply(routing(100, 0), Deadline(5)) is True
    config = discovery_response([routing(100, 0)], "5")["resources"][0]
    config["virtual_hosts"][0]["routes"][0]["route"] = {"cluster": "someone--elses--cluster"}
    admin.config_dump = {"configs": [{"version_info": "5", "route_config": config}]}
    with pytest.raises(EnvoyRoutingError, match="cannot express"):
        router.observed(NAMESPACE, SERVICE, Deadline(5))
    assert router.confirmed(NAMESPACE, SERVICE) is None


# -- availability ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    spec: RolloutSpec

    @property
    def name(self) -> str:
        return self.spec.rollout_name


def spec(service: str, versions: list[str]) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "service": service,
            "namespace": NAMESPACE,
            "versions": [{"name": v, "weight": 100 if i == 0 else 0} for i, v in enumerate(versions)],
            "target": versions[-1],
        }
    )


def host(port: int, **health: object) -> dict[str, object]:
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "health_status": {"eds_health_status": "HEALTHY", **health},
    }


def test_availability_reads_envoy_health_flags(admin: FakeEnvoyAdmin) -> None:
    admin.clusters = {
        "cluster_statuses": [
            {"name": "default--demo--v1", "host_statuses": [host(1), host(2, failed_active_health_check=True)]},
            {"name": "default--demo--v2", "host_statuses": [host(3, failed_active_health_check=True)]},
            {"name": "default--demo--v4", "host_statuses": []},
            {"name": "default--demo--v5", "host_statuses": [{"address": "junk"}, 7]},
            {"name": "default--demo--v6", "host_statuses": [host(6, eds_health_status="UNHEALTHY")]},
            {"name": "default--other--v1", "host_statuses": [host(9)]},
            "not a cluster",
        ]
    }
    availability = EnvoyAvailability(admin.url)
    rollouts = [Rollout(spec("demo", ["v1", "v2", "v3", "v4", "v5", "v6"])), Rollout(spec("other", ["v1", "v2"]))]
    assert availability.unavailable_versions(rollouts, Deadline(5)) == {
        "demo": frozenset({"v2", "v3", "v4", "v5", "v6"}),  # v3: no cluster at all
        "other": frozenset({"v2"}),
    }
    endpoints = availability.endpoints(NAMESPACE, SERVICE)
    assert endpoints["v1"] == [("127.0.0.1", 1, True), ("127.0.0.1", 2, False)]
    assert endpoints["v5"] == [("?", 0, False), ("?", 0, False)]
    assert "v3" not in endpoints


@pytest.mark.parametrize("answer", [{"cluster_statuses": "x"}, {"cluster_statuses": {"a": 1}}])
def test_availability_raises_on_a_malformed_answer(admin: FakeEnvoyAdmin, answer: dict[str, object]) -> None:
    admin.clusters = answer
    with pytest.raises(EnvoyAvailabilityError, match="cannot read"):
        EnvoyAvailability(admin.url).unavailable_versions([Rollout(spec("demo", ["v1", "v2"]))])


def test_availability_of_an_unreachable_envoy_raises(tmp_path: Path) -> None:
    with FakeEnvoyAdmin() as gone:
        url = gone.url
    with pytest.raises(EnvoyAvailabilityError, match="cannot read"):
        EnvoyAvailability(url).unavailable_versions([Rollout(spec("demo", ["v1", "v2"]))], Deadline(2))

"""IstioBackend under apiserver faults: 409s (injected and real), 5xx, timeouts, 403."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest

from controller.engine.phases import Phase, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.k8s.client import Conflict, Forbidden, KubeApi, RetryPolicy, Transient, backoff_delay
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from controller.routing.istio_render import managed_http_routes
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import (
    VS,
    G,
    V,
    assert_valid,
    count,
    custom_objects,
    fail_next,
    kube_api,
    stored,
    three_versions,
)

ROUTINGS = build_plan(three_versions()).all_routings()


def state_at(step: int) -> RolloutState:
    return RolloutState(rollout="reviews", spec_digest="d1", phase=Phase.PROGRESSING, step=step,
                        step_started_at=1000.0 + step, reason=f"step {step + 1}")  # fmt: skip


def started(kube: KubeHarness, delays: list[float] | None = None, timeout: float = 5.0) -> IstioBackend:
    """A backend whose VirtualService/DestinationRule already exist at step 0."""
    b = IstioBackend(kube_api(kube, delays, timeout))
    b.track({"reviews": ("shop", "reviews")})
    b.load("reviews")
    b.save(state_at(0))
    assert b.apply(ROUTINGS[0]) is True
    return b


def stored_step(kube: KubeHarness) -> int:
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None
    return int(json.loads(vs["metadata"]["annotations"]["ramp.dev/state"])["step"])


def advance(b: IstioBackend, step: int, routing: DesiredRouting) -> bool:
    b.load("reviews")
    b.save(state_at(step))
    return b.apply(routing)


def test_injected_409_is_re_read_and_retried(kube: KubeHarness) -> None:
    delays: list[float] = []
    b = started(kube, delays)
    gets = count(kube, "get", VS)
    b.load("reviews")
    b.save(state_at(1))
    puts = count(kube, "put", VS)
    kube_gets = count(kube, "get", VS)
    fail_next(kube, "put", 409)
    assert b.apply(ROUTINGS[1]) is True
    assert count(kube, "put", VS) == puts + 2
    assert count(kube, "get", VS) == kube_gets + 1 > gets  # re-read after the conflict
    assert len(delays) == 1 and 0.1 <= delays[0] <= 0.2  # one backoff before retrying
    assert stored_step(kube) == 1
    assert_valid(stored(kube, VS, "shop", "reviews"))


def test_a_foreign_write_between_our_read_and_write_is_kept(kube: KubeHarness) -> None:
    b = started(kube)
    b.load("reviews")  # our read (cached for the write)
    foreign = custom_objects(kube)
    theirs = foreign.get_namespaced_custom_object(G, V, "shop", VS, "reviews")
    debug = {"name": "x-debug", "match": [{"headers": {"x-debug": {"exact": "1"}}}],
             "route": [{"destination": {"host": "reviews-debug"}}]}  # fmt: skip
    theirs["spec"]["http"].insert(0, debug)
    theirs["metadata"]["annotations"]["owner"] = "team-books"
    foreign.replace_namespaced_custom_object(G, V, "shop", VS, "reviews", theirs)
    b.save(state_at(1))
    puts = count(kube, "put", VS)
    assert b.apply(ROUTINGS[1]) is True
    assert count(kube, "put", VS) == puts + 2  # a real 409, then the re-merged write
    vs = stored(kube, VS, "shop", "reviews")
    assert_valid(vs)
    assert vs is not None
    header_routes = managed_http_routes(ROUTINGS[1])[:-1]
    assert vs["spec"]["http"] == [*header_routes, debug, managed_http_routes(ROUTINGS[1])[-1]]
    assert vs["metadata"]["annotations"]["owner"] == "team-books"
    assert stored_step(kube) == 1


def test_endless_conflicts_give_up_after_the_bounded_attempts(kube: KubeHarness) -> None:
    b = started(kube)
    b.load("reviews")
    b.save(state_at(1))
    puts = count(kube, "put", VS)
    kube.emulator["put"] << 409
    with pytest.raises(Conflict, match="still conflicting after 5 attempts"):
        b.apply(ROUTINGS[1])
    assert count(kube, "put", VS) == puts + 5
    assert stored_step(kube) == 0


def test_500s_are_retried_with_deterministic_backoff(kube: KubeHarness) -> None:
    delays: list[float] = []
    b = started(kube, delays)
    fail_next(kube, "put", 500, times=2)
    assert advance(b, 1, ROUTINGS[1]) is True
    rng = random.Random(7)  # kube_api's seed: the same jitter every run
    assert delays == [backoff_delay(0, 0.2, 3.0, rng), backoff_delay(1, 0.2, 3.0, rng)]
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4
    assert stored_step(kube) == 1
    assert b.api.stats.errors_by_kind["Transient"] == 2 and b.api.stats.errors == {"update": 2}


def test_a_hung_apiserver_times_out_and_is_retried(kube: KubeHarness) -> None:
    b = started(kube, timeout=0.3)
    fail_next(kube, "get", lambda: asyncio.sleep(1.5))  # answers after 1.5 s, past the 0.3 s request timeout
    began = time.monotonic()
    state = b.load("reviews")
    assert time.monotonic() - began < 1.2
    assert state is not None and state.step == 0
    assert b.api.stats.errors == {"get": 1} and b.api.stats.retries == 1


def test_a_write_that_lands_after_our_timeout_is_recognised_not_repeated(kube: KubeHarness) -> None:
    b = started(kube)
    b.api = KubeApi(kube.api_client(0.3), retry=RetryPolicy(sleep=lambda _delay: time.sleep(0.1)))

    async def commit_then_hang(request: Any) -> None:  # the apiserver commits, the answer never reaches us
        await kube.emulator._serve_replace(request)
        await asyncio.sleep(1.0)

    fail_next(kube, "put", commit_then_hang)
    puts, gets = count(kube, "put", VS), count(kube, "get", VS)
    b.load("reviews")
    b.save(state_at(1))
    assert b.apply(ROUTINGS[1]) is False  # the retry conflicts, the re-read shows the write already landed
    assert (count(kube, "put", VS), count(kube, "get", VS)) == (puts + 2, gets + 2)
    assert b.api.stats.errors_by_kind == {"Transient": 1, "Conflict": 1}
    assert stored_step(kube) == 1
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None and vs["spec"]["http"] == managed_http_routes(ROUTINGS[1])
    assert b.load("reviews") == state_at(1) and b.apply(ROUTINGS[1]) is False


def test_a_persistent_500_raises_transient_after_the_bounded_attempts(kube: KubeHarness) -> None:
    b = started(kube)
    gets = count(kube, "get", VS)
    kube.emulator["get"] << 500
    with pytest.raises(Transient, match="gave up after 5 attempts") as failed:
        b.load("reviews")
    assert failed.value.status == 500
    assert count(kube, "get", VS) == gets + 5


def test_403_is_forbidden_naming_verb_resource_object_and_rbac(kube: KubeHarness) -> None:
    b = started(kube)
    puts = count(kube, "put", VS)
    message = 'virtualservices.networking.istio.io "reviews" is forbidden: User "system:serviceaccount:ramp:ramp"'
    kube.emulator["put"] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden", "message": message}
    with pytest.raises(Forbidden) as forbidden:
        advance(b, 1, ROUTINGS[1])
    text = str(forbidden.value)
    assert "cannot update virtualservices.networking.istio.io 'reviews' in namespace 'shop'" in text
    assert "RBAC rule granting verb 'update' on resource 'virtualservices' in API group 'networking.istio.io'" in text
    assert message in text
    assert count(kube, "put", VS) == puts + 1  # not retried
    assert (forbidden.value.status, forbidden.value.verb, forbidden.value.namespace) == (403, "update", "shop")

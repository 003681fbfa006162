"""One actor at a time, under faults: each client talks to the emulator through its own fault-injecting proxy.

Slow API (dribbled replies) -> calls end at their TOTAL deadline; 409 storm -> bounded attempts, each
re-checking leadership; connection reset mid-reply -> a typed Transient error, retried within the deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import CustomObjectsApi

from controller.deadline import Deadline, DeadlineExceeded
from controller.engine.routing_model import DesiredRouting
from controller.k8s.client import (
    Conflict,
    KubeApi,
    KubeDeadlineExceeded,
    NotLeader,
    RetryPolicy,
    Transient,
)
from controller.k8s.deadline_call import IDLE_WORKER_NAME, MAX_IDLE, WORKER_NAME
from controller.k8s.events import EventRecorder, ObjectRef
from controller.k8s.leader import LeaderElector, LeaseConfig
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from tests.fakes.kube_proxy import KubeProxy, running_proxy
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, G, V, kube_api, stored, three_versions

VS_PATH = f"/{VS}/"
# A total deadline is a correctness property: generous slack for a loaded machine, far below what dribbling costs.
SLACK = 1.5


@pytest.fixture()
def proxy(kube: KubeHarness) -> Iterator[KubeProxy]:
    with running_proxy(kube.url) as running:
        yield running


def routings() -> list[DesiredRouting]:
    return build_plan(three_versions()).all_routings()


def seed_virtual_service(kube: KubeHarness) -> None:
    """A VirtualService + DestinationRule written by Ramp, straight to the emulator (no faults)."""
    backend = IstioBackend(kube_api(kube))
    backend.track({"reviews": ("shop", "reviews")})
    backend.apply(routings()[2])


def proxied_api(
    proxy: KubeProxy, timeout: float = 5.0, attempts: int = 5, **kwargs: Any
) -> tuple[KubeApi, list[float]]:
    delays: list[float] = []
    retry = RetryPolicy(attempts=attempts, sleep=delays.append, rng=random.Random(7))
    return KubeApi(proxy.api_client(timeout), retry=retry, **kwargs), delays


def get_vs(api: KubeApi) -> Callable[..., Any]:
    read = api.custom_objects.get_namespaced_custom_object
    return lambda **kw: api.call("get", "virtualservices", "shop", "reviews", read, G, V, "shop", VS, "reviews", **kw)


def live_weights(kube: KubeHarness) -> dict[str, int]:
    """The weights stored in the cluster now (versions with traffic)."""
    return {v: w for v, w in IstioBackend(kube_api(kube)).read_routing("shop", "reviews").weights if w > 0}


def wanted(routing: DesiredRouting) -> dict[str, int]:
    return {v: w for v, w in routing.weights if w > 0}


def workers_finish(timeout: float = 5.0) -> bool:
    """Abandoned request workers end (their sockets were shut down) instead of leaking, bounded wait: no worker
    is left in a call, and the pooled idle ones (reused by later calls) stay within the pool's bound."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        names = [t.name for t in threading.enumerate()]
        if WORKER_NAME not in names and names.count(IDLE_WORKER_NAME) <= MAX_IDLE:
            return True
        time.sleep(0.02)
    return False


# --- (b) slow API ---------------------------------------------------------------------------------


def test_a_dribbled_reply_outlives_urllib3s_per_read_timeout(kube: KubeHarness, proxy: KubeProxy) -> None:
    """The premise: with the client's own timeout (per read) a dribbling apiserver holds a call for long."""
    seed_virtual_service(kube)
    proxy.faults.dribble_interval = 0.05  # a byte every 50 ms: never 1 s of silence
    raw = proxy.api_client()
    done = threading.Event()

    def plain_call() -> None:  # the kubernetes client alone, no Ramp deadline
        try:
            CustomObjectsApi(raw).get_namespaced_custom_object(G, V, "shop", VS, "reviews", _request_timeout=1.0)
        except Exception:
            pass
        finally:
            done.set()

    thread = threading.Thread(target=plain_call, daemon=True)
    thread.start()
    assert not done.wait(3.0)  # a 1 s "timeout", still reading after 3 s
    proxy.stop()  # lets it end
    assert done.wait(5.0)


def test_a_dribbling_apiserver_cannot_hold_a_call_beyond_its_total_deadline(
    kube: KubeHarness, proxy: KubeProxy
) -> None:
    seed_virtual_service(kube)
    proxy.faults.dribble_interval = 0.05
    api, _ = proxied_api(proxy, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Transient, match=r"no complete answer within 1s \(total request timeout\)"):
        get_vs(api)()
    assert time.monotonic() - started < 1.0 + SLACK
    assert api.stats.errors_by_kind == {"Transient": 1}
    assert workers_finish()  # the abandoned worker's socket was shut down: no thread left reading


def test_retries_stop_at_the_callers_total_deadline(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.dribble_interval = 0.05
    api, delays = proxied_api(proxy, timeout=1.0, attempts=50)
    api.retry.sleep = lambda seconds: (delays.append(seconds), time.sleep(seconds))[-1]  # type: ignore[func-returns-value]
    started = time.monotonic()
    with pytest.raises(KubeDeadlineExceeded) as exceeded:
        api.retrying("get", "virtualservices", "shop", "reviews", api.custom_objects.get_namespaced_custom_object,
                     G, V, "shop", VS, "reviews", deadline=Deadline(2.5))  # fmt: skip
    assert isinstance(exceeded.value, DeadlineExceeded)  # catchable as the core's DeadlineExceeded too
    assert time.monotonic() - started < 2.5 + SLACK
    assert 2 <= proxy.count("GET", VS_PATH) <= 3  # 50 attempts allowed; the deadline let 2-3 start
    assert workers_finish()


def test_an_expired_deadline_sends_nothing(kube: KubeHarness, proxy: KubeProxy) -> None:
    api, _ = proxied_api(proxy)
    with pytest.raises(KubeDeadlineExceeded, match="exceeded before the request"):
        get_vs(api)(deadline=Deadline(0.0))
    assert proxy.records == []


def test_lease_requests_and_events_end_at_their_total_deadline(kube: KubeHarness, proxy: KubeProxy) -> None:
    proxy.faults.dribble_interval = 0.05
    api = proxy.api_client(timeout=1.0)
    elector = LeaderElector(api, LeaseConfig(namespace="ramp-system", identity="a", lease_duration=4,
                                             renew_deadline=2, retry_period=0.5))  # fmt: skip
    recorder = EventRecorder(proxy.api_client(timeout=1.0))  # its own client: not guarded by the elector
    started = time.monotonic()
    assert elector.try_acquire_or_renew() is False  # the Lease read is dribbled: abandoned after 1 s
    assert elector.failures == 1 and not elector.is_leader()
    assert time.monotonic() - started < 1.0 + SLACK
    started = time.monotonic()
    assert recorder.record("shop", ObjectRef("networking.istio.io/v1", "VirtualService", "reviews"), "X", "m") is False
    assert recorder.failures == 1 and time.monotonic() - started < 1.0 + SLACK
    assert workers_finish()


# --- (c) 409 storm --------------------------------------------------------------------------------


class CountingGuard:
    """A write guard that notes how many VirtualService PUTs the proxy had seen each time it was asked."""

    def __init__(self, proxy: KubeProxy, allow: int | None = None) -> None:
        self.proxy = proxy
        self.allow = allow  # answer True this many times, then False (None: always True)
        self.asked_after_puts: list[int] = []
        self.refused_after_puts: int | None = None
        self.refused_after_gets: int | None = None

    def __call__(self) -> bool:
        puts = self.proxy.count("PUT", VS_PATH)
        self.asked_after_puts.append(puts)
        allowed = self.allow is None or len(self.asked_after_puts) <= self.allow
        if not allowed and self.refused_after_puts is None:
            self.refused_after_puts, self.refused_after_gets = puts, self.proxy.count("GET", VS_PATH)
        return allowed


def storm_backend(proxy: KubeProxy, guard: CountingGuard) -> tuple[IstioBackend, KubeApi]:
    api, _ = proxied_api(proxy, write_guard=guard)
    backend = IstioBackend(api, conflict_attempts=5)
    backend.track({"reviews": ("shop", "reviews")})
    return backend, api


def test_a_409_storm_costs_bounded_attempts_each_rechecking_leadership(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    before = stored(kube, VS, "shop", "reviews")
    proxy.faults.conflict_puts = -1  # every PUT answered 409, none forwarded
    guard = CountingGuard(proxy)
    backend, _ = storm_backend(proxy, guard)
    with pytest.raises(Conflict, match="still conflicting after 5 attempts"):
        backend.apply(routings()[5])
    assert proxy.count("PUT", VS_PATH) == 5  # bounded: conflict_attempts
    assert set(range(5)) <= set(guard.asked_after_puts)  # leadership asked again before every one of the 5 PUTs
    assert proxy.landed("PUT", VS_PATH) == [] and stored(kube, VS, "shop", "reviews") == before


def test_leadership_lost_during_a_409_storm_stops_the_writes_at_once(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.conflict_puts = -1
    guard = CountingGuard(proxy, allow=2)  # leadership ends after the second question
    backend, api = storm_backend(proxy, guard)
    with pytest.raises(NotLeader):
        backend.apply(routings()[5])
    puts = proxy.count("PUT", VS_PATH)
    assert 1 <= puts <= 2 and guard.refused_after_puts == puts  # nothing written once the guard said no
    assert guard.refused_after_gets == proxy.count("GET", VS_PATH)  # nor re-read to re-merge
    assert api.stats.errors_by_kind.get("Conflict") == puts and api.stats.retries == 0


def test_a_409_for_a_write_that_landed_converges_without_writing_again(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.conflict_puts, proxy.faults.conflict_forward = 1, True  # it lands, the client is told 409
    backend, _ = storm_backend(proxy, CountingGuard(proxy))
    backend.apply(routings()[5])
    assert len(proxy.landed("PUT", VS_PATH)) == 1 and proxy.count("PUT", VS_PATH) == 1
    assert live_weights(kube) == wanted(routings()[5])


# --- (d) connection reset mid-reply ---------------------------------------------------------------


def test_a_reset_mid_reply_is_a_typed_transient_error(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.reset_replies = 1
    api, _ = proxied_api(proxy, attempts=1)
    with pytest.raises(Transient) as failed:
        get_vs(api)()
    assert type(failed.value) is Transient and failed.value.verb == "get"
    assert [r.injected for r in proxy.records] == ["reset"]


def test_resets_are_retried_within_the_deadline(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.reset_replies = 2
    api, delays = proxied_api(proxy)
    found = api.retrying("get", "virtualservices", "shop", "reviews", api.custom_objects.get_namespaced_custom_object,
                         G, V, "shop", VS, "reviews", deadline=Deadline(10.0))  # fmt: skip
    assert found["metadata"]["name"] == "reviews"
    assert proxy.count("GET", VS_PATH) == 3 and api.stats.retries == 2 and len(delays) == 2


def test_a_reset_reply_to_a_write_that_landed_is_not_written_twice(kube: KubeHarness, proxy: KubeProxy) -> None:
    seed_virtual_service(kube)
    proxy.faults.reset_replies = 1
    proxy.faults.match = lambda method, path: method == "PUT"
    backend, _ = storm_backend(proxy, CountingGuard(proxy))
    backend.apply(routings()[5])  # PUT lands, reply reset -> retried PUT: 409 (stale rv) -> re-read: converged
    assert len(proxy.landed("PUT", VS_PATH)) == 1
    assert live_weights(kube) == wanted(routings()[5])

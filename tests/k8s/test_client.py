"""controller.k8s.client: configuration loading, error classification, retries, counters."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from controller.deadline import Deadline
from controller.k8s import deadline_call
from controller.k8s.client import (
    Conflict,
    Forbidden,
    Invalid,
    KubeApi,
    KubeConfigError,
    KubeError,
    NotFound,
    NotLeader,
    RetryPolicy,
    Transient,
    backoff_delay,
    classify,
    load_api_client,
    with_retries,
)
from controller.k8s.deadline_call import CallTimedOut, run_with_deadline
from controller.k8s.leader import LeaderElector, LeaseConfig
from controller.routing.istio import IstioBackend
from tests.fakes.kube_proxy import running_proxy
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, G, V, count, custom_objects, fail_next

ARGS = ("update", "virtualservices.networking.istio.io", "shop", "reviews")


def api_error(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = f'{{"kind": "Status", "message": "{message}"}}' if message else ""
    return exc


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (api_error(409), Conflict),
        (api_error(403), Forbidden),
        (api_error(404), NotFound),
        (api_error(400), Invalid),
        (api_error(422), Invalid),
        (api_error(429), Transient),
        (api_error(500), Transient),
        (api_error(503), Transient),
        (urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out"), Transient),  # type: ignore[arg-type]
        (urllib3.exceptions.MaxRetryError(None, "/x"), Transient),  # type: ignore[arg-type]
        (ConnectionRefusedError("refused"), Transient),
        (TimeoutError("slow"), Transient),
        (api_error(401), KubeError),
    ],
)
def test_classify_maps_failures_to_typed_errors(error: BaseException, kind: type[KubeError]) -> None:
    classified = classify(error, *ARGS)
    assert type(classified) is kind
    assert (classified.verb, classified.resource, classified.namespace, classified.name) == ARGS


def test_invalid_carries_the_apiserver_message() -> None:
    error = classify(api_error(422, "spec.http[0].route: Required value"), *ARGS)
    assert isinstance(error, Invalid) and error.status == 422
    assert "spec.http[0].route: Required value" in str(error)


def test_forbidden_names_verb_resource_object_namespace_and_rule() -> None:
    text = str(classify(api_error(403, "User cannot update"), "list", "deployments.apps", "shop", None))
    assert "cannot list deployments.apps in namespace 'shop'" in text
    assert "RBAC rule granting verb 'list' on resource 'deployments' in API group 'apps'" in text
    core = str(classify(api_error(403), "get", "pods", "shop", "p1"))
    assert "cannot get pods 'p1' in namespace 'shop'" in core and "core API group" in core


def test_with_retries_retries_only_transient_with_capped_jittered_backoff() -> None:
    calls, delays = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 5:
            raise Transient(*ARGS, 503)
        return "ok"

    assert with_retries(flaky, what="t", attempts=5, base_delay=1.0, max_delay=3.0,
                        sleep=delays.append, rng=random.Random(1)) == "ok"  # fmt: skip
    rng = random.Random(1)
    assert delays == [backoff_delay(i, 1.0, 3.0, rng) for i in range(4)]
    ceilings = [1.0, 2.0, 3.0, 3.0]  # exponential, capped at max_delay; jitter keeps 50-100 % of it
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))

    def missing() -> str:
        calls.append(1)
        raise NotFound(*ARGS, 404)

    calls.clear()
    with pytest.raises(NotFound):
        with_retries(missing, what="t", sleep=delays.append)
    assert len(calls) == 1  # never retried


def test_with_retries_gives_up_after_the_bounded_attempts() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise Transient(*ARGS, 500, "boom")

    with pytest.raises(Transient, match="gave up after 3 attempts: reviews update") as failed:
        with_retries(down, what="reviews update", attempts=3, sleep=lambda _d: None)
    assert len(calls) == 3 and failed.value.status == 500


def test_kube_api_counts_requests_and_errors_per_verb(kube: KubeHarness) -> None:
    api = KubeApi(kube.api_client())
    assert KubeApi(api.api_client).stats is api.stats  # every user of one ApiClient shares the counters
    backend = IstioBackend(api)
    fail_next(kube, "get", 503)
    assert backend.read_routing("shop", "reviews").found is False  # 503 retried, then 404 = not found
    assert api.stats.requests == {"get": 2}
    assert api.stats.errors == {"get": 1}  # a 404 answers "does it exist?", it is not counted as an error
    assert api.stats.errors_by_kind == {"Transient": 1, "NotFound": 1}
    assert api.stats.retries == 1 and backend.call_counts() == (2, 1)


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}},
                     {"name": "elsewhere", "context": {"cluster": "emu", "user": "u", "namespace": "x"}}],
    }))  # fmt: skip


def test_load_api_client_from_a_kubeconfig_file(kube: KubeHarness, tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_kubeconfig(config, kube.url)
    api = KubeApi(load_api_client(str(config), request_timeout=4.0))
    assert api.request_timeout == 4.0 and api.api_client.configuration.retries is False
    assert IstioBackend(api).read_routing("shop", "reviews").found is False
    assert count(kube, "get", VS) == 1
    assert KubeApi(load_api_client(str(config), context="elsewhere")).request_timeout == 10.0
    with pytest.raises(KubeConfigError, match="invalid Kubernetes configuration"):
        load_api_client(str(config), context="nope")


def test_load_api_client_falls_back_to_kubeconfig_env_then_home(
    kube: KubeHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError, match=r"no Kubernetes configuration found: pass --kubeconfig.*\.kube/config"):
        load_api_client()
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_api_client(str(tmp_path / "missing"))
    (tmp_path / ".kube").mkdir()
    write_kubeconfig(tmp_path / ".kube" / "config", kube.url)
    assert load_api_client().configuration.host == kube.url
    elsewhere = tmp_path / "other-config"
    write_kubeconfig(elsewhere, "http://127.0.0.1:1")
    monkeypatch.setenv("KUBECONFIG", str(elsewhere))
    assert load_api_client().configuration.host == "http://127.0.0.1:1"


# --- one actor at a time: the write guard, the leadership term, total deadlines ------------------------------


class Guard:
    """A write guard that allows `allow` calls (None: all), counting every question."""

    def __init__(self, allow: int | None = None) -> None:
        self.calls = 0
        self.allow = allow

    def __call__(self) -> bool:
        self.calls += 1
        return self.allow is None or self.calls <= self.allow


VS_BODY = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "shop"}, "spec": {"hosts": ["reviews"]}}  # fmt: skip


def writes(api: KubeApi) -> dict[str, Callable[[], object]]:
    co = api.custom_objects
    target = (G, V, "shop", VS)
    res = "virtualservices.networking.istio.io"
    return {
        "create": lambda: api.retrying("create", res, "shop", "reviews", co.create_namespaced_custom_object,
                                       *target, VS_BODY),
        "update": lambda: api.retrying("update", res, "shop", "reviews", co.replace_namespaced_custom_object,
                                       *target, "reviews", VS_BODY),
        "patch": lambda: api.retrying("patch", res, "shop", "reviews", co.patch_namespaced_custom_object,
                                      *target, "reviews", {"metadata": {"labels": {"a": "b"}}}),
        "delete": lambda: api.retrying("delete", res, "shop", "reviews", co.delete_namespaced_custom_object,
                                       *target, "reviews"),
        "events": lambda: api.call("create", "events", "shop", "e1", api.core.create_namespaced_event, "shop",
                                   {"metadata": {"name": "e1"}, "involvedObject": {}}),
    }  # fmt: skip


def test_a_replica_that_is_not_the_leader_sends_no_write_at_all(kube: KubeHarness) -> None:
    guard = Guard(allow=0)
    api = KubeApi(kube.api_client(), write_guard=guard)
    for write in writes(api).values():
        with pytest.raises(NotLeader, match="not the leader: write refused"):
            write()
    assert guard.calls == 5 and not issubclass(NotLeader, Transient)  # refused once each, never retried
    assert [r for r in kube.requests() if str(getattr(r.method, "value", r.method)) != "GET"] == []
    assert IstioBackend(api).read_routing("shop", "reviews").found is False  # reads are never guarded
    assert guard.calls == 5 and api.stats.errors_by_kind == {"NotLeader": 5, "NotFound": 1}


def test_the_guard_is_asked_before_every_retry_and_not_leader_is_never_retried(kube: KubeHarness) -> None:
    custom_objects(kube).create_namespaced_custom_object(G, V, "shop", VS, VS_BODY)
    guard = Guard(allow=2)
    delays: list[float] = []
    api = KubeApi(kube.api_client(), write_guard=guard,
                  retry=RetryPolicy(attempts=10, sleep=delays.append, rng=random.Random(3)))  # fmt: skip
    fail_next(kube, "put", 503, times=10)
    with pytest.raises(NotLeader):
        api.retrying("update", "virtualservices.networking.istio.io", "shop", "reviews",
                     api.custom_objects.replace_namespaced_custom_object, G, V, "shop", VS, "reviews",
                     dict(VS_BODY, metadata={"name": "reviews", "namespace": "shop"}))  # fmt: skip
    assert count(kube, "put", VS) == 2 and guard.calls == 3  # 503, retry, 503, retry: refused before sending
    assert api.stats.retries == 2 and len(delays) == 2


def test_an_ended_leadership_term_refuses_writes_before_sending(kube: KubeHarness) -> None:
    clock = [100.0]
    term = Deadline(10.0, clock=lambda: clock[0])
    api = KubeApi(kube.api_client(), write_guard=lambda: True, write_deadline=lambda: term)
    writes(api)["create"]()
    assert count(kube, "post", VS) == 1
    clock[0] = 110.0
    with pytest.raises(NotLeader, match="leadership term over"):
        writes(api)["patch"]()
    assert count(kube, "patch", VS) == 0


def test_a_write_in_flight_when_the_term_ends_is_abandoned_not_retried(kube: KubeHarness) -> None:
    with running_proxy(kube.url) as proxy:
        proxy.faults.hold = 2.0  # the apiserver gets it 2 s late: after the term
        api = KubeApi(proxy.api_client(5.0), write_guard=lambda: True, write_deadline=lambda: Deadline(0.5),
                      retry=RetryPolicy(attempts=5, sleep=lambda _s: None))  # fmt: skip
        started = time.monotonic()
        with pytest.raises(NotLeader, match="abandoned at the end of the leadership term"):
            writes(api)["create"]()
        assert time.monotonic() - started < 0.5 + 1.5  # generous slack: it is the hold (2 s) it must not wait for
        assert proxy.wait_idle(5.0)
        assert proxy.count("POST", f"/{VS}") == 1 and api.stats.retries == 0  # delivered late, never re-sent


def test_a_malformed_answer_is_a_typed_error_not_a_crash(kube: KubeHarness) -> None:
    api = KubeApi(kube.api_client(), retry=RetryPolicy(sleep=lambda _s: None))
    kube.emulator["get"] << {"kind": "Pod", "metadata": "not an object", "spec": 5}
    with pytest.raises(KubeError, match="get pods shop/p failed") as failed:
        api.retrying("get", "pods", "shop", "p", api.core.read_namespaced_pod, "p", "shop")
    assert type(failed.value) is KubeError and api.stats.requests == {"get": 1}  # not retried: not transient


def test_an_elector_guards_every_kube_api_on_its_client_by_default(kube: KubeHarness) -> None:
    shared = kube.api_client()
    made_before = KubeApi(shared)  # e.g. the IstioBackend, built before the elector
    elector = LeaderElector(shared, LeaseConfig(namespace="ramp-system", identity="a"))
    made_after = KubeApi(shared)
    for api in (made_before, made_after):
        assert api.write_guard == elector.is_leader and api.write_deadline == elector.write_deadline
        with pytest.raises(NotLeader):
            writes(api)["create"]()
    assert count(kube, "post", VS) == 0
    assert elector.try_acquire_or_renew() is True
    writes(made_before)["create"]()
    assert count(kube, "post", VS) == 1
    assert KubeApi(kube.api_client()).write_guard is None  # another client (a CLI) is not the elector's
    explicit = KubeApi(shared, write_guard=lambda: False)
    with pytest.raises(NotLeader):
        writes(explicit)["patch"]()


def test_run_with_deadline_abandons_a_late_call_and_ignores_its_result() -> None:
    release, finished = threading.Event(), threading.Event()
    results: list[str] = []

    def late() -> str:
        release.wait(5)
        results.append("done")
        finished.set()
        return "late result"

    with pytest.raises(CallTimedOut, match=r"total deadline of 0\.1s"):
        run_with_deadline(late, 0.1)
    release.set()
    assert finished.wait(5) and results == ["done"]  # it did finish; nobody received its result
    assert run_with_deadline(lambda x: x * 2, 1.0, 21) == 42
    with pytest.raises(ZeroDivisionError):  # the call's own exception reaches the caller
        run_with_deadline(lambda: 1 / 0, 1.0)


def _alive(idents: set[int]) -> set[int]:
    return idents & {t.ident for t in threading.enumerate() if t.ident is not None}


def test_run_with_deadline_reuses_its_workers() -> None:
    before = threading.active_count()
    idents = {run_with_deadline(threading.get_ident, 1.0) for _ in range(200)}
    assert len(idents) == 1  # one pooled worker served every sequential call
    assert threading.current_thread().ident not in idents
    assert threading.active_count() <= before + 1


def test_a_worker_stuck_in_an_abandoned_call_is_replaced_then_exits() -> None:
    release = threading.Event()
    stuck: set[int] = set()

    def hang() -> None:
        stuck.add(threading.get_ident())
        release.wait(5)

    with pytest.raises(CallTimedOut):
        run_with_deadline(hang, 0.1)
    started = time.monotonic()
    served = run_with_deadline(threading.get_ident, 1.0)  # not waiting for the stuck worker
    assert time.monotonic() - started < 0.5 and served not in stuck
    assert [t.name for t in threading.enumerate() if t.ident in stuck] == [deadline_call.WORKER_NAME]
    release.set()
    end = time.monotonic() + 5
    while _alive(stuck) and time.monotonic() < end:
        time.sleep(0.01)
    assert not _alive(stuck)  # its call ended: it exited instead of rejoining the pool


def test_idle_workers_are_bounded_and_exit_when_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline_call, "IDLE_SECONDS", 0.2)
    gate = threading.Barrier(deadline_call.MAX_IDLE + 4, timeout=5)
    served: set[int] = set()

    def together() -> None:
        served.add(threading.get_ident())
        gate.wait()

    callers = [threading.Thread(target=run_with_deadline, args=(together, 5.0)) for _ in range(gate.parties)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(5)
    assert len(served) == gate.parties  # concurrent calls each got a worker
    idle = [t for t in threading.enumerate() if t.name == deadline_call.IDLE_WORKER_NAME]
    assert len(idle) <= deadline_call.MAX_IDLE
    end = time.monotonic() + 5
    while _alive(served) and time.monotonic() < end:
        time.sleep(0.02)
    assert not _alive(served)  # unused for IDLE_SECONDS: every one of them exited

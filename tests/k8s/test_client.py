"""controller.k8s.client: configuration loading, error classification, retries, counters."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from controller.k8s.client import (
    Conflict,
    Forbidden,
    Invalid,
    KubeApi,
    KubeConfigError,
    KubeError,
    NotFound,
    Transient,
    backoff_delay,
    classify,
    load_api_client,
    with_retries,
)
from controller.routing.istio import IstioBackend
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, count, fail_next

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

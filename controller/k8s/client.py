"""Kubernetes client construction, typed API errors, bounded retries and request counters.

This is the only module that builds `kubernetes` clients. Every call made through `KubeApi`
carries a `_request_timeout` (a hung apiserver cannot hang a tick), is counted per verb in
`KubeStats`, and fails with a typed `KubeError`: `Conflict` (409), `Forbidden` (403, names the
missing RBAC rule), `NotFound` (404), `Invalid` (400/422, with the apiserver's message) or
`Transient` (429, 5xx, connection errors, timeouts). `with_retries` retries `Transient` only,
with capped exponential backoff and jitter from an injectable random source.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

log = structlog.get_logger("ramp.k8s")

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT = 10.0
# An ApiClient may carry its own per-request timeout under this attribute (load_api_client sets it).
REQUEST_TIMEOUT_ATTR = "ramp_request_timeout"
# Every KubeApi wrapping the same ApiClient shares one KubeStats, kept on the client under this attribute.
STATS_ATTR = "ramp_kube_stats"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeConfigError(Exception):
    """No usable Kubernetes configuration (kubeconfig file, in-cluster ServiceAccount, ~/.kube/config)."""


class KubeError(Exception):
    """A failed Kubernetes API request, with what was being done when it failed."""

    def __init__(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        status: int | None = None,
        detail: str = "",
    ) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.status = status
        self.detail = detail
        super().__init__(self.describe())

    @property
    def target(self) -> str:
        """`<resource> <namespace>/<name>`, or what is known of it."""
        where = "/".join(p for p in (self.namespace, self.name) if p)
        return f"{self.resource} {where}".strip()

    def describe(self) -> str:
        code = f"HTTP {self.status}" if self.status else "no HTTP status"
        text = f"{self.verb} {self.target} failed ({code})"
        return f"{text}: {self.detail}" if self.detail else text


class Conflict(KubeError):
    """409: the object changed since it was read (or already exists on create)."""


class NotFound(KubeError):
    """404."""


class Invalid(KubeError):
    """400/422: the apiserver rejected the object; `detail` carries its message."""


class Transient(KubeError):
    """429, 5xx, connection errors and timeouts: worth retrying."""


class Forbidden(KubeError):
    """403: the controller's ServiceAccount lacks an RBAC rule."""

    def describe(self) -> str:
        group, _, plural = _split_resource(self.resource)
        scope = f"in namespace {self.namespace!r}" if self.namespace else "cluster-wide"
        obj = f" {self.name!r}" if self.name else ""
        api_group = f"API group {group!r}" if group else 'the core API group ("")'
        text = (
            f"forbidden: cannot {self.verb} {self.resource}{obj} {scope}; the controller's ServiceAccount is "
            f"missing an RBAC rule granting verb {self.verb!r} on resource {plural!r} in {api_group} {scope}"
        )
        return f"{text} (apiserver: {self.detail})" if self.detail else text


def _split_resource(resource: str) -> tuple[str, str, str]:
    """'virtualservices.networking.istio.io' -> ('networking.istio.io', '.', 'virtualservices')."""
    plural, dot, group = resource.partition(".")
    return group, dot, plural


def _apiserver_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.strip():
        try:
            payload = json.loads(body)
        except ValueError:
            return body.strip()[:300]
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            return str(payload["message"])[:500]
    return str(exc.reason or "").strip()


def classify(exc: BaseException, verb: str, resource: str, namespace: str | None, name: str | None) -> KubeError:
    """The typed error for a failed request (already a KubeError: returned as is)."""
    if isinstance(exc, KubeError):
        return exc
    args = (verb, resource, namespace, name)
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = _apiserver_message(exc)
        if status == 409:
            return Conflict(*args, status, detail)
        if status == 403:
            return Forbidden(*args, status, detail)
        if status == 404:
            return NotFound(*args, status, detail)
        if status in (400, 422):
            return Invalid(*args, status, detail)
        if status == 429 or status >= 500:
            return Transient(*args, status, detail)
        return KubeError(*args, status or None, detail)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):  # timeouts, refused/reset connections
        return Transient(*args, None, f"{type(exc).__name__}: {exc}"[:300])
    return KubeError(*args, None, f"{type(exc).__name__}: {exc}"[:300])


@dataclass
class KubeStats:
    """Request and error counters per verb (and failures per error kind), for /metrics."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def request(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] = self.requests.get(verb, 0) + 1

    def error(self, verb: str, error: KubeError) -> None:
        """Counted per kind; per verb too unless it is NotFound (the expected answer to get-if-exists)."""
        kind = type(error).__name__
        with self._lock:
            if not isinstance(error, NotFound):
                self.errors[verb] = self.errors.get(verb, 0) + 1
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def retry(self) -> None:
        with self._lock:
            self.retries += 1

    def totals(self) -> tuple[int, int]:
        """(requests, errors) over all verbs."""
        with self._lock:
            return sum(self.requests.values()), sum(self.errors.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "errors_by_kind": dict(self.errors_by_kind),
                "retries": self.retries,
            }


_default_rng = random.Random()


def backoff_delay(attempt: int, base_delay: float, max_delay: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): capped exponential, jittered to 50-100%."""
    ceiling = min(max_delay, base_delay * (2.0**attempt))
    return ceiling * (0.5 + 0.5 * rng.random())


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[Transient], None] | None = None,
) -> T:
    """`fn()`, retrying `Transient` up to `attempts` calls in all; any other exception is raised at once."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    source = rng if rng is not None else _default_rng
    for attempt in range(attempts):
        try:
            return fn()
        except Transient as exc:
            if attempt + 1 >= attempts:
                log.warning("kubernetes request failed, giving up", what=what, attempts=attempts, error=str(exc))
                raise Transient(
                    exc.verb, exc.resource, exc.namespace, exc.name, exc.status,
                    f"{exc.detail or 'transient error'} (gave up after {attempts} attempts: {what})",
                ) from exc  # fmt: skip
            delay = backoff_delay(attempt, base_delay, max_delay, source)
            log.info("kubernetes request failed, retrying", what=what, attempt=attempt + 1, delay=round(delay, 3))
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 3.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.base_delay, self.max_delay, self.rng or _default_rng)

    def run(self, fn: Callable[[], T], what: str, on_retry: Callable[[Transient], None] | None = None) -> T:
        return with_retries(
            fn, what=what, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay,
            sleep=self.sleep, rng=self.rng, on_retry=on_retry,
        )  # fmt: skip


class KubeApi:
    """An ApiClient plus the policies every Ramp request follows (timeout, typed errors, counting, retries)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        stats: KubeStats | None = None,
        request_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api_client = api_client
        if stats is None:
            stats = getattr(api_client, STATS_ATTR, None)
            if not isinstance(stats, KubeStats):
                stats = KubeStats()
                setattr(api_client, STATS_ATTR, stats)
        self.stats = stats
        default_timeout = getattr(api_client, REQUEST_TIMEOUT_ATTR, DEFAULT_REQUEST_TIMEOUT)
        self.request_timeout = float(request_timeout if request_timeout is not None else default_timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self.custom_objects = k8s_client.CustomObjectsApi(api_client)
        self.apps = k8s_client.AppsV1Api(api_client)
        self.core = k8s_client.CoreV1Api(api_client)

    @classmethod
    def wrap(cls, api: ApiClient | KubeApi) -> KubeApi:
        return api if isinstance(api, KubeApi) else cls(api)

    def call(
        self, verb: str, resource: str, namespace: str | None, name: str | None,
        fn: Callable[..., T], *args: Any, **kwargs: Any,
    ) -> T:  # fmt: skip
        """One request: counted, bounded by the request timeout, failures raised as KubeError."""
        self.stats.request(verb)
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = classify(exc, verb, resource, namespace, name)
            self.stats.error(verb, error)
            raise error from exc

    def retrying(
        self, verb: str, resource: str, namespace: str | None, name: str | None,
        fn: Callable[..., T], *args: Any, **kwargs: Any,
    ) -> T:  # fmt: skip
        """`call` with Transient failures retried under the retry policy."""
        where = "/".join(p for p in (namespace, name) if p)
        return self.retry.run(
            lambda: self.call(verb, resource, namespace, name, fn, *args, **kwargs),
            what=f"{verb} {resource} {where}",
            on_retry=lambda _exc: self.stats.retry(),
        )


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and IN_CLUSTER_TOKEN.is_file()


def load_api_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> ApiClient:
    """A client from `kubeconfig`, else the in-cluster ServiceAccount, else $KUBECONFIG / ~/.kube/config.

    urllib3's own retries are switched off: `with_retries` is the single, bounded retry layer.
    """
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig is not None:
            path = Path(kubeconfig).expanduser()
            if not path.is_file():
                raise KubeConfigError(f"kubeconfig file {str(path)!r} does not exist")
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                str(path), context, client_configuration=configuration
            )
        elif context is None and _in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            env = os.environ.get("KUBECONFIG", "")
            candidates = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
            candidates = candidates or [Path.home() / ".kube" / "config"]
            if not any(p.is_file() for p in candidates):
                looked = ", ".join(str(p) for p in candidates)
                raise KubeConfigError(
                    "no Kubernetes configuration found: pass --kubeconfig, run in a pod with a ServiceAccount "
                    f"(KUBERNETES_SERVICE_HOST and {IN_CLUSTER_TOKEN}), or create a kubeconfig (looked at {looked})"
                )
            config_file = env or str(candidates[0])  # the library merges a ':'-separated $KUBECONFIG
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file, context, client_configuration=configuration
            )
    except ConfigException as exc:
        raise KubeConfigError(f"invalid Kubernetes configuration: {exc}") from exc
    configuration.retries = False
    api = ApiClient(configuration)
    setattr(api, REQUEST_TIMEOUT_ATTR, request_timeout)
    return api

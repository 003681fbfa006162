"""Kubernetes client construction, typed API errors, bounded retries and request counters.

This is the only module that builds `kubernetes` clients. Every call made through `KubeApi` has a
TOTAL deadline (connect + the whole response, see `deadline_call`): the request timeout, cut to what is
left of the caller's `Deadline` and, for writes, of the leadership term. A dribbling or hung apiserver
cannot hold a call beyond it. Calls are counted per verb in `KubeStats` and fail with a typed
`KubeError`: `Conflict` (409), `Forbidden` (403, names the missing RBAC rule), `NotFound` (404),
`Invalid` (400/422, with the apiserver's message), `Transient` (429, 5xx, connection errors, resets,
timeouts), `NotLeader` (a write refused or abandoned because this replica may no longer write) or
`KubeDeadlineExceeded` (the caller's total deadline ran out). `with_retries` retries `Transient` only,
with capped exponential backoff and jitter from an injectable random source, and never past a deadline.

One actor at a time: a `KubeApi` given a `write_guard` (the leader elector's `is_leader`) asks it before
EVERY write request (create/update/replace/patch/delete), including each retry and each write after a
409 re-read; a write still in flight when the leadership term's `write_deadline` passes is abandoned
(its late result is ignored) and reported as `NotLeader`, never retried. Bytes already sent cannot be
recalled: a write delivered late by the network carries the resourceVersion it was based on, so the
apiserver rejects it (409) once the successor has written; if the successor has not written yet, the
successor's own write conflicts, re-reads and re-asserts its routing. Safe by default: a `LeaderElector`
registers itself on the ApiClient it campaigns with, and every KubeApi on that client without an explicit
guard/deadline uses the elector's `is_leader`/`write_deadline`.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import ApiClient
from kubernetes.config.config_exception import ConfigException

from controller.deadline import Deadline
from controller.k8s.deadline_call import CallTimedOut, install, run_with_deadline
from controller.k8s.errors import (
    Conflict,
    Forbidden,
    Invalid,
    KubeConfigError,
    KubeDeadlineExceeded,
    KubeError,
    NotFound,
    NotLeader,
    Transient,
    classify,
)

__all__ = [
    "Conflict", "Forbidden", "Invalid", "KubeApi", "KubeConfigError", "KubeDeadlineExceeded", "KubeError",
    "KubeStats", "NotFound", "NotLeader", "RetryPolicy", "Transient", "backoff_delay", "classify",
    "load_api_client", "with_retries",
]  # fmt: skip

log = structlog.get_logger("ramp.k8s")

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT = 10.0
# An ApiClient may carry its own per-request timeout under this attribute (load_api_client sets it).
REQUEST_TIMEOUT_ATTR = "ramp_request_timeout"
# Every KubeApi wrapping the same ApiClient shares one KubeStats, kept on the client under this attribute.
STATS_ATTR = "ramp_kube_stats"
# A LeaderElector campaigning with an ApiClient registers itself there: writes through that client are guarded.
LEADERSHIP_ATTR = "ramp_leadership"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Requests that change the cluster: refused when the write guard says this replica may not write.
WRITE_VERBS = frozenset({"create", "update", "replace", "patch", "delete"})


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
    deadline: Deadline | None = None,
) -> T:
    """`fn()`, retrying `Transient` up to `attempts` calls in all; any other exception is raised at once.

    With a `deadline`, no retry starts whose backoff would end past it: KubeDeadlineExceeded instead.
    """
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
            if deadline is not None and deadline.remaining() <= delay:
                log.warning("kubernetes request failed, deadline reached", what=what, attempts=attempt + 1)
                raise KubeDeadlineExceeded(
                    exc.verb, exc.resource, exc.namespace, exc.name, exc.status,
                    f"{exc.detail or 'transient error'} (deadline of {deadline.seconds:g}s reached after "
                    f"{attempt + 1} attempts: {what})",
                ) from exc  # fmt: skip
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

    def run(
        self, fn: Callable[[], T], what: str, on_retry: Callable[[Transient], None] | None = None,
        deadline: Deadline | None = None,
    ) -> T:  # fmt: skip
        return with_retries(
            fn, what=what, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay,
            sleep=self.sleep, rng=self.rng, on_retry=on_retry, deadline=deadline,
        )  # fmt: skip


class KubeApi:
    """An ApiClient plus the policies every Ramp request follows (deadlines, write guard, typed errors, counting,
    retries). `write_guard`: may this replica write now (the elector's `is_leader`)? `write_deadline`: the
    current leadership term's Deadline (the elector's `write_deadline`); no write outlives it."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        stats: KubeStats | None = None,
        request_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        write_guard: Callable[[], bool] | None = None,
        write_deadline: Callable[[], Deadline] | None = None,
    ) -> None:
        self.api_client = api_client
        self._write_guard = write_guard
        self._write_deadline = write_deadline
        install(api_client)
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

    @property
    def write_guard(self) -> Callable[[], bool] | None:
        """The explicit guard, else the `is_leader` of the elector campaigning with this client, else None."""
        if self._write_guard is not None:
            return self._write_guard
        guard = getattr(getattr(self.api_client, LEADERSHIP_ATTR, None), "is_leader", None)
        return guard if callable(guard) else None

    @write_guard.setter
    def write_guard(self, guard: Callable[[], bool] | None) -> None:
        self._write_guard = guard

    @property
    def write_deadline(self) -> Callable[[], Deadline] | None:
        """The explicit term, else the `write_deadline` of the elector campaigning with this client, else None."""
        if self._write_deadline is not None:
            return self._write_deadline
        term = getattr(getattr(self.api_client, LEADERSHIP_ATTR, None), "write_deadline", None)
        return term if callable(term) else None

    @write_deadline.setter
    def write_deadline(self, term: Callable[[], Deadline] | None) -> None:
        self._write_deadline = term

    @classmethod
    def wrap(cls, api: ApiClient | KubeApi) -> KubeApi:
        return api if isinstance(api, KubeApi) else cls(api)

    def call(
        self, verb: str, resource: str, namespace: str | None, name: str | None,
        fn: Callable[..., T], *args: Any, deadline: Deadline | None = None, **kwargs: Any,
    ) -> T:  # fmt: skip
        """One request: guarded (writes), counted, bounded by a total deadline, failures raised as KubeError."""
        target = (verb, resource, namespace, name)
        budget, limit = self.request_timeout, "request"
        if deadline is not None:
            if deadline.remaining() <= 0:
                raise self._failed(verb, KubeDeadlineExceeded(*target, None, f"deadline of {deadline.seconds:g}s "
                                                              "exceeded before the request"))  # fmt: skip
            budget, limit = _tighter(budget, limit, deadline.remaining(), "deadline")
        if verb in WRITE_VERBS:
            guard, term_of = self.write_guard, self.write_deadline
            if guard is not None and not guard():
                raise self._failed(verb, NotLeader(*target, None, "this replica is not the leader: write refused"))
            if term_of is not None:
                term = term_of().remaining()
                if term <= 0:
                    raise self._failed(verb, NotLeader(*target, None, "leadership term over: write refused"))
                budget, limit = _tighter(budget, limit, term, "leadership")
        given = kwargs.get("_request_timeout")
        if isinstance(given, int | float) and not isinstance(given, bool) and 0 < given < budget:
            budget, limit = float(given), "request"
        kwargs["_request_timeout"] = budget  # also urllib3's per-operation timeout: a connect never outlives it
        self.stats.request(verb)
        try:
            return run_with_deadline(fn, budget, *args, **kwargs)
        except CallTimedOut as exc:
            detail = f"no complete answer within {budget:.3g}s"
            if limit == "leadership":
                error: KubeError = NotLeader(*target, None, f"{detail}: write abandoned at the end of the leadership"
                                             " term (a late result is ignored)")  # fmt: skip
            elif limit == "deadline" and deadline is not None:
                error = KubeDeadlineExceeded(*target, None, f"{detail} (deadline of {deadline.seconds:g}s)")
            else:
                error = Transient(*target, None, f"{detail} (total request timeout)")
            raise self._failed(verb, error) from exc
        except Exception as exc:  # anything a bad answer can raise in the client becomes a typed error
            error = self._failed(verb, classify(exc, *target))
            if error is exc:
                raise
            raise error from exc

    def _failed(self, verb: str, error: KubeError) -> KubeError:
        self.stats.error(verb, error)
        return error

    def retrying(
        self, verb: str, resource: str, namespace: str | None, name: str | None,
        fn: Callable[..., T], *args: Any, deadline: Deadline | None = None, **kwargs: Any,
    ) -> T:  # fmt: skip
        """`call` with Transient failures retried under the retry policy, never past `deadline`.

        A write re-checks the write guard before every attempt (in `call`): NotLeader is never retried.
        """
        where = "/".join(p for p in (namespace, name) if p)
        return self.retry.run(
            lambda: self.call(verb, resource, namespace, name, fn, *args, deadline=deadline, **kwargs),
            what=f"{verb} {resource} {where}",
            on_retry=lambda _exc: self.stats.retry(),
            deadline=deadline,
        )


def _tighter(budget: float, limit: str, other: float, other_limit: str) -> tuple[float, str]:
    """The smaller time budget, with what imposes it (the request timeout, the caller's deadline, the term)."""
    return (other, other_limit) if other < budget else (budget, limit)


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

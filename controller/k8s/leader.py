"""Lease-based leader election on a coordination.k8s.io/v1 Lease, after client-go's leaderelection.

Only the leader ticks rollouts, so two replicas never write routing at the same time. Timing
(defaults: lease_duration 15s, renew_deadline 10s, retry_period 2s):

- the leader renews every retry_period. `is_leader()` is True only until renew_deadline after the
  START of the last successful acquire/renew attempt, on the local monotonic clock: a leader that
  cannot renew (apiserver down, partition, stuck process) stops acting 10s after its last good renew.
- another replica takes the Lease over only when it has seen the record unchanged for the record's
  leaseDurationSeconds on ITS OWN monotonic clock (or the holder is empty after a graceful release).
  It can only see a record after it was written, and it was written after the attempt started, so
  the takeover comes at least lease_duration - renew_deadline (5s) after the old leader stopped acting.
  Wall clocks are never compared across replicas (renewTime is written for people and tools), so
  clock skew between nodes cannot shorten that gap; only a rate difference between monotonic clocks
  could, by a negligible fraction.
- `write_deadline()` is the current leadership term as a `Deadline` (same instant `is_leader()` turns False):
  a `KubeApi` given it cuts every write's total deadline to it, so no write outlives the term. The elector
  registers itself on its ApiClient: every KubeApi on that client is guarded by it unless given its own guard.
- every Lease request has a TOTAL deadline (renew_deadline / 2 at most, see `deadline_call`): a partitioned
  or dribbling apiserver cannot hold an attempt, and a late answer to an abandoned request is ignored.
- `release()` on shutdown stops acting first, then empties the holder, so a successor takes over on its
  next attempt instead of waiting for expiry.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta

from controller.deadline import Deadline
from controller.k8s.client import (
    LEADERSHIP_ATTR,
    REQUEST_TIMEOUT_ATTR,
    Conflict,
    Forbidden,
    KubeError,
    NotFound,
    Transient,
    classify,
)
from controller.k8s.deadline_call import CallTimedOut, install, run_with_deadline

log = structlog.get_logger("ramp.leader")

Callback = Callable[[], None]
LEASES = "leases.coordination.k8s.io"
MAX_LEASE_SECONDS = 3600  # a holder's declared leaseDurationSeconds beyond this is treated as this
_Record = tuple[str | None, str, Any, int | None]  # resourceVersion, holder, renewTime, leaseDurationSeconds


@dataclass(frozen=True, kw_only=True)
class LeaseConfig:
    namespace: str
    identity: str
    name: str = "ramp-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.name or not self.identity:
            raise ValueError("lease namespace, name and identity must not be empty")
        if self.lease_duration < 1:
            raise ValueError(f"lease_duration must be at least 1s, got {self.lease_duration}")
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}s) must be > 0 and < lease_duration ({self.lease_duration}s):"
                " a leader must stop acting before its lease can expire"
            )
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError(
                f"retry_period ({self.retry_period}s) must be > 0 and < renew_deadline ({self.renew_deadline}s)"
            )

    @property
    def lease_seconds(self) -> int:
        """leaseDurationSeconds as written (an integer; rounded up so others never wait less)."""
        return math.ceil(self.lease_duration)


class LeaderElectionError(RuntimeError):
    """Leader election cannot work as configured (not a transient failure)."""


class LeaderElectionForbidden(LeaderElectionError):
    """403 from the apiserver: the ServiceAccount lacks RBAC on the Lease."""


def _micro_time(epoch: float) -> datetime.datetime:
    """A UTC time for a metav1.MicroTime field (acquireTime, renewTime).

    The client serializes datetimes with isoformat(), which drops a zero fraction, while the apiserver
    parses MicroTime as RFC3339 with exactly six fractional digits: never send a whole second.
    """
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment if moment.microsecond else moment.replace(microsecond=1)


class LeaderElector:
    def __init__(
        self,
        api_client: ApiClient,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        may_acquire: Callable[[float], bool] | None = None,
    ) -> None:
        """`may_acquire(unchanged_for)`, when given, is asked before taking a Lease this replica does not hold
        (absent, released or expired), with how long the record has been seen unchanged: False leaves it for
        now (see k8s/shards.py's fair share). Renewing a held Lease never asks."""
        self.config = config
        self._api = CoordinationV1Api(api_client)
        install(api_client)
        setattr(api_client, LEADERSHIP_ATTR, self)  # every KubeApi on this client now writes only while we lead
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._may_acquire = may_acquire
        default_timeout = config.renew_deadline / 2
        self._timeout = min(float(getattr(api_client, REQUEST_TIMEOUT_ATTR, default_timeout)), default_timeout)
        self._lock = threading.Lock()
        self._renewed_at: float | None = None  # monotonic start of the last successful acquire/renew
        self._leading = False  # what the callbacks were last told
        self._observed: _Record | None = None
        self._observed_at = 0.0  # monotonic time the observed record was first seen
        self._forbidden_reported = False
        self.renewals = 0
        self.failures = 0

    @property
    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    def is_leader(self) -> bool:
        """True only while now < start of the last successful renew + renew_deadline (monotonic)."""
        with self._lock:
            renewed = self._renewed_at
        return renewed is not None and self._clock() < renewed + self.config.renew_deadline

    def write_deadline(self) -> Deadline:
        """This leadership term as a Deadline on the local monotonic clock: it ends when `is_leader()` turns False
        (start of the last successful renew + renew_deadline); already expired when not leading."""
        with self._lock:
            renewed = self._renewed_at
        if renewed is None:
            return Deadline(0.0, clock=self._clock, started=max(0.0, self._clock()))
        return Deadline(self.config.renew_deadline, clock=self._clock, started=renewed)

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when it acquired or renewed the Lease.

        A transient failure returns False but does not end leadership by itself: `is_leader()` stays
        True until the renew deadline. Losing a race (409) or finding another holder ends it at once.
        Raises LeaderElectionForbidden on 403 (after stepping down).
        """
        now = self._clock()
        self._notice_deadline()
        try:
            won = self._attempt(now)
        except Forbidden as exc:
            self.failures += 1
            self._step_down("forbidden")
            raise self._forbidden(exc) from exc
        except Conflict:
            self.failures += 1
            log.info("lost a write race on the lease", lease=self._where, identity=self.config.identity)
            self._step_down("the lease was written by another replica")
            return False
        except KubeError as exc:
            self.failures += 1
            log.warning("lease request failed", lease=self._where, identity=self.config.identity, error=str(exc))
            return False
        if won:
            self._won(now)
        else:
            self._step_down("the lease is held by another replica")
        return won

    def _attempt(self, now: float) -> bool:
        try:
            lease = self._request("get", self._api.read_namespaced_lease, self.config.name, self.config.namespace)
        except NotFound:
            self._observe((None, "", None, None), now)
            if self._may_acquire is not None and not self._may_acquire(now - self._observed_at):
                return False  # absent, but left for a replica holding fewer Leases for now
            self._create()
            return True
        spec = lease.spec
        holder: str = (spec.holder_identity if spec is not None else None) or ""
        record: _Record = (
            lease.metadata.resource_version if lease.metadata is not None else None,
            holder,
            spec.renew_time if spec is not None else None,
            spec.lease_duration_seconds if spec is not None else None,
        )
        self._observe(record, now)
        if holder and holder != self.config.identity:
            duration = self._declared_duration(record[3])
            if now < self._observed_at + duration:
                return False  # held by a live leader as far as we can tell
            if self._may_acquire is not None and not self._may_acquire(now - self._observed_at):
                return False
            log.info("lease expired", lease=self._where, previous_holder=holder, unchanged_for=now - self._observed_at)
        elif not holder and self._may_acquire is not None and not self._may_acquire(now - self._observed_at):
            return False  # released, but left for a replica holding fewer Leases for now
        stamp = _micro_time(self._wall_clock())
        update: dict[str, Any] = {
            "holder_identity": self.config.identity,
            "renew_time": stamp,
            "lease_duration_seconds": self.config.lease_seconds,
        }
        if holder != self.config.identity:  # a new holder (after expiry, or after a release: empty holder)
            update["lease_transitions"] = ((spec.lease_transitions if spec is not None else None) or 0) + 1
            update["acquire_time"] = stamp
        self._replace(lease, update)
        return True

    def _observe(self, record: _Record, now: float) -> None:
        """Remember `record` and when it was first seen (the takeover clock runs from then)."""
        with self._lock:
            if record != self._observed:
                self._observed, self._observed_at = record, now

    def _declared_duration(self, declared: object) -> float:
        """The holder's leaseDurationSeconds, as client-go honours it; a missing or non-positive value means
        our own, and an absurd one (a buggy or hostile writer) is capped so it cannot wedge election forever."""
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
            return float(self.config.lease_seconds)
        return float(min(declared, MAX_LEASE_SECONDS))

    def _request(self, verb: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One Lease request within a total deadline of self._timeout; failures as KubeError."""
        target = (verb, LEASES, self.config.namespace, self.config.name)
        try:
            return run_with_deadline(fn, self._timeout, *args, _request_timeout=self._timeout)
        except CallTimedOut as exc:
            raise Transient(*target, None, f"no complete answer within {self._timeout:.3g}s (abandoned)") from exc
        except Exception as exc:  # a malformed answer too: a failed attempt, never a crash
            raise classify(exc, *target) from exc

    def _replace(self, lease: V1Lease, spec_update: dict[str, Any]) -> None:
        """Replace (PUT) with the read resourceVersion: a concurrent writer makes it fail with Conflict."""
        spec = (lease.spec or V1LeaseSpec()).model_copy(update=spec_update)
        body = lease.model_copy(update={"spec": spec})
        self._request("update", self._api.replace_namespaced_lease, self.config.name, self.config.namespace, body)

    def _create(self) -> None:
        stamp = _micro_time(self._wall_clock())
        body = V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=V1ObjectMeta(name=self.config.name, namespace=self.config.namespace),
            spec=V1LeaseSpec(
                holder_identity=self.config.identity,
                acquire_time=stamp,
                renew_time=stamp,
                lease_duration_seconds=self.config.lease_seconds,
                lease_transitions=0,
            ),
        )
        self._request("create", self._api.create_namespaced_lease, self.config.namespace, body)

    def _forbidden(self, exc: Forbidden) -> LeaderElectionForbidden:
        message = (
            f"leader election forbidden (HTTP 403, {exc.verb} Lease {self._where}) for identity"
            f" {self.config.identity!r}: the controller's ServiceAccount needs an RBAC rule granting verbs get,"
            f" create and update on resource 'leases' in API group 'coordination.k8s.io' in namespace"
            f" {self.config.namespace!r}" + (f" (apiserver: {exc.detail})" if exc.detail else "")
        )
        if not self._forbidden_reported:
            self._forbidden_reported = True
            log.error("leader election forbidden", lease=self._where, message=message)
        return LeaderElectionForbidden(message)

    def _won(self, started: float) -> None:
        self.renewals += 1
        with self._lock:
            self._renewed_at = started
            newly = not self._leading
            self._leading = True
        if newly:
            log.info("started leading", lease=self._where, identity=self.config.identity)
            self._call(self._on_started)

    def _step_down(self, why: str) -> None:
        with self._lock:
            self._renewed_at = None
            was = self._leading
            self._leading = False
        if was:
            log.warning("stopped leading", lease=self._where, identity=self.config.identity, reason=why)
            self._call(self._on_stopped)

    def _notice_deadline(self) -> None:
        with self._lock:
            leading = self._leading
        if leading and not self.is_leader():
            self._step_down(f"could not renew within renew_deadline ({self.config.renew_deadline:g}s)")

    def _call(self, callback: Callback | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("leader election callback failed", lease=self._where)

    def release(self) -> bool:
        """Stop acting, then hand the Lease back (empty holder) if we still hold it; True when released."""
        self._step_down("released")
        try:
            lease = self._request("get", self._api.read_namespaced_lease, self.config.name, self.config.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.config.identity:
                return False
            past = _micro_time(self._wall_clock() - self.config.lease_seconds)
            self._replace(lease, {"holder_identity": None, "renew_time": past, "lease_duration_seconds": 1})
        except KubeError as exc:
            log.warning("lease not released; a successor waits for it to expire", lease=self._where, error=str(exc))
            return False
        log.info("released lease", lease=self._where, identity=self.config.identity)
        return True

    def run(self, stop: threading.Event, release_on_stop: bool = True) -> None:
        """Acquire/renew every retry_period until `stop` is set; then release (by default)."""
        log.info("leader election started", lease=self._where, identity=self.config.identity)
        try:
            while not stop.is_set():
                try:
                    self.try_acquire_or_renew()
                except LeaderElectionForbidden:
                    pass  # reported once inside; RBAC may be fixed while we keep trying
                except Exception:
                    log.exception("leader election attempt failed", lease=self._where)
                stop.wait(self.config.retry_period)
        finally:
            if release_on_stop:
                self.release()
            else:
                self._step_down("stopped")

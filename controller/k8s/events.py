"""Kubernetes Events for rollouts: `kubectl describe virtualservice shop` shows what Ramp did and why.

Events are best effort: a failure to record one is logged and counted, never raised into the tick
(a 403 is logged once per namespace, naming the missing RBAC rule). Events are core/v1 Events in the
legacy shape (no eventTime), with explicit unique names: `<involved name>.<16 hex digits>`.

Each create has a TOTAL deadline (see `deadline_call`) and goes through the write guard: a replica that is
no longer the leader records nothing (an Event from a former leader would be harmless but misleading:
`kubectl describe` would show two controllers acting). Suppressed events are counted, not failures.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.phases import Phase
from controller.engine.ports import ManagedRollout, TickEvent
from controller.k8s.client import REQUEST_TIMEOUT_ATTR, Forbidden, KubeApi, KubeStats, NotLeader
from controller.rollout_resource import API_VERSION as RESOURCE_API_VERSION
from controller.rollout_resource import KIND as RESOURCE_KIND

log = structlog.get_logger("ramp.events")

EventType = Literal["Normal", "Warning"]
MAX_MESSAGE = 1024
MAX_REASON = 128
DEFAULT_TIMEOUT = 5.0
VIRTUAL_SERVICE_API_VERSION = "networking.istio.io/v1"

PHASE_EVENTS: dict[Phase, tuple[str, EventType]] = {
    Phase.PENDING: ("Restarted", "Normal"),  # a changed spec starts the rollout over
    Phase.HEADER_TEST: ("HeaderTest", "Normal"),
    Phase.PROGRESSING: ("Progressing", "Normal"),
    Phase.PAUSED: ("Paused", "Normal"),
    Phase.PROMOTED: ("Promoted", "Normal"),
    Phase.ROLLED_BACK: ("RolledBack", "Warning"),
    Phase.FAILED: ("Failed", "Warning"),
}


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    uid: str | None = None


def _timestamp(epoch: float) -> str:
    """RFC3339, seconds precision, UTC (metav1.Time)."""
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Creates Events. Given a KubeApi, uses its write guard and deadlines; given an ApiClient, its own
    KubeApi (request timeout from the client, default 5s). `write_guard`/`write_deadline` override either."""

    def __init__(
        self,
        api_client: ApiClient | KubeApi,
        component: str = "ramp",
        clock: Callable[[], float] = time.time,
        instance: str | None = None,
        write_guard: Callable[[], bool] | None = None,
        write_deadline: Callable[[], Deadline] | None = None,
    ) -> None:
        if isinstance(api_client, KubeApi):
            self.api = api_client
        else:
            timeout = float(getattr(api_client, REQUEST_TIMEOUT_ATTR, DEFAULT_TIMEOUT))
            self.api = KubeApi(api_client, stats=KubeStats(), request_timeout=timeout)
        if write_guard is not None or write_deadline is not None:  # this recorder's own view of leadership
            self.api = KubeApi(
                self.api.api_client, stats=self.api.stats, request_timeout=self.api.request_timeout,
                retry=self.api.retry, write_guard=write_guard or self.api.write_guard,
                write_deadline=write_deadline or self.api.write_deadline,
            )  # fmt: skip
        self.component = component
        self.instance = instance
        self._clock = clock
        self._lock = threading.Lock()
        self._forbidden_namespaces: set[str] = set()
        self.recorded = 0
        self.failures = 0
        self.suppressed = 0  # not recorded because this replica was not the leader

    def body(
        self, namespace: str, involved: ObjectRef, reason: str, message: str, type: EventType = "Normal"
    ) -> dict[str, Any]:
        """The core/v1 Event that `record` creates."""
        stamp = _timestamp(self._clock())
        involved_object = {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "name": involved.name,
            "namespace": namespace,
        }
        if involved.uid is not None:
            involved_object["uid"] = involved.uid
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved.name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": involved_object,
            "reason": reason[:MAX_REASON],
            "message": message[:MAX_MESSAGE],
            "type": type,
            "source": {"component": self.component},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": self.component,
        }
        if self.instance:
            event["reportingInstance"] = self.instance
        return event

    def record(
        self, namespace: str, involved: ObjectRef, reason: str, message: str, type: EventType = "Normal"
    ) -> bool:
        """Create the Event; False (logged, counted) when it could not be created. Never raises."""
        try:
            body: Any = self.body(namespace, involved, reason, message, type)  # a dict: exact wire format
            name = body["metadata"]["name"]
            self.api.call("create", "events", namespace, name, self.api.core.create_namespaced_event, namespace, body)
        except NotLeader:
            with self._lock:
                self.suppressed += 1
            log.info("event not recorded: not the leader", namespace=namespace, reason=reason)
            return False
        except Forbidden as exc:
            self._count(failed=True)
            with self._lock:
                first = namespace not in self._forbidden_namespaces
                self._forbidden_namespaces.add(namespace)
            if first:
                log.error(
                    "events cannot be recorded: forbidden",
                    namespace=namespace,
                    hint="grant the controller's ServiceAccount verb 'create' on resource 'events' in the core"
                    f' API group ("") in namespace {namespace!r}',
                    error=str(exc),
                )
            return False
        except Exception as exc:  # best effort: nothing may break the tick
            self._count(failed=True)
            log.warning("event not recorded", namespace=namespace, reason=reason, error=str(exc)[:300])
            return False
        self._count(failed=False)
        return True

    def _count(self, failed: bool) -> None:
        with self._lock:
            if failed:
                self.failures += 1
            else:
                self.recorded += 1


RouteObjectOf = Callable[[str], tuple[str, str]]  # router name -> (apiVersion, kind) of its route object


def istio_route_object(_router: str) -> tuple[str, str]:
    return VIRTUAL_SERVICE_API_VERSION, "VirtualService"


def involved_object(rollout: ManagedRollout, route_object: RouteObjectOf = istio_route_object) -> ObjectRef:
    """Where a rollout's Events go: its RampRollout when it comes from one (so `kubectl describe` shows them),
    else the service's route object (`route_object` says which: a VirtualService, an HTTPRoute)."""
    if rollout.resource is not None:
        return ObjectRef(RESOURCE_API_VERSION, RESOURCE_KIND, rollout.resource.name, rollout.resource.uid or None)
    api_version, kind = route_object(rollout.spec.router)
    return ObjectRef(api_version, kind, rollout.spec.service)


class RolloutEventObserver:
    """A runner observer: an Event on the rollout's RampRollout (or, for a spec file, its route object) for each
    phase or step change of the tick (`TickEvent.transitions`, computed once per tick; holds are not Events).

    Reasons: HeaderTest, Progressing, Paused, Promoted (Normal), RolledBack, Failed (Warning), Restarted
    (a changed spec); the message is the change's reason (a rollback names the gate and its value).
    A Warning `RoutingFailed` is recorded when routing could not be applied, once per rollout per
    distinct error until routing is applied again.
    """

    def __init__(self, recorder: EventRecorder, route_object: RouteObjectOf = istio_route_object) -> None:
        self.recorder = recorder
        self.route_object = route_object  # the controller passes its backend's: each router names its object
        self._routing_errors: dict[str, set[str]] = {}

    def __call__(self, event: TickEvent) -> None:
        try:
            self._observe(event)
        except Exception:  # an observer must never break the tick
            log.exception("rollout events failed", rollout=event.rollout.name)

    def _observe(self, event: TickEvent) -> None:
        spec = event.rollout.spec
        involved = involved_object(event.rollout, self.route_object)
        for change in event.transitions:
            if change.kind == "holding":
                continue
            reason, kind = PHASE_EVENTS[change.phase]
            self.recorder.record(spec.namespace, involved, reason, change.reason or change.phase.value, kind)
        name = event.rollout.name
        self._safety_events(event, involved)
        if event.apply_error is None:
            self._routing_errors.pop(name, None)
            return
        seen = self._routing_errors.setdefault(name, set())
        if event.apply_error not in seen:
            seen.add(event.apply_error)
            message = f"routing for phase {event.decision.phase.value} not applied: {event.apply_error}"
            self.recorder.record(spec.namespace, involved, "RoutingFailed", message, "Warning")

    def _safety_events(self, event: TickEvent, involved: ObjectRef) -> None:
        """Drift, damaged or unsaveable state (Warning), and what became of a person's command."""
        namespace = event.rollout.spec.namespace
        if event.drift is not None:
            self.recorder.record(namespace, involved, "RoutingDrift", f"{event.drift}; repaired", "Warning")
        if event.damaged is not None:
            self.recorder.record(namespace, involved, "StateDamaged", event.decision.state.reason, "Warning")
        if event.store_error is not None:
            self.recorder.record(namespace, involved, "StateNotSaved", event.store_error, "Warning")
        outcome = event.decision.state.last_command
        if outcome is not None and outcome.at == event.at:
            message = f"{outcome.command}: {outcome.reason}"
            if outcome.applied:
                self.recorder.record(namespace, involved, "CommandApplied", message, "Normal")
            else:
                self.recorder.record(namespace, involved, "CommandRefused", message, "Warning")

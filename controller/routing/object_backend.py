"""Cluster mode: one route object per service is both the TrafficRouter and the StateStore, for every router.

Which object is a router's business (`RouteKind`: an Istio VirtualService, a Gateway API HTTPRoute); this module
does what they share. The rollout state lives in the `ramp.dev/state` annotation of the route object whose
routing it describes (codec and 32 KiB cap in `state_codec`), and is written in the SAME update as the weights:
the cluster never holds weights without the state that explains them, and a restarted controller resumes
exactly there.

Per tick the runner calls `begin_tick` (one LIST per route resource and namespace), `load` (the listed object,
else a GET), `pending_command`, `save` and `clear_command` (both only staged in memory) and `apply`, which makes
the only writes: what the router must `prepare` first (Istio's DestinationRule subsets), then the route object
with routing + state + cleared command merged into the object read (the router's merge keeps foreign parts).
Nothing is written when nothing changed. Writes are PUTs carrying the resourceVersion read; on 409 the object is
re-read and Ramp's parts re-merged over the fresh object (only while this replica may still write, and never past
the caller's deadline: see `kube_requests`), so a foreign change made in between is never lost. `apply` returns
only once the object the apiserver stored holds the routing and the state AND the router says it is in effect
(a Gateway accepted the HTTPRoute): RoutingNotConfirmed otherwise, with the reason. `observed` reads the routing
back for drift detection and `invalidate` makes the next `apply` re-read and rewrite.

Everything read is hostile until checked: a malformed object is a MalformedObject naming the object and the
field, for its rollout only, and is never written over; a malformed LIST item leaves the batched read in place
for the others. A damaged state annotation is a StateStoreError (a StateDamaged): the runner fails safe to the
baseline, and `quarantine` keeps the damaged text (truncated to 16 KiB) in `ramp.dev/state-damaged`, written with
that fail-safe state.

Hot path at 1,000 rollouts: a staged state is encoded once per state object, and the merge copies the object
read with `json_copy`. The routing is read back from every object read, never cached by resourceVersion: drift
the apiserver did not announce (same resourceVersion) must still be seen.

A state saved by a tick whose write failed stays in memory, tied to the resourceVersion it was based on: the
next `load` returns it (with its apply-failure count) while nobody else changed the object, and the annotation
otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.phases import RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.engine.state_port import StateStoreError
from controller.k8s.client import KubeApi, KubeError
from controller.routing.crd_schema import IstioSchemas
from controller.routing.k8s_objects import (
    COMMAND_ANNOTATION,
    MalformedObject,
    annotations_of,
    check_metadata,
    ref,
    resource_version,
    state_of,
)
from controller.routing.kube_requests import Obj
from controller.routing.route_commands import RouteCommands
from controller.routing.route_kind import RouteKind
from controller.routing.state_codec import (
    DAMAGED_ANNOTATION,
    STATE_ANNOTATION,
    EncodedState,
    damaged_copy,
    encoded,
    persisted_view,
    same_durable_state,
)

log = structlog.get_logger("ramp.routes")


class RoutingNotConfirmed(KubeError):
    """The write went through but the object the apiserver stored does not hold the routing asked for."""


class RoutingNotInEffect(RoutingNotConfirmed):
    """The stored object holds the routing, but the router says it is not serving yet (e.g. no Gateway accepted it)."""


@dataclass
class _Entry:
    """What this process knows about one service's route object."""

    namespace: str
    service: str
    kind: RouteKind
    rollout: str | None = None
    obj: Obj | None = None
    known: bool = False  # `obj` is what a read or write of this process returned
    read_tick: int = -1  # the tick (begin_tick count) in which `obj` was read or written
    base_rv: str | None = None  # the resourceVersion `state` builds on
    state: RolloutState | None = None
    consumed_command: str | None = None  # the raw annotation value to remove in the next write
    damaged: str | None = None  # a damaged state annotation's text, to keep in DAMAGED_ANNOTATION next write
    confirmed: tuple[object, ...] | None = None  # (routing, resourceVersion, durable view) last in place
    routing: DesiredRouting | None = None  # the routing last asked for (how `observed` names versions)
    encoding: tuple[RolloutState, EncodedState] | None = None  # `state` as written, encoded once per state

    def encoded_state(self) -> EncodedState | None:
        """The staged state's text and durable view, once per state object (states are replaced, never changed)."""
        if self.state is None:
            return None
        if self.encoding is None or self.encoding[0] is not self.state:
            self.encoding = (self.state, encoded(self.state))
        return self.encoding[1]

    @property
    def where(self) -> str:
        return ref(self.kind.resource.kind, self.namespace, self.service)


class RouteObjectBackend(RouteCommands):
    """TrafficRouter + StateStore + RoutingReadBack over route objects, one router (`RouteKind`) per rollout.

    `routers` maps the names specs use (`router:`) to their kinds; a rollout tracked without a router name uses
    `default_router`."""

    def __init__(
        self,
        api: ApiClient | KubeApi,
        routers: Mapping[str, RouteKind],
        *,
        default_router: str = "istio",
        conflict_attempts: int = 5,
        schemas: IstioSchemas | None = None,
    ) -> None:
        if default_router not in routers:
            raise ValueError(f"default router {default_router!r} is not among {sorted(routers)}")
        self.api = KubeApi.wrap(api)
        self.routers = dict(routers)
        self.default_router = default_router
        self.conflict_attempts = conflict_attempts
        self.schemas = schemas  # when given, every object is validated before it is written
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._keys: dict[str, tuple[str, str]] = {}
        # One LIST per resource and namespace per tick instead of a GET per rollout (see begin_tick).
        self._prefetched: dict[tuple[str, str], Obj | None] = {}
        self._tick = 0  # begin_tick calls so far: an object read in this tick is what `observed` reports

    def router(self, name: str | None) -> RouteKind:
        """The registered router `name` (None: the default); ValueError naming the known ones otherwise."""
        kind = self.routers.get(name or self.default_router)
        if kind is None:
            raise ValueError(f"unknown router {name!r}: this controller knows {', '.join(sorted(self.routers))}")
        return kind

    # --- StateStore ---------------------------------------------------------------------------

    def track(self, rollouts: Mapping[str, tuple[str, ...]]) -> None:
        """Rollout name -> (namespace, service[, router]); a rollout keeps its entry while all three stay."""
        owners: dict[tuple[str, str], tuple[str, RouteKind]] = {}
        for name, key in rollouts.items():
            where = (key[0], key[1])
            if where in owners:
                raise ValueError(f"rollouts {owners[where][0]!r} and {name!r} both manage service {key[0]}/{key[1]}")
            owners[where] = (name, self.router(key[2] if len(key) > 2 else None))
        self._keys = {name: (key[0], key[1]) for name, key in rollouts.items()}
        kept = {k: e for k, e in self._entries.items() if owners.get(k) == (e.rollout, e.kind)}
        self._entries = {
            key: kept.get(key) or _Entry(key[0], key[1], kind, rollout=name) for key, (name, kind) in owners.items()
        }

    def _entry(self, rollout: str) -> _Entry:
        key = self._keys.get(rollout)
        if key is None:
            raise StateStoreError(f"rollout {rollout!r} is not tracked (call track() first)")
        return self._entries[key]

    def begin_tick(self) -> None:
        """Read every tracked route object with one LIST per resource and namespace; each `load` uses it once.

        A namespace whose LIST fails, and a service whose item in it cannot even be named, are read by
        `load` on their own (a GET): one malformed item never turns the batched read off for the others."""
        self._tick += 1
        self._prefetched = {}
        groups = sorted({(e.kind.router, namespace) for (namespace, _), e in self._entries.items()})
        for router, namespace in groups:
            kind = self.routers[router]
            try:
                items = self._list(kind.resource, namespace)
            except KubeError as exc:
                log.warning("bulk read failed: reading one by one", namespace=namespace, resource=kind.resource.name,
                            error=str(exc)[:300])  # fmt: skip
                continue
            by_name: dict[str, Obj] = {}
            unnamed = 0
            for item in items:
                name = _item_name(item)
                if name is None:
                    unnamed += 1
                elif isinstance(item, dict):
                    by_name[name] = item
            if unnamed:
                log.warning("LIST items without a readable name: their services are read one by one",
                            namespace=namespace, items=unnamed)  # fmt: skip
            for key, entry in self._entries.items():
                if key[0] == namespace and entry.kind is kind and (key[1] in by_name or not unnamed):
                    self._prefetched[key] = by_name.get(key[1])

    def _read(self, entry: _Entry, obj: Obj | None) -> Obj | None:
        entry.obj, entry.known, entry.read_tick = obj, True, self._tick
        if obj is not None:
            check_metadata(obj, entry.where)
        return obj

    def load(self, rollout: str) -> RolloutState | None:
        """The state in the annotation. MalformedObject (this rollout only) when the object's metadata is
        unusable; StateStoreError (a StateDamaged) when the annotation cannot be read."""
        entry = self._entry(rollout)
        key = (entry.namespace, entry.service)
        if key in self._prefetched:
            obj = self._prefetched.pop(key)
        else:
            obj = self._get(entry.kind.resource, entry.namespace, entry.service)
        self._read(entry, obj)
        rv = resource_version(obj)
        if entry.state is not None and entry.base_rv == rv:
            return entry.state  # nobody wrote since: our latest state, including unwritten progress
        entry.base_rv, entry.consumed_command = rv, None
        ours, entry.state = entry.state, None
        entry.state = state_of(obj)  # StateStoreError: nothing of ours is used over a damaged annotation
        if (
            ours is not None
            and entry.state is not None
            and same_durable_state(annotations_of(obj).get(STATE_ANNOTATION), ours)
        ):
            # Only other parts changed (a Gateway's status, a command, a label): the annotation is what this process
            # wrote, so its memory holds: routing still unconfirmed, the step's confirmed time, apply failures.
            entry.state = ours
        elif ours is not None and entry.state is not None and entry.state.spec_digest == ours.spec_digest:
            # Someone else wrote (a command, an edit): the statistical gates' e-processes, which live only
            # in memory, go on rather than restart; a restart per foreign write would add false rollbacks.
            entry.state = entry.state.model_copy(update={"sequential": ours.sequential})
        return entry.state

    def save(self, state: RolloutState) -> None:
        """Staged only: written by the next `apply`, in the same update as the routing."""
        self._entry(state.rollout).state = state

    def quarantine(self, rollout: str, problem: str) -> str | None:
        """Keep a damaged state annotation aside: copied (truncated) into DAMAGED_ANNOTATION by the next write,
        the one that records the fail-safe state. Returns where it is kept."""
        entry = self._entry(rollout)
        raw = annotations_of(entry.obj).get(STATE_ANNOTATION)
        if raw is None:
            return None
        entry.damaged = damaged_copy(raw)
        size = len(entry.damaged.encode())
        return f"annotation {DAMAGED_ANNOTATION} of {entry.where} ({size} bytes; problem: {problem})"

    def pending_command(self, rollout: str) -> CommandRequest | None:
        entry = self._entry(rollout)
        entry.consumed_command = None
        if not entry.known:
            self._read(entry, self._get(entry.kind.resource, entry.namespace, entry.service))
        raw = annotations_of(entry.obj).get(COMMAND_ANNOTATION)
        if raw is None:
            return None
        try:
            return CommandRequest.decode(raw)
        except CommandError:
            log.warning("refusing unreadable command", rollout=rollout, command=raw[:100])
            entry.consumed_command = raw  # garbage is dropped in the next write, never acted on
            raise

    def clear_command(self, rollout: str) -> None:
        entry = self._entry(rollout)
        entry.consumed_command = annotations_of(entry.obj).get(COMMAND_ANNOTATION)

    # --- TrafficRouter ------------------------------------------------------------------------

    def apply(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        """What the router must prepare first (never route to a missing subset), then one route object write.

        Returns only when the object the apiserver stored holds `routing` (and the staged state) and the router
        says it is in effect: otherwise RoutingNotConfirmed with why. Every request is bounded by `deadline`."""
        key = (routing.namespace, routing.service)
        entry = self._entries.get(key)
        if entry is None:  # not tracked: the CLI's set-weights on a service no rollout manages
            entry = self._entries[key] = _Entry(*key, self.router(routing.router))
        elif entry.kind.router != routing.router:
            raise ValueError(f"{entry.where} is tracked for router {entry.kind.router}, not {routing.router}")
        kind, entry.routing = entry.kind, routing
        current = entry.obj if entry.known else self._read(entry, self._get(kind.resource, *key, deadline))
        view = None if entry.state is None else persisted_view(entry.state)
        confirmed = (routing, resource_version(current), view)
        if entry.confirmed == confirmed and entry.consumed_command is None and entry.damaged is None:
            # Nobody changed the route object since we last confirmed it and we have nothing new for it.
            return kind.prepare(self, routing, deadline)
        # Built first so that a refusal (shadowing, a malformed object...) happens before anything is written;
        # rebuilt only when a conflict brings a newer object.
        first = self._desired(entry, routing, current)
        prepared = kind.prepare(self, routing, deadline)
        stored, written = self._converge(
            kind.resource, routing.namespace, routing.service, current,
            lambda obj: first if obj is current else self._desired(entry, routing, obj), deadline,
        )  # fmt: skip
        entry.obj, entry.known, entry.read_tick, entry.confirmed = stored, True, self._tick, None
        problem = self._not_holding(entry, routing, stored)
        if problem is not None:
            raise RoutingNotConfirmed("update", kind.resource.name, routing.namespace, routing.service, None, problem)
        entry.consumed_command, entry.damaged = None, None
        if entry.state is not None:
            entry.base_rv = resource_version(stored)  # the stored annotation now holds entry.state
        waiting = kind.not_in_effect(stored, routing)
        if waiting is not None:  # stored, but not serving yet: not confirmed (re-checked on the next read)
            raise RoutingNotInEffect("update", kind.resource.name, routing.namespace, routing.service, None,
                                     f"{entry.where} holds the routing but is not in effect: {waiting}")  # fmt: skip
        entry.confirmed = (routing, resource_version(stored), view)
        return prepared or written

    def _not_holding(self, entry: _Entry, routing: DesiredRouting, stored: Obj) -> str | None:
        """Why the stored route object does not hold `routing` and the staged state, or None."""
        try:
            seen = entry.kind.observed(stored, routing.namespace, routing.service, routing)
        except MalformedObject as exc:
            return f"the stored object cannot be read back: {exc}"
        if seen is None or seen.traffic() != routing.traffic():
            what = "no ramp-primary route" if seen is None else seen.describe()
            return f"the stored object routes {what}, not {routing.describe()}"
        raw = annotations_of(stored).get(STATE_ANNOTATION)
        written = entry.encoded_state()
        if written is not None and not same_durable_state(raw, written):
            return f"the stored object's {STATE_ANNOTATION} annotation is not the state written"
        return None

    def observed(
        self, namespace: str, service: str, deadline: Deadline | None = None, router: str | None = None
    ) -> DesiredRouting | None:
        """What the route object routes now (Ramp's routes), from the object read in this tick, else a GET.

        `router` names the router of a service no rollout tracks (the CLI); None: the tracked one, else the default.
        None when it or its ramp-primary route does not exist; MalformedObject when Ramp's routes cannot be
        read (the routing is then no longer taken as confirmed, so the next apply rewrites them)."""
        entry = self._entries.get((namespace, service))
        kind = self._kind_for(namespace, service, router)
        if entry is not None and entry.known and self._tick > 0 and entry.read_tick == self._tick:
            obj = entry.obj
        else:
            obj = self._get(kind.resource, namespace, service, deadline)
        if obj is None:
            return None
        try:
            return kind.observed(obj, namespace, service, None if entry is None else entry.routing)
        except MalformedObject:
            self.invalidate(namespace, service)
            raise

    def invalidate(self, namespace: str, service: str) -> None:
        """Forget that the routing was confirmed: the next apply re-reads, re-merges and writes (repairs drift),
        and re-checks what the router prepares (e.g. the DestinationRule)."""
        entry = self._entries.get((namespace, service))
        if entry is not None:
            entry.confirmed, entry.known = None, False
        for kind in self.routers.values():
            kind.forget(namespace, service)

    def _desired(self, entry: _Entry, routing: DesiredRouting, current: Obj | None) -> Obj:
        notes: dict[str, str] = {}
        stored_state = annotations_of(current).get(STATE_ANNOTATION)
        written = entry.encoded_state()
        if written is not None and not same_durable_state(stored_state, written):
            notes[STATE_ANNOTATION] = written.text
        if entry.damaged is not None:
            notes[DAMAGED_ANNOTATION] = entry.damaged
        remove = {COMMAND_ANNOTATION: entry.consumed_command} if entry.consumed_command is not None else {}
        desired = entry.kind.merge(current, routing, notes, remove)
        if desired != current and written is not None:  # written anyway: bring the reason up to date too
            desired["metadata"].setdefault("annotations", {})[STATE_ANNOTATION] = written.text
        return desired

    def _kind_for(self, namespace: str, service: str, router: str | None) -> RouteKind:
        entry = self._entries.get((namespace, service))
        return entry.kind if router is None and entry is not None else self.router(router)

    def call_counts(self) -> tuple[int, int]:
        """(Kubernetes requests, errors) of the client this backend uses (shared by all users of the client)."""
        return self.api.stats.totals()


def _item_name(item: object) -> str | None:
    """A LIST item's metadata.name, or None when it cannot be read."""
    meta = item.get("metadata") if isinstance(item, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None

"""Cluster mode: one VirtualService per service is both the TrafficRouter and the StateStore.

The rollout state lives in the `ramp.dev/state` annotation of the VirtualService whose routes it
describes (codec and 32 KiB cap in `state_codec`), and is written in the SAME update as the weights:
the cluster never holds weights without the state that explains them, and a restarted controller
resumes exactly there.

Per tick the runner calls `begin_tick` (one LIST per namespace), `load` (the listed object, else a
GET), `pending_command`, `save` and `clear_command` (both only staged in memory) and `apply`, which
makes the only writes: the DestinationRule when subsets are missing, then the VirtualService with
routes + state + cleared command merged into the object read (see `istio_merge` for the merge rules).
Nothing is written when nothing changed. Writes are PUTs carrying the resourceVersion read; on 409
the object is re-read and Ramp's parts re-merged over the fresh object (only while this replica may
still write, and never past the caller's deadline: see `istio_requests`), so a foreign change made in
between is never lost. `apply` returns only once the object the apiserver stored holds the routing
and the state (RoutingNotConfirmed otherwise); `observed` reads the routing back for drift detection
and `invalidate` makes the next `apply` re-read and rewrite.

Everything read is hostile until checked (`istio_shape`): a malformed object is a MalformedObject
naming the object and the field, for its rollout only, and is never written over; a malformed LIST
item leaves the batched read in place for the others. A damaged state annotation is a StateStoreError
(a StateDamaged): the runner fails safe to the baseline, and `quarantine` keeps the damaged text
(truncated to 16 KiB) in `ramp.dev/state-damaged`, written with that fail-safe state.

A state saved by a tick whose write failed stays in memory, tied to the resourceVersion it was
based on: the next `load` returns it (with its apply-failure count) while nobody else changed
the object, and the annotation otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest, describe_pending
from controller.engine.phases import Command, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.k8s.client import KubeApi, KubeError
from controller.routing.crd_schema import IstioSchemas
from controller.routing.istio_merge import (
    COMMAND_ANNOTATION,
    ClusterRouting,
    annotations_of,
    merge_destination_rule,
    merge_virtual_service,
    parse_routing,
    resource_version,
    state_of,
)
from controller.routing.istio_requests import (
    DESTINATION_RULES,
    VIRTUAL_SERVICES,
    IstioRequests,
    Obj,
    not_found,
)
from controller.routing.istio_shape import observed_routing
from controller.routing.k8s_objects import MalformedObject, check_metadata, ref
from controller.routing.state_codec import (
    DAMAGED_ANNOTATION,
    STATE_ANNOTATION,
    damaged_copy,
    encode_state,
    persisted_view,
    same_durable_state,
)
from controller.state.file_store import CommandPending, StateStoreError

log = structlog.get_logger("ramp.istio")


class RoutingNotConfirmed(KubeError):
    """The write went through but the object the apiserver stored does not hold the routing asked for."""


@dataclass
class _Entry:
    """What this process knows about one service's VirtualService."""

    namespace: str
    service: str
    rollout: str | None = None
    obj: Obj | None = None
    known: bool = False  # `obj` is what a read or write of this process returned
    read_tick: int = -1  # the tick (begin_tick count) in which `obj` was read or written
    base_rv: str | None = None  # the resourceVersion `state` builds on
    state: RolloutState | None = None
    consumed_command: str | None = None  # the raw annotation value to remove in the next write
    damaged: str | None = None  # a damaged state annotation's text, to keep in DAMAGED_ANNOTATION next write
    confirmed: tuple[object, ...] | None = None  # (routing, resourceVersion, durable view) last in place


class IstioBackend(IstioRequests):
    """TrafficRouter + StateStore over Istio VirtualServices/DestinationRules (see module docstring)."""

    def __init__(
        self,
        api: ApiClient | KubeApi,
        *,
        conflict_attempts: int = 5,
        schemas: IstioSchemas | None = None,
    ) -> None:
        self.api = KubeApi.wrap(api)
        self.conflict_attempts = conflict_attempts
        self.schemas = schemas  # when given, every object is validated before it is written
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._keys: dict[str, tuple[str, str]] = {}
        # One LIST per namespace per tick instead of a GET per rollout (see begin_tick); consumed by load.
        self._prefetched: dict[tuple[str, str], Obj | None] = {}
        self._tick = 0  # begin_tick calls so far: an object read in this tick is what `observed` reports
        # DestinationRules known to hold the subsets a routing needs: (versions, host) -> when verified.
        self._rules_verified: dict[tuple[str, str], tuple[tuple[str, ...], str, float]] = {}
        self.rule_recheck_seconds = 60.0

    # --- StateStore ---------------------------------------------------------------------------

    def track(self, rollouts: Mapping[str, tuple[str, str]]) -> None:
        owners: dict[tuple[str, str], str] = {}
        for name, key in rollouts.items():
            if key in owners:
                raise ValueError(f"rollouts {owners[key]!r} and {name!r} both manage service {key[0]}/{key[1]}")
            owners[key] = name
        self._keys = {name: (namespace, service) for name, (namespace, service) in rollouts.items()}
        kept = {k: e for k, e in self._entries.items() if owners.get(k) == e.rollout}
        self._entries = {key: kept.get(key) or _Entry(key[0], key[1], rollout=name) for key, name in owners.items()}

    def _entry(self, rollout: str) -> _Entry:
        key = self._keys.get(rollout)
        if key is None:
            raise StateStoreError(f"rollout {rollout!r} is not tracked (call track() first)")
        return self._entries[key]

    def begin_tick(self) -> None:
        """Read every tracked VirtualService with one LIST per namespace; each `load` then uses it once.

        A namespace whose LIST fails, and a service whose item in it cannot even be named, are read by
        `load` on their own (a GET): one malformed item never turns the batched read off for the others."""
        self._tick += 1
        self._prefetched = {}
        for namespace in sorted({namespace for namespace, _ in self._entries}):
            try:
                items = self._list(VIRTUAL_SERVICES, namespace)
            except KubeError as exc:
                log.warning("bulk read failed: reading one by one", namespace=namespace, error=str(exc)[:300])
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
            for key in self._entries:
                if key[0] == namespace and (key[1] in by_name or not unnamed):
                    self._prefetched[key] = by_name.get(key[1])

    def _read(self, entry: _Entry, obj: Obj | None) -> Obj | None:
        entry.obj, entry.known, entry.read_tick = obj, True, self._tick
        if obj is not None:
            check_metadata(obj, ref("VirtualService", entry.namespace, entry.service))
        return obj

    def load(self, rollout: str) -> RolloutState | None:
        """The state in the annotation. MalformedObject (this rollout only) when the object's metadata is
        unusable; StateStoreError (a StateDamaged) when the annotation cannot be read."""
        entry = self._entry(rollout)
        key = (entry.namespace, entry.service)
        if key in self._prefetched:
            obj = self._prefetched.pop(key)
        else:
            obj = self._get(VIRTUAL_SERVICES, entry.namespace, entry.service)
        self._read(entry, obj)
        rv = resource_version(obj)
        if entry.state is not None and entry.base_rv == rv:
            return entry.state  # nobody wrote since: our latest state, including unwritten progress
        entry.base_rv, entry.consumed_command = rv, None
        ours, entry.state = entry.state, None
        entry.state = state_of(obj)  # StateStoreError: nothing of ours is used over a damaged annotation
        if ours is not None and entry.state is not None and entry.state.spec_digest == ours.spec_digest:
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
        where = ref("VirtualService", entry.namespace, entry.service)
        return f"annotation {DAMAGED_ANNOTATION} of {where} ({len(entry.damaged.encode())} bytes; problem: {problem})"

    def pending_command(self, rollout: str) -> CommandRequest | None:
        entry = self._entry(rollout)
        entry.consumed_command = None
        if not entry.known:
            self._read(entry, self._get(VIRTUAL_SERVICES, entry.namespace, entry.service))
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
        """DestinationRule subsets first (never route to a missing subset), then one VirtualService write.

        Returns only when the object the apiserver stored holds `routing` (and the staged state): otherwise
        RoutingNotConfirmed with what it holds instead. Every request is bounded by `deadline`."""
        key = (routing.namespace, routing.service)
        entry = self._entries.setdefault(key, _Entry(*key))
        current = entry.obj if entry.known else self._read(entry, self._get(VIRTUAL_SERVICES, *key, deadline))
        view = None if entry.state is None else persisted_view(entry.state)
        confirmed = (routing, resource_version(current), view)
        if entry.confirmed == confirmed and entry.consumed_command is None and entry.damaged is None:
            # Nobody changed the VirtualService since we last confirmed it and we have nothing new for it.
            return self._ensure_destination_rule_if_needed(routing, deadline)
        # Built first so that a refusal (shadowing, a malformed object...) happens before anything is written;
        # rebuilt only when a conflict brings a newer VirtualService.
        first = self._desired_virtual_service(entry, routing, current)
        dr_written = self._ensure_destination_rule_if_needed(routing, deadline)
        stored, vs_written = self._converge(
            VIRTUAL_SERVICES, routing.namespace, routing.service, current,
            lambda obj: first if obj is current else self._desired_virtual_service(entry, routing, obj), deadline,
        )  # fmt: skip
        entry.obj, entry.known, entry.read_tick, entry.confirmed = stored, True, self._tick, None
        problem = self._not_holding(entry, routing, stored)
        if problem is not None:
            raise RoutingNotConfirmed("update", "virtualservices.networking.istio.io", routing.namespace,
                                      routing.service, None, problem)  # fmt: skip
        entry.consumed_command, entry.damaged = None, None
        if entry.state is not None:
            entry.base_rv = resource_version(stored)  # the stored annotation now holds entry.state
        entry.confirmed = (routing, resource_version(stored), view)
        return dr_written or vs_written

    def _not_holding(self, entry: _Entry, routing: DesiredRouting, stored: Obj) -> str | None:
        """Why the stored VirtualService does not hold `routing` and the staged state, or None."""
        try:
            seen = observed_routing(stored, routing.namespace, routing.service, routing.host)
        except MalformedObject as exc:
            return f"the stored object cannot be read back: {exc}"
        if seen is None or seen.traffic() != routing.traffic():
            what = "no ramp-primary route" if seen is None else seen.describe()
            return f"the stored object routes {what}, not {routing.describe()}"
        raw = annotations_of(stored).get(STATE_ANNOTATION)
        if entry.state is not None and not same_durable_state(raw, entry.state):
            return f"the stored object's {STATE_ANNOTATION} annotation is not the state written"
        return None

    def observed(self, namespace: str, service: str, deadline: Deadline | None = None) -> DesiredRouting | None:
        """What the VirtualService routes now (Ramp's routes), from the object read in this tick, else a GET.

        None when it or its ramp-primary route does not exist; MalformedObject when Ramp's routes cannot be
        read (the routing is then no longer taken as confirmed, so the next apply rewrites them)."""
        entry = self._entries.get((namespace, service))
        if entry is not None and entry.known and self._tick > 0 and entry.read_tick == self._tick:
            obj = entry.obj
        else:
            obj = self._get(VIRTUAL_SERVICES, namespace, service, deadline)
        if obj is None:
            return None
        host = service
        hosts = (obj.get("spec") or {}).get("hosts") if isinstance(obj.get("spec"), Mapping) else None
        if isinstance(hosts, list) and hosts and isinstance(hosts[0], str):
            host = hosts[0]
        try:
            return observed_routing(obj, namespace, service, host)
        except MalformedObject:
            self.invalidate(namespace, service)
            raise

    def invalidate(self, namespace: str, service: str) -> None:
        """Forget that the routing was confirmed: the next apply re-reads, re-merges and writes (repairs drift),
        and re-checks the DestinationRule."""
        entry = self._entries.get((namespace, service))
        if entry is not None:
            entry.confirmed, entry.known = None, False
        self._rules_verified.pop((namespace, service), None)

    def _desired_virtual_service(self, entry: _Entry, routing: DesiredRouting, current: Obj | None) -> Obj:
        notes: dict[str, str] = {}
        stored_state = annotations_of(current).get(STATE_ANNOTATION)
        if entry.state is not None and not same_durable_state(stored_state, entry.state):
            notes[STATE_ANNOTATION] = encode_state(entry.state)
        if entry.damaged is not None:
            notes[DAMAGED_ANNOTATION] = entry.damaged
        remove = {COMMAND_ANNOTATION: entry.consumed_command} if entry.consumed_command is not None else {}
        desired = merge_virtual_service(current, routing, notes, remove)
        if desired != current and entry.state is not None:  # written anyway: bring the reason up to date too
            desired["metadata"].setdefault("annotations", {})[STATE_ANNOTATION] = encode_state(entry.state)
        return desired

    def _ensure_destination_rule_if_needed(self, routing: DesiredRouting, deadline: Deadline | None = None) -> bool:
        """Verify the subsets when the versions change, and every rule_recheck_seconds (repairs deletions)."""
        key = (routing.namespace, routing.service)
        verified = self._rules_verified.get(key)
        now = time.monotonic()
        fresh = verified is not None and now - verified[2] < self.rule_recheck_seconds
        if fresh and verified is not None and verified[:2] == (routing.versions, routing.host):
            return False
        current = self._get(DESTINATION_RULES, routing.namespace, routing.service, deadline)
        _, written = self._converge(
            DESTINATION_RULES, routing.namespace, routing.service, current,
            lambda obj: merge_destination_rule(obj, routing), deadline,
        )  # fmt: skip
        self._rules_verified[key] = (routing.versions, routing.host, now)
        return written

    def call_counts(self) -> tuple[int, int]:
        """(Kubernetes requests, errors) of the client this backend uses (shared by all users of the client)."""
        return self.api.stats.totals()

    # --- reads and writes for `ramp status` and the CLI ----------------------------------------

    def read_routing(self, namespace: str, service: str) -> ClusterRouting:
        """Weights per version, header routes and state as stored in the cluster right now."""
        return parse_routing(namespace, service, self._get(VIRTUAL_SERVICES, namespace, service))

    def request_command(self, namespace: str, service: str, command: Command | CommandRequest) -> None:
        """Ask the controller for `command` (it acts on the next tick and clears the annotation in the write
        that records the outcome). CommandPending while an earlier command is still there: checked on the
        object each write is based on, so a command written concurrently is never replaced."""
        request = command if isinstance(command, CommandRequest) else CommandRequest(command=command)
        where = ref("VirtualService", namespace, service)

        def refuse_pending(obj: Obj) -> None:
            pending = annotations_of(obj).get(COMMAND_ANNOTATION)
            if pending is None:
                return
            raise CommandPending(f"{describe_pending(pending)} is still waiting for the controller of {where}; it is "
                                 "applied or refused on the next tick (is the controller running?)")  # fmt: skip

        self._annotate(namespace, service, {COMMAND_ANNOTATION: request.encode()}, refuse_pending)

    def annotate(self, namespace: str, service: str, annotations: Mapping[str, str]) -> None:
        """Set annotations on an existing VirtualService (optimistic concurrency, like every write)."""
        self._annotate(namespace, service, annotations, lambda _obj: None)

    def _annotate(
        self, namespace: str, service: str, annotations: Mapping[str, str], check: Callable[[Obj], None]
    ) -> None:
        current = self._get(VIRTUAL_SERVICES, namespace, service)
        if current is None:
            raise not_found(namespace, service, "no VirtualService yet")
        where = ref("VirtualService", namespace, service)

        def with_annotations(obj: Obj | None) -> Obj:
            if obj is None:
                raise not_found(namespace, service, "deleted meanwhile")
            check_metadata(obj, where)
            check(obj)
            updated = dict(obj, metadata=dict(obj.get("metadata") or {}))
            updated["metadata"]["annotations"] = {**annotations_of(obj), **annotations}
            return updated

        self._converge(VIRTUAL_SERVICES, namespace, service, current, with_annotations)


def _item_name(item: object) -> str | None:
    """A LIST item's metadata.name, or None when it cannot be read."""
    meta = item.get("metadata") if isinstance(item, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None

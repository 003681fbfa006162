"""Cluster mode: one VirtualService per service is both the TrafficRouter and the StateStore.

The rollout state lives in the `ramp.dev/state` annotation of the VirtualService whose routes it
describes, and is written in the SAME update as the weights: the cluster never holds weights
without the state that explains them, and a restarted controller resumes exactly there.

Per tick the runner calls `load` (one GET per rollout, cached), `pending_command`, `save` and
`clear_command` (both only staged in memory) and `apply`, which makes the only writes: the
DestinationRule when subsets are missing, then the VirtualService with routes + state + cleared
command merged into the object read (see `istio_merge` for the merge rules). Nothing is
written when nothing changed. Writes are PUTs carrying the resourceVersion read; on 409 the
object is re-read and Ramp's parts re-merged over the fresh object, so a foreign change made in
between is never lost.

A state saved by a tick whose write failed stays in memory, tied to the resourceVersion it was
based on: the next `load` returns it (with its apply-failure count) while nobody else changed
the object, and the annotation otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.phases import Command, RolloutState
from controller.k8s.client import Conflict, KubeApi, KubeError, NotFound
from controller.routing.crd_schema import IstioSchemas
from controller.routing.istio_merge import (
    COMMAND_ANNOTATION,
    STATE_ANNOTATION,
    ClusterRouting,
    IstioMergeError,
    annotations_of,
    encode_state,
    merge_destination_rule,
    merge_virtual_service,
    object_ref,
    parse_routing,
    persisted_view,
    resource_version,
    same_durable_state,
    state_of,
)
from controller.routing.model import DesiredRouting
from controller.state.file_store import StateStoreError

log = structlog.get_logger("ramp.istio")

GROUP, VERSION = "networking.istio.io", "v1"
VIRTUAL_SERVICES, DESTINATION_RULES = "virtualservices", "destinationrules"

Obj = dict[str, Any]


@dataclass
class _Entry:
    """What this process knows about one service's VirtualService."""

    namespace: str
    service: str
    rollout: str | None = None
    obj: Obj | None = None
    known: bool = False  # `obj` is what a read or write of this process returned
    base_rv: str | None = None  # the resourceVersion `state` builds on
    state: RolloutState | None = None
    consumed_command: str | None = None  # the raw annotation value to remove in the next write
    confirmed: tuple[object, ...] | None = None  # (routing, resourceVersion, durable view) last in place


class IstioBackend:
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
        """Read every tracked VirtualService with one LIST per namespace; each `load` then uses it once."""
        self._prefetched = {}
        namespaces = sorted({namespace for namespace, _ in self._entries})
        for namespace in namespaces:
            listed = self.api.retrying(
                "list", _resource(VIRTUAL_SERVICES), namespace, None,
                self.api.custom_objects.list_namespaced_custom_object, GROUP, VERSION, namespace, VIRTUAL_SERVICES,
            )  # fmt: skip
            items = listed.get("items", []) if isinstance(listed, dict) else []
            by_name = {item.get("metadata", {}).get("name"): item for item in items if isinstance(item, dict)}
            for key in self._entries:
                if key[0] == namespace:
                    self._prefetched[key] = by_name.get(key[1])

    def load(self, rollout: str) -> RolloutState | None:
        entry = self._entry(rollout)
        key = (entry.namespace, entry.service)
        if key in self._prefetched:
            obj = self._prefetched.pop(key)
        else:
            obj = self._get(VIRTUAL_SERVICES, entry.namespace, entry.service)
        entry.obj, entry.known = obj, True
        rv = resource_version(obj)
        if entry.state is not None and entry.base_rv == rv:
            return entry.state  # nobody wrote since: our latest state, including unwritten progress
        entry.base_rv, entry.consumed_command = rv, None
        ours, entry.state = entry.state, state_of(obj)
        if ours is not None and entry.state is not None and entry.state.spec_digest == ours.spec_digest:
            # Someone else wrote (a command, an edit): the statistical gates' e-processes, which live only
            # in memory, go on rather than restart; a restart per foreign write would add false rollbacks.
            entry.state = entry.state.model_copy(update={"sequential": ours.sequential})
        return entry.state

    def save(self, state: RolloutState) -> None:
        """Staged only: written by the next `apply`, in the same update as the routing."""
        self._entry(state.rollout).state = state

    def pending_command(self, rollout: str) -> CommandRequest | None:
        entry = self._entry(rollout)
        entry.consumed_command = None
        if not entry.known:
            entry.obj, entry.known = self._get(VIRTUAL_SERVICES, entry.namespace, entry.service), True
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
        """DestinationRule subsets first (never route to a missing subset), then one VirtualService write."""
        key = (routing.namespace, routing.service)
        entry = self._entries.setdefault(key, _Entry(*key))
        current = entry.obj if entry.known else self._get(VIRTUAL_SERVICES, *key)
        view = None if entry.state is None else persisted_view(entry.state)
        confirmed = (routing, resource_version(current), view)
        if entry.confirmed == confirmed and entry.consumed_command is None:
            # Nobody changed the VirtualService since we last confirmed it and we have nothing new for it.
            return self._ensure_destination_rule_if_needed(routing)
        # Built first so that a refusal (shadowing...) happens before anything is written; rebuilt only
        # when a conflict brings a newer VirtualService.
        first = self._desired_virtual_service(entry, routing, current)
        dr_written = self._ensure_destination_rule_if_needed(routing)
        stored, vs_written = self._converge(
            VIRTUAL_SERVICES, routing.namespace, routing.service, current,
            lambda obj: first if obj is current else self._desired_virtual_service(entry, routing, obj),
        )  # fmt: skip
        entry.obj, entry.known, entry.consumed_command = stored, True, None
        if entry.state is not None:
            entry.base_rv = resource_version(stored)  # the stored annotation now holds entry.state
        entry.confirmed = (routing, resource_version(stored), view)
        return dr_written or vs_written

    def _desired_virtual_service(self, entry: _Entry, routing: DesiredRouting, current: Obj | None) -> Obj:
        notes: dict[str, str] = {}
        stored_state = annotations_of(current).get(STATE_ANNOTATION)
        if entry.state is not None and not same_durable_state(stored_state, entry.state):
            notes[STATE_ANNOTATION] = encode_state(entry.state)
        remove = {COMMAND_ANNOTATION: entry.consumed_command} if entry.consumed_command is not None else {}
        desired = merge_virtual_service(current, routing, notes, remove)
        if desired != current and entry.state is not None:  # written anyway: bring the reason up to date too
            desired["metadata"].setdefault("annotations", {})[STATE_ANNOTATION] = encode_state(entry.state)
        return desired

    def _ensure_destination_rule_if_needed(self, routing: DesiredRouting) -> bool:
        """Verify the subsets when the versions change, and every rule_recheck_seconds (repairs deletions)."""
        key = (routing.namespace, routing.service)
        verified = self._rules_verified.get(key)
        now = time.monotonic()
        fresh = verified is not None and now - verified[2] < self.rule_recheck_seconds
        if fresh and verified is not None and verified[:2] == (routing.versions, routing.host):
            return False
        written = self._ensure_destination_rule(routing)
        self._rules_verified[key] = (routing.versions, routing.host, now)
        return written

    def _ensure_destination_rule(self, routing: DesiredRouting) -> bool:
        current = self._get(DESTINATION_RULES, routing.namespace, routing.service)
        _, written = self._converge(
            DESTINATION_RULES, routing.namespace, routing.service, current,
            lambda obj: merge_destination_rule(obj, routing),
        )  # fmt: skip
        return written

    def _converge(
        self, plural: str, namespace: str, name: str, current: Obj | None, build: Callable[[Obj | None], Obj]
    ) -> tuple[Obj, bool]:
        """Write `build(current)` unless it equals `current`; on 409 re-read and rebuild (bounded)."""
        for attempt in range(self.conflict_attempts):
            desired = build(current)
            if current is not None and desired == current:
                return current, False
            self._validate(desired)
            try:
                if current is None:
                    stored = self._create(plural, namespace, desired)
                else:
                    stored = self._replace(plural, namespace, name, desired)
            except Conflict as exc:
                if attempt + 1 >= self.conflict_attempts:
                    raise Conflict(
                        exc.verb, exc.resource, namespace, name, exc.status,
                        f"still conflicting after {self.conflict_attempts} attempts (another writer keeps "
                        f"changing it): {exc.detail}",
                    ) from exc  # fmt: skip
                delay = self.api.retry.delay(attempt)
                log.info("conflict, re-reading", resource=plural, namespace=namespace, name=name, delay=delay)
                self.api.retry.sleep(delay)
                current = self._get(plural, namespace, name)
                continue
            log.info("written", resource=plural, namespace=namespace, name=name, rv=resource_version(stored))
            return stored, True
        raise AssertionError("unreachable")  # pragma: no cover

    def _validate(self, obj: Obj) -> None:
        if self.schemas is None:
            return
        problems = self.schemas.validate(obj)
        if problems:
            raise IstioMergeError(f"{object_ref(obj)} would not be valid, not written: {'; '.join(problems[:5])}")

    def call_counts(self) -> tuple[int, int]:
        """(Kubernetes requests, errors) of the client this backend uses (shared by all users of the client)."""
        return self.api.stats.totals()

    # --- reads for `ramp status` and the CLI ---------------------------------------------------

    def read_routing(self, namespace: str, service: str) -> ClusterRouting:
        """Weights per version, header routes and state as stored in the cluster right now."""
        return parse_routing(namespace, service, self._get(VIRTUAL_SERVICES, namespace, service))

    def request_command(self, namespace: str, service: str, command: Command | CommandRequest) -> None:
        """Ask the controller for `command` (it acts on the next tick and clears the annotation)."""
        request = command if isinstance(command, CommandRequest) else CommandRequest(command=command)
        self.annotate(namespace, service, {COMMAND_ANNOTATION: request.encode()})

    def annotate(self, namespace: str, service: str, annotations: Mapping[str, str]) -> None:
        """Set annotations on an existing VirtualService (optimistic concurrency, like every write)."""
        current = self._get(VIRTUAL_SERVICES, namespace, service)
        if current is None:
            raise NotFound("update", _resource(VIRTUAL_SERVICES), namespace, service, 404, "no VirtualService yet")

        def with_annotations(obj: Obj | None) -> Obj:
            if obj is None:
                raise NotFound("update", _resource(VIRTUAL_SERVICES), namespace, service, 404, "deleted meanwhile")
            updated = dict(obj, metadata=dict(obj.get("metadata") or {}))
            updated["metadata"]["annotations"] = {**annotations_of(obj), **annotations}
            return updated

        self._converge(VIRTUAL_SERVICES, namespace, service, current, with_annotations)

    # --- requests -----------------------------------------------------------------------------

    def _get(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            found = self.api.retrying(
                "get", _resource(plural), namespace, name,
                self.api.custom_objects.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name,
            )  # fmt: skip
        except NotFound:
            return None
        return _as_object(found, "get", plural, namespace, name)

    def _create(self, plural: str, namespace: str, body: Obj) -> Obj:
        name = (body.get("metadata") or {}).get("name")
        stored = self.api.retrying(
            "create", _resource(plural), namespace, name,
            self.api.custom_objects.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body,
        )  # fmt: skip
        return _as_object(stored, "create", plural, namespace, name)

    def _replace(self, plural: str, namespace: str, name: str, body: Obj) -> Obj:
        stored = self.api.retrying(
            "update", _resource(plural), namespace, name,
            self.api.custom_objects.replace_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, body,
        )  # fmt: skip
        return _as_object(stored, "update", plural, namespace, name)


def _as_object(found: object, verb: str, plural: str, namespace: str, name: str | None) -> Obj:
    if not isinstance(found, dict):
        raise KubeError(verb, _resource(plural), namespace, name, None, f"unexpected response {type(found).__name__}")
    return cast(Obj, found)


def _resource(plural: str) -> str:
    return f"{plural}.{GROUP}"

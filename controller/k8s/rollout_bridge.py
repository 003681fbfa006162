"""The RampRollout bridge: commands from the resource in, status (and refusal Events) out, around each tick.

- **Before a tick**: a `ramp.dev/command` annotation on a RampRollout (set by `kubectl annotate` or `ramp
  pause|resume|abort|promote`) is forwarded to the controller's command channel (the same annotation on the
  service's route object, where the state lives: see controller.routing.object_backend) and then removed from the
  resource, only if it still holds the value forwarded (a newer command is never lost). While an earlier
  command is still pending, the resource's command waits (it is forwarded on a later tick, never dropped).
  A command on a refused resource, or one that cannot be read, is refused at once: `status.lastCommand`
  says why, with a `CommandRefused` Event. A forwarded command gets the id `rr-<resourceVersion>`.
- **After a tick**: the status of every resource is written through the status subresource when it changed
  (`rollout_status` for a running rollout, mirroring the state that lives on the VirtualService;
  `invalid_status` for a refused one, with one Warning Event per distinct refusal). No-op writes are skipped.

Every call is bounded by the tick's deadline; a failure is logged and retried on the next tick, never
raised into the tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.phases import RolloutState
from controller.engine.ports import ManagedRollout, TickEvent
from controller.engine.state_port import CommandPending
from controller.k8s.events import EventRecorder, ObjectRef
from controller.rollout_resource import API_VERSION, COMMAND_ANNOTATION, KIND
from controller.rollout_status import invalid_status, rollout_status, status_changed
from controller.spec_sources import CombinedSpecSource, ResourceKey

log = structlog.get_logger("ramp.resources")
MAX_CALL_SECONDS = 5.0


class ResourceWrites(Protocol):
    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], deadline: Deadline) -> object: ...
    def remove_command(self, namespace: str, name: str, raw_value: str, deadline: Deadline) -> bool: ...


class CommandChannel(Protocol):
    """Where the controller takes commands from (RouteObjectBackend.request_command: the annotation of the rollout's
    route object, a VirtualService or an HTTPRoute), and the state that records their outcomes (its `load`)."""

    def request_command(
        self, namespace: str, service: str, command: CommandRequest, router: str | None = None
    ) -> None: ...
    def load(self, rollout: str) -> RolloutState | None: ...


def _call_deadline(deadline: Deadline) -> Deadline:
    """One call's share of the tick's deadline."""
    return Deadline(min(MAX_CALL_SECONDS, deadline.remaining()))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _annotation(obj: dict[str, Any]) -> str | None:
    annotations = _meta(obj).get("annotations")
    value = annotations.get(COMMAND_ANNOTATION) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


def _previous(obj: dict[str, Any]) -> dict[str, Any] | None:
    status = obj.get("status")
    return status if isinstance(status, dict) else None


@dataclass
class RolloutResourceBridge:
    source: CombinedSpecSource
    writes: ResourceWrites
    commands: CommandChannel
    events: EventRecorder | None = None
    clock: Callable[[], float] = time.time
    _written: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)  # last status written per resource
    _evented: dict[ResourceKey, str] = field(default_factory=dict)  # last refusal message recorded as an Event
    # Commands refused here (unreadable, or on a refused resource): (when, status.lastCommand) per resource
    _refused_commands: dict[ResourceKey, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    # -- before the tick: commands ---------------------------------------------------------------------------

    def before_tick(self, deadline: Deadline) -> None:
        for key, obj in sorted(self.source.objects.items()):
            raw = _annotation(obj)
            if raw is None or deadline.expired:
                continue
            try:
                self._forward(key, obj, raw, deadline)
            except Exception as exc:
                log.warning(
                    "command not forwarded", resource=f"{key[0]}/{key[1]}", error=f"{type(exc).__name__}: {exc}"[:300]
                )

    def _forward(self, key: ResourceKey, obj: dict[str, Any], raw: str, deadline: Deadline) -> None:
        rollout = self.source.rollout_for(key)
        refusal = self.source.refusals.get(key)
        try:
            request = CommandRequest.decode(raw)
        except CommandError as exc:
            self._refuse(key, obj, raw, raw[:40], f"unreadable command: {exc}", deadline)
            return
        if rollout is None:
            why = f"the resource is not running ({refusal.kind}: {refusal.message})" if refusal else "not loaded yet"
            if refusal is None:
                return  # the source has not seen it yet: try again next tick
            self._refuse(key, obj, raw, request.command.value, why, deadline, request.id)
            return
        if not request.id:
            version = _meta(obj).get("resourceVersion")
            request = request.model_copy(update={"id": f"rr-{version}" if isinstance(version, str) else "rr"})
        if self._already_decided(rollout, request.id):  # forwarded before, its removal failed: never apply twice
            self.writes.remove_command(key[0], key[1], raw, _call_deadline(deadline))
            return
        try:
            self.commands.request_command(rollout.spec.namespace, rollout.spec.service, request, rollout.spec.router)
        except CommandPending as exc:
            log.info("resource command waits for an earlier one", resource=f"{key[0]}/{key[1]}", pending=str(exc))
            return
        self.writes.remove_command(key[0], key[1], raw, _call_deadline(deadline))
        log.info(
            "resource command forwarded", resource=f"{key[0]}/{key[1]}", command=request.command.value, id=request.id
        )

    def _already_decided(self, rollout: ManagedRollout, request_id: str) -> bool:
        try:
            state = self.commands.load(rollout.name)
        except Exception:  # unreadable now: forwarding is still safe (the channel refuses a pending duplicate)
            return False
        return state is not None and state.last_command is not None and state.last_command.id == request_id

    def _refuse(
        self,
        key: ResourceKey,
        obj: dict[str, Any],
        raw: str,
        command: str,
        why: str,
        deadline: Deadline,
        request_id: str = "",
    ) -> None:
        now = self.clock()
        self._refused_commands[key] = (now, {
            "id": request_id, "command": command, "applied": False, "reason": why,
            "at": datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })  # fmt: skip
        self._event(key, obj, "CommandRefused", f"{command}: {why}", "Warning")
        if self.writes.remove_command(key[0], key[1], raw, _call_deadline(deadline)):
            self._publish_refused(key, obj, deadline)

    # -- after the tick: status ------------------------------------------------------------------------------

    def after_tick(self, events: Sequence[TickEvent], deadline: Deadline) -> None:
        now = datetime.fromtimestamp(self.clock(), tz=UTC)
        for event in events:
            ref = event.rollout.resource
            if ref is None or deadline.expired:
                continue
            key = (ref.namespace, ref.name)
            obj = self.source.objects.get(key)
            if obj is None:
                continue  # deleted meanwhile: nothing to report on
            status = self._status(event.rollout, event.decision.state, obj, now)
            self._write(key, status, deadline)
        for key in sorted(self.source.refusals):
            obj = self.source.objects.get(key)
            if obj is not None and not deadline.expired:
                self._publish_refused(key, obj, deadline)
        for gone in set(self._written) - set(self.source.objects):
            self._written.pop(gone, None)
            self._evented.pop(gone, None)
            self._refused_commands.pop(gone, None)

    def _status(
        self, rollout: ManagedRollout, state: RolloutState, obj: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        generation = rollout.resource.generation if rollout.resource is not None else 0
        key = self._key(obj)
        status = rollout_status(rollout, state, generation, self._written.get(key) or _previous(obj), now)
        refused = self._refused_commands.get(key)
        if refused is not None and (state.last_command is None or state.last_command.at < refused[0]):
            status["lastCommand"] = refused[1]  # refused here, after the engine's last outcome: the newest word
        return status

    def _publish_refused(self, key: ResourceKey, obj: dict[str, Any], deadline: Deadline) -> None:
        refusal = self.source.refusals.get(key)
        if refusal is None:
            return
        now = datetime.fromtimestamp(self.clock(), tz=UTC)
        previous = self._written.get(key) or _previous(obj)
        status = invalid_status(refusal.kind, refusal.message, refusal.generation, previous, now)
        refused = self._refused_commands.get(key)
        if refused is not None:
            status["lastCommand"] = refused[1]
        if self._evented.get(key) != refusal.message:
            self._event(key, obj, refusal.kind, refusal.message, "Warning")
            self._evented[key] = refusal.message
        self._write(key, status, deadline)

    def _write(self, key: ResourceKey, status: dict[str, Any], deadline: Deadline) -> None:
        obj = self.source.objects.get(key) or {}
        current = self._written.get(key) or _previous(obj)
        if not status_changed(current, status):
            return
        try:
            self.writes.patch_status(key[0], key[1], status, _call_deadline(deadline))
            self._written[key] = status
        except Exception as exc:
            log.warning("status not written", resource=f"{key[0]}/{key[1]}", error=f"{type(exc).__name__}: {exc}"[:300])

    def _event(self, key: ResourceKey, obj: dict[str, Any], reason: str, message: str, kind: str) -> None:
        if self.events is None:
            return
        uid = _meta(obj).get("uid")
        involved = ObjectRef(API_VERSION, KIND, key[1], uid if isinstance(uid, str) else None)
        try:
            self.events.record(key[0], involved, reason, message, "Warning" if kind == "Warning" else "Normal")
        except Exception as exc:
            log.warning("event not recorded", resource=f"{key[0]}/{key[1]}", error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _key(obj: dict[str, Any]) -> ResourceKey:
        meta = _meta(obj)
        return str(meta.get("namespace", "")), str(meta.get("name", ""))

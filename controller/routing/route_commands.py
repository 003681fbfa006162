"""What people's commands and `ramp status` do on a service's route object, whichever router wrote it.

`locate` finds the router whose object the service has; `read_routing` is the tolerant view `ramp status` shows;
`request_command` writes the `ramp.dev/command` annotation (refused while another is pending, checked on the
object each write is based on); `annotate` sets annotations. Every write is a PUT with the resourceVersion read,
re-merged on 409 (`kube_requests`). Mixed into `RouteObjectBackend`, which tracks which router each rollout uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.engine.commands import CommandRequest, describe_pending
from controller.engine.phases import Command
from controller.engine.state_port import CommandPending
from controller.routing.k8s_objects import COMMAND_ANNOTATION, ClusterRouting, annotations_of, check_metadata, ref
from controller.routing.kube_requests import KubeRequests, Obj, not_found
from controller.routing.route_kind import RouteKind
from controller.routing.state_codec import STATE_ANNOTATION


class RouteCommands(KubeRequests):
    """Needs `routers` and `_kind_for` (RouteObjectBackend provides both)."""

    routers: dict[str, RouteKind]

    def _kind_for(self, namespace: str, service: str, router: str | None) -> RouteKind:
        raise NotImplementedError

    def locate(self, namespace: str, service: str) -> str | None:
        """Which router's object the service has (one carrying Ramp's state first), or None: for the CLI."""
        found = None
        for name, kind in self.routers.items():
            obj = self._get(kind.resource, namespace, service)
            if obj is not None and STATE_ANNOTATION in annotations_of(obj):
                return name
            found = found or (name if obj is not None else None)
        return found

    def read_routing(self, namespace: str, service: str, router: str | None = None) -> ClusterRouting:
        """Weights per version, header routes and state as stored in the cluster right now."""
        kind = self._kind_for(namespace, service, router)
        return kind.parse(namespace, service, self._get(kind.resource, namespace, service))

    def request_command(
        self, namespace: str, service: str, command: Command | CommandRequest, router: str | None = None
    ) -> None:
        """Ask the controller for `command` (it acts on the next tick and clears the annotation in the write
        that records the outcome). CommandPending while an earlier command is still there: checked on the
        object each write is based on, so a command written concurrently is never replaced."""
        request = command if isinstance(command, CommandRequest) else CommandRequest(command=command)
        where = ref(self._kind_for(namespace, service, router).resource.kind, namespace, service)

        def refuse_pending(obj: Obj) -> None:
            pending = annotations_of(obj).get(COMMAND_ANNOTATION)
            if pending is None:
                return
            raise CommandPending(f"{describe_pending(pending)} is still waiting for the controller of {where}; it is "
                                 "applied or refused on the next tick (is the controller running?)")  # fmt: skip

        self._annotate(namespace, service, {COMMAND_ANNOTATION: request.encode()}, refuse_pending, router)

    def annotate(self, namespace: str, service: str, annotations: Mapping[str, str], router: str | None = None) -> None:
        """Set annotations on an existing route object (optimistic concurrency, like every write)."""
        self._annotate(namespace, service, annotations, lambda _obj: None, router)

    def _annotate(
        self, namespace: str, service: str, annotations: Mapping[str, str], check: Callable[[Obj], None],
        router: str | None,
    ) -> None:  # fmt: skip
        resource = self._kind_for(namespace, service, router).resource
        current = self._get(resource, namespace, service)
        if current is None:
            raise not_found(resource, namespace, service, f"no {resource.kind} yet")
        where = ref(resource.kind, namespace, service)

        def with_annotations(obj: Obj | None) -> Obj:
            if obj is None:
                raise not_found(resource, namespace, service, "deleted meanwhile")
            check_metadata(obj, where)
            check(obj)
            updated = dict(obj, metadata=dict(obj.get("metadata") or {}))
            updated["metadata"]["annotations"] = {**annotations_of(obj), **annotations}
            return updated

        self._converge(resource, namespace, service, current, with_annotations)

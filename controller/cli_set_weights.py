"""Cluster mode of the people's commands: the `ramp.dev/command` annotation, and set-weights without a rollout.

The service's route object is found whichever router wrote it (a VirtualService or an HTTPRoute: see
`controller.cluster_backend`). A service is managed by a rollout when that object carries the `ramp.dev/state`
annotation: commands then go to the controller (see `controller.cli_commands`). On an unmanaged service `set-
weights` writes the route object itself (an HTTPRoute keeps its parents and version Services), with the same
partial-edit semantics: the versions named get their new relative weight, the others keep theirs (the relative
weights recorded by the last `set-weights` while they still describe the live split, else the live percentages).
Versions named with a weight but without ready pods are refused unless `--force`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from controller.cli_commands import LOST, Poll, active_refusal
from controller.cli_common import EXIT_OK, EXIT_QUEUED, EXIT_REFUSED, kube_api
from controller.cli_status import RELATIVE_WEIGHTS_ANNOTATION, parse_recorded, relative_weights
from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.phases import Command
from controller.weights import display_percentages, integer_percentages

if TYPE_CHECKING:
    from controller.engine.routing_model import DesiredRouting
    from controller.routing.k8s_objects import ClusterRouting

IN_EFFECT_POLL_SECONDS = 0.5
STATE_ANNOTATION = "ramp.dev/state"  # the controller's state on a managed route object (see routing.object_backend)


def describe_pending(raw: str) -> str:
    try:
        pending = CommandRequest.decode(raw)
    except CommandError as exc:
        return f"an unreadable command ({exc})"
    by = f" by {pending.by}" if pending.by else ""
    return f"{pending.command.value} (id {pending.id or '?'}{by})"


class ClusterTarget:
    """A service's route object: the command annotation, and the state annotation's `last_command`."""

    def __init__(self, args: argparse.Namespace) -> None:
        from controller.cluster_backend import cluster_backend

        self.args = args
        self.namespace: str = args.namespace
        self.service: str = args.service
        self.api = kube_api(args)
        self.backend = cluster_backend(self.api)
        self._router: str | None = None
        self.kind = "VirtualService"

    @property
    def router(self) -> str | None:
        """The router whose object the service has (found once), or None (then the default's is used)."""
        if self._router is None:
            self._router = self.backend.locate(self.namespace, self.service)
            self.kind = self.backend.router(self._router).resource.kind
        return self._router

    def prepare(self, request: CommandRequest) -> tuple[int, str] | None:
        routing = self.backend.read_routing(self.namespace, self.service, self.router)
        where = f"{self.namespace}/{self.service}"
        if routing.state_error:
            return EXIT_REFUSED, f"refused: the rollout state is unreadable: {routing.state_error}"
        if routing.state is None:
            if request.command == Command.SET_WEIGHTS:
                return self._set_directly(request, routing)
            if not routing.found:
                return EXIT_REFUSED, f"no VirtualService or HTTPRoute {where}: no rollout to {request.command.value}"
            return EXIT_REFUSED, (
                f"no rollout manages {where} (its {self.kind} has no {STATE_ANNOTATION} annotation): "
                f"nothing to {request.command.value}"
            )
        refusal = active_refusal(routing.state, request)
        if refusal is not None:
            return refusal
        if routing.command is not None:
            return EXIT_REFUSED, (
                f"refused: another command is pending: {describe_pending(routing.command)} is still waiting for the "
                "controller; it is applied or refused on the next tick (is the controller running?)"
            )
        return None

    def submit(self, request: CommandRequest) -> tuple[int, str] | None:
        from controller.engine.state_port import CommandPending

        try:
            self.backend.request_command(self.namespace, self.service, request, self.router)
        except CommandPending as exc:
            return EXIT_REFUSED, f"refused: another command is pending: {exc}"
        return None

    def poll(self, request_id: str) -> Poll:
        from controller.k8s.client import KubeError

        try:
            routing = self.backend.read_routing(self.namespace, self.service, self.router)
        except (KubeError, ValueError) as exc:  # unreachable, or a malformed object: read again until the wait ends
            return Poll(problem=str(exc))
        last = routing.state.last_command if routing.state is not None else None
        if last is not None and last.id == request_id:
            return Poll(outcome=last)
        if routing.command is not None and _request_id(routing.command) == request_id:
            return Poll()
        if not routing.found:
            return Poll(lost=f"the {self.kind} was deleted before the controller applied the command")
        # The controller writes the outcome and removes the command in the same update.
        return Poll(lost=LOST + (f" ({routing.state_error})" if routing.state_error else ""))

    def _set_directly(self, request: CommandRequest, routing: ClusterRouting) -> tuple[int, str]:
        from controller.engine.routing_model import DesiredRouting
        from controller.k8s.availability import DeploymentAvailability

        given = dict(request.weights or {})
        live = {v: w for v, w in routing.weights if isinstance(w, int) and w >= 0}  # nothing negative from outside
        current = relative_weights(live, parse_recorded(routing.annotations.get(RELATIVE_WEIGHTS_ANNOTATION)))
        merged = {**current, **given}
        if sum(merged.values()) <= 0:
            return EXIT_REFUSED, "refused: all weights would be 0: at least one version must carry traffic"
        available = DeploymentAvailability(self.api).available(self.namespace, [self.service])
        missing = [v for v, w in given.items() if w > 0 and (self.service, v) not in available]
        if missing and not request.force:
            return EXIT_REFUSED, (
                f"no ready pods for {', '.join(missing)}: refusing to send traffic there (--force to override)"
            )
        percent = integer_percentages(merged)
        desired = DesiredRouting(
            service=self.service, namespace=self.namespace,
            host=self.args.host or f"{self.service}.{self.namespace}.svc.cluster.local",
            versions=tuple(merged), header_routes=routing.header_routes, weights=tuple(percent.items()),
        )  # fmt: skip
        if self.router not in (None, "istio"):  # weights to Services: keep the route's parents and version Services
            seen = self.backend.observed(self.namespace, self.service, router=self.router) if routing.found else None
            named = dict(seen.backends.services) if seen is not None and seen.backends is not None else {}
            unknown = [v for v in merged if v not in named]
            if seen is None or seen.backends is None or unknown:
                return EXIT_REFUSED, (f"refused: the {self.kind} {self.namespace}/{self.service} names no Service for "
                                      f"{', '.join(unknown) or 'its versions'}; a rollout spec names them")  # fmt: skip
            desired = desired.model_copy(update={"router": self.router, "parent_refs": seen.parent_refs,
                                                 "backends": seen.backends})  # fmt: skip
        from controller.routing.object_backend import RoutingNotInEffect

        pending: str | None = None
        try:
            written = self.backend.apply(desired)
        except RoutingNotInEffect as exc:  # written; a Gateway has not accepted it yet
            written, pending = True, exc.detail
        self.backend.annotate(self.namespace, self.service, {RELATIVE_WEIGHTS_ANNOTATION: json.dumps(merged)},
                              self.router)  # fmt: skip
        shares = display_percentages(merged)
        text = ", ".join(f"{v}={merged[v]} ({shares[v]:.1f}%)" for v in merged)
        if pending is not None:
            pending = self._until_in_effect(desired, pending)
        if pending is not None:
            return EXIT_QUEUED, f"{text}: written, but not in effect within {self._wait_seconds():g}s: {pending}"
        return EXIT_OK, text + ("" if written else " (already in place)")

    def _wait_seconds(self) -> float:
        wait = getattr(self.args, "wait", None)
        return 0.0 if getattr(self.args, "no_wait", False) else float(wait if wait is not None else 10.0)

    def _until_in_effect(self, desired: DesiredRouting, pending: str) -> str | None:
        """Re-check until the router says the written routing is in effect (None) or `--wait` ends (the reason)."""
        from controller.routing.object_backend import RoutingNotInEffect

        deadline = Deadline(self._wait_seconds())
        while not deadline.expired:
            time.sleep(min(IN_EFFECT_POLL_SECONDS, max(0.0, deadline.remaining())))
            self.backend.invalidate(self.namespace, self.service)  # read the object (and its status) again
            try:
                self.backend.apply(desired, deadline=Deadline(max(0.1, deadline.remaining())))
                return None
            except RoutingNotInEffect as exc:
                pending = exc.detail
        return pending


def _request_id(raw: str) -> str | None:
    try:
        return CommandRequest.decode(raw).id
    except CommandError:
        return None

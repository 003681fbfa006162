"""Cluster commands on a service managed through a RampRollout: written on the resource, as `kubectl` would.

`ramp pause|resume|abort|promote SERVICE -n NS` looks for the RampRollout of that service in the namespace.
When there is one, the command goes into its `ramp.dev/command` annotation (exactly what
`kubectl annotate rr NAME ramp.dev/command=pause` does); the controller forwards it, keeping its id, and the
outcome is read back as for any command (the state's `last_command` on the route object, or the
resource's `status.lastCommand` when the controller refused it there). Without a RampRollout (a spec file,
or no CRD installed), the route object's annotation (VirtualService or HTTPRoute) is used as before.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli_commands import Poll
from controller.cli_common import EXIT_REFUSED
from controller.cli_set_weights import ClusterTarget
from controller.deadline import Deadline
from controller.engine.commands import CommandError, CommandRequest
from controller.engine.phases import CommandOutcome
from controller.engine.state_port import CommandPending
from controller.k8s.errors import KubeError, NotFound
from controller.k8s.rollout_writes import RolloutResourceClient
from controller.rollout_resource import COMMAND_ANNOTATION, GROUP, PLURAL, VERSION

CALL_SECONDS = 10.0


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ResourceAwareTarget(ClusterTarget):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.resources = RolloutResourceClient(self.api)
        self.resource: str | None = self._find()

    def _find(self) -> str | None:
        """The name of the RampRollout managing the service, or None (none, or the CRD is not installed)."""
        objects = self.api.custom_objects
        try:
            listed: Any = self.api.call("list", f"{PLURAL}.{GROUP}", self.namespace, None,
                                        objects.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                        PLURAL, deadline=Deadline(CALL_SECONDS))  # fmt: skip
        except NotFound:
            return None
        items = _dict(listed).get("items")
        for item in items if isinstance(items, list) else []:
            spec, meta = _dict(_dict(item).get("spec")), _dict(_dict(item).get("metadata"))
            if spec.get("service") == self.service and isinstance(meta.get("name"), str):
                return str(meta["name"])
        return None

    def submit(self, request: CommandRequest) -> tuple[int, str] | None:
        if self.resource is None:
            return super().submit(request)
        try:
            self.resources.request_command(self.namespace, self.resource, request, Deadline(CALL_SECONDS))
        except CommandPending as exc:
            return EXIT_REFUSED, f"refused: another command is pending: {exc}"
        return None

    def poll(self, request_id: str) -> Poll:
        first = super().poll(request_id)
        if self.resource is None or first.lost is None:
            return first
        try:
            obj = self.resources.get(self.namespace, self.resource, Deadline(CALL_SECONDS))
        except KubeError as exc:
            return Poll(problem=str(exc))
        if obj is None:
            return Poll(lost=f"the RampRollout {self.resource} was deleted before the controller took the command")
        raw = _dict(_dict(obj.get("metadata")).get("annotations")).get(COMMAND_ANNOTATION)
        if isinstance(raw, str):
            try:
                if CommandRequest.decode(raw).id == request_id:
                    return Poll()  # on the resource, not yet forwarded
            except CommandError:
                pass
        refused = _dict(_dict(obj.get("status")).get("lastCommand"))
        if refused.get("id") == request_id and refused.get("applied") is False:
            return Poll(
                outcome=CommandOutcome(
                    id=request_id,
                    command=str(refused.get("command", "")),
                    applied=False,
                    reason=str(refused.get("reason", "")),
                    at=0.0,
                )
            )
        return super().poll(request_id)  # forwarded between the two reads: the VirtualService has it now

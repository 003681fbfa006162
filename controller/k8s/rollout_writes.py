"""Reads and writes of one RampRollout: its status, and the command annotation people set and the controller clears.

Every call has a TOTAL deadline (the caller's `Deadline`, through `KubeApi`: retries of transient failures
included, never past it), fails with a typed `KubeError`, and never hangs on a dribbling apiserver.

- `patch_status` REPLACES the status wholesale: a JSON patch `add /status` on the status subresource. A merge
  patch could only drop keys the writer knows are there (sent as null), and the writer's knowledge comes from
  the watch cache, which may lag behind our own previous write: a version removed from `weights` would stay
  for ever. Replacing needs no read and no resourceVersion, and only the controller writes status.
- `remove_command` clears the annotation only while it still holds the value that was applied: a JSON patch
  `test` + `remove`; a newer command written meanwhile fails the test (422) and is kept for the next tick.
- `request_command` (the CLI) sets the annotation only when none is pending: read, refuse if one is there,
  then a merge patch carrying the read `metadata.resourceVersion` as a precondition, so a command written
  concurrently makes it fail with 409 and it re-reads instead of replacing that command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.commands import CommandRequest, describe_pending
from controller.engine.state_port import CommandPending
from controller.k8s.client import KubeApi
from controller.k8s.errors import Conflict, Invalid, KubeDeadlineExceeded, KubeError, NotFound
from controller.rollout_resource import COMMAND_ANNOTATION, GROUP, PLURAL, VERSION

log = structlog.get_logger("ramp.rollout_writes")

RESOURCE = f"{PLURAL}.{GROUP}"
COMMAND_PATH = "/metadata/annotations/" + COMMAND_ANNOTATION.replace("~", "~0").replace("/", "~1")
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_ATTEMPTS = 5  # re-reads after 409 before giving up (each one means someone else just wrote)


class RolloutResourceClient:
    """get / patch_status / remove_command / request_command on RampRollouts, through one `KubeApi`
    (its write guard applies: on the controller's client, only the leader writes)."""

    def __init__(self, api: ApiClient | KubeApi) -> None:
        self.api = KubeApi.wrap(api)

    def get(self, namespace: str, name: str, deadline: Deadline) -> dict[str, Any] | None:
        """The resource, or None when it does not exist."""
        objects = self.api.custom_objects
        try:
            response = self.api.retrying("get", RESOURCE, namespace, name, objects.get_namespaced_custom_object,
                                         GROUP, VERSION, namespace, PLURAL, name, deadline=deadline,
                                         _preload_content=False)  # fmt: skip
        except NotFound:
            return None
        return _decoded(response, "get", namespace, name)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], deadline: Deadline) -> None:
        """Replace the status with `status` (see the module docstring). A resource deleted meanwhile is not an
        error: there is nothing left to report on."""
        body = [{"op": "add", "path": "/status", "value": dict(status)}]
        objects = self.api.custom_objects
        try:
            self.api.retrying("patch", RESOURCE, namespace, name, objects.patch_namespaced_custom_object_status,
                              GROUP, VERSION, namespace, PLURAL, name, body, deadline=deadline,
                              _content_type=JSON_PATCH, _preload_content=False)  # fmt: skip
        except NotFound:
            log.info("status not written: the RampRollout was deleted", resource=f"{namespace}/{name}")

    def remove_command(self, namespace: str, name: str, raw_value: str, deadline: Deadline) -> bool:
        """Remove the command annotation if it still holds `raw_value`. True when no longer there (removed now, by
        an earlier attempt whose answer was lost, or with the resource); False when a NEWER command is there."""
        body = [
            {"op": "test", "path": COMMAND_PATH, "value": raw_value},
            {"op": "remove", "path": COMMAND_PATH},
        ]
        objects = self.api.custom_objects
        try:
            self.api.retrying("patch", RESOURCE, namespace, name, objects.patch_namespaced_custom_object,
                              GROUP, VERSION, namespace, PLURAL, name, body, deadline=deadline,
                              _content_type=JSON_PATCH, _preload_content=False)  # fmt: skip
            return True
        except NotFound:
            return True
        except Invalid as exc:
            # The test failed (or the path is missing): see what is there now before deciding.
            current = self.get(namespace, name, deadline)
            pending = _command_of(current) if current is not None else None
            if pending is None:
                return True
            if pending == raw_value:
                raise exc  # refused for another reason: the command is still there, say so
            return False

    def request_command(self, namespace: str, name: str, request: CommandRequest, deadline: Deadline) -> str:
        """Set the command annotation; the value written. CommandPending when a command is already waiting,
        NotFound when there is no such resource, Conflict when it kept changing under us."""
        encoded = request.encode()
        objects = self.api.custom_objects
        for _ in range(REQUEST_ATTEMPTS):
            current = self.get(namespace, name, deadline)
            if current is None:
                raise NotFound("get", RESOURCE, namespace, name, 404, "no such RampRollout")
            _refuse_pending(current, namespace, name)
            version = (current.get("metadata") or {}).get("resourceVersion")
            if not isinstance(version, str) or not version:
                raise Invalid("get", RESOURCE, namespace, name, None, "the resource has no metadata.resourceVersion")
            body = {"metadata": {"resourceVersion": version, "annotations": {COMMAND_ANNOTATION: encoded}}}
            try:
                self.api.retrying("patch", RESOURCE, namespace, name, objects.patch_namespaced_custom_object,
                                  GROUP, VERSION, namespace, PLURAL, name, body, deadline=deadline,
                                  _content_type=MERGE_PATCH, _preload_content=False)  # fmt: skip
                return encoded
            except Conflict:
                if deadline.expired:
                    raise KubeDeadlineExceeded("patch", RESOURCE, namespace, name, 409,
                                               "changed concurrently until the deadline") from None  # fmt: skip
                continue  # changed since it was read: read again (maybe a command arrived)
        raise Conflict("patch", RESOURCE, namespace, name, 409,
                       f"changed concurrently {REQUEST_ATTEMPTS} times in a row; try again")  # fmt: skip


def _command_of(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations")
    value = annotations.get(COMMAND_ANNOTATION) if isinstance(annotations, Mapping) else None
    return value if isinstance(value, str) else None


def _refuse_pending(obj: Mapping[str, Any], namespace: str, name: str) -> None:
    pending = _command_of(obj)
    if pending is None:
        return
    where = f"RampRollout {namespace}/{name}"
    raise CommandPending(f"{describe_pending(pending)} is still waiting for the controller of {where}; it is "
                         "applied or refused on the next tick (is the controller running?)")  # fmt: skip


def _decoded(response: object, verb: str, namespace: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(getattr(response, "data", b""))
    except (ValueError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise KubeError(verb, RESOURCE, namespace, name, None, "the answer is not a JSON object")
    return value

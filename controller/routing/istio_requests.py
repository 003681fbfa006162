"""The IstioBackend's requests: GET/POST/PUT of Istio objects under a total deadline, and `converge`.

`converge` writes `build(current)` unless it equals `current`. On 409 it re-reads and rebuilds (bounded by
`conflict_attempts`), but only while this replica may still write: a KubeApi whose write guard says it lost
leadership gets `NotLeader` at once (no re-read, no re-merge), and no retry starts whose backoff would end
past the caller's deadline. `NotLeader` raised by a write itself is never caught here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import structlog

from controller.deadline import Deadline
from controller.k8s.client import Conflict, KubeApi, KubeDeadlineExceeded, KubeError, NotFound, NotLeader
from controller.routing.crd_schema import IstioSchemas
from controller.routing.istio_merge import IstioMergeError, object_ref, resource_version

log = structlog.get_logger("ramp.istio")

GROUP, VERSION = "networking.istio.io", "v1"
VIRTUAL_SERVICES, DESTINATION_RULES = "virtualservices", "destinationrules"

Obj = dict[str, Any]


def resource(plural: str) -> str:
    return f"{plural}.{GROUP}"


class IstioRequests:
    """Mixin: needs `api`, `conflict_attempts` and `schemas` on the instance."""

    api: KubeApi
    conflict_attempts: int
    schemas: IstioSchemas | None

    def _converge(
        self, plural: str, namespace: str, name: str, current: Obj | None, build: Callable[[Obj | None], Obj],
        deadline: Deadline | None = None,
    ) -> tuple[Obj, bool]:  # fmt: skip
        """Write `build(current)` unless it equals `current`; on 409 re-read and rebuild (bounded)."""
        for attempt in range(self.conflict_attempts):
            desired = build(current)
            if current is not None and desired == current:
                return current, False
            self._validate(desired)
            try:
                if current is None:
                    stored = self._create(plural, namespace, desired, deadline)
                else:
                    stored = self._replace(plural, namespace, name, desired, deadline)
            except Conflict as exc:
                if attempt + 1 >= self.conflict_attempts:
                    raise Conflict(
                        exc.verb, exc.resource, namespace, name, exc.status,
                        f"still conflicting after {self.conflict_attempts} attempts (another writer keeps "
                        f"changing it): {exc.detail}",
                    ) from exc  # fmt: skip
                self._may_go_on(exc, namespace, name, attempt, deadline)
                current = self._get(plural, namespace, name, deadline)
                continue
            log.info("written", resource=plural, namespace=namespace, name=name, rv=resource_version(stored))
            return stored, True
        raise AssertionError("unreachable")  # pragma: no cover

    def _may_go_on(self, exc: Conflict, namespace: str, name: str, attempt: int, deadline: Deadline | None) -> None:
        """After a 409: NotLeader when leadership is gone, KubeDeadlineExceeded when the backoff would outlast
        the deadline; otherwise sleep the backoff."""
        guard = self.api.write_guard
        if guard is not None and not guard():
            why = "conflict, and this replica is no longer the leader: not re-read, not re-merged"
            raise NotLeader(exc.verb, exc.resource, namespace, name, None, why)
        delay = self.api.retry.delay(attempt)
        if deadline is not None and deadline.remaining() <= delay:
            raise KubeDeadlineExceeded(exc.verb, exc.resource, namespace, name, exc.status,
                                       f"conflict, and the deadline of {deadline.seconds:g}s leaves no time to "
                                       "re-read and retry")  # fmt: skip
        log.info("conflict, re-reading", resource=exc.resource, namespace=namespace, name=name, delay=delay)
        self.api.retry.sleep(delay)

    def _validate(self, obj: Obj) -> None:
        if self.schemas is None:
            return
        problems = self.schemas.validate(obj)
        if problems:
            raise IstioMergeError(f"{object_ref(obj)} would not be valid, not written: {'; '.join(problems[:5])}")

    def _get(self, plural: str, namespace: str, name: str, deadline: Deadline | None = None) -> Obj | None:
        try:
            found = self.api.retrying(
                "get", resource(plural), namespace, name,
                self.api.custom_objects.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name,
                deadline=deadline,
            )  # fmt: skip
        except NotFound:
            return None
        return as_object(found, "get", plural, namespace, name)

    def _create(self, plural: str, namespace: str, body: Obj, deadline: Deadline | None = None) -> Obj:
        name = (body.get("metadata") or {}).get("name")
        stored = self.api.retrying(
            "create", resource(plural), namespace, name,
            self.api.custom_objects.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body,
            deadline=deadline,
        )  # fmt: skip
        return as_object(stored, "create", plural, namespace, name)

    def _replace(self, plural: str, namespace: str, name: str, body: Obj, deadline: Deadline | None = None) -> Obj:
        stored = self.api.retrying(
            "update", resource(plural), namespace, name,
            self.api.custom_objects.replace_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, body,
            deadline=deadline,
        )  # fmt: skip
        return as_object(stored, "update", plural, namespace, name)

    def _list(self, plural: str, namespace: str) -> list[object]:
        """The items of a LIST; KubeError when the answer is not a list of objects."""
        listed = self.api.retrying(
            "list", resource(plural), namespace, None,
            self.api.custom_objects.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
        )  # fmt: skip
        items = listed.get("items") if isinstance(listed, dict) else None
        if items is None and isinstance(listed, dict) and "items" in listed:
            return []  # `items: null`, an empty list as some servers write it
        if not isinstance(items, list):
            detail = "no `items` list in the answer" if isinstance(listed, dict) else f"{type(listed).__name__} answer"
            raise KubeError("list", resource(plural), namespace, None, None, f"unexpected response: {detail}")
        return items


def as_object(found: object, verb: str, plural: str, namespace: str, name: str | None) -> Obj:
    if not isinstance(found, dict):
        raise KubeError(verb, resource(plural), namespace, name, None, f"unexpected response {type(found).__name__}")
    return cast(Obj, found)


def not_found(namespace: str, name: str, why: str) -> NotFound:
    return NotFound("update", resource(VIRTUAL_SERVICES), namespace, name, 404, why)

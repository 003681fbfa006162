"""A route backend's requests: GET/LIST/POST/PUT of custom objects under a total deadline, and `converge`.

The objects are named by a `KubeResource` (group, version, plural, kind): VirtualServices and DestinationRules
for Istio, HTTPRoutes for the Gateway API. These are the only custom-object calls the routers make.

`converge` writes `build(current)` unless it equals `current`. On 409 it re-reads and rebuilds (bounded by
`conflict_attempts`), but only while this replica may still write: a KubeApi whose write guard says it lost
leadership gets `NotLeader` at once (no re-read, no re-merge), and no retry starts whose backoff would end
past the caller's deadline. `NotLeader` raised by a write itself is never caught here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from controller.deadline import Deadline
from controller.k8s.client import Conflict, KubeApi, KubeDeadlineExceeded, KubeError, NotFound, NotLeader
from controller.routing.crd_schema import IstioSchemas
from controller.routing.k8s_objects import RouteMergeError, object_ref, resource_version

log = structlog.get_logger("ramp.routes")

Obj = dict[str, Any]


@dataclass(frozen=True)
class KubeResource:
    """A custom resource type the routers read and write."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def name(self) -> str:
        """e.g. virtualservices.networking.istio.io (as in RBAC rules and error messages)."""
        return f"{self.plural}.{self.group}"


class KubeRequests:
    """Mixin: needs `api`, `conflict_attempts` and `schemas` on the instance."""

    api: KubeApi
    conflict_attempts: int
    schemas: IstioSchemas | None

    def _converge(
        self, kind: KubeResource, namespace: str, name: str, current: Obj | None, build: Callable[[Obj | None], Obj],
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
                    stored = self._create(kind, namespace, desired, deadline)
                else:
                    stored = self._replace(kind, namespace, name, desired, deadline)
            except Conflict as exc:
                if attempt + 1 >= self.conflict_attempts:
                    raise Conflict(
                        exc.verb, exc.resource, namespace, name, exc.status,
                        f"still conflicting after {self.conflict_attempts} attempts (another writer keeps "
                        f"changing it): {exc.detail}",
                    ) from exc  # fmt: skip
                self._may_go_on(exc, namespace, name, attempt, deadline)
                current = self._get(kind, namespace, name, deadline)
                continue
            log.info("written", resource=kind.name, namespace=namespace, name=name, rv=resource_version(stored))
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
            raise RouteMergeError(f"{object_ref(obj)} would not be valid, not written: {'; '.join(problems[:5])}")

    def _get(self, kind: KubeResource, namespace: str, name: str, deadline: Deadline | None = None) -> Obj | None:
        try:
            found = self.api.retrying(
                "get", kind.name, namespace, name,
                self.api.custom_objects.get_namespaced_custom_object,
                kind.group, kind.version, namespace, kind.plural, name,
                deadline=deadline,
            )  # fmt: skip
        except NotFound:
            return None
        return as_object(found, "get", kind, namespace, name)

    def _create(self, kind: KubeResource, namespace: str, body: Obj, deadline: Deadline | None = None) -> Obj:
        name = (body.get("metadata") or {}).get("name")
        stored = self.api.retrying(
            "create", kind.name, namespace, name,
            self.api.custom_objects.create_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, body,
            deadline=deadline,
        )  # fmt: skip
        return as_object(stored, "create", kind, namespace, name)

    def _replace(
        self, kind: KubeResource, namespace: str, name: str, body: Obj, deadline: Deadline | None = None
    ) -> Obj:
        stored = self.api.retrying(
            "update", kind.name, namespace, name,
            self.api.custom_objects.replace_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, name, body,
            deadline=deadline,
        )  # fmt: skip
        return as_object(stored, "update", kind, namespace, name)

    def _list(self, kind: KubeResource, namespace: str) -> list[object]:
        """The items of a LIST; KubeError when the answer is not a list of objects."""
        listed = self.api.retrying(
            "list", kind.name, namespace, None,
            self.api.custom_objects.list_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural,
        )  # fmt: skip
        items = listed.get("items") if isinstance(listed, dict) else None
        if items is None and isinstance(listed, dict) and "items" in listed:
            return []  # `items: null`, an empty list as some servers write it
        if not isinstance(items, list):
            detail = "no `items` list in the answer" if isinstance(listed, dict) else f"{type(listed).__name__} answer"
            raise KubeError("list", kind.name, namespace, None, None, f"unexpected response: {detail}")
        return items


def as_object(found: object, verb: str, kind: KubeResource, namespace: str, name: str | None) -> Obj:
    if not isinstance(found, dict):
        raise KubeError(verb, kind.name, namespace, name, None, f"unexpected response {type(found).__name__}")
    return cast(Obj, found)


def not_found(kind: KubeResource, namespace: str, name: str, why: str) -> NotFound:
    return NotFound("update", kind.name, namespace, name, 404, why)

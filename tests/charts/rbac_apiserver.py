"""The Kubernetes emulator of tests/k8s, with RBAC enforced for one ServiceAccount token.

Requests that carry `Authorization: Bearer <token>` are authorized against a set of grants (what a rendered
chart gives the controller's ServiceAccount, see tests/charts/rbac.py) and answered 403 Forbidden, with the
apiserver's message, when no grant allows them. Every decision is recorded. Other requests (the test's own
set-up, without a token) pass unchecked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kmock._internal import k8s, rendering

from tests.charts.rbac import Grant, RequestAttributes, permits, request_attributes
from tests.k8s.emulator import KubeHarness, RealisticEmulator, running_emulator


@dataclass
class RbacPolicy:
    token: str
    user: str  # system:serviceaccount:<namespace>:<name>, for the 403 message
    grants: set[Grant]
    decisions: list[tuple[RequestAttributes, bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, request: RequestAttributes) -> bool:
        allowed = permits(self.grants, request)
        with self._lock:
            self.decisions.append((request, allowed))
        return allowed

    def seen(self) -> list[tuple[RequestAttributes, bool]]:
        with self._lock:
            return list(self.decisions)

    def denied(self) -> list[RequestAttributes]:
        return [request for request, allowed in self.seen() if not allowed]


class RbacEmulator(RealisticEmulator):
    policy: RbacPolicy | None = None

    async def _handle(self, request: rendering.Request) -> Any:
        policy = self.policy
        headers = {k.lower(): v for k, v in request.headers.items()}
        if policy is not None and headers.get("authorization") == f"Bearer {policy.token}":
            attributes = request_attributes(str(request.method.value), request.url.path, dict(request.params))
            if not policy.decide(attributes):
                raise k8s.KubernetesError(
                    status=403,
                    reason="Forbidden",
                    message=f'{attributes.resource} is forbidden: User "{policy.user}" cannot {attributes.verb}'
                    f' resource "{attributes.resource}" in API group "{attributes.group}"'
                    + (
                        f' in the namespace "{attributes.namespace}"'
                        if attributes.namespace
                        else " at the cluster scope"
                    ),
                    details={"kind": attributes.resource, "name": attributes.name or ""},
                )
        return await super()._handle(request)


@contextmanager
def running_rbac_emulator(policy: RbacPolicy) -> Iterator[KubeHarness]:
    """tests/k8s/emulator.running_emulator with RBAC enforced for `policy.token` (127.0.0.1, background loop)."""

    def make() -> RbacEmulator:
        emulator = RbacEmulator()
        emulator.policy = policy
        return emulator

    with running_emulator(make, thread_name="kmock-rbac") as harness:
        yield harness

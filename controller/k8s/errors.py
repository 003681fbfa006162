"""Typed Kubernetes API errors: what failed, doing what, and whether it is worth retrying."""

from __future__ import annotations

import http.client
import json

import urllib3
from kubernetes.client.exceptions import ApiException

from controller.deadline import DeadlineExceeded
from controller.k8s.deadline_call import CallTimedOut


class KubeConfigError(Exception):
    """No usable Kubernetes configuration (kubeconfig file, in-cluster ServiceAccount, ~/.kube/config)."""


class KubeError(Exception):
    """A failed Kubernetes API request, with what was being done when it failed."""

    def __init__(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        status: int | None = None,
        detail: str = "",
    ) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.status = status
        self.detail = detail
        super().__init__(self.describe())

    @property
    def target(self) -> str:
        """`<resource> <namespace>/<name>`, or what is known of it."""
        where = "/".join(p for p in (self.namespace, self.name) if p)
        return f"{self.resource} {where}".strip()

    def describe(self) -> str:
        code = f"HTTP {self.status}" if self.status else "no HTTP status"
        text = f"{self.verb} {self.target} failed ({code})"
        return f"{text}: {self.detail}" if self.detail else text


class Conflict(KubeError):
    """409: the object changed since it was read (or already exists on create)."""


class NotFound(KubeError):
    """404."""


class Invalid(KubeError):
    """400/422: the apiserver rejected the object; `detail` carries its message."""


class Transient(KubeError):
    """429, 5xx, connection errors and timeouts: worth retrying."""


class NotLeader(KubeError):
    """A write refused (or abandoned in flight) because this replica is not, or no longer, the leader. Not retried."""


class KubeDeadlineExceeded(KubeError, DeadlineExceeded):
    """The caller's total deadline ran out before the request (or its retries) could complete. Not retried."""


class Forbidden(KubeError):
    """403: the controller's ServiceAccount lacks an RBAC rule."""

    def describe(self) -> str:
        group, _, plural = _split_resource(self.resource)
        scope = f"in namespace {self.namespace!r}" if self.namespace else "cluster-wide"
        obj = f" {self.name!r}" if self.name else ""
        api_group = f"API group {group!r}" if group else 'the core API group ("")'
        text = (
            f"forbidden: cannot {self.verb} {self.resource}{obj} {scope}; the controller's ServiceAccount is "
            f"missing an RBAC rule granting verb {self.verb!r} on resource {plural!r} in {api_group} {scope}"
        )
        return f"{text} (apiserver: {self.detail})" if self.detail else text


def _split_resource(resource: str) -> tuple[str, str, str]:
    """'virtualservices.networking.istio.io' -> ('networking.istio.io', '.', 'virtualservices')."""
    plural, dot, group = resource.partition(".")
    return group, dot, plural


def _apiserver_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.strip():
        try:
            payload = json.loads(body)
        except ValueError:
            return body.strip()[:300]
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            return str(payload["message"])[:500]
    return str(exc.reason or "").strip()


def classify(exc: BaseException, verb: str, resource: str, namespace: str | None, name: str | None) -> KubeError:
    """The typed error for a failed request (already a KubeError: returned as is)."""
    if isinstance(exc, KubeError):
        return exc
    args = (verb, resource, namespace, name)
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        detail = _apiserver_message(exc)
        if status == 409:
            return Conflict(*args, status, detail)
        if status == 403:
            return Forbidden(*args, status, detail)
        if status == 404:
            return NotFound(*args, status, detail)
        if status in (400, 422):
            return Invalid(*args, status, detail)
        if status == 429 or status >= 500:
            return Transient(*args, status, detail)
        return KubeError(*args, status or None, detail)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | http.client.HTTPException | CallTimedOut):
        return Transient(*args, None, f"{type(exc).__name__}: {exc}"[:300])  # timeouts, refused/reset connections
    return KubeError(*args, None, f"{type(exc).__name__}: {exc}"[:300])

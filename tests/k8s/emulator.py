"""kmock's Kubernetes emulator over real HTTP, with the API semantics Ramp's correctness depends on.

kmock stores objects and serves GET/LIST/POST/PATCH/DELETE, but does not implement PUT (replace) or
resourceVersion. Real apiservers do both, and lost-update protection is exactly what we must test, so
this subclass adds:
- resourceVersion (cluster-wide counter), uid and creationTimestamp on every create;
- PUT = full replace with optimistic concurrency: 409 Conflict when the body's resourceVersion is stale;
- PATCH bumps resourceVersion (and honours a resourceVersion precondition in the patch).
The PUT handler is a low-priority fallback, so a test's reactions (e.g. `kube.emulator['put'] << 409`)
still take precedence, as with every other kmock request. The server runs on its own event loop in a
background thread, because Ramp uses the synchronous `kubernetes` client.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import enums, k8s, rendering
from kubernetes import client as k8s_client

_versions = itertools.count(1000)
DECLARED_RESOURCES = (
    "networking.istio.io/v1/virtualservices",
    "networking.istio.io/v1/destinationrules",
    "apps/v1/deployments",
    "v1/pods",
    "v1/events",
    "coordination.k8s.io/v1/leases",
)


def _next_version() -> str:
    return str(next(_versions))


@dataclass(frozen=True)
class ProxyAnswer:
    """What a pod answers through the apiserver's pod proxy (`pods/<name>/proxy/<path>`)."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before the answer (a slow pod)


class RealisticEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[enums.method.PUT] << self._serve_replace
        # Pod proxy answers by "namespace/pod"; without one a Ready Running pod answers 200, another pod 503.
        self.pod_proxy: dict[str, ProxyAnswer] = {}

    async def _handle(self, request: rendering.Request) -> Any:
        if _is_pod_proxy(request):
            return await self._serve_pod_proxy(request)
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                meta["resourceVersion"] = _next_version()
                meta.setdefault("uid", str(uuid.uuid4()))
                now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                meta.setdefault("creationTimestamp", now)
            elif request.action == enums.action.UPDATE and request.name is not None:
                current = self._current(request)
                expected = meta.get("resourceVersion")
                if current is not None and expected is not None and expected != current_rv(current):
                    raise k8s.KubernetesObjectConflictError()
                meta["resourceVersion"] = _next_version()
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)  # a real apiserver answers 201 Created; the client relies on it
        return response

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        raw: dict[str, Any] = self._objects[key].raw
        return raw

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        if request.resource is None or request.name is None or not isinstance(request.data, dict):
            raise k8s.KubernetesEndpointNotFoundError()
        async with self._lock:
            key = (request.resource, request.namespace, request.name)
            if key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            stored = self._objects[key]
            body = copy.deepcopy(request.data)
            meta = body.setdefault("metadata", {})
            if meta.get("resourceVersion") != current_rv(stored.raw):
                raise k8s.KubernetesObjectConflictError()
            old_meta = stored.raw.get("metadata", {})
            for field in ("uid", "creationTimestamp"):
                if field in old_meta:
                    meta[field] = old_meta[field]
            meta["resourceVersion"] = _next_version()
            stored.create(body)  # a new full version: replace, not merge
            raw = stored.raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
            return raw

    async def _serve_pod_proxy(self, request: rendering.Request) -> aiohttp.web.Response:
        """GET through `pods/<name>[:port]/proxy/<path>`, answered as the pod would (or as the apiserver when the
        pod is missing: 404, or cannot be reached: 503)."""
        pod = (request.name or "").split(":", 1)[0]
        answer = self.pod_proxy.get(f"{request.namespace}/{pod}")
        if answer is None:
            async with self._lock:
                key = (request.resource, request.namespace, pod)
                stored = None if key not in self._objects or self._objects[key].deleted else self._objects[key].raw
            if stored is None:
                return aiohttp.web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
            status = stored.get("status") or {}
            ready = status.get("phase") == "Running" and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            answer = ProxyAnswer() if ready else ProxyAnswer(503, b"error trying to reach service: connection refused")
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return aiohttp.web.Response(status=answer.status, body=answer.body)


def _is_pod_proxy(request: rendering.Request) -> bool:
    resource = request.resource
    return (
        resource is not None and getattr(resource, "plural", None) == "pods" and request.name is not None
        and (request.subresource or "").split("/", 1)[0] == "proxy"
    )  # fmt: skip


def current_rv(obj: dict[str, Any]) -> str | None:
    value = obj.get("metadata", {}).get("resourceVersion")
    return None if value is None else str(value)


@dataclass
class KubeHarness:
    emulator: RealisticEmulator
    url: str
    loop: asyncio.AbstractEventLoop

    def api_client(self, timeout: float = 5.0) -> k8s_client.ApiClient:
        config = k8s_client.Configuration()
        config.host = self.url
        config.retries = False
        config.proxy = None
        api = k8s_client.ApiClient(config)
        api.ramp_request_timeout = timeout  # type: ignore[attr-defined]
        return api

    def objects(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        resource = kmock.resource(group, version, plural)
        found = []
        for key, obj in list(self.emulator.objects.items()):
            if key[0] == resource and not obj.deleted:
                found.append(obj.raw)
        return found

    def requests(self, method: str | None = None) -> list[rendering.Request]:
        reqs = list(self.emulator._requests)
        # r.method is a (str, Enum): str() of it is "method.GET", so compare its value
        wanted = None if method is None else method.upper()
        return [r for r in reqs if wanted is None or str(getattr(r.method, "value", r.method)).upper() == wanted]


@contextmanager
def running_emulator(
    make: Callable[[], RealisticEmulator] = RealisticEmulator, thread_name: str = "kmock"
) -> Iterator[KubeHarness]:
    """Start the emulator (`make()`, e.g. a subclass enforcing RBAC) + HTTP server on 127.0.0.1 in a background
    event loop."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        emulator = make()
        for resource in DECLARED_RESOURCES:
            emulator.resources[resource] = {}
        async with emulator, kmock.Server(emulator) as server:
            ready["emulator"] = emulator
            ready["url"] = str(server.url).rstrip("/")
            started.set()
            await stop.wait()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surface start-up failures to the waiting test
            ready["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name=thread_name, daemon=True)
    thread.start()
    if not started.wait(10) or "error" in ready:
        raise RuntimeError(f"kmock emulator did not start: {ready.get('error')}")
    try:
        yield KubeHarness(ready["emulator"], ready["url"], loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)

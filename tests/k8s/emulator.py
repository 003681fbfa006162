"""kmock's Kubernetes emulator over real HTTP, with the API semantics Ramp's correctness depends on.

kmock stores objects and serves GET/LIST/POST/PATCH/DELETE, but not PUT, resourceVersion, generation, the
status subresource, schema validation or resumable watches. Real apiservers do all of these, and Ramp's
controller must be tested against them (lost updates, a status writer that must not touch the spec, a
watch that must survive 410 Gone and dropped connections). So this subclass owns every write:
- resourceVersion (one counter per emulator), uid and creationTimestamp on create; namespace from the URL;
  generateName; metadata.generation (emulator_crd.py); 409 AlreadyExists / Conflict like the apiserver;
- PUT = full replace with optimistic concurrency (409 when the body's resourceVersion is stale); PATCH by
  Content-Type (merge, JSON patch) honouring a resourceVersion precondition; DELETE with finalizers;
- an update that changes nothing writes nothing (same resourceVersion, no watch event), as the apiserver;
- kinds with a status subresource (RampRollout, installed CRDs that declare it): `/status` writes change only
  the status, other writes keep the stored one;
- `install_crd(crd)` (or POSTing a CustomResourceDefinition) serves the CRD's kind and validates its objects
  with the CRD's schema and CEL rules (crd_validation.py): pruning, defaults, 422 Invalid with causes;
- watches from a resourceVersion with bookmarks, timeouts, 410 Gone and test hooks, lists with a collection
  resourceVersion and limit/continue (emulator_watch.py).
Writes through POST/PATCH/DELETE are applied before a test's reactions (kmock's behaviour: a reaction
replaces the answer, not the write); PUT is a low-priority fallback, so a reaction on PUT (e.g.
`kube.emulator['put'] << 409`) answers instead of the write. The server runs on its own event loop in a
background thread, because Ramp uses the synchronous `kubernetes` client; KubeHarness's hooks run on it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp.web
import kmock
import urllib3
from kmock._internal import apps, enums, k8s, references, rendering
from kubernetes import client as k8s_client

from controller import rollout_resource as rr
from tests.k8s import emulator_crd as objs
from tests.k8s.crd_validation import CrdVersion
from tests.k8s.emulator_watch import Change, History, Key, api_error, list_at
from tests.k8s.emulator_writes import ObjectWrites

T = TypeVar("T")
DECLARED_KINDS = {
    "networking.istio.io/v1/virtualservices": "VirtualService",
    "networking.istio.io/v1/destinationrules": "DestinationRule",
    "apps/v1/deployments": "Deployment",
    "v1/pods": "Pod",
    "v1/services": "Service",  # the Gateway API's backends (tests/k8s/gateway_api.py resolves backendRefs to them)
    "v1/events": "Event",
    "coordination.k8s.io/v1/leases": "Lease",
}
DECLARED_RESOURCES = tuple(DECLARED_KINDS)
_WRITES = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)


@dataclass(frozen=True)
class ProxyAnswer:
    """What a pod answers through the apiserver's pod proxy (`pods/<name>/proxy/<path>`)."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before the answer (a slow pod)


class RealisticEmulator(ObjectWrites, kmock.KubernetesEmulator):  # type: ignore[misc]
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[enums.method.PUT] << self._serve_replace
        # Pod proxy answers by "namespace/pod"; without one a Ready Running pod answers 200, another pod 503.
        self.pod_proxy: dict[str, ProxyAnswer] = {}
        # Bookmark interval, history limit (compaction horizon) and watch cap: see History.
        self.history = History()
        self.crds: dict[references.resource, CrdVersion] = {}
        self._answers: dict[int, dict[str, Any]] = {}

    def declare_defaults(self) -> None:
        """The kinds Ramp uses (discovery with kind and scope), RampRollout and CustomResourceDefinitions."""
        for resource, kind in DECLARED_KINDS.items():
            self.resources[resource] = references.ResourceInfo(namespaced=True, kind=kind, verbs=set(objs.VERBS))
        self.resources[f"{rr.API_VERSION}/{rr.PLURAL}"] = objs.ramp_rollout_info()
        self.resources[objs.CRD_RESOURCE] = references.ResourceInfo(
            namespaced=False, kind="CustomResourceDefinition", verbs=set(objs.VERBS), subresources={"status"}
        )

    async def _handle(self, request: rendering.Request) -> Any:
        if _is_pod_proxy(request):
            return await self._serve_pod_proxy(request)
        is_write = request.resource is not None and request.action in _WRITES
        if is_write and (request.action == enums.action.CREATE or request.name is not None):
            async with self._lock:
                self._answers[request.id] = self._write(request)
        try:
            response = await apps.RawHandler._handle(self, request)  # reactions, then the fallbacks below
        finally:
            self._answers.pop(request.id, None)
        if request.action == enums.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)  # a real apiserver answers 201 Created; the client relies on it
        return response

    async def _answer(self, request: rendering.Request) -> rendering.Payload:
        if request.id not in self._answers:
            raise k8s.KubernetesEndpointNotFoundError()
        return self._answers[request.id]

    _serve_create = _serve_update = _serve_delete = _answer

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        stored = self._live((request.resource, request.namespace, request.name or ""))
        if stored is None:
            raise self._not_found(request)
        crd = self.crds.get(request.resource)
        if crd is not None and objs.wants_table(request.headers):
            return objs.table(crd.printer_columns, [stored], stored["metadata"]["resourceVersion"])
        return stored

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        if request.resource is None or request.name is None or not isinstance(request.data, dict):
            raise k8s.KubernetesEndpointNotFoundError()
        async with self._lock:
            key: Key = (request.resource, request.namespace, request.name)
            stored = self._live(key)
            if stored is None:
                raise self._not_found(request)
            body = copy.deepcopy(request.data)
            meta = body.setdefault("metadata", {})
            if meta.get("name") not in (None, request.name):
                raise api_error(400, "BadRequest", f"the name of the object ({meta['name']}) does not match the name "
                                f"on the URL ({request.name})")  # fmt: skip
            if meta.get("resourceVersion") != stored["metadata"].get("resourceVersion"):
                raise self._conflict(request)
            return self._update(request, key, stored, body)

    def _selected(self, request: rendering.Request) -> Callable[[Key], bool]:
        """Which keys a LIST or WATCH request covers: its resource, namespace, name and field selector."""
        fields = dict(p.split("=", 1) for p in (request.params.get("fieldSelector") or "").split(",") if "=" in p)
        name = request.name or fields.get("metadata.name")
        namespace = request.namespace or fields.get("metadata.namespace")

        def keep(key: Key) -> bool:
            return key[0] == request.resource and namespace in (None, key[1]) and name in (None, key[2])

        return keep

    def _current(self, resource: references.resource) -> dict[Key, dict[str, Any]]:
        return {k: o.raw for k, o in self._objects.items() if k[0] == resource and not o.deleted}

    def _known(self, request: rendering.Request) -> None:
        if request.resource not in self._get_resources():
            raise k8s.KubernetesResourceNotFoundError()

    def _kinds(self, resource: references.resource) -> tuple[str, str]:
        """(apiVersion, kind) of a resource's objects."""
        info = self.resources.get(resource)
        kind = info.kind if info is not None and info.kind else str(resource.plural).capitalize()
        return (f"{resource.group}/{resource.version}" if resource.group else str(resource.version)), kind

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        self._known(request)
        current = self._current(request.resource)
        at, items, more = list_at(self.history, request.params, current, self._selected(request))
        crd = self.crds.get(request.resource)
        if crd is not None and objs.wants_table(request.headers):
            return objs.table(crd.printer_columns, items, str(at))
        api_version, kind = self._kinds(request.resource)
        meta = {"resourceVersion": str(at), **({"continue": more} if more else {})}
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": meta, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        self._known(request)
        keep = self._selected(request)
        since, send_initial = self.history.start(request.params)
        initial = None
        if send_initial and since < self.history.compacted:
            since = self.history.latest  # initial events "not older than" a compacted version: the current state
        if send_initial:  # no await since start(): the state at `since`, then the changes after it
            state = self.history.snapshot(self._current(request.resource), since)
            initial = [copy.deepcopy(state[k]) for k in sorted(filter(keep, state), key=lambda k: (k[1] or "", k[2]))]
        api_version, kind = self._kinds(request.resource)

        def bookmark(rv: int) -> dict[str, Any]:
            return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": str(rv)}}

        def matches(change: Change) -> bool:
            return keep(change.key)

        return self.history.stream(request, since, initial, matches, bookmark)

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

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's event loop (where its state lives) and return its result."""

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve and validate a CRD's kind, as if it had been applied (see ObjectWrites.install_crd)."""
        self.on_loop(lambda: self.emulator.install_crd(crd))

    def install_ramp_crd(self) -> dict[str, Any]:
        """Install Ramp's own RampRollout CRD (controller.resource_crd.rollout_crd()); the CRD."""
        from controller.resource_crd import rollout_crd  # imported here: most tests never need it

        crd = rollout_crd()
        self.install_crd(crd)
        return crd

    def table(self, plural: str, namespace: str | None = None, name: str | None = None) -> dict[str, Any]:
        """What `kubectl get` receives: the Table form of a list (or one object) of an installed CRD's kind."""
        resource = next(r for r in self.emulator.crds if r.plural == plural)
        path = f"/apis/{resource.group}/{resource.version}" + (f"/namespaces/{namespace}" if namespace else "")
        path += f"/{plural}" + (f"/{name}" if name else "")
        accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        answer = urllib3.PoolManager().request("GET", self.url + path, headers={"Accept": accept}, timeout=5)
        if answer.status != 200:
            raise AssertionError(f"GET {path} as Table: {answer.status} {answer.data[:300]!r}")
        found: dict[str, Any] = json.loads(answer.data)
        return found

    def compact(self) -> str:
        """Compact the history: every resourceVersion older than the latest (returned) is 410 Gone from now on."""
        return str(self.on_loop(self.emulator.history.compact))

    def drop_watches(self, abrupt: bool = False) -> int:
        """End every open watch (abrupt: reset the connection instead of ending the stream); how many."""
        return self.on_loop(lambda: self.emulator.history.drop_watches(abrupt))

    def latest_resource_version(self) -> str:
        return str(self.emulator.history.latest)

    def watch_requests(self, plural: str | None = None) -> list[rendering.Request]:
        """The WATCH requests received so far (of one plural, or all)."""
        return [r for r in list(self.emulator._requests) if r.action == enums.action.WATCH
                and (plural is None or getattr(r.resource, "plural", None) == plural)]  # fmt: skip

    def open_watches(self, plural: str | None = None) -> int:
        """How many watches are streaming now (of one plural, or all)."""
        watches = list(self.emulator.history.watches)
        return sum(1 for w in watches if plural is None or getattr(w.request.resource, "plural", None) == plural)

    def wait_for_watches(self, count: int, plural: str | None = None, timeout: float = 2.0) -> None:
        """Wait until at least `count` watches are open (a test then knows its changes will be streamed)."""
        deadline = time.monotonic() + timeout
        while self.open_watches(plural) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_watches(plural)} watches open, expected {count}")
            time.sleep(0.01)


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
        emulator.declare_defaults()
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

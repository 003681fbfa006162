"""A tiny fault-injecting fake apiserver for RampRollouts: real HTTP on 127.0.0.1, list + watch + reads + writes.

The kmock emulator is the place for API semantics shared by many tests; this fake exists for what a watch
client must survive and the emulator cannot be told to do on cue:

    with running_fake_kube() as kube:
        kube.create(rollout("shop", "reviews"))        # ADDED, recorded in the history watches replay
        kube.bookmark()                                # BOOKMARK with the current resourceVersion, to open streams
        kube.drop()                                    # open watch streams cut mid-stream (no final chunk)
        kube.error_event(500, "InternalError", "...")  # an ERROR event to open streams, which then end
        kube.inject("not json")                        # any raw line to open streams
        kube.compact()                                 # watches from an older resourceVersion get ERROR 410
        kube.watch_faults.append("stall")              # the next watch sends its headers, then nothing
        kube.list_faults.append(410)                   # the next list answers HTTP 410
        kube.fail_status = 500                         # every list/watch answers 500 until reset
        kube.forbidden.add("shop")                     # list/watch in namespace shop answer 403 (None: cluster-wide)
        kube.dribble = 0.2                             # object reads/writes reply one byte every 0.2 s

Writes follow the apiserver: merge patches honour a `metadata.resourceVersion` precondition (409), JSON
patches support add/remove/replace/test (a failed test or a missing path: 422), the `status` subresource changes
only `status`, the main resource never changes `status`, and `generation` moves only with `spec`. Every request
is recorded in `requests`. Bounded: every wait ends when the client goes away or the fake stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from aiohttp import web
from kubernetes import client as k8s_client

from controller.rollout_resource import API_VERSION, GROUP, KIND, LIST_KIND, PLURAL, VERSION

Obj = dict[str, Any]
_PREFIX = f"/apis/{GROUP}/{VERSION}"
_DROP, _END = "drop", "end"


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str
    at: float  # monotonic

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1", "True")


def rollout(namespace: str, name: str, **spec: Any) -> Obj:
    """A minimal RampRollout body (the fake does not validate specs)."""
    body = {"service": name, "target": "v2", "versions": [{"name": "v1", "weight": 100}, {"name": "v2"}]}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": {**body, **spec}}  # fmt: skip


def status_body(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": message}  # fmt: skip


@dataclass
class FakeKube:
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    list_faults: deque[int] = field(default_factory=deque)  # HTTP status for the next lists
    watch_faults: deque[int | str] = field(default_factory=deque)  # status, "stall" or "gone" for the next watches
    fail_status: int | None = None  # every list/watch answers this while set
    forbidden: set[str | None] = field(default_factory=set)
    dribble: float = 0.0
    object_faults: deque[int] = field(default_factory=deque)  # HTTP status for the next object reads/writes
    before: Callable[[Seen], None] | None = None  # called with each object request before it is served
    _objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    _history: list[tuple[int, str, Obj]] = field(default_factory=list)
    _rv: int = 100
    _oldest: int = 0
    _streams: dict[int, tuple[asyncio.Queue[Any], str | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: asyncio.Event | None = None

    # --- what tests call -------------------------------------------------------------------------------------

    def api_client(self, timeout: float = 5.0) -> k8s_client.ApiClient:
        config = k8s_client.Configuration()
        config.host, config.retries, config.proxy = self.url, False, None
        api = k8s_client.ApiClient(config)
        api.ramp_request_timeout = timeout  # type: ignore[attr-defined]
        return api

    def create(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(generation=1, uid=f"uid-{meta['name']}", creationTimestamp="2026-01-01T00:00:00Z")
        with self._lock:
            self._objects[(meta["namespace"], meta["name"])] = obj
            return self._record("ADDED", obj)

    def update(self, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        with self._lock:
            obj = self._objects[(namespace, name)]
            before = copy.deepcopy(obj.get("spec"))
            change(obj)
            if obj.get("spec") != before:
                obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
            return self._record("MODIFIED", obj)

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            obj = self._objects.pop((namespace, name))
            self._record("DELETED", obj)

    def delete_silently(self, namespace: str, name: str) -> None:
        """Delete without any event (what a client misses when a watch event is lost): only a relist shows it."""
        with self._lock:
            del self._objects[(namespace, name)]
            self._rv += 1

    def put_raw(self, namespace: str, name: str, obj: Any) -> None:
        """Store anything (a malformed object) under this key: lists return it as it is."""
        with self._lock:
            self._objects[(namespace, name)] = obj

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            found = self._objects.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion older than the current one gets ERROR 410."""
        with self._lock:
            self._oldest = self._rv
            self._history.clear()

    def bookmark(self, resource_version: str | None = None) -> None:
        with self._lock:
            rv = resource_version or str(self._rv)
        self._send({"type": "BOOKMARK", "object": {"kind": KIND, "apiVersion": API_VERSION,
                                                   "metadata": {"resourceVersion": rv}}})  # fmt: skip

    def inject(self, line: str) -> None:
        """A raw line (malformed JSON, an event of an unknown type...) to every open watch stream."""
        self._send(line)

    def error_event(self, code: int, reason: str = "Expired", message: str = "too old resource version") -> None:
        """An ERROR event to every open stream, which then ends (as the apiserver does)."""
        self._send({"type": "ERROR", "object": status_body(code, reason, message)})
        self._send(_END)

    def drop(self) -> None:
        """Cut every open watch stream mid-stream (the client sees an incomplete chunked body)."""
        self._send(_DROP)

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def wait_streams(self, count: int, timeout: float = 2.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.open_streams() >= count:
                return True
            time.sleep(0.01)
        return False

    def watches(self) -> list[Seen]:
        return [r for r in list(self.requests) if r.method == "GET" and r.watch]

    def lists(self) -> list[Seen]:
        return [r for r in list(self.requests) if r.method == "GET" and not r.watch and r.path.endswith(PLURAL)]

    # --- internals -------------------------------------------------------------------------------------------

    def _record(self, kind: str, obj: Obj) -> Obj:
        """Bump the resourceVersion, remember the event, hand it to open streams (lock held)."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(obj)
        self._history.append((self._rv, kind, snapshot))
        for queue, scope in list(self._streams.values()):
            if scope is None or scope == obj["metadata"]["namespace"]:
                self._put(queue, {"type": kind, "object": copy.deepcopy(snapshot)})
        return copy.deepcopy(snapshot)

    def _send(self, item: Any) -> None:
        with self._lock:
            for queue, _scope in list(self._streams.values()):
                self._put(queue, item)

    def _put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(queue.put_nowait, item)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        seen = Seen(request.method, request.path, dict(request.query), body,
                    request.headers.get("Content-Type", ""), time.monotonic())  # fmt: skip
        self.requests.append(seen)
        parts = request.path.removeprefix(_PREFIX).strip("/").split("/")
        namespace: str | None = None
        if len(parts) >= 2 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        if not request.path.startswith(_PREFIX) or not parts or parts[0] != PLURAL:
            return _json(404, status_body(404, "NotFound", "no such resource"))
        if len(parts) == 1 and request.method == "GET":
            return await (self._watch(request, namespace) if seen.watch else self._list(request, namespace))
        if namespace is None or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "status"):
            return _json(404, status_body(404, "NotFound", "no such endpoint"))
        if self.before is not None:
            self.before(seen)
        if self.object_faults:
            code = self.object_faults.popleft()
            return _json(code, status_body(code, "Injected", f"injected HTTP {code}"))
        status, answer = self._object(seen, namespace, parts[1], len(parts) == 3)
        return await self._reply(request, status, answer)

    def _collection_fault(self, namespace: str | None, queue: deque[Any]) -> int | str | None:
        if self.fail_status is not None:
            return self.fail_status
        if namespace in self.forbidden or None in self.forbidden:
            return 403
        return queue.popleft() if queue else None

    async def _list(self, request: web.Request, namespace: str | None) -> web.StreamResponse:
        fault = self._collection_fault(namespace, self.list_faults)
        if isinstance(fault, int) and fault >= 300:  # 200: this one is served normally
            return _json(fault, status_body(fault, "Injected", f"injected HTTP {fault} on list"))
        limit = int(request.query.get("limit") or 0) or None
        start = int(request.query.get("continue") or 0)
        with self._lock:
            items = [copy.deepcopy(o) for (ns, _), o in sorted(self._objects.items()) if namespace in (None, ns)]
            rv = str(self._rv)
        page = items[start : start + limit] if limit else items[start:]
        more = limit is not None and start + limit < len(items)
        meta: Obj = {"resourceVersion": rv, **({"continue": str(start + len(page))} if more else {})}
        return _json(200, {"apiVersion": API_VERSION, "kind": LIST_KIND, "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, namespace: str | None) -> web.StreamResponse:
        fault = self._collection_fault(namespace, self.watch_faults)
        if isinstance(fault, int) and fault >= 300:  # 200: this one is served normally
            return _json(fault, status_body(fault, "Injected", f"injected HTTP {fault} on watch"))
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        assert self._stopping is not None
        if fault == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 30)
            return response
        rv = int(request.query.get("resourceVersion") or 0)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            gone = fault == "gone" or rv < self._oldest
            backlog = [{"type": k, "object": copy.deepcopy(o)} for v, k, o in self._history
                       if v > rv and namespace in (None, o["metadata"]["namespace"])]  # fmt: skip
            if not gone:
                self._streams[id(queue)] = (queue, namespace)
        if gone:
            await _line(response, {"type": "ERROR", "object": status_body(410, "Expired", "too old resource version")})
            return response
        end = time.monotonic() + int(request.query.get("timeoutSeconds") or 300)
        try:
            for event in backlog:
                await _line(response, event)
            while (left := end - time.monotonic()) > 0 and not self._stopping.is_set():
                try:
                    item = await asyncio.wait_for(queue.get(), min(left, 0.2))
                except TimeoutError:
                    continue
                if item == _DROP:
                    if request.transport is not None:
                        request.transport.abort()  # no terminating chunk: the client sees a broken stream
                    raise asyncio.CancelledError
                if item == _END:
                    break
                await _line(response, item)
        finally:
            with self._lock:
                self._streams.pop(id(queue), None)
        return response

    def _object(self, seen: Seen, namespace: str, name: str, status_only: bool) -> tuple[int, Obj]:
        with self._lock:
            current = self._objects.get((namespace, name))
            if current is None:
                return 404, status_body(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found')
            if seen.method == "GET":
                return 200, copy.deepcopy(current)
            if seen.method != "PATCH":
                return 405, status_body(405, "MethodNotAllowed", seen.method)
            try:
                patched = _apply_patch(copy.deepcopy(current), seen.content_type, seen.body)
            except _PatchFailed as exc:
                return exc.code, status_body(exc.code, exc.reason, str(exc))
            wanted_rv = (patched.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
                return 409, status_body(409, "Conflict", "the object has been modified; please apply your changes "
                                        "to the latest version and try again")  # fmt: skip
            updated = copy.deepcopy(current)
            if status_only:
                updated["status"] = patched.get("status")
                if updated["status"] is None:
                    del updated["status"]
            else:
                kept = {k: current["metadata"][k] for k in ("resourceVersion", "generation")}
                updated["metadata"] = {**patched.get("metadata", {}), **kept}
                updated["spec"] = patched.get("spec")
                if updated["spec"] != current.get("spec"):
                    updated["metadata"]["generation"] += 1
            if updated == current:
                return 200, copy.deepcopy(current)
            self._objects[(namespace, name)] = updated
            return 200, self._record("MODIFIED", updated)

    async def _reply(self, request: web.Request, status: int, body: Obj) -> web.StreamResponse:
        if self.dribble <= 0:
            return _json(status, body)
        payload = json.dumps(body).encode()
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        assert self._stopping is not None
        for i in range(len(payload)):
            await response.write(payload[i : i + 1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.dribble)
            if self._stopping.is_set():
                break
        return response


class _PatchFailed(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _apply_patch(obj: Obj, content_type: str, body: Any) -> Obj:
    if content_type.startswith("application/merge-patch+json"):
        if not isinstance(body, dict):
            raise _PatchFailed(400, "BadRequest", "a merge patch must be an object")
        merged: Obj = _merge(obj, body)
        return merged
    if content_type.startswith("application/json-patch+json"):
        if not isinstance(body, list):
            raise _PatchFailed(400, "BadRequest", "a JSON patch must be a list")
        try:  # the apiserver answers 422 for a failed test, a missing path...
            patched: Obj = jsonpatch.apply_patch(obj, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise _PatchFailed(422, "Invalid", f"the server rejected our request due to an error in our request: "
                               f"{exc}") from exc  # fmt: skip
        return patched
    raise _PatchFailed(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")


def _json(status: int, body: Obj) -> web.Response:
    return web.json_response(body, status=status)


async def _line(response: web.StreamResponse, item: Any) -> None:
    text = item if isinstance(item, str) else json.dumps(item)
    await response.write(text.encode() + b"\n")


@contextlib.contextmanager
def running_fake_kube() -> Iterator[FakeKube]:
    """The fake on 127.0.0.1 (its own event loop in a daemon thread); stopped, streams ended, on exit."""
    fake = FakeKube()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        fake._loop, fake._stopping = loop, asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        started.set()
        try:
            await fake._stopping.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            errors.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="fake-kube-watch", daemon=True)
    thread.start()
    if not started.wait(5) or errors:
        raise RuntimeError(f"fake apiserver did not start: {errors}")
    try:
        yield fake
    finally:
        assert fake._stopping is not None
        loop.call_soon_threadsafe(fake._stopping.set)
        thread.join(5)

"""An always-current cache of the RampRollout resources, kept by LIST + WATCH as client-go's reflector does.

Protocol, per scope (each allowed namespace, or the whole cluster when every namespace is allowed):

1. LIST (paged, one total deadline) gives the objects and the collection's resourceVersion; the scope's part
   of the cache is REPLACED by it, which is what catches deletes a watch missed.
2. WATCH from that resourceVersion with bookmarks and a server-side timeout. ADDED/MODIFIED/DELETED change the
   cache; BOOKMARK only moves the resourceVersion (so a re-watch after a drop does not replay, or miss, a long
   quiet period). ERROR 410 or HTTP 410 (the resourceVersion was compacted away): relist.
3. A dropped connection, a 5xx or a stalled stream (nothing read for `read_timeout`): re-watch from the last
   resourceVersion after a jittered exponential backoff (capped); after `relist_after_failures` failed watches
   in a row, relist instead (a resourceVersion the server keeps refusing would otherwise wedge the scope).
4. 403: the cache is kept as it was (stale beats empty: an empty cache would read as "every resource
   deleted"), `status()` names the missing RBAC rule, and the scope retries slowly.
5. Every `relist_interval` a full relist, whatever happened (the watch's timeoutSeconds is cut so the stream
   ends on time even when nothing happens).

Nothing a server sends can crash a scope: malformed lines, events and objects (not JSON, not a mapping, no
metadata, no name, another namespace, another kind) are skipped and counted; an oversized event is skipped.
A stream is bounded in time as well as per read, so a dribbling server cannot hold it. One daemon thread per
scope (bounded by MAX_NAMESPACES: beyond that, watch cluster-wide), plus one that interrupts open streams when
`stop` is set. The cache is read with `snapshot()`, a change counter and a deep copy, under one lock.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.k8s.client import KubeApi, backoff_delay
from controller.k8s.deadline_call import CallTimedOut, run_with_deadline
from controller.k8s.errors import Forbidden, KubeError, NotFound, Transient, classify
from controller.k8s.rollout_stream import (
    RESOURCE,
    Gone,
    Key,
    WatchConfig,
    close,
    object_key,
    parse_event,
    response_chunks,
    shutdown,
    stream_lines,
)
from controller.rollout_resource import GROUP, PLURAL, VERSION

log = structlog.get_logger("ramp.rollout_watch")

MAX_NAMESPACES = 200
NO_CRD = (
    "the RampRollout CRD (ramprollouts.ramp.dev) is not installed: kubectl apply -f "
    "charts/ramp/crds/ramprollouts.ramp.dev.yaml, or run the controller with --no-resources"
)
METRICS = ("lists", "relists", "watches", "watch_restarts", "events", "bookmarks", "skipped", "gone", "forbidden",
           "errors")  # fmt: skip


@dataclass
class _Scope:
    namespace: str | None  # None: cluster-wide
    resource_version: str | None = None
    synced: bool = False
    listed_at: float | None = None
    failures: int = 0
    error: str | None = None
    forbidden: bool = False
    watched: bool = False
    response: Any = None  # the open watch stream, so `stop` can interrupt it

    @property
    def label(self) -> str:
        return f"namespace {self.namespace!r}" if self.namespace else "all namespaces"


class RolloutResourceWatch:
    """The RampRollouts of `namespaces` (None: all, with a cluster-wide list/watch), kept current in the
    background. Reads: `snapshot()`, `synced()`, `status()`, `metrics()`; lifecycle: `start(stop)`, `join()`."""

    def __init__(
        self,
        api: ApiClient | KubeApi,
        namespaces: frozenset[str] | None,
        config: WatchConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if namespaces is not None and len(namespaces) > MAX_NAMESPACES:
            raise ValueError(f"{len(namespaces)} namespaces: at most {MAX_NAMESPACES} are watched one by one (one "
                             "thread and connection each); allow all namespaces to watch cluster-wide")  # fmt: skip
        self._api = KubeApi.wrap(api)
        self.config = config or WatchConfig()
        self._clock = clock
        self._rng = rng or random.Random()
        names: list[str | None] = [None] if namespaces is None else list(sorted(namespaces))
        self._scopes = [_Scope(n) for n in names]
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._changes = 0
        self._counts = dict.fromkeys(METRICS, 0)
        self._threads: list[threading.Thread] = []

    # --- reads (any thread) ------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[int, dict[Key, dict[str, Any]]]:
        """(change counter, deep copy of (namespace, name) -> object). The counter grows on every content change."""
        with self._lock:
            return self._changes, copy.deepcopy(self._objects)

    def synced(self) -> bool:
        """Whether every scope has completed its first LIST (before that the cache is not the cluster's view)."""
        with self._lock:
            return all(s.synced for s in self._scopes)

    def status(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: not ready before the first LIST, on 403, or after `degraded_after` failures."""
        with self._lock:
            problems = []
            for s in self._scopes:
                if s.forbidden or not s.synced or (s.error and s.failures >= self.config.degraded_after):
                    state = "not listed yet" if not s.synced else f"failing ({s.failures} attempts in a row)"
                    problems.append(f"RampRollout watch in {s.label}: {state}: {s.error or 'first list pending'}")
            if problems:
                return False, "; ".join(problems)
            where = "all namespaces" if self._scopes and self._scopes[0].namespace is None else (
                f"{len(self._scopes)} namespace(s)")  # fmt: skip
            return True, f"watching RampRollouts in {where}: {len(self._objects)} resource(s)"

    def resource_version(self, namespace: str | None = None) -> str | None:
        """The resourceVersion a re-watch of this scope would start from (None: a LIST comes first)."""
        with self._lock:
            return next((s.resource_version for s in self._scopes if s.namespace == namespace), None)

    def metrics(self) -> dict[str, int]:
        """Counters for /metrics: lists, relists, watches, watch_restarts, events, bookmarks, skipped (malformed
        events/objects), gone (410s), forbidden, errors; and objects (the cache's size)."""
        with self._lock:
            return {**self._counts, "objects": len(self._objects)}

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """One daemon thread per scope, and one that interrupts open streams as soon as `stop` is set."""
        if self._threads:
            raise RuntimeError("RolloutResourceWatch already started")
        for scope in self._scopes:
            suffix = f"-{scope.namespace}" if scope.namespace else ""
            self._threads.append(threading.Thread(target=self._run, args=(scope, stop), daemon=True,
                                                  name=f"ramp-rollout-watch{suffix}"))  # fmt: skip

        def interrupt_on_stop() -> None:
            stop.wait()
            self._interrupt()

        self._threads.append(threading.Thread(target=interrupt_on_stop, daemon=True, name="ramp-rollout-watch-stop"))
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        """Wait (at most `timeout` in all) for the threads to end after `stop`; True when they all have."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _interrupt(self) -> None:
        with self._lock:
            responses = [s.response for s in self._scopes if s.response is not None]
        for response in responses:
            shutdown(response)

    # --- one scope ---------------------------------------------------------------------------------------------

    def _run(self, scope: _Scope, stop: threading.Event) -> None:
        while not stop.is_set():
            wait = 0.0
            try:
                if self._list_due(scope):
                    self._list(scope)
                if not stop.is_set() and not self._watch(scope, stop):
                    wait = self._failed(scope, "watch ended early without events")
            except Forbidden as exc:
                self._count("forbidden")
                if not scope.forbidden:  # once per streak; status() keeps saying it
                    log.error("RampRollout watch forbidden; cache kept as it was", scope=scope.label,
                              error=exc.describe())  # fmt: skip
                self._failed(scope, exc.describe(), forbidden=True)
                wait = self.config.forbidden_retry
            except Gone as exc:
                self._count("gone")
                with self._lock:
                    scope.resource_version = None  # relist
                wait = self._failed(scope, f"410 Gone: {exc}")
            except Exception as exc:  # never let a scope die: a bug or a hostile answer costs a backoff, not the watch
                if stop.is_set():
                    return  # interrupted by stop
                detail = exc.describe() if isinstance(exc, KubeError) else f"{type(exc).__name__}: {exc}"[:300]
                if isinstance(exc, NotFound):
                    detail = f"{NO_CRD}; {detail}"
                wait = self._failed(scope, detail)
                log.warning("RampRollout watch failed; retrying", scope=scope.label, error=detail, delay=round(wait, 3))
            if wait > 0:
                stop.wait(wait)

    def _failed(self, scope: _Scope, detail: str, forbidden: bool = False) -> float:
        """Record a failure; the jittered exponential backoff before the next attempt."""
        with self._lock:
            self._counts["errors"] += 1
            scope.failures += 1
            scope.error, scope.forbidden = detail, forbidden
            if scope.failures >= self.config.relist_after_failures:
                scope.resource_version = None
            attempt = scope.failures - 1
        return backoff_delay(attempt, self.config.backoff_base, self.config.backoff_max, self._rng)

    def _healthy(self, scope: _Scope) -> None:
        with self._lock:
            scope.failures, scope.error, scope.forbidden = 0, None, False

    def _list_due(self, scope: _Scope) -> bool:
        with self._lock:
            if scope.resource_version is None or scope.listed_at is None:
                return True
            return self._clock() - scope.listed_at >= self.config.relist_interval

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _list(self, scope: _Scope) -> None:
        """A full paged LIST within one total deadline; replaces the scope's part of the cache."""
        deadline = Deadline(self.config.list_timeout)
        items: dict[Key, dict[str, Any]] = {}
        token: str | None = None
        version: object = None
        for _ in range(self.config.max_pages):
            page = self._list_page(scope, token, deadline)
            meta = page.get("metadata")
            raw_items = page.get("items")
            if not isinstance(meta, dict) or not isinstance(raw_items, list):
                raise Transient("list", RESOURCE, scope.namespace, None, None, "malformed list answer")
            for item in raw_items:
                key = object_key(item, scope.namespace)
                if key is None:
                    self._count("skipped")
                else:
                    items[key] = item
            version, token = meta.get("resourceVersion"), meta.get("continue") or None
            if not isinstance(token, str):
                break
        else:
            raise Transient("list", RESOURCE, scope.namespace, None, None, f"more than {self.config.max_pages} pages")
        if not isinstance(version, str) or not version:
            raise Transient("list", RESOURCE, scope.namespace, None, None, "list answer without a resourceVersion")
        with self._lock:
            self._counts["relists" if scope.synced else "lists"] += 1
            mine = {k: v for k, v in self._objects.items() if scope.namespace in (None, k[0])}
            if mine != items:
                for key in mine:
                    del self._objects[key]
                self._objects.update(items)
                self._changes += 1
            scope.resource_version, scope.listed_at, scope.synced = version, self._clock(), True
            # readable again; the backoff is reset only by a watch that works (a 410 loop must still slow down)
            scope.error, scope.forbidden = None, False

    def _list_page(self, scope: _Scope, token: str | None, deadline: Deadline) -> dict[str, Any]:
        objects = self._api.custom_objects
        paging: dict[str, Any] = {"limit": self.config.page_size, "_preload_content": False}
        if token:
            paging["_continue"] = token
        try:
            if scope.namespace is None:
                response = self._api.call("list", RESOURCE, None, None, objects.list_cluster_custom_object,
                                          GROUP, VERSION, PLURAL, deadline=deadline, **paging)  # fmt: skip
            else:
                response = self._api.call("list", RESOURCE, scope.namespace, None,
                                          objects.list_namespaced_custom_object, GROUP, VERSION, scope.namespace,
                                          PLURAL, deadline=deadline, **paging)  # fmt: skip
        except KubeError as exc:
            if exc.status == 410:
                raise Gone(f"list: {exc.detail or 'expired'}") from exc
            raise
        try:
            page = json.loads(getattr(response, "data", b""))
        except (ValueError, TypeError) as exc:
            raise Transient("list", RESOURCE, scope.namespace, None, None, "list answer is not JSON") from exc
        if not isinstance(page, dict):
            raise Transient("list", RESOURCE, scope.namespace, None, None, "list answer is not an object")
        return page

    def _watch(self, scope: _Scope, stop: threading.Event) -> bool:
        """One watch request, read to its end. False when it ended cleanly but too early to count as healthy
        (a server closing every stream at once must still cost a backoff); failures raise."""
        config = self.config
        with self._lock:
            version, listed_at = scope.resource_version, scope.listed_at or self._clock()
            self._counts["watch_restarts" if scope.watched else "watches"] += 1
            scope.watched = True
        until_relist = listed_at + config.relist_interval - self._clock()
        timeout = max(1, int(min(config.watch_timeout_seconds, until_relist)))
        response = self._open(scope, version, timeout)
        with self._lock:
            scope.response = response
        if stop.is_set():
            shutdown(response)
        started, progress = self._clock(), False
        try:
            limit = started + timeout + config.read_timeout
            lines = stream_lines(response_chunks(response), clock=self._clock, limit=limit,
                                 max_bytes=config.max_event_bytes, on_oversized=lambda: self._count("skipped"),
                                 namespace=scope.namespace)  # fmt: skip
            for line in lines:
                if self._apply(scope, line) and not progress:
                    progress = True
                    self._healthy(scope)
            return progress or self._clock() - started >= config.healthy_stream
        except (Gone, KubeError):
            raise
        except Exception as exc:  # a dropped connection, a read timeout, a reset: re-watch from the last version
            raise classify(exc, "watch", RESOURCE, scope.namespace, None) from exc
        finally:
            with self._lock:
                scope.response = None
            close(response)
            if progress or self._clock() - started >= config.healthy_stream:
                self._healthy(scope)

    def _open(self, scope: _Scope, version: str | None, timeout: int) -> Any:
        """The watch request up to its response headers, bounded in total (a dribbling server cannot hold it)."""
        config = self.config
        objects = self._api.custom_objects
        args: tuple[Any, ...] = (GROUP, VERSION, PLURAL) if scope.namespace is None else (
            GROUP, VERSION, scope.namespace, PLURAL)  # fmt: skip
        fn = objects.list_cluster_custom_object if scope.namespace is None else objects.list_namespaced_custom_object
        kwargs: dict[str, Any] = {
            "watch": True, "allow_watch_bookmarks": True, "timeout_seconds": timeout, "_preload_content": False,
            "_request_timeout": (config.connect_timeout, config.read_timeout),
        }  # fmt: skip
        if version:
            kwargs["resource_version"] = version
        self._api.stats.request("watch")
        try:
            # wrapped in a tuple so that run_with_deadline hands the open stream back instead of reading it whole
            budget = config.connect_timeout + config.read_timeout
            (response,) = run_with_deadline(lambda: (fn(*args, **kwargs),), budget)
        except CallTimedOut as exc:
            raise self._watch_error(scope, Transient("watch", RESOURCE, scope.namespace, None, None,
                                                     "no response headers in time")) from exc  # fmt: skip
        except Exception as exc:
            error = classify(exc, "watch", RESOURCE, scope.namespace, None)
            if error.status == 410:
                self._api.stats.error("watch", error)
                raise Gone(f"watch: {error.detail or 'expired'}") from exc
            raise self._watch_error(scope, error) from exc
        return response

    def _watch_error(self, scope: _Scope, error: KubeError) -> KubeError:
        self._api.stats.error("watch", error)
        return error

    def _apply(self, scope: _Scope, line: bytes) -> bool:
        """Apply one line of the stream; True when it was a usable event (progress). ERROR events raise."""
        event = parse_event(line, scope.namespace)
        with self._lock:
            if event is None:
                self._counts["skipped"] += 1
                return False
            if event.resource_version is not None:
                scope.resource_version = event.resource_version  # past it even if skipped: it must not come back
            if event.type == "BOOKMARK":
                self._counts["bookmarks"] += 1
                return True
            if event.key is None or event.obj is None:
                self._counts["skipped"] += 1
                return False
            self._counts["events"] += 1
            if event.type == "DELETED":
                changed = self._objects.pop(event.key, None) is not None
            else:
                changed = self._objects.get(event.key) != event.obj
                self._objects[event.key] = event.obj
            self._changes += changed
        return True


__all__ = ["MAX_NAMESPACES", "RolloutResourceWatch", "WatchConfig"]

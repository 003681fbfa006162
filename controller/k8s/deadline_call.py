"""A TOTAL deadline for one Kubernetes request: connect + send + the whole response, not urllib3's per-read timeout.

urllib3's timeouts apply per socket operation: an apiserver (or a proxy) that dribbles one byte per
second keeps a call alive forever under a 10s "timeout". `run_with_deadline` runs the request on a
worker thread and waits at most the deadline for it:

- the worker records the urllib3 connections it checks out (`install` swaps the client's connection
  pool classes for ones that register each connection with the current call, via a thread-local);
- at the deadline the caller stops waiting, marks the call abandoned and shuts the recorded sockets
  down, which wakes the worker's blocking read with an error: the worker ends promptly instead of
  leaking a thread per dribbling call, and whatever it returns later is discarded;
- a response read with `_preload_content=False` is read to the end on the worker, so the caller never
  reads from the network outside the deadline.

Workers are reused (a thread started per request cost ~0.2 ms of CPU, a quarter of a write): a worker
that finished a call waits for the next one, named IDLE_WORKER_NAME, and exits after IDLE_SECONDS without work
(at most MAX_IDLE wait at once). A call takes an idle worker or starts a new one, so a worker stuck in an
abandoned call is never waited for: it is replaced. A worker whose call was abandoned exits once its call ends
instead of rejoining. A worker running a call is named WORKER_NAME: no such thread outlives its call for long.

Abandoning cannot un-send bytes already on the wire: a write delivered late can still reach the apiserver.
Writes are therefore also made safe by the apiserver's resourceVersion precondition (see `KubeApi`).
A connect still in progress is bounded by the per-operation timeout (at most the deadline); name resolution
cannot be interrupted, so its worker may outlive the deadline, but the caller never does.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes.client import ApiClient
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

T = TypeVar("T")

WORKER_NAME = "ramp-k8s-call"
_INSTALLED_ATTR = "ramp_deadline_pools"
_current = threading.local()


class CallTimedOut(Exception):
    """The request did not complete within its total deadline; its worker was abandoned."""


class _Call:
    """The connections one request uses, so they can be shut down when the request is abandoned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self.abandoned = False

    def track(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            abandoned = self.abandoned
        if abandoned:
            _shutdown(connection)

    def abandon(self) -> None:
        with self._lock:
            self.abandoned = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)


def _shutdown(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class _TrackingMixin:
    """Registers every connection a request checks out with the call running on this thread."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        call = getattr(_current, "call", None)
        if isinstance(call, _Call):
            call.track(connection)
        return connection

    def _make_request(self, *args: Any, **kwargs: Any) -> Any:
        call = getattr(_current, "call", None)
        if isinstance(call, _Call) and call.abandoned:  # do not even start a request nobody waits for
            raise urllib3.exceptions.ProtocolError("request abandoned at its deadline")
        return super()._make_request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPPool(_TrackingMixin, HTTPConnectionPool):
    pass


class _TrackedHTTPSPool(_TrackingMixin, HTTPSConnectionPool):
    pass


def install(api_client: ApiClient) -> None:
    """Make the client's connection pools register connections with the current call (idempotent)."""
    manager = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    if not isinstance(manager, urllib3.PoolManager) or getattr(manager, _INSTALLED_ATTR, False):
        return
    classes = dict(getattr(manager, "pool_classes_by_scheme", {}))
    tracked = {HTTPConnectionPool: _TrackedHTTPPool, HTTPSConnectionPool: _TrackedHTTPSPool}
    # Only the standard pools are swapped (a SOCKS proxy's pools are left alone: still bounded for the caller).
    classes = {scheme: tracked.get(pool, pool) for scheme, pool in classes.items()}
    manager.pool_classes_by_scheme = classes
    manager.clear()  # pools made before this point would not register their connections
    setattr(manager, _INSTALLED_ATTR, True)


IDLE_WORKER_NAME = "ramp-k8s-idle"
IDLE_SECONDS = 30.0  # an idle worker exits after this long without a call
MAX_IDLE = 8  # idle workers kept at once; more (after a burst of concurrent calls) exit


class _Job:
    """One call handed to a worker; `done` is released when `result` or `error` is set."""

    __slots__ = ("args", "call", "done", "error", "fn", "kwargs", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.call = _Call()
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


class _Worker:
    """A reusable request thread: runs the jobs put in its inbox, one at a time."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=WORKER_NAME, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                job = self.inbox.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with _pool_lock:
                    if self in _idle:  # nobody took it meanwhile: end; otherwise a job is on its way
                        _idle.remove(self)
                        return
                continue
            self._run(job)
            if job.call.abandoned or not _rejoin(self):
                return  # the caller went on without it, or enough workers wait already

    @staticmethod
    def _run(job: _Job) -> None:
        _current.call = job.call
        try:
            result = job.fn(*job.args, **job.kwargs)
            if isinstance(result, urllib3.BaseHTTPResponse):
                _ = result.data  # read the whole body here, inside the deadline
            job.result = result
        except BaseException as exc:  # handed to the caller
            job.error = exc
        finally:
            _current.call = None
            job.fn = job.args = job.kwargs = None  # type: ignore[assignment]  # keep nothing of the call alive
            job.done.release()


_pool_lock = threading.Lock()
_idle: list[_Worker] = []


def _rejoin(worker: _Worker) -> bool:
    with _pool_lock:
        if len(_idle) >= MAX_IDLE:
            return False
        worker.thread.name = IDLE_WORKER_NAME
        _idle.append(worker)
        return True


def _hand(job: _Job) -> None:
    """Give `job` to an idle worker, else to a new one."""
    with _pool_lock:
        worker = _idle.pop() if _idle else None
        if worker is not None:
            worker.thread.name = WORKER_NAME
    if worker is None:
        worker = _Worker()
        worker.inbox.put(job)
        worker.thread.start()
    else:
        worker.inbox.put(job)


def run_with_deadline(fn: Callable[..., T], seconds: float, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a worker thread; raises CallTimedOut when it is not done within `seconds`.

    Exceptions of `fn` are re-raised on the caller's thread. A lazily read response body is read on the worker.
    """
    job = _Job(fn, args, kwargs)
    _hand(job)
    wait = min(seconds, threading.TIMEOUT_MAX)
    finished = job.done.acquire(timeout=wait) if wait > 0 else job.done.acquire(blocking=False)
    if not finished:
        job.call.abandon()
        raise CallTimedOut(f"no complete answer within the total deadline of {seconds:.3g}s")
    if job.error is not None:
        raise job.error
    result: T = job.result
    return result

"""The wire side of the RampRollout watch: its settings, the stream's lines, and events parsed without trust.

Pure parsing (`parse_event`, `object_key`) is kept apart from the watch loop so it can be tested line by line:
whatever a server or a proxy sends, parsing yields a `WatchEvent`, None (skip it and count it), or raises
`Gone` / a typed `KubeError` for an ERROR event. `stream_lines` bounds a stream in time as well as per read (a
dribbling server cannot keep it alive past its timeout) and in memory (an oversized event is skipped).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.k8s.errors import Transient, classify
from controller.rollout_resource import GROUP, KIND, PLURAL

RESOURCE = f"{PLURAL}.{GROUP}"
Key = tuple[str, str]  # (namespace, name)
OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")


@dataclass(frozen=True, kw_only=True)
class WatchConfig:
    watch_timeout_seconds: int = 300  # server-side end of each watch request
    read_timeout: float = 90.0  # nothing read for this long: the stream is considered stalled
    connect_timeout: float = 10.0
    list_timeout: float = 60.0  # total deadline of one full (paged) LIST
    page_size: int = 500
    max_pages: int = 1000
    relist_interval: float = 600.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    forbidden_retry: float = 60.0
    degraded_after: int = 3  # consecutive failures before status() reports the scope not ready
    relist_after_failures: int = 5
    healthy_stream: float = 10.0  # a stream that lived this long (or delivered events) resets the backoff
    max_event_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.watch_timeout_seconds < 1 or self.read_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("watch_timeout_seconds, read_timeout and connect_timeout must be positive")
        if self.list_timeout <= 0 or self.page_size < 1 or self.max_pages < 1 or self.relist_interval <= 0:
            raise ValueError("list_timeout, page_size, max_pages and relist_interval must be positive")
        if not 0 < self.backoff_base <= self.backoff_max or self.forbidden_retry <= 0:
            raise ValueError("backoff_base must be > 0 and <= backoff_max; forbidden_retry > 0")
        if self.degraded_after < 1 or self.relist_after_failures < 1 or self.max_event_bytes < 1024:
            raise ValueError("degraded_after and relist_after_failures must be >= 1, max_event_bytes >= 1024")


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; only a fresh LIST helps."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    resource_version: str | None  # where a re-watch resumes after this event (None: unknown, keep the last)
    key: Key | None = None  # None for BOOKMARK, and for an object event whose object is unusable (skipped)
    obj: dict[str, Any] | None = None


def object_key(obj: object, namespace: str | None) -> Key | None:
    """(namespace, name) of a well-formed RampRollout in `namespace` (None: any); None for anything else."""
    if not isinstance(obj, dict) or obj.get("kind", KIND) != KIND:
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name, where = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(where, str) or not where:
        return None
    return (where, name) if namespace in (None, where) else None


def parse_event(line: bytes, namespace: str | None) -> WatchEvent | None:
    """One line of a watch stream. None: not an event at all (skip it). ERROR events raise: Gone for 410, else
    the typed error of their code (a 403 inside the stream is a Forbidden like any other)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    obj = event.get("object") if isinstance(event, dict) else None
    if not isinstance(kind, str) or not isinstance(obj, dict):
        return None
    if kind == "ERROR":
        code, message = obj.get("code"), str(obj.get("message") or obj.get("reason") or "")[:300]
        if code == 410:
            raise Gone(f"watch: {message or 'expired'}")
        status = code if isinstance(code, int) and not isinstance(code, bool) else 500
        raise classify(ApiException(status=status, reason=message), "watch", RESOURCE, namespace, None)
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    version = version if isinstance(version, str) and version else None
    if kind == "BOOKMARK":
        return WatchEvent(kind, version) if version is not None else None
    if kind not in OBJECT_EVENTS:
        return WatchEvent(kind, version)  # unknown type: skipped, but its resourceVersion still counts
    key = object_key(obj, namespace)
    return WatchEvent(kind, version, key, obj if key is not None else None)


def stream_lines(
    chunks: Iterable[bytes], *, clock: Callable[[], float], limit: float, max_bytes: int,
    on_oversized: Callable[[], None], namespace: str | None,
) -> Iterator[bytes]:  # fmt: skip
    """The non-empty lines of a stream. Past `limit` (on `clock`) the stream is abandoned (Transient); a line
    longer than `max_bytes` is dropped whole (`on_oversized` is told) instead of growing the buffer."""
    buffer, skipping = bytearray(), False
    for chunk in chunks:
        if clock() > limit:
            raise Transient("watch", RESOURCE, namespace, None, None, "stream outlived its timeout (abandoned)")
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
            elif line.strip():
                yield line
        if len(buffer) > max_bytes:
            buffer.clear()
            if not skipping:
                skipping = True
                on_oversized()
    if buffer.strip() and not skipping:
        yield bytes(buffer)


def response_chunks(response: Any) -> Iterator[bytes]:
    """The body as it arrives: chunk by chunk (the apiserver streams chunked), else whatever each read returns."""
    if getattr(response, "chunked", False):
        yield from response.stream(amt=None, decode_content=True)
        return
    while chunk := response.read1(65536):
        yield chunk


def shutdown(response: Any) -> None:
    """Wake a read blocked on this response's socket (it then fails at once)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def close(response: Any) -> None:
    """Close a stream read only in part: the connection is dropped, never returned to the pool with data unread."""
    with contextlib.suppress(Exception):
        response.close()
        response.release_conn()

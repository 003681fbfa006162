"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the Kubernetes emulator (one per replica).

Every request is read whole, then (if it matches `Faults.match`) subjected to the faults set at that moment:

- `hold`: a partition with delayed delivery: the request is held `hold` seconds, then forwarded even if the
  client gave up meanwhile (like segments still in flight), unless `deliver_held` is False (a black hole);
- `conflict_puts`: the next N PUTs (-1: all) are answered 409 Conflict without being forwarded, or, with
  `conflict_forward`, forwarded (the write lands) and answered 409 anyway;
- `dribble_interval`: the reply (status line and headers included) is sent `dribble_bytes` at a time, this
  far apart: a slow apiserver that never lets a per-read timeout fire;
- `reset_replies`: the next N replies are cut half-way by a TCP reset.

`records` tells what happened to each request (upstream status, when it was forwarded, whether the client was
still there to read the reply); tests mutate `faults` while the proxy runs. Bounded: every sleep wakes on stop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client as k8s_client

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}


@dataclass
class Faults:
    hold: float = 0.0
    deliver_held: bool = True
    conflict_puts: int = 0
    conflict_forward: bool = False
    dribble_interval: float = 0.0
    dribble_bytes: int = 1
    reset_replies: int = 0
    match: Callable[[str, str], bool] | None = None  # (method, path) -> subject to faults? None: every request


@dataclass
class Record:
    method: str
    path: str
    received_at: float  # monotonic
    injected: str | None = None  # "conflict", "reset", "dribble", "held", "dropped"
    forwarded_at: float | None = None  # when it reached the apiserver (None: never)
    upstream_status: int | None = None  # what the apiserver answered
    client_gone: bool = False  # the reply could not be delivered (the client had given up)


@dataclass
class KubeProxy:
    upstream: str
    faults: Faults = field(default_factory=Faults)
    records: list[Record] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _held: int = 0

    def api_client(self, timeout: float = 5.0) -> k8s_client.ApiClient:
        """A client whose requests go through this proxy (no urllib3 retries, like Ramp's own)."""
        config = k8s_client.Configuration()
        config.host, config.retries, config.proxy = self.url, False, None
        api = k8s_client.ApiClient(config)
        api.ramp_request_timeout = timeout  # type: ignore[attr-defined]
        return api

    @property
    def held(self) -> int:
        """Requests currently being held (not yet forwarded)."""
        with self._lock:
            return self._held

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no request is held any more."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.held == 0:
                return True
            time.sleep(0.02)
        return self.held == 0

    def landed(self, method: str, path_part: str) -> list[Record]:
        """Requests with `method` whose path contains `path_part` that the apiserver accepted (2xx)."""
        with self._lock:
            return [
                r for r in self.records
                if r.method == method and path_part in r.path and r.upstream_status is not None
                and 200 <= r.upstream_status < 300
            ]  # fmt: skip

    def count(self, method: str, path_part: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.records if r.method == method and path_part in r.path)

    def _take(self, attribute: str) -> bool:
        """Consume one of the `attribute` faults (a count; -1 = unlimited)."""
        with self._lock:
            left = getattr(self.faults, attribute)
            if left == 0:
                return False
            if left > 0:
                setattr(self.faults, attribute, left - 1)
            return True

    def _sleep(self, seconds: float) -> bool:
        """False when the proxy is stopping."""
        return not self._stop.wait(seconds)

    def handle(self, handler: _Handler, body: bytes) -> None:
        method, path = handler.command, handler.path
        record = Record(method, path, time.monotonic())
        with self._lock:
            self.records.append(record)
        faults = self.faults
        applies = faults.match is None or faults.match(method, path)
        if applies and method == "PUT" and self._take("conflict_puts"):
            record.injected = "conflict"
            if faults.conflict_forward:
                self._forward(handler, record, body)
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                      "message": "injected conflict: the object has been modified"}  # fmt: skip
            self._reply(handler, record, 409, "Conflict", [("Content-Type", "application/json")],
                        json.dumps(status).encode(), mode=None)  # fmt: skip
            return
        if applies and faults.hold > 0:
            record.injected = "held"
            with self._lock:
                self._held += 1
            try:
                if not self._sleep(faults.hold) or not faults.deliver_held:
                    record.injected = "dropped"
                    handler.close_connection = True
                    return
            finally:
                with self._lock:
                    self._held -= 1
        answer = self._forward(handler, record, body)
        if answer is None:
            self._reply(handler, record, 502, "Bad Gateway", [], b"upstream unavailable", mode=None)
            return
        mode = None
        if applies and self._take("reset_replies"):
            mode = record.injected = "reset"
        elif applies and faults.dribble_interval > 0:
            mode = record.injected = "dribble"
        self._reply(handler, record, *answer, mode=mode)

    def _forward(
        self, handler: _Handler, record: Record, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes] | None:
        target = urlsplit(self.upstream)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=30)
        try:
            record.forwarded_at = time.monotonic()
            connection.request(handler.command, handler.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        record.upstream_status = response.status
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return response.status, response.reason, kept, payload

    def _reply(
        self, handler: _Handler, record: Record, status: int, reason: str, headers: list[tuple[str, str]],
        payload: bytes, mode: str | None,
    ) -> None:  # fmt: skip
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        data = (head + f"Content-Length: {len(payload)}\r\n\r\n").encode("latin-1") + payload
        sock: socket.socket = handler.connection
        try:
            if mode == "reset":
                sock.sendall(data[: max(1, len(data) // 2)])
                time.sleep(0.05)  # let the half reply arrive before the reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # abortive close: the client sees a connection reset mid-reply
                handler.close_connection = True
            elif mode == "dribble":
                step = max(1, self.faults.dribble_bytes)
                for start in range(0, len(data), step):
                    sock.sendall(data[start : start + step])
                    if not self._sleep(self.faults.dribble_interval):
                        handler.close_connection = True
                        return
            else:
                sock.sendall(data)
        except OSError:
            record.client_gone = True
            handler.close_connection = True

    def stop(self) -> None:
        self._stop.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _relay(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        self.server.proxy.handle(self, body)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: KubeProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-reply is expected here


@contextlib.contextmanager
def running_proxy(upstream: str, faults: Faults | None = None) -> Iterator[KubeProxy]:
    """A proxy to `upstream` (e.g. the emulator's url) on 127.0.0.1; stopped (held requests dropped) on exit."""
    proxy = KubeProxy(upstream, faults or Faults())
    server = _Server(proxy)
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)

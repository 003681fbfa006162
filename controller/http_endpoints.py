"""/metrics, /healthz and /readyz on one small HTTP server, hardened against hostile or broken clients.

- One front thread (`selectors`) accepts connections and reads each request head (request line and
  headers) under a TOTAL deadline (`header_timeout`, 5 s): a client that sends nothing, or dribbles a
  byte at a time, is answered 408 and closed when the deadline passes, however it spaces its bytes.
  A head larger than 16 KiB is answered 431.
- At most `max_pending` (64) connections wait for their head. A new connection beyond that evicts the
  oldest waiting one, so a flood of idle connections cannot lock a Prometheus scrape or a probe out.
- A complete request goes to a handler thread, at most `max_handlers` (8) at once; beyond that it is
  answered 503 at once. A handler writes its response under a total deadline (`write_timeout`, 10 s)
  and closes the connection (HTTP/1.0: one request per connection).

So the server never runs more than 1 + max_handlers threads, whatever clients do, and every connection
ends within header_timeout + write_timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger("ramp.http")

Check = Callable[[], tuple[bool, str]]
MAX_HEAD_BYTES = 16 * 1024
TEXT = "text/plain; charset=utf-8"


def parse_listen_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8080`) -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected HOST:PORT with a port 0-65535, e.g. 0.0.0.0:8080 or [::1]:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError(f"{value!r}: missing host (0.0.0.0:PORT listens on every interface)")
    return host, int(port)


def listen_address_type(value: str) -> tuple[str, int]:
    """argparse `type=` for --listen-address."""
    try:
        return parse_listen_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _response(status: int, body: bytes, content_type: str = TEXT, head_only: bool = False) -> bytes:
    phrase = HTTPStatus(status).phrase
    header = (
        f"HTTP/1.0 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\nCache-Control: no-store\r\n\r\n"
    )
    return header.encode("ascii") + (b"" if head_only else body)


@dataclass
class _Waiting:
    sock: socket.socket
    deadline: float
    head: bytearray = field(default_factory=bytearray)


@dataclass
class ServerStats:
    accepted: int = 0
    served: int = 0
    timed_out: int = 0  # no complete request head within header_timeout
    evicted: int = 0  # oldest waiting connection closed to admit a new one
    busy: int = 0  # answered 503: all handler threads in use
    too_large: int = 0


class EndpointServer:
    """healthz: the controller loop is alive; readyz: it can do its job (see ControllerLoop.readiness)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Check,
        ready: Check,
        host: str = "0.0.0.0",
        port: int = 8080,
        *,
        max_handlers: int = 8,
        max_pending: int = 64,
        header_timeout: float = 5.0,
        write_timeout: float = 10.0,
    ) -> None:
        self.registry = registry
        self.checks = {"/healthz": healthy, "/readyz": ready}
        self.max_handlers = max_handlers
        self.max_pending = max_pending
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.stats = ServerStats()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._waiting: dict[int, _Waiting] = {}  # by fd, oldest first
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ramp-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> EndpointServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        else:
            self._close_all()

    # -- front thread ----------------------------------------------------------------------------------

    def _serve(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                first = min((w.deadline for w in self._waiting.values()), default=now + 0.5)
                for key, _ in self._selector.select(timeout=min(0.5, max(0.0, first - now))):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read(key.fd)
                self._expire(time.monotonic())
        except Exception:
            log.exception("http endpoint server stopped")
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for fd in list(self._waiting):
            self._drop(fd)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def _accept(self) -> None:
        for _ in range(self.max_pending):  # bounded per pass: timeouts and reads get their turn
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave the connection in the backlog for now
                log.warning("accept failed", error=str(exc))
                return
            self.stats.accepted += 1
            sock.setblocking(False)
            while len(self._waiting) >= self.max_pending:
                self.stats.evicted += 1
                self._drop(next(iter(self._waiting)))
            self._waiting[sock.fileno()] = _Waiting(sock, time.monotonic() + self.header_timeout)
            self._selector.register(sock, selectors.EVENT_READ, "client")

    def _read(self, fd: int) -> None:
        waiting = self._waiting.get(fd)
        if waiting is None:
            return
        try:
            data = waiting.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        waiting.head += data
        if len(waiting.head) > MAX_HEAD_BYTES:
            self.stats.too_large += 1
            self._drop(fd, _response(431, b"request head too large\n"))
            return
        if b"\r\n\r\n" in waiting.head or b"\n\n" in waiting.head:
            self._selector.unregister(waiting.sock)
            del self._waiting[fd]
            self._dispatch(waiting.sock, bytes(waiting.head))

    def _expire(self, now: float) -> None:
        for fd in [fd for fd, w in self._waiting.items() if w.deadline <= now]:
            self.stats.timed_out += 1
            self._drop(fd, _response(408, b"request not received in time\n"))

    def _drop(self, fd: int, reply: bytes | None = None) -> None:
        waiting = self._waiting.pop(fd, None)
        if waiting is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.sock)
        _close(waiting.sock, reply)

    def _dispatch(self, sock: socket.socket, head: bytes) -> None:
        if not self._slots.acquire(blocking=False):
            self.stats.busy += 1
            _close(sock, _response(503, b"busy: too many requests in progress\n"))
            return
        try:
            threading.Thread(target=self._handle, args=(sock, head), name="ramp-http-handler", daemon=True).start()
        except Exception:  # e.g. no more threads: answer, never leak the slot
            self._slots.release()
            _close(sock, _response(503, b"busy\n"))

    # -- handler threads -------------------------------------------------------------------------------

    def _handle(self, sock: socket.socket, head: bytes) -> None:
        try:
            reply = self._respond(head)
            sock.settimeout(self.write_timeout)  # sendall: a total timeout for the whole response
            sock.sendall(reply)
            self.stats.served += 1
        except OSError:
            pass
        except Exception:
            log.exception("http handler failed")
        finally:
            _close(sock, None)
            self._slots.release()

    def _respond(self, head: bytes) -> bytes:
        parts = head.split(b"\n", 1)[0].strip().split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(400, b"bad request\n")
        method, target = parts[0], parts[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET and HEAD\n")
        head_only = method == b"HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            try:
                return _response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST, head_only)
            except Exception as exc:
                log.exception("metrics collection failed")
                return _response(500, f"metrics collection failed: {type(exc).__name__}\n".encode(), TEXT, head_only)
        check = self.checks.get(path)
        if check is None:
            return _response(404, b"not found\n", TEXT, head_only)
        try:
            ok, detail = check()
        except Exception as exc:
            ok, detail = False, f"check failed: {type(exc).__name__}: {exc}"[:500]
        return _response(200 if ok else 503, (detail + "\n").encode(), TEXT, head_only)


def _close(sock: socket.socket, reply: bytes | None) -> None:
    """Best-effort short reply without blocking (it fits the socket buffer), then close."""
    if reply is not None:
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(reply)
    with contextlib.suppress(OSError):
        sock.close()

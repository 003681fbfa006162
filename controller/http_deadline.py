"""One HTTP/1.1 exchange under a TOTAL deadline and a size cap: the client behind every bounded call.

Why not urllib or requests: their `timeout` bounds each socket operation, not the call, so a server that
sends its answer one byte per second keeps the caller waiting for ever. Here the standard library's
http.client runs over a socket whose every read and write first asks the `Deadline` how long it may still
take (and fails once nothing is left), so status line, headers and body together finish within the
deadline. DNS resolution runs in a helper thread that is abandoned at the deadline; the TLS handshake is
non-blocking and bounded the same way. Chunked and close-delimited bodies are read incrementally and cut
off at `max_bytes`; a body shorter than its Content-Length is an error. `Connection: close`, no proxies,
no redirects. Used by Prometheus queries, the Envoy admin API, local readiness probes and `ramp ping`.

Every failure raises `HttpError` (`HttpTimeout` when the deadline ran out, `HttpTooLarge` above the
cap) with a short reason that holds neither the URL nor its credentials; callers add what they show.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.deadline import Deadline, DeadlineExceeded
from controller.redact import redact_text, url_secrets

__all__ = ["DEFAULT_MAX_BYTES", "HttpAnswer", "HttpError", "HttpTimeout", "HttpTooLarge", "bounded_request"]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024
_MAX_REASON = 300


class HttpError(RuntimeError):
    """No usable HTTP answer: bad URL, connection or TLS failure, malformed, slow or oversized answer."""


class HttpTimeout(HttpError):
    """The total deadline ran out before the whole answer arrived."""


class HttpTooLarge(HttpError):
    """The answer is larger than the caller's cap."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names; the last of repeated ones
    body: bytes = b""


class _DeadlineReader(io.RawIOBase):
    """Socket reads that never outlast the deadline: each recv may only take the time that is left."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        sock = self._owner.sock
        sock.settimeout(self._owner.deadline.timeout())
        return sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.reader_closed()


class _DeadlineSocket:
    """What http.client needs of a socket (sendall, makefile, close), bounded by the deadline. Like a real
    socket, it closes once both the connection and the response reading from it have let go."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self._readers = 0
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.deadline.timeout())  # sendall's timeout bounds the whole call
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and self._readers <= 0:
            self.sock.close()

    def close(self) -> None:
        self._closed = True
        if self._readers <= 0:
            self.sock.close()


def _resolve(host: str, port: int, deadline: Deadline) -> list[Any]:
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except ValueError:
        pass
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            box.append(exc)

    worker = threading.Thread(target=work, name="http-dns", daemon=True)
    worker.start()
    worker.join(deadline.timeout())
    if not box:
        raise DeadlineExceeded(f"resolving {host}: deadline of {deadline.seconds:g}s exceeded")
    if isinstance(box[0], OSError):
        raise box[0]
    found: list[Any] = box[0]
    return found


def _connect(host: str, port: int, deadline: Deadline) -> socket.socket:
    error: OSError | None = None
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.timeout())
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, DeadlineExceeded):
                raise
    raise error or OSError(f"no address for {host}")


def _tls(sock: socket.socket, host: str, context: ssl.SSLContext, deadline: Deadline) -> ssl.SSLSocket:
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            ready = select.select([tls], [], [], deadline.timeout())[0]
        except ssl.SSLWantWriteError:
            ready = select.select([], [tls], [], deadline.timeout())[1]
        if not ready:
            tls.close()
            raise DeadlineExceeded(f"TLS handshake: deadline of {deadline.seconds:g}s exceeded")
    tls.setblocking(True)
    return tls


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, deadline: Deadline, context: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self._deadline = deadline
        self._context = context

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self._deadline)
        if self._context is not None:
            sock = _tls(sock, self.host, self._context, self._deadline)
        self.sock = _DeadlineSocket(sock, self._deadline)


def _target(url: str) -> tuple[str, int, str, bool]:
    """(host, port, request target, https) of an http(s) URL; its user-info and fragment are ignored."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HttpError(f"bad URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"URL must be http(s)://host[:port]/..., got scheme {parts.scheme[:20]!r}")
    https = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port or (443 if https else 80), path, https


def _read(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = response.length  # None when chunked or close-delimited
    if declared is not None and declared > max_bytes:
        raise HttpTooLarge(f"answer of {declared} bytes is larger than {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise HttpTooLarge(f"answer larger than {max_bytes} bytes")
        chunks.append(chunk)
    if response.length:  # the peer closed before sending all it announced
        raise HttpError(f"answer shorter than its Content-Length ({size} < {declared})")
    return b"".join(chunks)


def _reason(exc: Exception, url: str) -> str:
    """`exc` as one short printable line (a hostile peer's bytes may be in it), credentials of `url` redacted."""
    text = redact_text(f"{type(exc).__name__}: {exc}", url_secrets(url))
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)[:_MAX_REASON]


def bounded_request(
    method: str,
    url: str,
    *,
    deadline: Deadline,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tls_context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """One exchange with `url`, finished within `deadline`; the answer whatever its status.

    https URLs use `tls_context` (default: the system's trust store, hostname checked). Raises `HttpTimeout`
    when the deadline runs out (before or during the call), `HttpTooLarge` when the body exceeds `max_bytes`,
    `HttpError` for anything else (the reason names the underlying exception, credentials of `url` redacted)."""
    host, port, target, https = _target(url)
    sent = {"Connection": "close", **(headers or {})}
    connection: _Connection | None = None
    response: http.client.HTTPResponse | None = None
    try:
        context = (tls_context or ssl.create_default_context()) if https else None
        connection = _Connection(host, port, deadline, context)
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        data = _read(response, max_bytes)
        names = {name.lower(): value for name, value in response.getheaders()}
        return HttpAnswer(response.status, names, data)
    except HttpError:
        raise
    except (DeadlineExceeded, TimeoutError):
        raise HttpTimeout(f"no complete answer within {deadline.seconds:.3g}s") from None
    except Exception as exc:  # any transport or protocol failure: a reason, never a traceback
        raise HttpError(_reason(exc, url)) from None
    finally:
        if response is not None:
            response.close()
        if connection is not None:
            connection.close()

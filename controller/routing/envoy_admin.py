"""Envoy admin API reads bounded by a TOTAL deadline and a size cap.

`urllib`'s timeout applies per socket operation, so a server that drips one byte at a time keeps a
read alive forever. Here the whole exchange (connect, request, status line, headers, body) runs on
one raw loopback socket: before every `recv` the socket timeout is set to the time the deadline
still allows, and the answer is cut off at `max_bytes`. HTTP/1.1 with `Connection: close`; chunked
bodies are decoded. No proxies, no redirects, no credentials.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from controller.deadline import Deadline, DeadlineExceeded

DEFAULT_MAX_BYTES = 8 * 1024 * 1024  # a config_dump of many services fits; anything larger is not Envoy's
DEFAULT_CALL_TIMEOUT = 2.0
_RECV_SIZE = 65536


class EnvoyAdminError(RuntimeError):
    """The Envoy admin API could not be read (unreachable, slow, oversized, malformed or non-200)."""


def _deadline_for(deadline: Deadline | None, cap: float) -> Deadline:
    """A deadline that ends at `cap` seconds from now or at `deadline`, whichever comes first."""
    if deadline is None:
        return Deadline(cap)
    try:
        return Deadline(deadline.timeout(cap))
    except DeadlineExceeded as exc:
        raise EnvoyAdminError(f"no time left for the Envoy admin call ({exc})") from None


def display_url(url: str) -> str:
    """`url` without user-info, for messages and logs (credentials never reach them)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return parts._replace(netloc=f"{host}{port}").geturl()


def _target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise EnvoyAdminError(f"admin URL must be http://host:port/..., got scheme {parts.scheme[:20]!r}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise EnvoyAdminError(f"bad port in admin URL of host {parts.hostname!r}: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


def _receive(sock: socket.socket, total: Deadline, max_bytes: int, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            sock.settimeout(total.timeout())
            data = sock.recv(_RECV_SIZE)
        except (DeadlineExceeded, TimeoutError) as exc:
            raise EnvoyAdminError(f"{url}: no complete answer within {total.seconds:.2f}s") from exc
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > max_bytes:
            raise EnvoyAdminError(f"{url}: answer larger than {max_bytes} bytes")
        chunks.append(data)


def _dechunk(body: bytes, url: str) -> bytes:
    out: list[bytes] = []
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            raise EnvoyAdminError(f"{url}: truncated chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise EnvoyAdminError(f"{url}: malformed chunk size {line[:40]!r}") from None
        if size < 0 or size > len(rest):
            raise EnvoyAdminError(f"{url}: truncated chunked body")
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        rest = rest[size:]
        if not rest.startswith(b"\r\n"):
            raise EnvoyAdminError(f"{url}: malformed chunked body")
        rest = rest[2:]


def _parse_response(raw: bytes, url: str) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise EnvoyAdminError(f"{url}: no complete HTTP header in the answer ({len(raw)} bytes)")
    lines = head.split(b"\r\n")
    status_parts = lines[0].split(b" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith(b"HTTP/1.") or not status_parts[1].isdigit():
        raise EnvoyAdminError(f"{url}: not an HTTP answer: {lines[0][:80]!r}")
    status = int(status_parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise EnvoyAdminError(f"{url}: malformed header line {line[:80]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body, url)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise EnvoyAdminError(f"{url}: bad Content-Length {headers['content-length']!r}") from None
        if length < 0 or len(body) < length:
            raise EnvoyAdminError(f"{url}: body shorter than its Content-Length ({len(body)} < {length})")
        body = body[:length]
    return status, body


def _shown(host: str, port: int, path: str) -> str:
    """The URL as shown in messages: no user-info (credentials never reach a log), path cut short."""
    return f"http://{host}:{port}{path[:200]}"


def bounded_request(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP exchange; (status, body) of any complete answer. The whole call ends within
    min(`cap`, `deadline`). Raises EnvoyAdminError when there is no time left, the connection fails,
    or the answer is slow, oversized or not HTTP."""
    total = _deadline_for(deadline, cap)
    host, port, path = _target(url)
    shown = _shown(host, port, path)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: application/json", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    try:
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii", "strict") + (body or b"")
    except UnicodeEncodeError:
        raise EnvoyAdminError(f"{shown}: request is not plain ASCII") from None
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=total.timeout()) as sock:
            sock.settimeout(total.timeout())
            sock.sendall(request)
            raw = _receive(sock, total, max_bytes + 64 * 1024, shown)  # headers come on top of the body cap
    except DeadlineExceeded as exc:
        raise EnvoyAdminError(f"{shown}: no time left ({exc})") from None
    except OSError as exc:
        waited = time.monotonic() - started
        raise EnvoyAdminError(f"{shown}: {type(exc).__name__}: {exc} after {waited:.2f}s") from None
    status, answer = _parse_response(raw, shown)
    if len(answer) > max_bytes:
        raise EnvoyAdminError(f"{shown}: answer larger than {max_bytes} bytes")
    return status, answer


def admin_get(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """GET `url`; the body of a 200 answer, within min(`cap`, `deadline`). EnvoyAdminError otherwise."""
    status, body = bounded_request(url, deadline, cap, max_bytes)
    if status != 200:
        host, port, path = _target(url)
        raise EnvoyAdminError(f"{_shown(host, port, path)}: HTTP {status}: {body[:200]!r}")
    return body


def admin_get_json(
    url: str,
    deadline: Deadline | None = None,
    cap: float = DEFAULT_CALL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """`admin_get` parsed as a JSON object; EnvoyAdminError when it is not one."""
    body = admin_get(url, deadline, cap, max_bytes)
    host, port, path = _target(url)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvoyAdminError(
            f"{_shown(host, port, path)}: answer is not JSON ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    if not isinstance(data, dict):
        raise EnvoyAdminError(f"{_shown(host, port, path)}: answer is JSON {type(data).__name__}, expected an object")
    return data

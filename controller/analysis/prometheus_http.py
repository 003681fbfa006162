"""Prometheus' HTTP query API under a TOTAL deadline, with a bounded answer, authentication and no leaked secret.

Why not prometheus-api-client (or requests, which it uses) here: their `timeout` bounds each socket
operation, not the call, so a Prometheus that sends its answer one byte per second keeps a tick waiting
for ever. This client uses the standard library's http.client over a socket whose every read and write
first asks the `Deadline` how long it may still take (and fails once nothing is left), so status line,
headers and body together finish within the deadline. DNS resolution runs in a helper thread that is
abandoned at the deadline; the TLS handshake is non-blocking and bounded the same way.

An answer is accepted only as Prometheus' documented envelope: HTTP 200, a JSON object with
`status: success` and `data: {resultType: vector, result: [...]}`, at most `max_response_bytes`. Anything
else raises `PrometheusError` with a reason meant for users (redacted): the caller turns it into *no data*.

Credentials (`credentials`): a bearer token file, a basic-auth file, or userinfo in the URL, sent as basic
auth and never shown.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import select
import socket
import ssl
import threading
import urllib.parse
from typing import Any

from controller.analysis.credentials import CredentialError, Credentials, PrometheusError
from controller.deadline import Deadline, DeadlineExceeded
from controller.redact import redact_text, redact_url, url_secrets

__all__ = ["CredentialError", "Credentials", "PrometheusAnswerError", "PrometheusError", "PrometheusHTTP"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 64 * 1024


class PrometheusAnswerError(PrometheusError):
    """Prometheus answered, but not with a usable result (HTTP error, not JSON, wrong shape, too large)."""


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

    worker = threading.Thread(target=work, name="prometheus-dns", daemon=True)
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


class PrometheusHTTP:
    """POSTs instant queries to `<url>/api/v1/query`; `query` returns `data.result` (items unchecked)."""

    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus URL must be http(s)://host[:port][/path], got {redact_url(url)}")
        self.display_url = redact_url(url)
        self._url_secrets = url_secrets(url)
        userinfo = None
        if parts.username is not None:
            userinfo = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        if credentials is None:
            credentials = Credentials(url_userinfo=userinfo)
        elif userinfo is not None:
            raise ValueError("choose one Prometheus authentication: user:password in the URL or a credential file")
        self.credentials = credentials
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path.rstrip("/") + "/api/v1/query"
        self._query_params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        self._context = (tls_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.max_response_bytes = max_response_bytes

    def __repr__(self) -> str:
        return f"PrometheusHTTP({self.display_url!r})"

    def secrets(self) -> list[str]:
        return self._url_secrets + self.credentials.secrets()

    def redact(self, text: str) -> str:
        return redact_text(text, self.secrets())

    def query(self, promql: str, deadline: Deadline) -> list[Any]:
        """`data.result` of an instant query; PrometheusError (redacted reason) for anything else."""
        try:
            status, body = self._post(promql, deadline)
        except PrometheusError:
            raise
        except (DeadlineExceeded, TimeoutError):
            raise PrometheusError(f"no complete answer within {deadline.seconds:.3g}s") from None
        except Exception as exc:  # any transport failure: a reason, never a traceback
            raise PrometheusError(self.redact(f"{type(exc).__name__}: {exc}")) from None
        return self._result(status, body)

    def _post(self, promql: str, deadline: Deadline) -> tuple[int, bytes]:
        header = self.credentials.header()
        form = [*self._query_params, ("query", promql), ("timeout", f"{max(0.001, deadline.timeout()):.3f}")]
        payload = urllib.parse.urlencode(form).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "Connection": "close",
            "User-Agent": "ramp-controller",
        }
        if header is not None:
            headers["Authorization"] = header
        connection = _Connection(self._host, self._port, deadline, self._context)
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("POST", self._path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, self._read(response)
        finally:
            if response is not None:
                response.close()
            connection.close()

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
            raise PrometheusAnswerError(f"answer of {int(declared)} bytes is larger than {self.max_response_bytes}")
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(_READ_CHUNK):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise PrometheusAnswerError(f"answer larger than {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _result(self, status: int, body: bytes) -> list[Any]:
        try:
            answer = json.loads(body)
        except Exception:  # invalid JSON, bad UTF-8, absurd nesting or digits: all "not JSON"
            answer = None
        if status != 200:
            detail = ""
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                detail = f": {answer.get('errorType', 'error')}: {answer['error']}"
            raise PrometheusAnswerError(self.redact(f"HTTP {status}{detail}")[:300])
        if not isinstance(answer, dict):
            raise PrometheusAnswerError(f"answer is not a JSON object ({len(body)} bytes)")
        if answer.get("status") != "success":
            error = answer.get("error")
            detail = f": {error}" if isinstance(error, str) else ""
            raise PrometheusAnswerError(self.redact(f"status is {answer.get('status')!r}, not 'success'{detail}")[:300])
        data = answer.get("data")
        if not isinstance(data, dict):
            raise PrometheusAnswerError("answer has no 'data' object")
        if data.get("resultType") != "vector":
            raise PrometheusAnswerError(self.redact(f"resultType is {data.get('resultType')!r}, not 'vector'")[:200])
        result = data.get("result")
        if not isinstance(result, list):
            raise PrometheusAnswerError("answer has no 'data.result' list")
        return result

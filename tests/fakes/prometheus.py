"""A fault-injecting fake Prometheus: real HTTP on 127.0.0.1 with crafted, slow, malformed or failing answers.

    with FakePrometheus() as prom:
        prom.answer("istio_requests_total", vector(sample(labels, "NaN")))   # by a substring of the query
        prom.answer("_bucket", Reply(status=500, body={"status": "error", "error": "boom"}))
        prom.answer("", Reply(body=vector(), bytes_per_second=1))            # trickles its answer
        source = PrometheusSource(prom.url)

Answers are matched by a substring of the PromQL (or its start, with `prefix=True`), the most recently
registered rule first; unmatched queries get an empty vector. With `bearer_token` or
`basic_auth` set, a request without those credentials gets HTTP 401. Every query, and the Authorization
header it came with, is recorded. Slow answers stop as soon as the client goes away or the server stops.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Body = bytes | str | dict[str, Any] | list[Any]


@dataclass
class Reply:
    body: Body = field(default_factory=lambda: vector())
    status: int = 200
    bytes_per_second: float | None = None  # send the body this slowly (Content-Length announced up front)
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # a Content-Length to announce instead of the real one
    raw: bytes | None = None  # the whole HTTP response as written (status line and headers included)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def vector(*samples: dict[str, Any]) -> dict[str, Any]:
    """A successful instant-query answer."""
    return {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}


def sample(labels: Any, value: Any, timestamp: Any = 1700000000.0, *, raw: bool = False) -> dict[str, Any]:
    """One vector element. A number is written as Prometheus does (a string); anything else, or any value
    with `raw`, is sent as given (e.g. "NaN", "+Inf", 5, [1])."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    shown = f"{value:g}" if number and not raw else value
    return {"metric": labels, "value": [timestamp, shown]}


def istio(namespace: str, service: str, version: str, **extra: str) -> dict[str, str]:
    """Istio's destination labels for one workload version, plus e.g. response_code, le, pod."""
    return {
        "destination_workload_namespace": namespace,
        "destination_service_name": service,
        "destination_version": version,
        **extra,
    }


class FakePrometheus:
    def __init__(
        self,
        *,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        tls: tuple[str, str] | None = None,  # (certificate file, key file): serve https
    ) -> None:
        self.rules: list[tuple[str, Reply | Callable[[str], Reply], bool]] = []
        self.queries: list[str] = []
        self.authorizations: list[str | None] = []
        self.expected_auth: str | None = None
        if bearer_token is not None:
            self.expected_auth = f"Bearer {bearer_token}"
        if basic_auth is not None:
            self.expected_auth = "Basic " + b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def url_with(self, userinfo: str) -> str:
        return self.url.replace("://", f"://{userinfo}@", 1)

    def answer(
        self, contains: str, reply: Reply | dict[str, Any] | Callable[[str], Reply], *, prefix: bool = False
    ) -> None:
        """Answer queries containing `contains` (starting with it, with `prefix`) with `reply`; newest rule first."""
        rule = Reply(body=reply) if isinstance(reply, dict) else reply
        with self._lock:
            self.rules.insert(0, (contains, rule, prefix))

    def reply_for(self, query: str) -> Reply:
        with self._lock:
            self.queries.append(query)
            rules = list(self.rules)
        for contains, rule, prefix in rules:
            if query.startswith(contains) if prefix else contains in query:
                return rule(query) if callable(rule) else rule
        return Reply()

    def start(self) -> FakePrometheus:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakePrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(fake: FakePrometheus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_GET(self) -> None:
            self._serve(urllib.parse.urlsplit(self.path).query)

        def do_POST(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 16 * 1024 * 1024)
            self._serve(self.rfile.read(length).decode("utf-8", "replace"))

        def _serve(self, form: str) -> None:
            query = urllib.parse.parse_qs(form).get("query", [""])[0]
            auth = self.headers.get("Authorization")
            with fake._lock:
                fake.authorizations.append(auth)
            if fake.expected_auth is not None and auth != fake.expected_auth:
                with fake._lock:
                    fake.queries.append(query)
                reply = Reply(status=401, body={"status": "error", "errorType": "auth", "error": "unauthorized"})
            else:
                reply = fake.reply_for(query)
            if reply.raw is not None:
                self.close_connection = True
                self._write(reply.raw, reply.bytes_per_second)
                return
            body = reply.encoded()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(reply.declared_length or len(body)))
            self.send_header("Connection", "close")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.close_connection = True
            self._write(body, reply.bytes_per_second)

        def _write(self, data: bytes, bytes_per_second: float | None) -> None:
            try:
                if bytes_per_second is None:
                    self.wfile.write(data)
                    return
                pause = 1.0 / bytes_per_second
                for i in range(len(data)):  # bounded: one pass over the data
                    if fake.stopping.wait(pause):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            except OSError:  # the client gave up
                return

    return Handler


@pytest.fixture
def fake_prometheus() -> Iterator[FakePrometheus]:
    """A started FakePrometheus, stopped after the test (import it into a test module to use it)."""
    with FakePrometheus() as prom:
        yield prom


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` (bounded) for helpers that wait on server-side effects."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()

"""A webhook receiver on 127.0.0.1 for hooks and notifications: records every request, checks HMAC signatures, and
answers as told (status, delay, a body), path by path.

    with WebhookReceiver(secret=b"s3cret") as rx:
        rx.answer("/pre", Answer(status=503))          # a failing hook
        rx.answer("/slow", Answer(delay=5))            # slower than the caller's timeout
        ... rx.url + "/pre" ...
        assert rx.wait_for(lambda r: r.path == "/slack", timeout=5)
        assert all(r.signed_ok for r in rx.requests)   # with a secret: the signature matched the raw body

Answers are matched by path (exact), else the default Answer() (200, `{"ok": true}`). Slow answers stop as soon as
the receiver stops. Nothing here trusts the caller: a body that is not JSON is recorded with `json=None`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.webhook_signing import SIGNATURE_HEADER, verify


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    delay: float = 0.0
    content_type: str = "application/json"


@dataclass
class Received:
    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    at: float
    signed_ok: bool | None  # None: the receiver has no secret

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class WebhookReceiver:
    secret: bytes | None = None
    answers: dict[str, Answer | list[Answer]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def answer(self, path: str, answer: Answer | list[Answer]) -> None:
        """How `path` answers from now on; a list is used in order, its last answer repeated."""
        with self._lock:
            self.answers[path] = list(answer) if isinstance(answer, list) else answer

    def _answer_for(self, path: str) -> Answer:
        with self._lock:
            found = self.answers.get(path, Answer())
            if isinstance(found, list):
                return found.pop(0) if len(found) > 1 else found[0]
            return found

    def _record(self, received: Received) -> None:
        with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()

    def received(self, path: str | None = None) -> list[Received]:
        with self._arrived:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, check: Callable[[Received], bool], timeout: float = 5.0) -> Received | None:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((r for r in self.requests if check(r)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._arrived.wait(left)

    @property
    def url(self) -> str:
        assert self._server is not None, "start the receiver first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> WebhookReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(rx: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def _serve(self, method: str) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
            body = self.rfile.read(length) if length > 0 else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            signed = None if rx.secret is None else verify(body, rx.secret, headers.get(SIGNATURE_HEADER.lower()))
            rx._record(Received(self.path, method, headers, body, time.monotonic(), signed))
            answer = rx._answer_for(self.path)
            if answer.delay and rx._stopping.wait(answer.delay):
                return
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except OSError:  # the caller gave up (its timeout)
                pass

    return Handler


@pytest.fixture()
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"test-secret") as rx:
        yield rx

"""The hook client against real receivers on 127.0.0.1: the WebhookReceiver fake, and raw sockets for hostile
peers (dribbling, huge, reset, garbage, redirecting, echoing secrets). Every call must end within its total
timeout, never raise, and never put a secret or the URL's query in its reason."""

from __future__ import annotations

import itertools
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from controller.deadline import Deadline
from controller.hooks.client import MAX_ANSWER_BYTES, HookClient, public_url
from controller.hooks.payload import build_payload, encode
from controller.plan import build_plan
from controller.spec_hooks import Hook
from controller.webhook_signing import SIGNATURE_HEADER, verify
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, spec

BODY = b'{"version":1}'


def hook(url: str, **fields: object) -> Hook:
    return Hook.model_validate({"name": "smoke", "type": "pre-step", "url": url, **fields})


def client() -> HookClient:
    return HookClient(rng=random.Random(7))


@pytest.fixture()
def rx() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=b"test-secret") as receiver:
        yield receiver


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("test-secret\n")
    return path


@contextmanager
def raw_server(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that runs `serve` on each connection (in its own thread) until stopped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connections.append(conn)
            threading.Thread(target=_guarded, args=(serve, conn), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for conn in connections:
            conn.close()


def _guarded(serve: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with suppress(OSError):
        serve(conn)


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_the_payload_is_posted_as_json_and_signed_with_the_secret_from_the_file(
    rx: WebhookReceiver, secret_file: Path
) -> None:
    s = spec(NO_APPROVAL_YAML)
    plan = build_plan(s)
    h = hook(rx.url + "/pre", secret_file=str(secret_file), metadata={"suite": "smoke"})
    body = encode(build_payload(h, s, phase="Progressing", step=2, steps=3, routing=plan.steps[1].routing,
                                reason="before step 2/3: 10%", at=0.0))  # fmt: skip
    answer = client().call(h, body)
    assert answer.ok is True and answer.status == 200 and answer.attempts == 1
    (got,) = rx.received("/pre")
    assert got.method == "POST" and got.signed_ok is True and got.body == body
    assert got.headers["content-type"] == "application/json" and got.headers["x-ramp-hook"] == "smoke"
    assert got.json == {
        "version": 1, "hook": "smoke", "type": "pre-step", "rollout": "shop", "namespace": "prod", "service": "shop",
        "target": "v2", "phase": "Progressing", "step": 2, "steps": 3, "weights": {"v1": 90, "v2": 10},
        "header_routes": [{"header": "x-version", "match": "exact", "value": "v2", "version": "v2"}],
        "reason": "before step 2/3: 10%", "metadata": {"suite": "smoke"}, "at": "1970-01-01T00:00:00Z",
    }  # fmt: skip


def test_a_rotated_secret_is_used_at_the_next_call(rx: WebhookReceiver, secret_file: Path) -> None:
    h = hook(rx.url + "/pre", secret_file=str(secret_file))
    c = client()
    assert c.call(h, BODY).ok
    secret_file.write_text("rotated-secret-value\n")
    rx.secret = b"rotated-secret-value"
    assert c.call(h, BODY).ok
    _first, second = rx.received("/pre")
    assert second.signed_ok is True
    assert not verify(second.body, b"test-secret", second.headers[SIGNATURE_HEADER.lower()])


def test_without_a_secret_file_nothing_is_signed(rx: WebhookReceiver) -> None:
    assert client().call(hook(rx.url + "/pre"), BODY).ok
    assert SIGNATURE_HEADER.lower() not in rx.received("/pre")[0].headers


def test_an_unusable_secret_file_is_not_answered_and_nothing_is_sent_unsigned(
    rx: WebhookReceiver, tmp_path: Path
) -> None:
    answer = client().call(hook(rx.url + "/pre", secret_file=str(tmp_path / "missing")), BODY)
    assert answer.ok is None and "hook secret file" in answer.reason and str(tmp_path / "missing") in answer.reason
    assert rx.received() == []


def test_failures_are_retried_with_growing_jittered_backoff(rx: WebhookReceiver) -> None:
    rx.answer("/pre", [Answer(503), Answer(502), Answer(500), Answer(200)])
    answer = client().call(hook(rx.url + "/pre", retries=3, timeout=10), BODY)
    assert answer.ok is True and answer.attempts == 4
    times = [r.at for r in rx.received("/pre")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Backoff 0.2 s * 2^i times a jitter in [0.5, 1): at least 0.1, 0.2, 0.4 s; at most 0.2, 0.4, 0.8 s (+ slack).
    for i, gap in enumerate(gaps):
        assert 0.1 * 2**i <= gap <= 0.2 * 2**i + 0.25, gaps
    deliveries = {r.headers["x-ramp-delivery"] for r in rx.received("/pre")}
    assert len(deliveries) == 1  # one delivery id across retries: a receiver can tell a retry from a new call


def test_retries_exhausted_is_a_failure_naming_the_status_and_the_attempts(rx: WebhookReceiver) -> None:
    rx.answer("/pre", Answer(503))
    answer = client().call(hook(rx.url + "/pre", retries=2), BODY)
    assert (answer.ok, answer.reason, answer.attempts, answer.status) == (False, "HTTP 503 after 3 attempts", 3, 503)
    assert len(rx.received("/pre")) == 3


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_client_error_is_a_definite_answer_and_is_not_retried(rx: WebhookReceiver, status: int) -> None:
    rx.answer("/pre", Answer(status))
    answer = client().call(hook(rx.url + "/pre", retries=5), BODY)
    assert (answer.ok, answer.reason) == (False, f"HTTP {status}")
    assert len(rx.received("/pre")) == 1


def test_429_is_retried(rx: WebhookReceiver) -> None:
    rx.answer("/pre", [Answer(429), Answer(204, body=b"")])
    assert client().call(hook(rx.url + "/pre", retries=1), BODY).ok is True


def test_any_2xx_body_is_success_and_never_interpreted(rx: WebhookReceiver) -> None:
    rx.answer("/pre", Answer(200, body=b'{"ok": false, "promote": "no"} \x00\xff garbage', content_type="x/y"))
    assert client().call(hook(rx.url + "/pre"), BODY).ok is True


def test_the_timeout_is_total_with_retries_included(rx: WebhookReceiver) -> None:
    rx.answer("/slow", Answer(delay=5))
    started = time.monotonic()
    answer = client().call(hook(rx.url + "/slow", timeout=1, retries=5), BODY)
    took = time.monotonic() - started
    assert answer.ok is False and answer.reason.startswith("timeout") and took < 1.5
    # Slow failures: each attempt takes 0.4 s; retries and backoff stop at the total timeout.
    rx.answer("/slow-503", Answer(503, delay=0.4))
    started = time.monotonic()
    answer = client().call(hook(rx.url + "/slow-503", timeout=1, retries=10), BODY)
    assert answer.ok is False and time.monotonic() - started < 1.5
    assert 1 <= len(rx.received("/slow-503")) <= 3


def test_a_shorter_tick_deadline_bounds_the_call_and_is_not_the_receivers_failure(rx: WebhookReceiver) -> None:
    rx.answer("/slow", Answer(delay=5))
    started = time.monotonic()
    answer = client().call(hook(rx.url + "/slow", timeout=10), BODY, deadline=Deadline(0.5))
    assert time.monotonic() - started < 1.0
    assert answer.ok is None and "tick's deadline" in answer.reason
    # A definite answer within the tick's time stays a failure.
    rx.answer("/no", Answer(500))
    answer = client().call(hook(rx.url + "/no", timeout=10, retries=0), BODY, deadline=Deadline(0.5))
    assert answer.ok is False and answer.reason == "HTTP 500"


def test_redirects_are_not_followed(rx: WebhookReceiver) -> None:
    def redirect(conn: socket.socket) -> None:
        _read_request(conn)
        location = f"{rx.url}/elsewhere"
        conn.sendall(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())

    with raw_server(redirect) as url:
        answer = client().call(hook(url + "/pre", retries=3), BODY)
    assert (answer.ok, answer.reason, answer.attempts) == (False, "HTTP 307 (redirects are not followed)", 1)
    assert rx.received("/elsewhere") == []


def test_a_dribbling_receiver_never_holds_the_call_past_its_timeout() -> None:
    def dribble(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"x")
            time.sleep(0.1)

    with raw_server(dribble) as url:
        started = time.monotonic()
        answer = client().call(hook(url + "/pre", timeout=1, retries=3), BODY)
        assert time.monotonic() - started < 1.5
    assert answer.ok is False and answer.reason.startswith("timeout")


def test_a_huge_answer_is_cut_off_and_is_a_failure() -> None:
    def huge(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 65536
        for _ in range(64):  # 4 MiB, chunked: no Content-Length to refuse up front
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    with raw_server(huge) as url:
        started = time.monotonic()
        answer = client().call(hook(url + "/pre", timeout=5, retries=0), BODY)
        assert time.monotonic() - started < 2
    assert answer.ok is False and answer.reason == f"answer larger than {MAX_ANSWER_BYTES} bytes"


def test_a_reset_connection_is_a_failure_and_is_retried() -> None:
    attempts: list[int] = []

    def reset(conn: socket.socket) -> None:
        attempts.append(1)
        _read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST

    with raw_server(reset) as url:
        answer = client().call(hook(url + "/pre", timeout=5, retries=2), BODY)
    assert answer.ok is False and answer.reason.startswith("no answer:") and answer.attempts == 3
    assert len(attempts) == 3


def test_garbage_instead_of_http_is_a_failure() -> None:
    def garbage(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"\x00\x01 HELLO \xff\r\n\r\n")
        conn.close()

    with raw_server(garbage) as url:
        answer = client().call(hook(url + "/pre", timeout=2, retries=0), BODY)
    assert answer.ok is False and answer.reason.startswith("no answer:") and answer.reason.isprintable()


def test_connection_refused_is_a_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = client().call(hook(f"http://127.0.0.1:{port}/pre", timeout=2, retries=1), BODY)
    assert answer.ok is False and "refused" in answer.reason.lower()


def test_a_receiver_echoing_the_secret_and_the_query_token_never_gets_them_into_the_reason(secret_file: Path) -> None:
    def echo(conn: socket.socket) -> None:
        request = _read_request(conn).decode("latin-1")
        first = request.split("\r\n")[0]  # POST /pre?token=... HTTP/1.1
        signature = next(
            line.split(": ", 1)[1] for line in request.split("\r\n") if line.lower().startswith("x-ramp-sig")
        )
        conn.sendall(f"HTTP/1.1 {first} test-secret {signature}\r\n\r\n".encode())  # a bad status line
        conn.close()

    with raw_server(echo) as url:
        h = hook(url + "/pre?token=query-token-123&x=1", secret_file=str(secret_file), timeout=2, retries=0)
        answer = client().call(h, BODY)
    assert answer.ok is False and answer.reason
    for leaked in ("test-secret", "query-token-123", "token=", "sha256="):
        assert leaked not in answer.reason, answer.reason
    assert "\n" not in answer.reason and len(answer.reason) <= 200


def test_public_url_drops_userinfo_query_and_fragment() -> None:
    assert public_url("https://h.example:8443/a/b?token=x#f") == "https://h.example:8443/a/b"


def test_the_payload_is_valid_json_even_with_hostile_text_in_reason_and_metadata() -> None:
    s = spec(NO_APPROVAL_YAML)
    h = hook("http://127.0.0.1:1/x", metadata={"k": '"\n\u2028'})
    body = encode(build_payload(h, s, phase="Failed", step=-1, steps=3, routing=build_plan(s).baseline,
                                reason="x" * 5000 + "\x00", at=1.5))  # fmt: skip
    data = json.loads(body)
    assert data["step"] == 0 and len(data["reason"]) == 2048 and data["metadata"] == {"k": '"\n\u2028'}

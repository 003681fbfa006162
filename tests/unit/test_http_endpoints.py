"""The hardened /metrics, /healthz, /readyz server, with real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from controller import cli_run
from controller.cli import build_parser, main
from controller.cli_run import listen_address
from controller.controller_loop import DEFAULT_TICK_DEADLINE
from controller.http_endpoints import EndpointServer, listen_address_type, parse_listen_address


def http_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ramp-http")]


def handlers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ramp-http-handler"]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        if check():
            return True
        time.sleep(0.02)
    return False


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    received = b""
    while len(received) < limit:  # bounded; each recv bounded by the socket timeout
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


@pytest.fixture()
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("ramp_test_requests", "a test counter", registry=registry).inc(3)
    return registry


@pytest.fixture()
def server(registry: CollectorRegistry) -> Iterator[EndpointServer]:
    ready = {"ok": False}
    endpoint = EndpointServer(
        registry, lambda: (True, "ok: ticking"), lambda: (ready["ok"], "not ready: specs missing"),
        host="127.0.0.1", port=0, header_timeout=1.0, write_timeout=2.0, max_handlers=4, max_pending=32,
    )  # fmt: skip
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def test_serves_metrics_health_readiness_and_refuses_anything_else(server: EndpointServer) -> None:
    status, body = get(server.port, "/metrics")
    assert status == 200 and b"ramp_test_requests_total 3.0" in body
    assert get(server.port, "/healthz") == (200, b"ok: ticking\n")
    assert get(server.port, "/readyz?verbose=1") == (503, b"not ready: specs missing\n")
    assert get(server.port, "/nothing")[0] == 404
    assert raw(server.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").startswith(b"HTTP/1.0 405 ")
    assert raw(server.port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    head = raw(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")  # headers only
    assert raw(server.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 431 ")
    assert server.stats.too_large == 1


def test_a_failing_check_is_a_503_not_a_crash(registry: CollectorRegistry) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    endpoint = EndpointServer(registry, broken, broken, host="127.0.0.1", port=0).start()
    try:
        assert get(endpoint.port, "/healthz") == (503, b"check failed: RuntimeError: boom\n")
        assert get(endpoint.port, "/metrics")[0] == 200
    finally:
        endpoint.stop()


def test_200_idle_connections_keep_threads_bounded_and_all_end_after_the_timeout(server: EndpointServer) -> None:
    before = len(http_threads())
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        # While they are open, a scrape still gets through (the oldest idle connection is evicted for it).
        status, body = get(server.port, "/metrics")
        assert status == 200 and b"ramp_test_requests_total" in body
        assert len(http_threads()) <= max(before, 1 + server.max_handlers)
        for sock in idle:  # every idle connection is closed by the server: evicted, or 408 at the deadline
            reply = read_until_closed(sock)
            assert reply == b"" or reply.startswith(b"HTTP/1.0 408 ")
    finally:
        for sock in idle:
            sock.close()
    # Each idle connection ended one of two ways: evicted (at most max_pending wait at once), or 408.
    assert server.stats.timed_out + server.stats.evicted == 200 and server.stats.timed_out >= 1, server.stats
    deadline = time.monotonic() + 5
    while len(http_threads()) > 1 and time.monotonic() < deadline:  # only the front thread stays
        time.sleep(0.05)
    assert [t.name for t in http_threads()] == ["ramp-http"]


def test_a_dribbling_client_is_cut_at_the_total_deadline_not_per_read(server: EndpointServer) -> None:
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for byte in request:  # one byte every 0.1 s: each read is quick, the request as a whole is not
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            time.sleep(0.1)
            if server.stats.timed_out:
                break
        reply = read_until_closed(sock)
    assert sent < len(request)  # cut before the request was complete
    assert reply.startswith(b"HTTP/1.0 408 ") and server.stats.timed_out == 1
    assert server.stats.served == 0


def test_requests_beyond_the_handler_bound_get_503_at_once(registry: CollectorRegistry) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_ready() -> tuple[bool, str]:
        entered.release()
        release.wait(10)
        return True, "ready"

    endpoint = EndpointServer(registry, lambda: (True, "ok"), slow_ready, host="127.0.0.1", port=0,
                              max_handlers=2).start()
    results: list[tuple[int, bytes]] = []
    waiting = [threading.Thread(target=lambda: results.append(get(endpoint.port, "/readyz", 15))) for _ in range(2)]
    try:
        for thread in waiting:
            thread.start()
        for _ in range(2):
            assert entered.acquire(timeout=5)  # both handler slots are busy now
        assert get(endpoint.port, "/healthz", timeout=5) == (503, b"busy: too many requests in progress\n")
        assert endpoint.stats.busy == 1
        assert len([t for t in http_threads() if t.name == "ramp-http-handler"]) == 2
    finally:
        release.set()
        for thread in waiting:
            thread.join(15)
        endpoint.stop()
    assert results == [(200, b"ready\n"), (200, b"ready\n")]


def test_listen_address_parsing() -> None:
    assert parse_listen_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen_address("[::1]:9090") == ("::1", 9090)
    assert parse_listen_address("localhost:0") == ("localhost", 0)
    for bad in ("8080", ":8080", "host:", "host:99999", "::1:80", "host:-1", "host:80x"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)
    with pytest.raises(Exception, match="HOST:PORT"):
        listen_address_type("nope")


def test_listen_flags_of_ramp_controller_and_ramp_run(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    ctl = ["controller", "--specs", "specs", "--prometheus", "http://127.0.0.1:9"]
    assert listen_address(parser.parse_args(ctl)) == ("0.0.0.0", 8080)
    assert listen_address(parser.parse_args([*ctl, "--listen-port", "9090"])) == ("0.0.0.0", 9090)  # the alias
    assert listen_address(parser.parse_args([*ctl, "--listen-address", "[::1]:8081"])) == ("::1", 8081)
    for bad in (["--listen-port", "1", "--listen-address", "a:1"], ["--listen-port", "70000"],
                ["--listen-address", "8080"], ["--tick-deadline", "0"], ["--tick-deadline", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*ctl, *bad])
    run = ["run", "--prometheus", "http://127.0.0.1:9", "--envoy-routes-dir", "r", "--envoy-admin", "http://127.0.0.1:9"]
    assert listen_address(parser.parse_args(run)) is None  # ramp run: no server unless asked
    assert listen_address(parser.parse_args([*run, "--listen-address", "127.0.0.1:0"])) == ("127.0.0.1", 0)
    assert parser.parse_args(run).tick_deadline == DEFAULT_TICK_DEADLINE == cli_run.DEFAULT_TICK_DEADLINE


@pytest.mark.parametrize("command", ["run", "controller"])
def test_a_tick_deadline_shorter_than_the_prometheus_timeout_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--prometheus", "http://127.0.0.1:9", "--prometheus-timeout", "10", "--tick-deadline", "5"]
    if command == "run":
        argv += ["--envoy-routes-dir", str(tmp_path / "r"), "--envoy-admin", "http://127.0.0.1:9",
                 "--state-dir", str(tmp_path / "state")]
    else:
        argv += ["--specs", str(tmp_path)]
    assert main(argv) == 2
    assert "--tick-deadline (5s) must be at least --prometheus-timeout (10s)" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_a_client_that_never_reads_its_response_is_cut_at_the_write_deadline(registry: CollectorRegistry) -> None:
    huge = "x" * 32_000_000  # far more than the socket buffers hold
    endpoint = EndpointServer(registry, lambda: (True, huge), lambda: (True, "ready"), host="127.0.0.1", port=0,
                              write_timeout=0.5).start()
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert eventually(lambda: len(handlers()) == 1)  # the handler is writing, the client not reading
            assert eventually(lambda: not handlers(), timeout=10)  # it gave up at the write deadline
        assert endpoint.stats.served == 0  # cut, not served
        assert get(endpoint.port, "/readyz") == (200, b"ready\n")  # and the slot was given back
    finally:
        endpoint.stop()

"""`ramp loadtest`'s HTTP API on 127.0.0.1: start (idempotent per rollout and step), capacity, signatures, stop,
runs, and hostile requests; load goes to a real receiver on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.analysis.credentials import CredentialFile
from controller.deadline import Deadline
from controller.http_deadline import HttpAnswer, bounded_request
from controller.loadtest.request import Caps
from controller.loadtest.server import LoadTestServer
from controller.loadtest.tester import LoadTester
from controller.webhook_signing import SIGNATURE_HEADER, sign
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.unit.test_loadtest_request import payload

CAPS = Caps(max_rps=50, max_duration=60, max_concurrency=4, max_runs=2, max_timeout=5)


@pytest.fixture()
def target() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as rx:
        yield rx


def serve(secret: CredentialFile | None = None) -> tuple[LoadTestServer, str]:
    server = LoadTestServer(LoadTester(CAPS), "127.0.0.1", 0, secret=secret).start()
    return server, f"http://127.0.0.1:{server.port}"


@pytest.fixture()
def api() -> Iterator[str]:
    server, url = serve()
    try:
        yield url
    finally:
        server.stop()
        server.tester.close()


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = bounded_request("POST", url, deadline=Deadline(5), body=data,
                             headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
    return answer.status, json.loads(answer.body)


def get(url: str) -> HttpAnswer:
    return bounded_request("GET", url, deadline=Deadline(5))


def load(target: WebhookReceiver, **metadata: Any) -> dict[str, Any]:
    return {"url": target.url + "/api", "rps": "20", "duration": "10s", **metadata}


def test_start_sends_the_header_of_the_step_and_is_idempotent_per_rollout_and_step(
    api: str, target: WebhookReceiver
) -> None:
    status, first = post(api + "/start", payload(load(target)))
    assert status == 202 and first["started"] is True and first["run"]["header"] == "x-version: v2"
    status, again = post(api + "/start", payload(load(target)))  # the hook retried, or called on the next tick
    assert status == 202 and again["started"] is False and again["id"] == first["id"]
    assert target.wait_for(lambda r: r.path == "/api", timeout=3) is not None
    runs = json.loads(get(api + "/runs").body)["runs"]
    assert [r["id"] for r in runs] == [first["id"]] and runs[0]["state"] == "running"
    assert {"sent", "ok", "errors", "started", "ends", "in_flight"} <= runs[0].keys()
    assert all(r.headers.get("x-version") == "v2" for r in target.received("/api"))
    # Another step of the same rollout is another run; stopping by rollout stops both.
    status, other = post(api + "/start", payload(load(target), step=2))
    assert status == 202 and other["started"] is True and other["id"] != first["id"]
    status, stopped = post(api + "/stop", {"rollout": "reviews", "namespace": "shop"})
    assert status == 200 and sorted(stopped["stopped"]) == sorted([first["id"], other["id"]])
    time.sleep(0.3)
    runs = json.loads(get(api + "/runs").body)["runs"]
    assert {r["state"] for r in runs} == {"stopped"}
    # Once ended, the same rollout and step start a new run.
    status, fresh = post(api + "/start", payload(load(target)))
    assert status == 202 and fresh["started"] is True and fresh["id"] not in (first["id"], other["id"])
    status, stopped = post(api + "/stop", {"id": fresh["id"]})
    assert stopped["stopped"] == [fresh["id"]]


def test_at_capacity_new_runs_get_429_and_idempotent_ones_still_202(api: str, target: WebhookReceiver) -> None:
    for rollout in ("a", "b"):
        assert post(api + "/start", payload(load(target), rollout=rollout))[0] == 202
    answer = bounded_request("POST", api + "/start", deadline=Deadline(5),
                             body=json.dumps(payload(load(target), rollout="c")).encode())  # fmt: skip
    assert answer.status == 429 and answer.headers["retry-after"] == "10"
    assert "at capacity: 2 runs are running (at most 2)" in json.loads(answer.body)["error"]
    assert post(api + "/start", payload(load(target), rollout="a"))[1]["started"] is False
    post(api + "/stop", {"rollout": "a", "namespace": "shop"})
    time.sleep(0.3)
    assert post(api + "/start", payload(load(target), rollout="c"))[0] == 202  # room again


def test_bad_input_is_400_with_the_reason(api: str, target: WebhookReceiver) -> None:
    status, body = post(api + "/start", payload(load(target, rps="1000")))
    assert status == 400 and "above this load tester's limit of 50" in body["error"]
    assert post(api + "/start", b"\x00not json")[1] == {"error": "body is not JSON"}
    assert post(api + "/stop", {"nothing": 1})[0] == 400
    assert json.loads(get(api + "/runs").body) == {"runs": []}  # nothing started


def test_signatures_are_checked_and_the_secret_file_is_re_read_when_rotated(
    tmp_path: Path, target: WebhookReceiver
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("first-secret\n")
    server, api = serve(CredentialFile(secret_file, "load tester secret"))
    try:
        body = json.dumps(payload(load(target))).encode()
        assert post(api + "/start", body)[0] == 401  # unsigned
        assert post(api + "/start", body, {SIGNATURE_HEADER: sign(body, b"wrong")})[0] == 401
        assert post(api + "/start", body + b" ", {SIGNATURE_HEADER: sign(body, b"first-secret")})[0] == 401
        assert post(api + "/stop", {"rollout": "reviews"})[0] == 401  # stop needs it too
        assert post(api + "/start", body, {SIGNATURE_HEADER: sign(body, b"first-secret")})[0] == 202
        secret_file.write_text("second-secret-rotated\n")
        stop = json.dumps({"rollout": "reviews", "namespace": "shop"}).encode()
        assert post(api + "/stop", stop, {SIGNATURE_HEADER: sign(stop, b"first-secret")})[0] == 401
        status, stopped = post(api + "/stop", stop, {SIGNATURE_HEADER: sign(stop, b"second-secret-rotated")})
        assert status == 200 and len(stopped["stopped"]) == 1
        assert get(api + "/readyz").status == 200
        secret_file.unlink()  # an unusable secret refuses every POST: never accepts unsigned ones
        answer = post(api + "/start", body, {SIGNATURE_HEADER: sign(body, b"second-secret-rotated")})
        assert answer[0] == 503 and "rotated" not in json.dumps(answer[1]) and str(tmp_path) not in answer[1]["error"]
        assert get(api + "/readyz").status == 503 and get(api + "/healthz").status == 200
    finally:
        server.stop()
        server.tester.close()


def raw(api: str, data: bytes, pause: float = 0.0) -> bytes:
    port = int(api.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_hostile_requests_get_an_answer_never_a_crash(api: str) -> None:
    assert raw(api, b"POST /start HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 411")
    chunked = b"POST /start HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert raw(api, chunked).startswith(b"HTTP/1.0 411")
    assert raw(api, b"POST /start HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").startswith(b"HTTP/1.0 413")
    assert raw(api, b"POST /start HTTP/1.1\r\nContent-Length: -1\r\n\r\n").startswith(b"HTTP/1.0 411")
    short = raw(api, b"POST /start HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", pause=0.0)
    assert short.startswith(b"HTTP/1.0 408")  # the rest never comes: cut off at the total deadline
    assert raw(api, b"GET /start HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405")
    assert raw(api, b"DELETE /runs HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405")
    assert raw(api, b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404")
    assert raw(api, b"garbage\r\n\r\n").startswith(b"HTTP/1.0 400")
    assert get(api + "/healthz").status == 200
    metrics = get(api + "/metrics").body.decode()
    assert "ramp_loadtest_active_runs 0.0" in metrics and "ramp_loadtest_runs_total" in metrics


def test_ramp_loadtest_serves_and_stops_on_sigterm(tmp_path: Path, target: WebhookReceiver) -> None:
    """The CLI as the chart runs it: listens, starts a run from a payload, and exits 0 on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "loadtest", "--listen", f"127.0.0.1:{port}", "--max-rps", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "RAMP_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().strip() == f"ramp loadtest: listening on 127.0.0.1:{port}"
        api = f"http://127.0.0.1:{port}"
        assert post(api + "/start", payload(load(target, rps="31")))[0] == 400  # the server's cap
        assert post(api + "/start", payload(load(target)))[0] == 202
        assert target.wait_for(lambda r: r.path == "/api", timeout=5) is not None
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"load run started" in stderr

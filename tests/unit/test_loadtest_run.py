"""A load run against real HTTP servers on 127.0.0.1: its rate, duration, total and per-request deadline are bounded,
and its counts are what the target saw."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from scipy.stats import binom

from controller.loadtest.request import LoadRequest
from controller.loadtest.run import LoadRun
from services.sample_app.app import Knobs, make_server
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

BASE = LoadRequest(
    rollout="reviews", namespace="shop", step=1, target="v2", url="", rps=40.0, duration=2.0, concurrency=4,
    timeout=2.0, max_requests=80, header=("x-version", "v2"), host="reviews.shop.svc.cluster.local", method="GET",
)  # fmt: skip


@pytest.fixture()
def target() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as rx:
        yield rx


def test_the_rate_is_never_exceeded_and_the_run_ends_by_itself(target: WebhookReceiver) -> None:
    """Starts are paced at least 1/rps apart, so by t seconds at most floor(rps t) + 1 have started: a hard bound
    (it holds on any machine), checked while the run goes. The lower bound is a tolerance, not a guarantee: on this
    target (answers in about a millisecond, 4 workers for 40 rps) a start is late only by scheduling delays, and a
    late start pushes the later ones back rather than bursting; 80% of the 80 planned starts leaves 0.4 s of such
    delays over 2 s."""
    run = LoadRun("r1", replace(BASE, url=target.url + "/api")).start()
    samples = 0
    while run.running:
        sent = run.sent
        elapsed = time.monotonic() - run.started_monotonic  # measured after reading: an upper bound of the time
        assert sent <= math.floor(BASE.rps * elapsed) + 1, (sent, elapsed)
        samples += 1
        time.sleep(0.013)
    ended = time.monotonic() - run.started_monotonic
    assert samples > 50
    assert ended <= BASE.duration + 0.5  # every request answered at once: it ends at its duration
    status = run.status()
    assert status["state"] == "finished" and status["ended"] is not None and status["in_flight"] == 0
    assert 0.8 * 80 <= status["sent"] <= 80 and status["ok"] == status["sent"] and status["errors"] == {}
    received = target.received("/api")
    assert len(received) == status["sent"]
    assert all(r.headers["x-version"] == "v2" and r.headers["host"] == BASE.host for r in received)
    assert all(r.headers["user-agent"] == "ramp-loadtest/1" for r in received)
    time.sleep(0.3)
    assert len(target.received("/api")) == status["sent"]  # nothing after the end


def test_at_most_max_requests_are_sent(target: WebhookReceiver) -> None:
    run = LoadRun("r2", replace(BASE, url=target.url + "/api", rps=50, duration=60, max_requests=7)).start()
    assert run.join(5)
    assert run.status()["sent"] == 7 and len(target.received("/api")) == 7


def test_every_request_has_a_total_timeout_and_a_slow_target_cannot_stretch_the_run(target: WebhookReceiver) -> None:
    target.answer("/slow", Answer(delay=30))
    request = replace(BASE, url=target.url + "/slow", rps=10, duration=1.0, concurrency=2, timeout=0.3)
    started = time.monotonic()
    run = LoadRun("r3", request).start()
    assert run.join(request.duration + request.timeout + 2)
    assert time.monotonic() - started <= request.duration + request.timeout + 0.5
    status = run.status()
    # Two workers, each blocked 0.3 s per request: about 1 s / 0.3 s x 2 starts, all timed out.
    assert 2 <= status["sent"] <= 10 and status["errors"] == {"timeout": status["sent"]} and status["ok"] == 0
    assert "0.3s" in status["last_error"]


def test_stop_ends_the_run_at_once(target: WebhookReceiver) -> None:
    run = LoadRun("r4", replace(BASE, url=target.url + "/api", duration=60, max_requests=2400)).start()
    time.sleep(0.3)
    run.stop("stopped by request")
    assert run.join(3)
    status = run.status()
    assert status["state"] == "stopped" and status["stop_reason"] == "stopped by request"
    assert status["sent"] <= math.floor(BASE.rps * 0.3 + 3) + 1


def test_errors_are_counted_by_code_within_binomial_bounds() -> None:
    """The sample app fails a fraction p of requests with 500 (its own seeded RNG): the run's `errors["500"]` must
    be a plausible Binomial(n, p) draw (two-sided, alpha 0.001), and ok + errors account for every request."""
    p = 0.2
    server = make_server(Knobs(version="v2", error_rate=p, rng=random.Random(12)), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/version"
        run = LoadRun("r5", replace(BASE, url=url, rps=100, duration=3.0, max_requests=300, concurrency=8)).start()
        assert run.join(10)
    finally:
        server.shutdown()
        server.server_close()
    status = run.status()
    n = status["sent"]
    low, high = int(binom.ppf(0.0005, n, p)), int(binom.isf(0.0005, n, p))
    assert n >= 200 and set(status["errors"]) == {"500"}
    assert low <= status["errors"]["500"] <= high, (status, low, high)
    assert status["ok"] + status["errors"]["500"] == n


def test_an_unreachable_target_is_counted_as_failed_never_raised() -> None:
    request = replace(BASE, url="http://127.0.0.1:9/", rps=20, duration=0.5, concurrency=1, timeout=1.0)
    run = LoadRun("r6", request).start()
    assert run.join(3)
    status = run.status()
    assert status["sent"] >= 1 and status["errors"] == {"failed": status["sent"]}
    assert "Connection" in status["last_error"] or "refused" in status["last_error"]

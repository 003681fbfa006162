"""Total deadlines and bounded answers: a slow, silent or huge Prometheus answer never hangs a tick.

The hang checks run the fetch in a thread and only assert that it came back within a generous bound
(far below the time the slow answer would take); they measure no performance.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from controller.analysis.gates import Verdict, evaluate_gates
from controller.analysis.metrics import MetricsSnapshot
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.deadline import Deadline
from tests.fakes.prometheus import FakePrometheus, Reply, istio, sample, vector
from tests.unit.engine_fixtures import spec

T = TypeVar("T")
HANG = 60.0  # seconds: "did not come back" (the slow answers below would take 10-100x longer)
REQUEST = MetricsRequest("prod", "shop", 10)
SHOP = spec(
    "service: shop\nnamespace: prod\nversions: [{name: v1, weight: 90}, {name: v2, weight: 10}]\n"
    "target: v2\ngates: [{metric: error_rate, max: 5}]\nanalysis: {min_requests: 20, window: 10s}\n"
)


def finishes(call: Callable[[], T]) -> T:
    """call() in a thread; fails the test if it has not returned within HANG seconds."""
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
    worker.start()
    worker.join(HANG)
    assert box, f"still waiting after {HANG:g}s: no total deadline"
    return box[0]


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def big_vector(rows: int) -> bytes:
    return Reply(body=vector(*[sample(istio("prod", "shop", "v2", response_code="200", pod=f"p{i}"), 1)
                               for i in range(rows)])).encoded()


def test_an_answer_sent_one_byte_a_second_ends_at_the_query_timeout(prom: FakePrometheus) -> None:
    """The bug: requests' timeout is per read, so a byte a second kept the controller waiting for ever."""
    prom.answer("", Reply(body=big_vector(20), bytes_per_second=1))  # about 2,500 s to send
    source = PrometheusSource(prom.url, timeout_seconds=1)
    snapshot = finishes(lambda: source.fetch([REQUEST])[REQUEST])
    assert snapshot.error == f"Prometheus at {prom.url} did not answer: no complete answer within 1s"
    assert len(prom.queries) == 1 and source.query_errors == 1  # the tick gave up: no second slow query
    report = evaluate_gates(SHOP, ("v1",), snapshot)
    assert report.verdict == Verdict.NO_DATA and "no complete answer within 1s" in report.reasons(Verdict.NO_DATA)


def test_slow_headers_are_bounded_too(prom: FakePrometheus) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: x\r\n" % i for i in range(90)) + b"\r\n"
    prom.answer("", Reply(raw=head, bytes_per_second=2))
    source = PrometheusSource(prom.url, timeout_seconds=1)
    snapshot = finishes(lambda: source.fetch([REQUEST])[REQUEST])
    assert snapshot.error is not None and "no complete answer within 1s" in snapshot.error


def test_the_tick_deadline_caps_every_query(prom: FakePrometheus) -> None:
    prom.answer("", Reply(body=big_vector(20), bytes_per_second=1))
    source = PrometheusSource(prom.url, timeout_seconds=3600)  # the tick's deadline is shorter: it wins
    snapshot = finishes(lambda: source.fetch([REQUEST], Deadline(1.0))[REQUEST])
    assert snapshot.error is not None and "no complete answer within 1s" in snapshot.error


def test_an_expired_tick_deadline_sends_no_query(prom: FakePrometheus) -> None:
    source = PrometheusSource(prom.url)
    snapshot = source.fetch([REQUEST], Deadline(0))[REQUEST]
    assert prom.queries == []
    assert snapshot.error == f"Prometheus at {prom.url} was not asked: the tick's deadline ran out"


def test_the_raw_counter_queries_share_the_tick_deadline(prom: FakePrometheus) -> None:
    prom.answer("istio_requests_total{", Reply(body=big_vector(20), bytes_per_second=1), prefix=True)
    source = PrometheusSource(prom.url, timeout_seconds=3600)
    request = MetricsRequest("prod", "shop", 10, cumulative_requests=True)
    snapshot = finishes(lambda: source.fetch([request], Deadline(1.5))[request])
    assert len(prom.queries) == 3  # two windowed queries answered at once, the raw one trickled
    assert snapshot.error is not None and "did not answer: no complete answer within" in snapshot.error


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never reads or writes
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        source = PrometheusSource(f"http://127.0.0.1:{port}", timeout_seconds=0.5)
        snapshot = finishes(lambda: source.fetch([REQUEST])[REQUEST])
    assert snapshot.error is not None and "no complete answer within 0.5s" in snapshot.error


def test_an_unreachable_prometheus_is_no_data_naming_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    source = PrometheusSource(f"http://127.0.0.1:{port}")
    snapshot = source.fetch([REQUEST])[REQUEST]
    assert snapshot.error is not None
    assert snapshot.error.startswith(f"Prometheus at http://127.0.0.1:{port} did not answer: ConnectionRefusedError")


def test_an_answer_larger_than_the_bound_is_no_data(prom: FakePrometheus) -> None:
    body = big_vector(200)
    prom.answer("", Reply(body=body))
    source = PrometheusSource(prom.url, max_response_bytes=4096)
    snapshot: MetricsSnapshot = source.fetch([REQUEST])[REQUEST]
    assert snapshot.error == (
        f"Prometheus at {prom.url} gave an unusable answer: answer of {len(body)} bytes is larger than 4096"
    )


def test_an_unannounced_answer_is_cut_at_the_bound_while_streaming(prom: FakePrometheus) -> None:
    """No Content-Length (close-delimited): the size is checked chunk by chunk, not after reading it all."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    prom.answer("", Reply(raw=head + big_vector(2000)))
    source = PrometheusSource(prom.url, max_response_bytes=64 * 1024)
    snapshot = source.fetch([REQUEST])[REQUEST]
    assert snapshot.error is not None and snapshot.error.endswith("answer larger than 65536 bytes")


def test_a_lying_content_length_is_no_data(prom: FakePrometheus) -> None:
    prom.answer("", Reply(body=vector(), declared_length=10**12))
    snapshot = PrometheusSource(prom.url).fetch([REQUEST])[REQUEST]
    assert snapshot.error is not None and "is larger than 67108864" in snapshot.error


def test_a_short_answer_within_the_deadline_is_used(prom: FakePrometheus) -> None:
    rows = [sample(istio("prod", "shop", v, response_code="200"), 100) for v in ("v1", "v2")]
    prom.answer("istio_requests_total", Reply(body=vector(*rows), bytes_per_second=2000))
    snapshot = PrometheusSource(prom.url, timeout_seconds=30).fetch([REQUEST], Deadline(30))[REQUEST]
    assert snapshot.error is None
    assert evaluate_gates(SHOP, ("v1",), snapshot).verdict == Verdict.PASS
    assert any(q.startswith("sum by (") for q in prom.queries)

"""`ramp report`'s cluster source, pure parts: hostile range answers, several controller replicas, the window; and
PrometheusHTTP.query_range over real HTTP (the request it sends, the answers it refuses, no leaked credentials).

The whole source against the Kubernetes emulator and a real Prometheus: tests/k8s/test_report_cluster_source.py.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from controller.analysis.prometheus_http import PrometheusAnswerError, PrometheusError, PrometheusHTTP
from controller.deadline import Deadline
from controller.engine.phases import Phase, PhaseChange, RolloutState
from controller.report.cluster_source import ReportSourceError, _gates_holding, report_window
from controller.report.model import MAX_NAME, MAX_TEXT, GateSample, TickSample
from controller.report.prometheus_range import MAX_POINTS, RangeAnswer, Series, keyed, last_value, parse_matrix
from tests.fakes.prometheus import FakePrometheus, Reply, vector

AT = 1_700_000_000.0


def series(labels: Any, *values: Any, start: float = AT) -> dict[str, Any]:
    return {"metric": labels, "values": [[start + i, v] for i, v in enumerate(values)]}


def test_values_are_numbers_gaps_or_skipped_never_an_exception() -> None:
    answer = parse_matrix([series({"version": "v2"}, "1.5", "NaN", "+Inf", "-Inf", "-1", "abc", "", None, True, 7,
                                  [1], "1e999", "9" * 100, " 2 ")])  # fmt: skip
    points = list(answer.series[0].points.values())
    # NaN and the infinities (1e999 too) are gaps; -1 and a bare number are values; junk is skipped and counted
    assert points == [1.5, None, None, None, -1.0, 7.0, None, 2.0]
    assert answer.skipped_points == 6 and answer.skipped_series == 0
    assert answer.problems() == "6 points unreadable or over the limits, skipped"


def test_wrong_shapes_missing_labels_and_repeated_times() -> None:
    answer = parse_matrix([
        series(None, "1"),  # no labels at all: a series without labels
        {"values": [[AT, "2"]]},  # no "metric": the same
        {"metric": {"version": "v1"}, "value": [AT, "1"]},  # an instant-vector item: not a range series
        {"metric": "v1", "values": []}, "junk", None, 5, [],
        {"metric": {"version": "v1", "pod": 7, "x" * 200: "y", "zone": "z" * 300}, "values": "1,2"},
        {"metric": {"version": "v2", "pod": 7}, "values": [[AT, "1"], [AT, "2"], ["later", "3"], [-1, "4"],
                                                        [float("nan"), "5"], [AT + 2], [AT + 3, "6", "7"], {"a": 1},
                                                        [True, "8"], [AT + 1, "9"]]},
    ])  # fmt: skip
    assert [dict(s.labels) for s in answer.series] == [{}, {}, {"version": "v2"}]
    assert answer.series[2].points == {AT: 1.0, AT + 1: 9.0}  # the first of a repeated time; sorted by time
    assert answer.skipped_series == 7 and answer.skipped_points == 8 and answer.skipped_labels == 1


@pytest.mark.parametrize("result", [None, {}, "matrix", 3, {"result": []}])
def test_an_answer_that_is_not_a_list_is_a_clear_error(result: object) -> None:
    with pytest.raises(PrometheusAnswerError, match=r"a range answer's result is \w+, not a list"):
        parse_matrix(result)


def test_series_and_points_are_capped() -> None:
    many = [series({"version": f"v{i}"}, "1") for i in range(100)]
    answer = parse_matrix(many)
    assert len(answer.series) == 64 and answer.skipped_series == 36
    huge = parse_matrix([{"metric": {}, "values": [[AT + i, "1"] for i in range(MAX_POINTS + 500)]}])
    assert len(huge.series[0].points) == MAX_POINTS and huge.skipped_points == 500
    wide = parse_matrix([{"metric": {f"l{i}": "x" for i in range(100)}, "values": []}])
    assert len(wide.series[0].labels) == 64 and wide.skipped_labels == 36


def answer_of(*items: tuple[dict[str, str], Mapping[float, float | None]]) -> RangeAnswer:
    return RangeAnswer(tuple(Series(labels, dict(points)) for labels, points in items))


def test_one_replica_is_read_as_it_is() -> None:
    found = keyed(answer_of(({"version": "v1", "pod": "a"}, {1.0: 90.0, 2.0: 80.0}),
                            ({"version": "v2", "pod": "a"}, {1.0: 10.0, 2.0: 20.0}),
                            ({"pod": "a"}, {1.0: 1.0})), "version")  # fmt: skip
    assert found.values == {"v1": {1.0: 90.0, 2.0: 80.0}, "v2": {1.0: 10.0, 2.0: 20.0}}
    assert (found.sources, found.unkeyed) == (1, 1)


def test_of_several_replicas_the_one_that_changed_last_is_shown_at_each_moment() -> None:
    # a former leader still exports what it last saw (v2 at 20) while the leader moves on; then a restart (pod c)
    stale = {t: 20.0 for t in (1.0, 2.0, 3.0, 4.0, 5.0)}
    leader = {1.0: 20.0, 2.0: 50.0, 3.0: 50.0, 4.0: 0.0}
    restarted = {5.0: 0.0}
    found = keyed(answer_of(({"version": "v2", "pod": "a"}, {0.0: 10.0, **stale}),
                            ({"version": "v2", "pod": "b"}, leader),
                            ({"version": "v2", "pod": "c"}, restarted)), "version")  # fmt: skip
    assert found.sources == 3
    assert found.values["v2"] == {0.0: 10.0, 1.0: 20.0, 2.0: 50.0, 3.0: 50.0, 4.0: 0.0, 5.0: 0.0}
    # one replica's values are kept together (never v1 from one and v2 from another at the same moment)
    mixed = keyed(answer_of(({"version": "v1", "pod": "a"}, {1.0: 100.0, 2.0: 100.0}),
                            ({"version": "v2", "pod": "a"}, {1.0: 0.0, 2.0: 0.0}),
                            ({"version": "v1", "pod": "b"}, {1.0: 90.0, 2.0: 50.0}),
                            ({"version": "v2", "pod": "b"}, {1.0: 10.0, 2.0: 50.0})), "version")  # fmt: skip
    assert {v: p[2.0] for v, p in mixed.values.items()} == {"v1": 50.0, "v2": 50.0}


def test_a_metric_without_a_key_label_and_the_last_value() -> None:
    found = keyed(answer_of(({"instance": "x"}, {1.0: 2.0, 2.0: None})), None)
    assert found.values == {"": {1.0: 2.0, 2.0: None}}
    assert last_value(found.values[""]) == (1.0, 2.0) and last_value({1.0: None}) is None


def state(phase: Phase, *times: float, observed: float | None = None) -> RolloutState:
    history = [PhaseChange(phase=phase, step=0, at=at) for at in times]
    return RolloutState(rollout="shop", spec_digest="d", phase=phase, history=history, observed_at=observed)


def test_the_window_covers_the_history_with_a_margin_and_at_most_1000_points_ending_now() -> None:
    now = AT + 3600
    # active: from the first change minus 30 s to now: 3630 s, at most 1000 points: every 4 s, now on the grid
    assert report_window(state(Phase.PROGRESSING, AT, AT + 60), None, now) == (AT - 32, now, 4.0, [])
    assert report_window(state(Phase.PROGRESSING, AT, AT + 60), None, AT + 600) == (AT - 30, AT + 600, 1.0, [])
    # finished: up to its last change (or its last observation) plus 30 s
    assert report_window(state(Phase.PROMOTED, AT, AT + 60, observed=AT + 70), None, now)[:3] == (AT - 30, AT + 100,
                                                                                               1.0)  # fmt: skip
    start, end, step, _ = report_window(state(Phase.PROGRESSING, AT - 5 * 86400), None, now)
    assert step == 436.0 and (end - start) / step <= 1000 and end == now and (end - start) % step == 0
    # no history: the last hour, said so; a history beyond 31 days: cut, said so
    assert report_window(state(Phase.PENDING), None, now)[3] == ["the rollout state has no phase history: the last "
                                                                 "60 minutes shown"]  # fmt: skip
    start, end, _, notes = report_window(state(Phase.PROGRESSING, 1.0), None, now)
    assert end - start >= 31 * 86400 and notes == ["the rollout's history goes back further than 31 days: not queried"]


def test_the_window_ignores_unreadable_times_and_refuses_a_bad_window() -> None:
    hostile = state(Phase.ROLLED_BACK, float("nan"), float("inf"), -3.0, AT, AT + 1e12, observed=float("nan"))
    assert report_window(hostile, None, AT + 100)[:3] == (AT - 30, AT + 30, 1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ReportSourceError, match="the window must be a positive number of seconds"):
            report_window(state(Phase.PROGRESSING, AT), bad, AT + 100)
    assert report_window(state(Phase.PROGRESSING, AT), 600.0, AT + 100)[:3] == (AT - 500, AT + 100, 1.0)


# -- PrometheusHTTP.query_range over real HTTP ---------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, dict[str, list[str]], str | None]]]
    body: ClassVar[bytes] = b""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        type(self).requests.append((self.path, urllib.parse.parse_qs(form), self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture()
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_query_range_posts_the_range_to_query_range_and_returns_the_matrix(
    recorder: tuple[str, type[_Recorder]],
) -> None:
    url, handler = recorder
    result = [series({"version": "v2"}, "10", "20")]
    handler.body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
    client = PrometheusHTTP(url + "/prom/?tenant=a")
    assert client.query_range("up", AT, AT + 60, 15, Deadline(5)) == result
    path, form, auth = handler.requests[-1]
    assert path == "/prom/api/v1/query_range" and auth is None
    assert {k: v for k, v in form.items() if k != "timeout"} == {
        "tenant": ["a"], "query": ["up"], "start": [f"{AT:.3f}"], "end": [f"{AT + 60:.3f}"], "step": ["15.000"]}
    assert 0 < float(form["timeout"][0]) <= 5
    with pytest.raises(PrometheusAnswerError, match="resultType is 'matrix', not 'vector'"):
        client.query("up", Deadline(5))  # the instant query is unchanged: it still wants a vector
    assert handler.requests[-1][0] == "/prom/api/v1/query"


@pytest.mark.parametrize(("start", "end", "step"), [
    (AT, AT - 1, 1), (AT, AT + 1, 0), (AT, AT + 1, -1), (float("nan"), AT, 1), (AT, float("inf"), 1), (-5, AT, 1),
    (AT, AT + 11_000, 1),
])  # fmt: skip
def test_query_range_refuses_a_range_prometheus_would_refuse(start: float, end: float, step: float) -> None:
    with pytest.raises(ValueError, match=r"not a range|points per series: more than 11000"):
        PrometheusHTTP("http://127.0.0.1:1").query_range("up", start, end, step, Deadline(1))


def test_query_range_refuses_a_vector_and_never_shows_credentials() -> None:
    with FakePrometheus() as fake:
        fake.answer("up", vector())
        fake.answer("bad", Reply(status=400, body={"status": "error", "errorType": "bad_data",
                                                   "error": "parse error near s3cr3t-pw"}))  # fmt: skip
        fake.answer("slow", Reply(body={"status": "success", "data": {"resultType": "matrix", "result": []}},
                                  bytes_per_second=20))  # fmt: skip
        client = PrometheusHTTP(fake.url_with("reader:s3cr3t-pw"))
        with pytest.raises(PrometheusAnswerError, match="resultType is 'vector', not 'matrix'"):
            client.query_range("up", AT, AT + 10, 1, Deadline(5))
        with pytest.raises(PrometheusAnswerError) as caught:
            client.query_range("bad", AT, AT + 10, 1, Deadline(5))
        assert str(caught.value) == "HTTP 400: bad_data: parse error near ***"
        with pytest.raises(PrometheusError, match=r"^no complete answer within 0.3s$"):
            client.query_range("slow", AT, AT + 10, 1, Deadline(0.3))
        assert all(auth is not None and auth.startswith("Basic ") for auth in fake.authorizations)


def test_a_hold_names_its_gates_and_hostile_gate_names_stay_within_the_limits() -> None:
    gates = [GateSample(gate="error_rate", verdict="no-data"), GateSample(gate="lat", verdict="hold"),
             GateSample(gate="ok", verdict="pass")]  # fmt: skip
    assert _gates_holding(gates) == (
        "no data: error_rate; held: lat (from ramp_gate_verdict; the full reasons are kept in local timelines only)"
    )
    assert _gates_holding(gates[2:]) == "" and _gates_holding([]) == ""
    hostile = [GateSample(gate=f"<script>{i}" + "x" * (MAX_NAME - 12), verdict="no-data") for i in range(64)]
    sample = TickSample(at=AT, verdict="no-data", gates=hostile, reason=_gates_holding(hostile))
    assert len(sample.reason) <= MAX_TEXT and sample.reason.startswith("no data: <script>0")

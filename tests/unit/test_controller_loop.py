"""The one controller loop: tick deadlines, abandoned ticks, standby, liveness and readiness."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from controller.analysis.metrics import MetricsSnapshot
from controller.analysis.prometheus import MetricsRequest, PrometheusSource
from controller.controller_loop import ControllerLoop, Outcome
from controller.controller_metrics import ControllerMetrics
from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.engine.scheduler import TickScheduler
from controller.http_endpoints import EndpointServer
from controller.spec_directory import SpecDirectory
from controller.state.file_store import FileStateStore
from tests.fakes.prometheus import FakePrometheus, Reply, vector
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, RecordingRouter, spec

TICK_DEADLINE = 0.3  # real seconds the loop waits for a hung tick


class FakeClock:
    """Monotonic time that only moves when told (the loop's waits stay real and short)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRunner:
    """A runner whose tick can hang (like a call stuck on a Prometheus that drips one byte a second)."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.deadlines: list[Deadline | None] = []
        self.hang = False
        self.release = threading.Event()
        self.fail: Exception | None = None
        self.rollouts: list[ManagedRollout] = []
        self.fail_set_rollouts = 0
        self.stood_down = 0
        self._lock = threading.Lock()

    def tick(self, deadline: Deadline | None = None) -> list[TickEvent]:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.deadlines.append(deadline)
            if self.hang:
                self.read_prometheus_answer()
            if self.fail is not None:
                raise self.fail
            return []
        finally:
            with self._lock:
                self.running -= 1

    def read_prometheus_answer(self) -> None:
        self.release.wait(30)

    def base_interval(self) -> float:
        return 5.0

    def stand_down(self) -> None:
        self.stood_down += 1

    def set_rollouts(self, rollouts: Sequence[ManagedRollout]) -> None:
        if self.fail_set_rollouts:
            self.fail_set_rollouts -= 1
            raise ConnectionError("store.track failed")
        self.rollouts = list(rollouts)


@pytest.fixture()
def runner() -> Iterator[FakeRunner]:
    fake = FakeRunner()
    yield fake
    fake.release.set()  # never leave a hung worker behind


def make_loop(runner: FakeRunner, clock: FakeClock, **kwargs: object) -> tuple[ControllerLoop, ControllerMetrics]:
    metrics = ControllerMetrics()
    loop = ControllerLoop(runner, metrics=metrics, tick_deadline=TICK_DEADLINE, interval=0.1, clock=clock,
                          **kwargs)  # type: ignore[arg-type]
    return loop, metrics


def sample(metrics: ControllerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_completed_tick_gets_the_deadline_and_records_its_end_and_duration(runner: FakeRunner) -> None:
    clock = FakeClock()
    loop, metrics = make_loop(runner, clock)
    assert loop.iterate() is Outcome.COMPLETED
    deadline = runner.deadlines[0]
    assert isinstance(deadline, Deadline) and deadline.seconds == TICK_DEADLINE
    assert loop.last_completed == clock.now and loop.last_duration == 0.0
    assert sample(metrics, "ramp_tick_duration_seconds_count") == 1
    assert sample(metrics, "ramp_last_loop_iteration_timestamp_seconds") > 0
    assert loop.health()[0] and loop.readiness() == (True, "acting (no leader election), leader=True, "
                                                           "last iteration completed 0.0s ago")


def test_a_hung_tick_is_abandoned_counted_and_no_second_tick_starts_while_it_runs(runner: FakeRunner) -> None:
    clock = FakeClock()
    loop, metrics = make_loop(runner, clock)
    assert loop.iterate() is Outcome.COMPLETED
    runner.hang = True
    with capture_logs() as logs:
        assert loop.iterate() is Outcome.ABANDONED  # the loop stopped waiting at the deadline
        for _ in range(3):
            assert loop.iterate() is Outcome.BUSY  # the abandoned tick still runs: nothing new starts
    assert runner.calls == 2 and runner.max_running == 1
    assert sample(metrics, "ramp_ticks_abandoned_total") == 1
    assert sample(metrics, "ramp_ticks_skipped_total", reason="previous_tick_running") == 3
    abandoned = [e for e in logs if e["event"] == "tick abandoned: it overran its deadline"]
    assert len(abandoned) == 1 and abandoned[0]["doing"].startswith("ticking the due rollouts")
    assert "read_prometheus_answer" in abandoned[0]["stack"]  # where the worker is stuck

    clock.advance(loop.liveness_limit - 0.5)  # wedged, but not yet for long enough to restart
    assert loop.health()[0]
    ready, body = loop.readiness()
    assert not ready and "not ticking; tick 2 abandoned, still running" in body
    clock.advance(1.0)
    healthy, body = loop.health()
    assert not healthy and body.startswith("wedged: ") and "tick 2 abandoned, still running" in body
    assert "while ticking the due rollouts" in body

    runner.release.set()  # the stuck call returns at last
    assert loop.wait_idle(5)
    assert loop.health()[0] and loop.readiness()[0]
    assert sample(metrics, "ramp_tick_duration_seconds_count") == 2  # the late tick's duration is recorded
    runner.hang = False
    assert loop.iterate() is Outcome.COMPLETED and runner.calls == 3 and runner.max_running == 1


def test_health_fails_when_the_loop_never_completes_an_iteration(runner: FakeRunner) -> None:
    clock = FakeClock()
    loop, _ = make_loop(runner, clock)
    assert loop.liveness_limit == pytest.approx(3 * TICK_DEADLINE)  # 3 x max(interval, tick deadline)
    assert loop.health()[0]
    assert loop.readiness() == (False, "not ready: no loop iteration completed yet | acting (no leader "
                                       "election), leader=True")
    clock.advance(loop.liveness_limit + 0.1)  # e.g. the scheduler thread died: nothing iterates
    healthy, body = loop.health()
    assert not healthy and body.startswith("wedged: ") and "since start" in body


def test_a_failing_tick_is_counted_and_the_loop_goes_on(runner: FakeRunner) -> None:
    clock = FakeClock()
    loop, metrics = make_loop(runner, clock)
    runner.fail = RuntimeError("state store broken")
    assert loop.iterate() is Outcome.FAILED
    assert sample(metrics, "ramp_tick_errors_total") == 1
    assert loop.health()[0]
    ready, body = loop.readiness()
    assert ready and "last tick error: RuntimeError: state store broken" in body
    runner.fail = None
    assert loop.iterate() is Outcome.COMPLETED and runner.calls == 2


def test_a_standby_iterates_without_ticking_and_stays_live_and_ready(runner: FakeRunner) -> None:
    clock = FakeClock()
    leading = {"now": False}
    election = {"ok": True, "detail": "renewing"}
    loop, metrics = make_loop(runner, clock, should_act=lambda: leading["now"],
                              leadership=lambda: (election["ok"], election["detail"]))
    for _ in range(3):
        assert loop.iterate() is Outcome.STANDBY
    assert runner.calls == 0 and sample(metrics, "ramp_ticks_skipped_total", reason="standby") == 3
    clock.advance(0.5)
    assert loop.health()[0]
    ready, body = loop.readiness()
    assert ready and body.startswith("standby (healthy standby: ready") and "leader=False" in body
    election.update(ok=False, detail="forbidden: RBAC on leases")
    ready, body = loop.readiness()
    assert not ready and "leader election broken: forbidden: RBAC on leases" in body
    election["ok"] = True
    leading["now"] = True
    assert loop.iterate() is Outcome.COMPLETED and runner.calls == 1
    assert loop.readiness()[1].startswith("leader, leader=True")
    assert runner.stood_down == 0
    leading["now"] = False  # leadership lost: the runner stands down once (its rollouts' series leave /metrics)
    for _ in range(3):
        assert loop.iterate() is Outcome.STANDBY
    assert runner.stood_down == 1 and runner.calls == 1


def test_a_leadership_check_that_raises_means_standby(runner: FakeRunner) -> None:
    def broken() -> bool:
        raise ConnectionError("apiserver gone")

    loop, _ = make_loop(runner, FakeClock(), should_act=broken)
    assert loop.iterate() is Outcome.STANDBY and runner.calls == 0


def test_specs_are_refreshed_each_iteration_and_a_missing_directory_is_not_ready(
    runner: FakeRunner, tmp_path: Path
) -> None:
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    (specs_dir / "shop.yaml").write_text(NO_APPROVAL_YAML)
    (specs_dir / "broken.yaml").write_text("service: [unclosed\n")
    reported: list[str] = []
    loop, _ = make_loop(runner, FakeClock(), specs=SpecDirectory(specs_dir),
                        on_problems=lambda problems: reported.extend(str(p) for p in problems))
    assert loop.iterate() is Outcome.COMPLETED
    assert [r.name for r in runner.rollouts] == ["shop"] and len(reported) == 1 and "broken.yaml" in reported[0]
    ready, body = loop.readiness()
    assert ready and "1 rollouts, 1 spec problems" in body
    for file in specs_dir.iterdir():
        file.unlink()
    specs_dir.rmdir()
    assert loop.iterate() is Outcome.COMPLETED and runner.rollouts == []
    ready, body = loop.readiness()
    assert not ready and f"spec directory {specs_dir} not found" in body


def test_a_spec_change_the_runner_could_not_take_is_handed_over_again(runner: FakeRunner, tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(NO_APPROVAL_YAML)
    loop, _ = make_loop(runner, FakeClock(), specs=SpecDirectory(tmp_path))
    runner.fail_set_rollouts = 1
    assert loop.iterate() is Outcome.FAILED and runner.rollouts == [] and runner.calls == 0
    assert loop.iterate() is Outcome.COMPLETED  # the directory did not change since, but the runner gets it now
    assert [r.name for r in runner.rollouts] == ["shop"] and runner.calls == 1


def test_a_tick_whose_thread_cannot_start_fails_and_the_next_one_runs(
    runner: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoThreads(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    loop, metrics = make_loop(runner, FakeClock())
    with monkeypatch.context() as patch:
        patch.setattr(threading, "Thread", NoThreads)
        assert loop.iterate() is Outcome.FAILED
    assert sample(metrics, "ramp_tick_errors_total") == 1 and "can't start new thread" in str(loop.last_error)
    assert loop.iterate() is Outcome.COMPLETED and runner.calls == 1  # not stuck behind a tick that never ran


def test_invalid_settings_are_refused(runner: FakeRunner) -> None:
    for bad in ({"tick_deadline": 0}, {"tick_deadline": float("nan")}, {"interval": -1.0}):
        with pytest.raises(ValueError):
            ControllerLoop(runner, **bad)


def test_the_scheduler_drives_the_loop_and_never_runs_two_ticks_at_once(runner: FakeRunner) -> None:
    metrics = ControllerMetrics()
    loop = ControllerLoop(runner, metrics=metrics, tick_deadline=0.2, interval=0.05)
    scheduler = TickScheduler(loop)
    runner.hang = True
    with capture_logs() as logs:
        scheduler.start()  # the first iteration runs here and is abandoned after 0.2 s
        try:
            deadline = time.monotonic() + 10
            while loop.skipped_busy < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            runner.release.set()
            assert loop.wait_idle(5)
        runner.hang = False
        deadline = time.monotonic() + 10
        while runner.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        scheduler.stop()
    assert loop.skipped_busy >= 3 and loop.abandoned == 1 and runner.calls >= 3
    assert runner.max_running == 1 and scheduler.errors == 0
    assert sample(metrics, "ramp_ticks_abandoned_total") == 1
    assert "ramp_ticks_skipped_total" in generate_latest(metrics.registry).decode()
    assert not [e for e in logs if e.get("log_level") == "error" and e["event"] == "tick failed"]


class DropsTheDeadline:
    """Our own wrapper over the real PrometheusSource that loses the tick's deadline on the way, as a client
    with per-read timeouts did: each query may then take the source's own timeout, longer than the tick."""

    def __init__(self, source: PrometheusSource) -> None:
        self.source = source

    def fetch(
        self, requests: Sequence[MetricsRequest], deadline: Deadline | None = None
    ) -> dict[MetricsRequest, MetricsSnapshot]:
        return self.source.fetch(requests)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_tick_stuck_on_a_dripping_prometheus_turns_healthz_503_then_200_when_ticks_complete_again(
    tmp_path: Path,
) -> None:
    """Real loop, runner, Prometheus client and HTTP endpoints; only the deadline is lost on the way."""
    with FakePrometheus() as prom:
        prom.answer("", Reply(body=vector(), bytes_per_second=1))  # one byte a second
        source = PrometheusSource(prom.url, timeout_seconds=3.0)
        metrics = ControllerMetrics()
        runner = RolloutRunner(RecordingRouter(), DropsTheDeadline(source), FileStateStore(tmp_path),
                               observers=[metrics])
        runner.set_rollouts([ManagedRollout.from_spec(spec(NO_APPROVAL_YAML))])
        loop = ControllerLoop(runner, metrics=metrics, tick_deadline=0.5, interval=0.1)  # liveness limit 1.5 s
        server = EndpointServer(metrics.registry, loop.health, loop.readiness, host="127.0.0.1", port=0).start()
        scheduler = TickScheduler(loop)
        try:
            scheduler.start()  # the first tick that queries Prometheus is abandoned after 0.5 s (it drips for 3 s)
            seen: list[tuple[int, str]] = []

            def healthz_is(status: int) -> bool:
                seen.append(http_get(server.port, "/healthz"))
                return seen[-1][0] == status

            assert wait_until(lambda: healthz_is(503), timeout=10), seen[-3:]
            body = seen[-1][1]
            assert body.startswith("wedged: ") and "abandoned, still running" in body and "while ticking" in body
            assert http_get(server.port, "/readyz")[0] == 503
            text = http_get(server.port, "/metrics")[1]
            assert "ramp_ticks_abandoned_total 1.0" in text
            assert 'ramp_ticks_skipped_total{reason="previous_tick_running"} 0.0' not in text
            prom.answer("", vector())  # Prometheus answers at once again: the stuck tick ends, ticks complete
            assert wait_until(lambda: healthz_is(200), timeout=15), seen[-3:]
            assert wait_until(lambda: loop.last_outcome is Outcome.COMPLETED and not loop._running_abandoned())
            assert http_get(server.port, "/readyz")[0] == 200
            assert loop.abandoned == 1  # the stuck tick was the only one; no two ticks ever ran at once
        finally:
            scheduler.stop()
            loop.wait_idle(5)
            server.stop()


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        if check():
            return True
        time.sleep(0.1)
    return False


class RecordingHooks:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def before_tick(self, deadline: Deadline) -> None:
        self.calls.append("before")
        if self.fail:
            raise RuntimeError("apiserver down")

    def after_tick(self, events: Sequence[TickEvent], deadline: Deadline) -> None:
        self.calls.append(f"after {len(events)}")
        if self.fail:
            raise RuntimeError("apiserver down")


def test_hooks_run_around_each_acting_tick_within_its_deadline_and_never_fail_it() -> None:
    runner = FakeRunner()
    hooks = RecordingHooks(fail=True)
    loop = ControllerLoop(runner, tick_deadline=5, hooks=hooks)
    with capture_logs() as logs:
        assert loop.iterate() is Outcome.COMPLETED
    assert hooks.calls == ["before", "after 0"] and runner.calls == 1
    assert [entry["hook"] for entry in logs if entry["event"] == "tick hook failed"] == ["before_tick", "after_tick"]
    standby = ControllerLoop(runner, tick_deadline=5, hooks=(quiet := RecordingHooks()), should_act=lambda: False)
    assert standby.iterate() is Outcome.STANDBY and quiet.calls == [], "a standby never forwards or publishes"

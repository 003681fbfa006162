"""The runs of one load tester: at most `max_runs` at once, one per rollout and step, and a bounded history.

- Idempotent start: while a run for the same namespace/rollout/step is running, `start` returns it instead of
  starting a second one (a pre-step hook is retried, and may be called again on the next tick). Once it ended,
  the same request starts a new run: a step that still waits for its data gets load again.
- Capacity: a start beyond `max_runs` running runs is refused (`AtCapacity`, answered 429), so the threads of
  the load tester never exceed `max_runs x max_concurrency` workers, whoever calls it.
- History: the last `KEPT_FINISHED` ended runs stay visible in `GET /runs`; older ones are forgotten.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.loadtest.request import Caps, LoadRequest
from controller.loadtest.run import LoadRun

KEPT_FINISHED = 50
log = structlog.get_logger("ramp.loadtest")


class AtCapacity(RuntimeError):
    """As many runs are running as the server allows."""


class LoadTester:
    def __init__(self, caps: Caps, registry: CollectorRegistry | None = None) -> None:
        self.caps = caps
        self.registry = registry or CollectorRegistry()
        self._running: dict[tuple[str, str, int], LoadRun] = {}
        self._finished: deque[LoadRun] = deque(maxlen=KEPT_FINISHED)
        self._lock = threading.Lock()
        self._runs_total = Counter(
            "ramp_loadtest_runs_total", "Start requests by outcome", ["outcome"], registry=self.registry
        )
        self._requests = Counter(
            "ramp_loadtest_requests_total",
            "Requests by outcome: ok, an HTTP status, timeout, too_large, failed",
            ["outcome"],
            registry=self.registry,
        )
        self._active = Gauge("ramp_loadtest_active_runs", "Runs running now", registry=self.registry)
        self._active.set_function(lambda: len(self._collect()))

    def _count(self, outcome: str) -> None:
        self._requests.labels(outcome).inc()

    def _collect(self) -> list[LoadRun]:
        """The running runs, after moving ended ones to the history."""
        with self._lock:
            for key, run in list(self._running.items()):
                if not run.running:
                    del self._running[key]
                    self._finished.append(run)
            return list(self._running.values())

    def start(self, request: LoadRequest) -> tuple[LoadRun, bool]:
        """(the run, True when it was started now) or AtCapacity."""
        self._collect()
        with self._lock:
            existing = self._running.get(request.key)
            if existing is not None and existing.running:
                self._runs_total.labels("already_running").inc()
                return existing, False
            if len(self._running) >= self.caps.max_runs:
                self._runs_total.labels("at_capacity").inc()
                raise AtCapacity(f"at capacity: {len(self._running)} runs are running (at most {self.caps.max_runs})")
            run = LoadRun(f"{request.rollout}-{request.step}-{secrets.token_hex(4)}", request, self._count)
            run.start()
            self._running[request.key] = run
            self._runs_total.labels("started").inc()
        log.info("load run started", id=run.id, rollout=request.rollout, namespace=request.namespace,
                 step=request.step, rps=request.rps, duration=request.duration, concurrency=request.concurrency,
                 header=request.header[0] if request.header else None)  # fmt: skip
        return run, True

    def stop(self, run_id: str | None = None, rollout: str | None = None, namespace: str = "") -> list[LoadRun]:
        """Stop the run `run_id`, or every run of `namespace/rollout`; the runs stopped."""
        stopped = [
            run for run in self._collect()
            if run.id == run_id or (run_id is None and run.request.rollout == rollout
                                    and run.request.namespace == namespace)
        ]  # fmt: skip
        for run in stopped:
            run.stop("stopped by request")
        return stopped

    def runs(self) -> list[dict[str, Any]]:
        running = self._collect()
        with self._lock:
            finished = list(self._finished)
        return [run.status() for run in running + finished[::-1]]

    def close(self, timeout: float = 10.0) -> None:
        """Stop every run and wait (bounded) for its workers."""
        running = self._collect()
        for run in running:
            run.stop("load tester shutting down")
        for run in running:
            run.join(timeout)

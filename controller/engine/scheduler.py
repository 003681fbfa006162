"""APScheduler wiring: one interval job drives the runner.

A single job (max_instances=1, coalesce=True) ticks at the shortest rollout
interval; the runner decides which rollouts are due, so all due rollouts share
one batched metrics fetch per tick. With `should_act` (e.g. a leader elector's `is_leader`), a
tick runs only while it returns True; skipped ticks are counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger("ramp.scheduler")


class Tickable(Protocol):
    """A RolloutRunner, or anything wrapping one (e.g. the cluster controller's loop)."""

    def tick(self) -> object: ...
    def base_interval(self) -> float: ...


class TickScheduler:
    def __init__(self, runner: Tickable, should_act: Callable[[], bool] | None = None) -> None:
        self.runner = runner
        self._should_act = should_act
        self._skipped = 0
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._errors = 0
        self._lock = threading.Lock()  # the first tick runs on the caller's thread
        self.ticked = threading.Event()

    def _job(self) -> None:
        try:
            with self._lock:
                if self._should_act is not None and not self._should_act():
                    self._skipped += 1
                    log.debug("tick skipped: should_act is False", skipped=self._skipped)
                    return
                self.runner.tick()
        except Exception:
            self._errors += 1
            log.exception("tick failed")
        finally:
            self.ticked.set()

    def start(self) -> None:
        interval = self.runner.base_interval()
        self._scheduler.add_job(
            self._job,
            "interval",
            seconds=interval,
            id="ramp-tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
        )
        self._scheduler.start()
        self._job()  # first tick now, not one interval from now

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def skipped(self) -> int:
        return self._skipped

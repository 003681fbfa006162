"""APScheduler wiring: one interval job drives the tick (in production: the ControllerLoop).

A single job (max_instances=1, coalesce=True) runs at the loop's base interval; the runner decides
which rollouts are due, so all due rollouts share one batched metrics fetch per tick. The
ControllerLoop bounds each iteration by its tick deadline and handles leadership itself; for a bare
runner, `should_act` (e.g. a leader elector's `is_leader`) lets a tick run only while it returns True
(skipped ticks are counted).

An iteration may wait up to its tick deadline, longer than the interval: APScheduler then skips the
overlapping runs (never two at once). Those skips are expected, so they are counted (`overlaps`)
instead of being logged as warnings every interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger("ramp.scheduler")
_OVERLAP = "maximum number of running instances reached"


class _OverlapFilter(logging.Filter):
    """Counts (and drops) APScheduler's "skipped: maximum number of running instances" warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _OVERLAP in record.getMessage():
            self.count += 1
            return False
        return True


class Tickable(Protocol):
    """A ControllerLoop (production), or a bare RolloutRunner (tests, benchmarks)."""

    def tick(self) -> object: ...
    def base_interval(self) -> float: ...


class TickScheduler:
    def __init__(self, runner: Tickable, should_act: Callable[[], bool] | None = None) -> None:
        self.runner = runner
        self._should_act = should_act
        self._skipped = 0
        self._overlaps = _OverlapFilter()
        aps_logger = logging.Logger("apscheduler.scheduler")  # private to this scheduler (not registered) ...
        aps_logger.parent = logging.getLogger("apscheduler.scheduler")  # ... but logging where APScheduler's does
        aps_logger.addFilter(self._overlaps)
        self._scheduler = BackgroundScheduler(timezone="UTC", logger=aps_logger)
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

    @property
    def overlaps(self) -> int:
        """Scheduled runs skipped because the previous run was still going (max_instances=1)."""
        return self._overlaps.count

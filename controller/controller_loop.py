"""The one controller loop behind `ramp run`, `ramp demo` and `ramp controller`.

Each iteration: (optionally) pick up spec changes, then - when this process may act (the leader, or always
in local mode) - run `runner.tick(deadline)` with a total `Deadline`. The iteration runs in a worker thread
and the loop waits for it until the deadline, never longer:

- a tick that overruns is ABANDONED: the loop stops waiting, counts it (`ramp_ticks_abandoned_total`) and
  logs what it was doing (its stage and the worker's innermost stack frames);
- while an abandoned tick's thread still runs, no new tick starts: each such iteration is a skipped tick
  (`ramp_ticks_skipped_total{reason="previous_tick_running"}`). Two ticks never run at once;
- a standby (`should_act()` False) still iterates (specs are refreshed, nothing is ticked), so liveness
  reflects the loop itself on every replica.

Liveness (`health()`): an iteration (a completed or failed tick, or a standby pass) must have completed
within `liveness_limit = 3 x max(interval, tick_deadline)`. Every call a tick makes is bounded by the
tick's deadline, so a slow but working controller finishes each tick within one deadline and completes
an iteration at least every `interval + tick_deadline`. An overrunning tick - a call that ignores its
deadline - gets two more deadlines to finish before the process is declared wedged. Kubernetes must
restart a wedged controller, not a slow one.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from controller.controller_metrics import ControllerMetrics
from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout, TickEvent
from controller.spec_loader import SpecProblem

log = structlog.get_logger("ramp.loop")

DEFAULT_TICK_DEADLINE = 20.0  # seconds; at least the Prometheus timeout (5 s) plus Kubernetes writes
LIVENESS_INTERVALS = 3
Check = Callable[[], tuple[bool, str]]


class LoopRunner(Protocol):
    """The RolloutRunner as the loop drives it."""

    def tick(self, deadline: Deadline | None = None) -> list[TickEvent]: ...
    def base_interval(self) -> float: ...
    def set_rollouts(self, rollouts: Sequence[ManagedRollout]) -> None: ...
    def stand_down(self) -> None: ...


class SpecSource(Protocol):
    """A SpecDirectory: re-read on refresh(); its rollouts and the problems of the files it ignored."""

    @property
    def path(self) -> Path: ...

    rollouts: list[ManagedRollout]
    problems: list[SpecProblem]

    def refresh(self) -> bool: ...


class TickHooks(Protocol):
    """Work around each acting tick within its deadline (e.g. the RampRollout bridge: forward commands before,
    publish status after). A hook that raises is logged; the tick itself still counts."""

    def before_tick(self, deadline: Deadline) -> None: ...
    def after_tick(self, events: Sequence[TickEvent], deadline: Deadline) -> None: ...


class Outcome(enum.Enum):
    COMPLETED = "completed"  # the runner ticked
    FAILED = "failed"  # the tick raised; logged and counted, the next iteration tries again
    STANDBY = "standby"  # not the leader: specs refreshed, nothing ticked
    ABANDONED = "abandoned"  # overran its deadline; its thread may still be running
    BUSY = "busy"  # an abandoned tick is still running: no new tick started


def _log_problems(problems: Sequence[SpecProblem]) -> None:
    for problem in problems:
        log.error("spec ignored", problem=str(problem))


@dataclass
class _Tick:
    number: int
    started: float
    deadline: Deadline
    done: threading.Event = field(default_factory=threading.Event)
    doing: str = "starting"
    thread: threading.Thread | None = None
    abandoned: bool = False
    outcome: Outcome = Outcome.FAILED
    error: str | None = None


class ControllerLoop:
    def __init__(
        self,
        runner: LoopRunner,
        *,
        specs: SpecSource | None = None,
        metrics: ControllerMetrics | None = None,
        should_act: Callable[[], bool] | None = None,
        leadership: Check | None = None,
        tick_deadline: float = DEFAULT_TICK_DEADLINE,
        interval: float | None = None,
        on_problems: Callable[[Sequence[SpecProblem]], None] = _log_problems,
        clock: Callable[[], float] = time.monotonic,
        hooks: TickHooks | None = None,
        select: Callable[[Sequence[ManagedRollout]], Sequence[ManagedRollout]] | None = None,
        on_rollouts: Callable[[], None] | None = None,
    ) -> None:
        """`select`, when given, is called at the start of every iteration with the specs' rollouts and returns
        the ones this replica acts on (a sharded controller: the rollouts of the shards it holds now); the runner
        gets a new set whenever the selection changes. `on_rollouts` is called after the runner got a new set
        (the controller freezes the long-lived objects for the garbage collector then: controller.gc_tuning)."""
        if not tick_deadline > 0:
            raise ValueError(f"tick deadline must be > 0 seconds, got {tick_deadline}")
        if interval is not None and not interval > 0:
            raise ValueError(f"loop interval must be > 0 seconds, got {interval}")
        self.runner = runner
        self.specs = specs
        self.metrics = metrics
        self.tick_deadline = tick_deadline
        self._should_act = should_act
        self._leadership = leadership
        self._interval = interval
        self._on_problems = on_problems
        self._clock = clock
        self._hooks = hooks
        self._select = select
        self._on_rollouts = on_rollouts
        self._selected: list[int] = []  # ids of the rollouts the runner was last given (with `select`)
        self._lock = threading.Lock()
        self._created = clock()
        self._ticks = 0
        self._current: _Tick | None = None
        self._rollouts_stale = False
        self._acted = False  # the previous iteration acted (ticked rollouts)
        self.last_completed: float | None = None  # monotonic end of the last completed iteration
        self.last_duration: float | None = None
        self.last_outcome: Outcome | None = None
        self.last_error: str | None = None
        self.abandoned = 0
        self.skipped_busy = 0
        self.standby_iterations = 0
        self.errors = 0

    # -- cadence ---------------------------------------------------------------------------------------

    def base_interval(self) -> float:
        """How often the driver (TickScheduler) iterates; the runner decides which rollouts are due."""
        return self._interval if self._interval is not None else self.runner.base_interval()

    @property
    def liveness_limit(self) -> float:
        return LIVENESS_INTERVALS * max(self.base_interval(), self.tick_deadline)

    # -- one iteration ---------------------------------------------------------------------------------

    def tick(self) -> Outcome:
        """The TickScheduler's entry point: one iteration."""
        return self.iterate()

    def iterate(self) -> Outcome:
        """Run one iteration in a worker thread; return when it ends or its deadline passes, never later."""
        with self._lock:
            current = self._current
            if current is not None and not current.done.is_set():
                self.skipped_busy += 1
            else:
                current = None
                self._ticks += 1
                tick = _Tick(self._ticks, self._clock(), Deadline(self.tick_deadline, clock=self._clock))
                self._current = tick
        if current is not None:
            self._count_skip("previous_tick_running")
            log.warning(
                "tick skipped: an abandoned tick is still running",
                tick=current.number,
                running_for=round(self._clock() - current.started, 1),
                doing=current.doing,
            )
            return Outcome.BUSY
        thread = threading.Thread(target=self._work, args=(tick,), name=f"ramp-tick-{tick.number}", daemon=True)
        tick.thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # no thread left (resource limits): a failed tick, never a stuck "current" one
            tick.error = f"cannot start the tick's thread: {exc}"
            log.error("tick failed", tick=tick.number, error=tick.error)
            self._finish(tick, acting=False)
            return tick.outcome
        if tick.done.wait(tick.deadline.remaining()):
            return tick.outcome
        with self._lock:
            if tick.done.is_set():  # it finished just now
                return tick.outcome
            tick.abandoned = True
            self.abandoned += 1
        if self.metrics is not None:
            self.metrics.ticks_abandoned.inc()
        log.error(
            "tick abandoned: it overran its deadline",
            tick=tick.number,
            deadline_s=self.tick_deadline,
            doing=tick.doing,
            stack=_innermost_frames(thread),
        )
        return Outcome.ABANDONED

    def _work(self, tick: _Tick) -> None:
        acting = False
        try:
            if self.specs is not None:
                tick.doing = f"reading specs in {self.specs.path}"
                if self.specs.refresh():
                    self._rollouts_stale = True  # until the runner has them (set_rollouts may fail: retried)
                    self._on_problems(self.specs.problems)
                rollouts: Sequence[ManagedRollout] = self.specs.rollouts
                if self._select is not None:
                    tick.doing = "selecting the rollouts of the shards held"
                    rollouts = self._select(rollouts)
                    if [id(r) for r in rollouts] != self._selected:
                        self._rollouts_stale = True
                if self._rollouts_stale:
                    self.runner.set_rollouts(rollouts)
                    self._selected = [id(r) for r in rollouts]
                    self._rollouts_stale = False
                    if self._on_rollouts is not None:
                        _guarded("on_rollouts", self._on_rollouts)
                    log.info("specs loaded", rollouts=[r.name for r in rollouts])
            acting = self.acting()
            if self._acted and not acting:  # leadership lost: the leader now exports the rollouts' series
                tick.doing = "dropping the rollouts' metric series (no longer acting)"
                self.runner.stand_down()
            self._acted = acting
            if acting:
                hooks = self._hooks
                if hooks is not None:
                    tick.doing = "before the tick (forwarding commands)"
                    _guarded("before_tick", hooks.before_tick, tick.deadline)
                tick.doing = "ticking the due rollouts (state, metrics, gates, routing)"
                events = self.runner.tick(tick.deadline)
                if hooks is not None:
                    tick.doing = "after the tick (publishing status)"
                    _guarded("after_tick", hooks.after_tick, events, tick.deadline)
                tick.outcome = Outcome.COMPLETED
            else:
                tick.outcome = Outcome.STANDBY
        except Exception as exc:
            tick.outcome = Outcome.FAILED
            tick.error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("tick failed", tick=tick.number, doing=tick.doing)
        finally:
            self._finish(tick, acting)

    def _finish(self, tick: _Tick, acting: bool) -> None:
        ended = self._clock()
        duration = ended - tick.started
        with self._lock:
            self.last_completed, self.last_duration = ended, duration
            self.last_outcome, self.last_error = tick.outcome, tick.error
            if tick.outcome is Outcome.FAILED:
                self.errors += 1
            elif tick.outcome is Outcome.STANDBY:
                self.standby_iterations += 1
            tick.done.set()
        if self.metrics is not None:
            if acting:
                self.metrics.tick_seconds.observe(duration)
            if tick.outcome is Outcome.FAILED:
                self.metrics.tick_errors.inc()
            elif tick.outcome is Outcome.STANDBY:
                self.metrics.ticks_skipped.labels(reason="standby").inc()
            self.metrics.last_tick.set_to_current_time()
        if tick.abandoned:
            log.warning(
                "abandoned tick finished",
                tick=tick.number,
                outcome=tick.outcome.value,
                after_s=round(duration, 1),
                error=tick.error,
            )

    def _count_skip(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.ticks_skipped.labels(reason=reason).inc()

    def acting(self) -> bool:
        """Whether this process may act now (True without a leadership predicate); False if the predicate fails."""
        if self._should_act is None:
            return True
        try:
            return bool(self._should_act())
        except Exception as exc:
            log.warning("leadership check failed: acting as standby", error=f"{type(exc).__name__}: {exc}"[:300])
            return False

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for a running tick to end, e.g. on shutdown; True when none is running."""
        with self._lock:
            current = self._current
        return current is None or current.done.wait(max(0.0, timeout))

    # -- probes ----------------------------------------------------------------------------------------

    def _running_abandoned(self) -> _Tick | None:
        with self._lock:
            current = self._current
            return current if current is not None and current.abandoned and not current.done.is_set() else None

    def _stuck_detail(self, now: float) -> str:
        stuck = self._running_abandoned()
        if stuck is None:
            return ""
        return (
            f"; tick {stuck.number} abandoned, still running after {now - stuck.started:.1f}s"
            f" (deadline {self.tick_deadline:g}s) while {stuck.doing}"
        )

    def health(self) -> tuple[bool, str]:
        """Liveness: an iteration completed within `liveness_limit` (counted from start before the first)."""
        now = self._clock()
        with self._lock:
            last = self.last_completed
        age = now - (self._created if last is None else last)
        limit = self.liveness_limit
        since = "since start" if last is None else "since the last completed loop iteration"
        if age > limit:
            return False, f"wedged: {age:.1f}s {since} (limit {limit:g}s){self._stuck_detail(now)}"
        return True, f"ok: {age:.1f}s {since} (limit {limit:g}s){self._stuck_detail(now)}"

    def readiness(self) -> tuple[bool, str]:
        """Ready: ticking (an iteration completed recently and no abandoned tick is stuck), the spec directory
        exists and leader election works.

        A healthy STANDBY is ready too (the body says "standby"): with the chart's PodDisruptionBudget
        (minAvailable: 1), a standby that reported 503 would never count as available, so draining the
        leader's node would be blocked for ever. Only the leader acts; readiness says whether this replica
        could take over, not whether it holds the Lease.
        """
        now = self._clock()
        problems = []
        with self._lock:
            last, outcome, error = self.last_completed, self.last_outcome, self.last_error
        if last is None:
            problems.append("no loop iteration completed yet")
        elif now - last > self.liveness_limit:
            problems.append(f"not ticking: last loop iteration {now - last:.1f}s ago")
        stuck = self._stuck_detail(now)
        if stuck:
            problems.append("not ticking" + stuck)
        if self.specs is not None and not self.specs.path.is_dir():
            problems.append(f"spec directory {self.specs.path} not found")
        if self._leadership is not None:
            election_ok, election = self._leadership()
            if not election_ok:
                problems.append(f"leader election broken: {election}")
        leader = self.acting()
        role = "leader" if leader else "standby (healthy standby: ready, so node drains are not blocked)"
        if self._should_act is None:
            role = "acting (no leader election)"
        parts = [role]
        if self.specs is not None:
            parts.append(f"{len(self.specs.rollouts)} rollouts, {len(self.specs.problems)} spec problems")
        parts.append(f"leader={leader}")
        if last is not None:
            parts.append(f"last iteration {outcome.value if outcome else '?'} {now - last:.1f}s ago")
        if error:
            parts.append(f"last tick error: {error}")
        body = ", ".join(parts)
        if problems:
            return False, "not ready: " + "; ".join(problems) + " | " + body
        return True, body


def _guarded(name: str, hook: Callable[..., None], *args: object) -> None:
    try:
        hook(*args)
    except Exception as exc:
        log.error("tick hook failed", hook=name, error=f"{type(exc).__name__}: {exc}"[:300])


def _innermost_frames(thread: threading.Thread, count: int = 4) -> str:
    """Where `thread` is right now: its innermost frames as `file:line function` (for the abandoned-tick log)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "unknown"
    summary = traceback.extract_stack(frame)[-count:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(summary))

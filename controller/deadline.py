"""Total deadlines: every external call and every tick is bounded in wall time, not per read.

A `Deadline` is created once (e.g. per tick) and passed down; each call asks it how long it may
still take (`timeout(cap)`), and writers ask `expired` before acting. Monotonic time only, so a
wall-clock jump neither extends nor cuts a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class DeadlineExceeded(TimeoutError):
    """The total time allowed for an operation ran out."""


@dataclass
class Deadline:
    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def at(self) -> float:
        assert self.started is not None
        return self.started + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    @property
    def expired(self) -> bool:
        return self.clock() >= self.at

    def timeout(self, cap: float | None = None) -> float:
        """The time a call may still take: the remaining time, at most `cap`; raises when none is left."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {self.seconds:g}s exceeded")
        return left if cap is None else min(cap, left)

    def check(self, what: str = "operation") -> None:
        if self.expired:
            raise DeadlineExceeded(f"{what}: deadline of {self.seconds:g}s exceeded")

    @classmethod
    def never(cls) -> Deadline:
        return cls(float("inf"))

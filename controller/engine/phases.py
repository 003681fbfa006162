"""Rollout phases and the persisted progress of one rollout."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from controller.analysis.statistical_gate import GateEvidence


class Phase(StrEnum):
    PENDING = "Pending"
    HEADER_TEST = "HeaderTest"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})
ACTIVE_PHASES = frozenset({Phase.HEADER_TEST, Phase.PROGRESSING, Phase.PAUSED})


MAX_HISTORY = 40  # phase changes kept in the state (file and annotation); older ones are counted, not kept


class Command(StrEnum):
    """What a person asks for (CLI / API); the engine applies or refuses it on the next tick."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"
    SET_WEIGHTS = "set-weights"


class CommandOutcome(BaseModel):
    """What became of a person's command: applied, or refused with the reason (shown by the CLI)."""

    id: str
    command: str
    applied: bool
    reason: str
    at: float


class PhaseChange(BaseModel):
    phase: Phase
    step: int
    at: float
    reason: str = ""


class GateSnapshot(BaseModel):
    """The last gate evaluation, kept for `ramp status` and the demo's output."""

    gate: str
    verdict: str
    value: float | None = None
    stable_value: float | None = None
    reason: str = ""


class EValue(BaseModel):
    """A statistical gate's e-value at a tick, and the e-value at which it rolls back (K / alpha)."""

    value: float
    limit: float
    at: float


class RolloutState(BaseModel):
    rollout: str
    spec_digest: str
    identity: str = Field(default="", description="Digest of what is rolled out (versions + target)")
    phase: Phase = Phase.PENDING
    step: int = Field(default=-1, description="Current step index; -1 before the first step")
    step_started_at: float | None = None
    step_elapsed: float = Field(
        default=0.0, description="Seconds this step has been observed with its routing confirmed in place"
    )
    observed_at: float | None = Field(default=None, description="Wall time of the last tick (display only)")
    missing_data_since: float | None = None
    missing_data_for: float = Field(default=0.0, description="Seconds of continuous missing data")
    stalled_for: float = Field(
        default=0.0, description="Seconds without progress, counted against the spec's progress_deadline"
    )
    unconfirmed: str | None = Field(
        default=None, description="Why the data plane has not confirmed this state's routing (None: confirmed)"
    )
    override: dict[str, int] | None = Field(
        default=None, description="Relative weights set by `ramp set-weights`; kept until a new rollout starts"
    )
    last_command: CommandOutcome | None = None
    drift: str | None = Field(default=None, description="Last difference seen between data plane and state")
    dropped_history: int = Field(default=0, description="Phase changes dropped from history (bounded)")
    paused_by_user: bool = False
    reason: str = ""
    history: list[PhaseChange] = Field(default_factory=list)
    last_gates: list[GateSnapshot] = Field(default_factory=list)
    ticks: int = 0
    failed_checks: int = Field(default=0, description="Failed gate checks so far (see rollback.failed_checks)")
    apply_failures: int = Field(default=0, description="Consecutive ticks whose routing could not be applied")
    last_apply_error: str | None = None
    sequential: dict[str, GateEvidence] = Field(
        default_factory=dict,
        description="Statistical gates' e-processes by gate name; never in the cluster annotation",
    )
    e_values: dict[str, EValue] = Field(
        default_factory=dict,
        description="Statistical gates' last e-values; in cluster mode written with the reason (as of that write)",
    )
    hooks_passed: list[str] = Field(
        default_factory=list,
        description="Hooks that answered 2xx at the point the rollout waits at ('pre-step:3/name'): not called "
        "again there; cleared when a step is entered. In memory (a restarted controller calls them again)",
    )
    hook_wait: str | None = Field(
        default=None, description="The hook point holding the rollout this tick (pre-step:N, confirm-promotion)"
    )

    def durable(self) -> dict[str, object]:
        """What must survive a restart; per-tick details (gate values and e-processes, tick count, hold text)
        excluded.

        Stores compare this to decide whether a write is needed, so a steady rollout causes no writes.
        A restarted cluster controller therefore starts the statistical gates' e-processes afresh.
        """
        return self.model_dump(
            mode="json",
            exclude={
                "ticks", "last_gates", "reason", "sequential", "e_values", "observed_at", "step_elapsed",
                "missing_data_for", "stalled_for", "drift", "hooks_passed", "hook_wait",
            },
        )  # fmt: skip

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def settled(self) -> bool:
        """Finished, and the data plane has confirmed the outcome's routing."""
        return self.terminal and self.unconfirmed is None

    def moved(self, phase: Phase, step: int, now: float, reason: str) -> RolloutState:
        """A copy in `phase`/`step`, with the change appended to history."""
        change = PhaseChange(phase=phase, step=step, at=now, reason=reason)
        new_step = step != self.step or self.phase == Phase.PENDING
        history = [*self.history, change]
        dropped = max(0, len(history) - MAX_HISTORY)
        return self.model_copy(
            update={
                "phase": phase,
                "step": step,
                "step_started_at": now if new_step else self.step_started_at,
                "step_elapsed": 0.0 if new_step else self.step_elapsed,
                "missing_data_since": None if step != self.step else self.missing_data_since,
                "missing_data_for": 0.0 if step != self.step else self.missing_data_for,
                "stalled_for": 0.0 if new_step else self.stalled_for,
                "reason": reason,
                "history": history[dropped:],
                "dropped_history": self.dropped_history + dropped,
            }
        )

"""Rollout phases and the persisted progress of one rollout."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


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


class Command(StrEnum):
    """What a person asks for (CLI / API); the engine applies it on the next tick."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"


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


class RolloutState(BaseModel):
    rollout: str
    spec_digest: str
    identity: str = Field(default="", description="Digest of what is rolled out (versions + target)")
    phase: Phase = Phase.PENDING
    step: int = Field(default=-1, description="Current step index; -1 before the first step")
    step_started_at: float | None = None
    missing_data_since: float | None = None
    paused_by_user: bool = False
    reason: str = ""
    history: list[PhaseChange] = Field(default_factory=list)
    last_gates: list[GateSnapshot] = Field(default_factory=list)
    ticks: int = 0
    apply_failures: int = Field(default=0, description="Consecutive ticks whose routing could not be applied")
    last_apply_error: str | None = None

    def durable(self) -> dict[str, object]:
        """What must survive a restart; per-tick details (gate values, tick count, hold text) excluded.

        Stores compare this to decide whether a write is needed, so a steady rollout causes no writes.
        """
        return self.model_dump(mode="json", exclude={"ticks", "last_gates", "reason"})

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def moved(self, phase: Phase, step: int, now: float, reason: str) -> RolloutState:
        """A copy in `phase`/`step`, with the change appended to history."""
        change = PhaseChange(phase=phase, step=step, at=now, reason=reason)
        new_step_started = now if step != self.step or self.phase == Phase.PENDING else self.step_started_at
        return self.model_copy(
            update={
                "phase": phase,
                "step": step,
                "step_started_at": new_step_started,
                "missing_data_since": None if step != self.step else self.missing_data_since,
                "reason": reason,
                "history": [*self.history, change],
            }
        )

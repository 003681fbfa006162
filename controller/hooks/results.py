"""What the engine sees of hook calls: pure types, no I/O (imported by `controller.engine.decide`).

A hook point is where a rollout asks: before step N (`pre-step`), during step N (`step-gate`), or before the
promotion (`confirm-promotion`). `decide` takes the answers as an input, like a gate report, and says (in the
state's `hook_wait`) which point holds the rollout; the runner calls those hooks and decides again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.engine.phases import RolloutState
from controller.spec import RolloutSpec
from controller.spec_hooks import Hook

CONFIRM_PROMOTION = "confirm-promotion"


@dataclass(frozen=True)
class HookPoint:
    """`type` pre-step | step-gate | confirm-promotion; `step` the 1-based step concerned (0 for confirm-promotion)."""

    type: str
    step: int = 0

    @property
    def key(self) -> str:
        return self.type if self.type == CONFIRM_PROMOTION else f"{self.type}:{self.step}"

    @classmethod
    def parse(cls, key: str) -> HookPoint:
        kind, _, step = key.partition(":")
        return cls(kind, int(step) if step else 0)

    def describe(self, steps: int) -> str:
        return "promotion" if self.type == CONFIRM_PROMOTION else f"step {self.step}/{steps}"


@dataclass(frozen=True)
class HookAnswer:
    """One hook's answer at a point: `ok` True (2xx), False (refused or failed: the reason says how), or None
    (not answered: the tick's deadline left it no time; never counted as the receiver's answer)."""

    hook: str
    ok: bool | None
    reason: str = ""
    attempts: int = 0
    status: int | None = None


HookAnswers = Mapping[HookPoint, Sequence[HookAnswer]]


def hooks_at(spec: RolloutSpec, point: HookPoint) -> list[Hook]:
    """The spec's hooks that apply at `point` (a hook without `steps` applies to every step)."""
    return [
        h for h in spec.hooks
        if h.type == point.type and (point.type == CONFIRM_PROMOTION or h.steps is None or point.step in h.steps)
    ]  # fmt: skip


def passed_key(point: HookPoint, hook: str) -> str:
    """How a passed hook is remembered in the state (`hooks_passed`)."""
    return f"{point.key}/{hook}"


def describe_answer(answer: HookAnswer | None, hook: str) -> str:
    if answer is None:
        return f"hook {hook}: not called yet"
    return f"hook {hook}: {answer.reason or ('ok' if answer.ok else 'no answer')}"


def boundary_hooks(
    spec: RolloutSpec, state: RolloutState, point: HookPoint, hooks: HookAnswers | None
) -> tuple[RolloutState, str]:
    """Record the hooks at `point` that answered 2xx now; returns the state and why the others still hold it
    ("" when every hook there has passed)."""
    wanted = hooks_at(spec, point)
    if not wanted:
        return state, ""
    answers = {a.hook: a for a in (hooks or {}).get(point, ())}
    passed = list(state.hooks_passed)
    for hook in wanted:
        key, answer = passed_key(point, hook.name), answers.get(hook.name)
        if key not in passed and answer is not None and answer.ok:
            passed.append(key)
    waiting = [h.name for h in wanted if passed_key(point, h.name) not in passed]
    why = "; ".join(describe_answer(answers.get(name), name) for name in waiting)
    return state.model_copy(update={"hooks_passed": passed}), why


def step_gate_hooks(spec: RolloutSpec, state: RolloutState, hooks: HookAnswers | None) -> tuple[str, str]:
    """(failures, unanswered) of the step-gate hooks of the current step: a failure is a failed check; an
    unanswered hook (the tick left it no time) keeps the step from completing but never counts against it."""
    point = HookPoint("step-gate", state.step + 1)
    answers = {a.hook: a for a in (hooks or {}).get(point, ())}
    failed, unanswered = [], []
    for hook in hooks_at(spec, point):
        answer = answers.get(hook.name)
        if answer is not None and answer.ok is False:
            failed.append(f"step-gate {describe_answer(answer, hook.name)}")
        elif answer is None or answer.ok is None:
            unanswered.append(f"step-gate {describe_answer(answer, hook.name)}")
    return "; ".join(failed), "; ".join(unanswered)

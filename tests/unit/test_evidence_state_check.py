"""A state whose e-process holds junk is damaged, never a switched-off gate.

A NaN in an e-process would compare False against K/alpha for ever (the gate could never reject), and a junk
`crossed` would reject without evidence: `state_problem` refuses both, so the runner fails safe to the baseline
with the reason (the runner's handling of damaged states is tested in test_runner_safety.py).
"""

from __future__ import annotations

import math

import pytest

from controller.analysis.statistical_gate import GateEvidence
from controller.engine.phases import Phase, RolloutState
from controller.engine.state_check import state_problem
from controller.plan import build_plan
from tests.unit.engine_fixtures import spec

SPEC = spec()
PLAN = build_plan(SPEC)


def state_with(evidence: GateEvidence) -> RolloutState:
    return RolloutState(rollout=PLAN.rollout, spec_digest="d", phase=Phase.PROGRESSING, step=1,
                        sequential={"errors": evidence})  # fmt: skip


def sound() -> GateEvidence:
    return GateEvidence(log_e=[0.5, -1.0], log_restart=[-3.0, -4.0], intervals=3, counters={"v1/c1.2": (10.0, 1.0)})


def test_a_sound_e_process_passes() -> None:
    assert state_problem(PLAN, state_with(sound())) is None
    assert state_problem(PLAN, state_with(sound().model_copy(update={"crossed": 150.0}))) is None


@pytest.mark.parametrize(
    "update",
    [
        {"log_e": [math.nan, 0.0]},
        {"log_e": [math.inf, 0.0]},
        {"log_restart": [-math.inf, 0.0]},
        {"new": (math.nan, 0.0)},
        {"stable": (10.0, -1.0)},
        {"counters": {"v1/c1.2": (math.inf, 0.0)}},
        {"crossed": math.nan},
        {"crossed": -5.0},
    ],
)
def test_junk_in_an_e_process_is_a_damaged_state_naming_the_gate(update: dict[str, object]) -> None:
    problem = state_problem(PLAN, state_with(sound().model_copy(update=update)))
    assert problem is not None and "'errors'" in problem

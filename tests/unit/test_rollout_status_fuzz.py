"""Property tests of the RampRollout status builder: for arbitrary engine states (including damaged ones: NaN gate
values, absurd command times, steps out of range, multi-line reasons) it never raises, always yields exactly the
three conditions with never Reconciling and Stalled both True, stays valid JSON for the API server, and reads the
same way through kstatus and Argo CD's health check."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine.phases import CommandOutcome, EValue, GateSnapshot, Phase, RolloutState
from controller.engine.ports import ManagedRollout
from controller.rollout_resource import resource_from_spec_data
from controller.rollout_status import invalid_status, rollout_status, status_changed
from tests.unit import kstatus_rules
from tests.unit.argocd_lua import argocd_health
from tests.unit.engine_fixtures import SPEC_YAML, spec

MANAGED = ManagedRollout.from_spec(spec(SPEC_YAML))
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

_numbers = st.none() | st.floats(allow_nan=True, allow_infinity=True)
_text = st.text(max_size=40) | st.text(min_size=1000, max_size=1500)
_gate = st.builds(
    GateSnapshot, gate=st.sampled_from(["error_rate", "latency", "errors-vs-stable"]),
    verdict=st.sampled_from(["pass", "fail", "no-data", "hold"]), value=_numbers, stable_value=_numbers, reason=_text,
)  # fmt: skip
_command = st.builds(
    CommandOutcome, id=st.text(max_size=8), command=st.sampled_from(["pause", "resume", "abort", "promote"]),
    applied=st.booleans(), reason=_text, at=st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
_states = st.builds(
    RolloutState,
    rollout=st.just(MANAGED.name),
    spec_digest=st.just(MANAGED.digest),
    phase=st.sampled_from(list(Phase)),
    step=st.integers(-3, 8),
    unconfirmed=st.none() | st.text(max_size=20),
    override=st.none() | st.dictionaries(st.sampled_from(["v1", "v2"]), st.integers(0, 1000), max_size=2),
    last_command=st.none() | _command,
    paused_by_user=st.booleans(),
    reason=_text | st.sampled_from(["progress deadline 10m exceeded", "step 2/4: 10%; holding: x", ""]),
    last_gates=st.lists(_gate, max_size=3),
    e_values=st.dictionaries(
        st.sampled_from(["errors-vs-stable", "latency"]),
        st.builds(EValue, value=st.floats(allow_nan=True), limit=st.floats(allow_nan=True), at=st.just(0.0)),
        max_size=2,
    ),
    missing_data_since=st.none() | st.floats(0, 1e6),
)
_previous = (
    st.none() | st.just({"conditions": "garbage"}) | st.just({"conditions": [1, {"type": 2}, {"type": "Ready"}]})
)


_SPEC_DATA = spec(SPEC_YAML).model_dump(mode="json", by_alias=True, exclude_none=True)


def _resource(status: dict[str, Any], generation: int) -> dict[str, Any]:
    obj = resource_from_spec_data(_SPEC_DATA)
    obj["metadata"]["generation"] = generation
    obj["status"] = status
    return obj


def _check(status: dict[str, Any], generation: int) -> str:
    json.dumps(status, allow_nan=False)
    conditions = status["conditions"]
    assert [c["type"] for c in conditions] == ["Ready", "Reconciling", "Stalled"]
    by_type = {c["type"]: c["status"] for c in conditions}
    assert not (by_type["Reconciling"] == "True" and by_type["Stalled"] == "True")
    assert by_type["Reconciling"] == "True" or by_type["Stalled"] == "True" or by_type["Ready"] == "True"
    assert len(status["reason"]) <= 1024 and "\n" not in status["reason"]
    for gate in status.get("gates", []):
        assert len(gate["reason"]) <= 1024
    if "lastCommand" in status:
        datetime.strptime(status["lastCommand"]["at"], "%Y-%m-%dT%H:%M:%SZ")
    obj = _resource(status, generation)
    result = kstatus_rules.compute(obj).status
    health = argocd_health(obj)["status"]
    expected_health = {"InProgress": {"Progressing", "Suspended"}, "Failed": {"Degraded"}, "Current": {"Healthy"}}
    assert health in expected_health[result], (result, health, status["phase"])
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_states, st.integers(1, 2**40), _previous)
def test_any_state_gives_a_well_formed_status(state: RolloutState, generation: int, previous: Any) -> None:
    status = rollout_status(MANAGED, state, generation, previous, NOW)
    result = _check(status, generation)
    if state.phase == Phase.PROMOTED and state.unconfirmed is None:
        assert result == "Current"
    elif state.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        assert result == "Failed"
    else:
        assert result == "InProgress"
    assert 0 <= status["targetWeight"] <= 100 and sum(status["weights"].values()) == 100
    assert 0 <= status["currentStep"] <= status["totalSteps"] == len(MANAGED.plan.steps)
    again = rollout_status(MANAGED, state, generation, status, NOW.replace(hour=13))
    assert not status_changed(status, again)  # a second write of the same state changes nothing


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["InvalidSpec", "OwnerClash", "NamespaceNotManaged"]), _text, st.integers(1, 100), _previous)
def test_any_refusal_gives_a_failed_status(kind: Any, message: str, generation: int, previous: Any) -> None:
    status = invalid_status(kind, message, generation, previous, NOW)
    assert _check(status, generation) == "Failed" and status["phase"] == "Invalid"

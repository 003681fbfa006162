"""The chart's Argo CD health check (charts/ramp/argocd/ramprollout-health.lua), run in Lua 5.1 as Argo CD runs a
custom check (see argocd_lua). Status objects from real engine phases are covered in test_rollout_status; here the
mapping itself, hostile shapes (a Lua error would show Unknown in Argo CD) and the documentation copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.argocd_lua import HEALTH_STATUSES, SCRIPT_PATH, LuaHealthError, argocd_health

README = Path(__file__).resolve().parents[2] / "charts" / "ramp" / "README.md"


def _resource(status: Any = None, generation: Any = 4, **metadata: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ramp.dev/v1",
        "kind": "RampRollout",
        "metadata": {"name": "reviews", "namespace": "shop", "generation": generation, **metadata},
        "spec": {"service": "reviews", "target": "v2"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _status(phase: str, ready: str = "False", reconciling: str = "True", stalled: str = "False",
            reason: str = "why", observed: Any = 4, **extra: Any) -> dict[str, Any]:  # fmt: skip
    conditions = [
        {"type": "Ready", "status": ready, "reason": "R", "message": reason},
        {"type": "Reconciling", "status": reconciling, "reason": "R", "message": reason},
        {"type": "Stalled", "status": stalled, "reason": "R", "message": reason},
    ]
    return {"observedGeneration": observed, "phase": phase, "reason": reason, "conditions": conditions, **extra}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_status("Pending"), "Progressing"),
        (_status("HeaderTest"), "Progressing"),
        (_status("Progressing"), "Progressing"),
        (_status("Paused", paused=True), "Suspended"),
        (_status("Paused"), "Suspended"),  # waiting for approval
        (_status("Promoted"), "Progressing"),  # promoted, routing not yet confirmed
        (_status("Promoted", ready="True", reconciling="False"), "Healthy"),
        (_status("RolledBack", reconciling="False", stalled="True"), "Degraded"),
        (_status("Failed", reconciling="False", stalled="True"), "Degraded"),
        (_status("Invalid", reconciling="False", stalled="True"), "Degraded"),
        (_status("RolledBack", reconciling="False"), "Degraded"),  # the phase alone is enough
        (_status("Progressing", stalled="True"), "Degraded"),  # Stalled alone is enough
        (_status("Paused", stalled="True"), "Degraded"),  # failure beats suspension
    ],
)
def test_phases_map_to_argocd_health_with_the_reason_as_message(status: dict[str, Any], expected: str) -> None:
    assert argocd_health(_resource(status)) == {"status": expected, "message": "why"}


def test_a_status_for_an_older_generation_is_progressing_whatever_it_says() -> None:
    done = _status("Promoted", ready="True", reconciling="False", observed=3)
    assert argocd_health(_resource(done, generation=4)) == {
        "status": "Progressing",
        "message": "waiting for the controller to observe generation 4",
    }
    failed = _status("RolledBack", reconciling="False", stalled="True", observed=3)
    assert argocd_health(_resource(failed, generation=4))["status"] == "Progressing"
    unobserved = {k: v for k, v in done.items() if k != "observedGeneration"}
    assert argocd_health(_resource(unobserved, generation=4))["status"] == "Progressing"


def test_generation_is_printed_as_an_integer_even_as_a_float() -> None:
    # Argo CD hands every JSON number to Lua as a float64.
    health = argocd_health(_resource(_status("Progressing", observed=11.0), generation=12.0))
    assert health["message"] == "waiting for the controller to observe generation 12"


def test_without_metadata_generation_the_status_is_read_as_it_is() -> None:
    obj = _resource(_status("Promoted", ready="True", reconciling="False", observed=1))
    del obj["metadata"]["generation"]
    assert argocd_health(obj)["status"] == "Healthy"


def test_no_status_yet_is_progressing() -> None:
    assert argocd_health(_resource())["status"] == "Progressing"
    assert argocd_health({})["status"] == "Progressing"
    assert argocd_health(_resource({}))["status"] == "Progressing"


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"status": None},
        {"status": "Promoted"},
        {"status": 3},
        {"status": []},
        {"metadata": "x", "status": {"phase": "Promoted"}},
        {"metadata": {"generation": "many"}, "status": {"observedGeneration": {"a": 1}}},
        {"metadata": {"generation": True}, "status": {"observedGeneration": False}},
        {"status": {"conditions": "Ready"}},
        {"status": {"conditions": {"type": "Ready", "status": "True"}}},
        {"status": {"conditions": [None, 1, "x", [], {"type": 5, "status": ["True"]}]}},
        {"status": {"phase": ["Failed"], "reason": {"text": "x"}, "paused": "yes"}},
        {"status": {"phase": 7, "reason": 12}},
        {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "conditions": [{"status": "True"}]}},
    ],
)
def test_malformed_objects_never_raise(obj: dict[str, Any]) -> None:
    health = argocd_health(obj)
    assert health["status"] in HEALTH_STATUSES - {"Unknown", "Missing"}
    assert isinstance(health["message"], str)


_words = st.sampled_from(["True", "False", "Ready", "Stalled", "Paused", "Invalid", "Promoted", "Failed"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | _words | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["status", "metadata", "generation", "observedGeneration", "conditions", "type", "phase",
                         "reason", "paused", "message"]) | st.text(max_size=5),
        children,
        max_size=5,
    ),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_arbitrary_json_never_raises(obj: Any) -> None:
    if not isinstance(obj, dict):
        obj = {"status": obj}
    health = argocd_health(obj)
    assert health["status"] in HEALTH_STATUSES


def test_the_sandbox_is_as_strict_as_argocd() -> None:
    """A script that needs the string library (absent in Argo CD without useOpenLibs) fails here too."""
    with pytest.raises(LuaHealthError):
        argocd_health({}, 'return {status = string.upper("healthy")}')
    with pytest.raises(LuaHealthError):
        argocd_health({}, 'return {status = ("Healthy"):sub(1)}')
    with pytest.raises(LuaHealthError, match="invalid health status"):
        argocd_health({}, 'return {status = "Fine"}')


def test_the_chart_readme_carries_the_script_verbatim_and_the_argocd_cm_key() -> None:
    text = README.read_text()
    script = SCRIPT_PATH.read_text()
    assert script.strip() in text
    assert "resource.customizations.health.ramp.dev_RampRollout: |" in text
    # Under the argocd-cm key the script is indented; every line of it must be there, in order.
    indented = "\n".join(("    " + line) if line else "" for line in script.strip().splitlines())
    assert indented in text

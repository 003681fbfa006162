"""Statistical gates in cluster mode: the e-process lives in memory, never in the annotation."""

from __future__ import annotations

import json

from controller.analysis.statistical_gate import GateEvidence
from controller.engine.phases import Command, EValue, Phase, RolloutState
from controller.plan import build_plan
from controller.routing.istio import IstioBackend
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, count, kube_api, stored, three_versions

ROUTINGS = build_plan(three_versions()).all_routings()
EVIDENCE = GateEvidence(log_e=[0.5, 1.0, 1.5, 2.0, 2.5], counters={"v1": (900.0, 9.0), "v3": (100.0, 4.0)})


def fresh(kube: KubeHarness) -> IstioBackend:
    b = IstioBackend(kube_api(kube))
    b.track({"reviews": ("shop", "reviews")})
    return b


def progressing() -> RolloutState:
    return RolloutState(
        rollout="reviews", spec_digest="abc", phase=Phase.PROGRESSING, step=1, step_started_at=10.0,
        reason="step 2/5: 33%", sequential={"errors": EVIDENCE},
        e_values={"errors": EValue(value=EVIDENCE.e_value, limit=100.0, at=1_700_000_000.0)},
    )  # fmt: skip


def test_the_e_process_is_not_written_and_survives_a_foreign_write_but_not_a_restart(kube: KubeHarness) -> None:
    b = fresh(kube)
    b.load("reviews")
    b.save(progressing())
    b.apply(ROUTINGS[2])
    vs = stored(kube, VS, "shop", "reviews")
    assert vs is not None
    saved = json.loads(vs["metadata"]["annotations"]["ramp.dev/state"])
    assert "sequential" not in saved  # only the e-value summary, for `ramp status`
    assert saved["e_values"] == {"errors": {"value": EVIDENCE.e_value, "limit": 100.0, "at": 1_700_000_000.0}}
    # a steady tick whose e-process moved writes nothing
    puts = count(kube, "put", VS)
    moved = EVIDENCE.model_copy(update={"log_e": [3.0] * 5})
    loaded = b.load("reviews")
    assert loaded is not None
    b.save(loaded.model_copy(update={"sequential": {"errors": moved}}))
    assert b.apply(ROUTINGS[2]) is False and count(kube, "put", VS) == puts
    # a person's command is a foreign write: the state is re-read, the e-process goes on
    fresh(kube).request_command("shop", "reviews", Command.PAUSE)
    reread = b.load("reviews")
    pending = b.pending_command("reviews")
    assert reread is not None and pending is not None and pending.command == Command.PAUSE
    assert reread.sequential == {"errors": moved}
    # a restarted controller starts the e-process afresh (the summary is there for status only)
    restarted = fresh(kube).load("reviews")
    assert restarted is not None and restarted.sequential == {} and set(restarted.e_values) == {"errors"}
    # a different rollout in the annotation does not inherit this one's evidence
    other = progressing().model_copy(update={"spec_digest": "other", "sequential": {}})
    b2 = fresh(kube)
    b2.load("reviews")
    b2.save(other)
    b2.apply(ROUTINGS[3])
    assert (b.load("reviews") or other).sequential == {}

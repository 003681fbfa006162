"""The RampRollout status (controller.rollout_status), driven by the REAL engine through whole rollouts.

At every state the status is put on a resource and read the three ways people and tools read it: kstatus (Flux,
transcribed in kstatus_rules), Argo CD's health (the chart's Lua script, run by argocd_lua) and `kubectl get`
(the printer columns, printer_columns).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from controller.analysis.gates import GateReport, GateResult, Verdict
from controller.engine.decide import decide, routing_for
from controller.engine.phases import Command, Phase, RolloutState
from controller.engine.ports import ManagedRollout
from controller.engine.tick_step import NOT_YET_CONFIRMED
from controller.resource_crd import rollout_crd
from controller.rollout_resource import API_VERSION, KIND, resource_from_spec_data
from controller.rollout_status import invalid_status, rollout_status, status_changed
from tests.unit import kstatus_rules, printer_columns
from tests.unit.argocd_lua import argocd_health
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, SPEC_YAML, report, spec

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2026-03-01T11:55:00Z"  # five minutes before START

COLUMNS = rollout_crd()["spec"]["versions"][0]["additionalPrinterColumns"]  # (their values: test_resource_crd)


@dataclass
class Rollout:
    """One RampRollout driven tick by tick: the engine decides, the router confirms, the status is rewritten."""

    yaml_text: str
    generation: int = 1
    now: datetime = START
    state: RolloutState = field(init=False)
    managed: ManagedRollout = field(init=False)
    status: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.managed = ManagedRollout.from_spec(spec(self.yaml_text))
        self.state = RolloutState(rollout=self.managed.name, spec_digest=self.managed.digest)
        self.status = self.write()

    def write(self) -> dict[str, Any]:
        self.status = rollout_status(self.managed, self.state, self.generation, self.status, self.now)
        return self.status

    def tick(self, gates: GateReport | None, seconds: float = 5, command: Command | None = None) -> Iterator[str]:
        """One tick; yields after each status write: a new routing is saved unconfirmed first (as tick_step
        does), then confirmed by the data plane."""
        self.now += timedelta(seconds=seconds)
        before = routing_for(self.managed.plan, self.state)
        decision = decide(self.managed.plan, self.managed.spec, self.state, gates, self.now.timestamp(), command)
        self.state = decision.state
        if decision.routing != before:
            self.state = self.state.model_copy(update={"unconfirmed": NOT_YET_CONFIRMED})
            self.write()
            yield "unconfirmed"
            self.state = self.state.model_copy(update={"unconfirmed": None})
        self.write()
        yield "confirmed"

    def resource(self) -> dict[str, Any]:
        obj = resource_from_spec_data(yaml.safe_load(self.yaml_text))
        obj["metadata"].update({"generation": self.generation, "creationTimestamp": CREATED})
        obj["status"] = self.status
        return obj


def check(rollout: Rollout, kstatus: str, argocd: str, row: list[str]) -> dict[str, Any]:
    """The status as Flux, Argo CD and kubectl read it, plus the invariants every status keeps."""
    status = rollout.status
    assert status is not None
    _invariants(status, rollout.generation)
    obj = rollout.resource()
    assert kstatus_rules.compute(obj).status == kstatus, status
    assert argocd_health(obj) == {"status": argocd, "message": status["reason"]}
    assert printer_columns.row(obj, COLUMNS, rollout.now)[1:] == row
    return status


def _invariants(status: dict[str, Any], generation: int) -> None:
    json.dumps(status, allow_nan=False)  # what the API server accepts
    conditions = {c["type"]: c for c in status["conditions"]}
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert not (conditions["Reconciling"]["status"] == "True" and conditions["Stalled"]["status"] == "True")
    for condition in status["conditions"]:
        assert condition["status"] in ("True", "False", "Unknown")
        assert condition["reason"].isidentifier() and condition["reason"][0].isupper()
        datetime.strptime(condition["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
        assert condition["observedGeneration"] == generation == status["observedGeneration"]
    assert len(status["reason"]) <= 1024 and "\n" not in status["reason"]


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_healthy_rollout_is_in_progress_until_promoted_and_confirmed() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    status = check(r, "InProgress", "Progressing", ["Pending", "-", "v2", "0", status_reason(r), "5m"])
    assert (status["currentStep"], status["totalSteps"], status["weights"]) == (0, 3, {"v1": 100, "v2": 0})
    assert _condition(status, "Reconciling")["reason"] == "Pending"
    started = _condition(status, "Reconciling")["lastTransitionTime"]

    ok = report(Verdict.PASS)
    header_step = ["HeaderTest", "1/3", "v2", "0", "step 1/3: header x-version: v2", "5m5s"]
    ticks = r.tick(ok)
    assert next(ticks) == "unconfirmed"  # the header step adds a route: saved, not yet confirmed
    check(r, "InProgress", "Progressing", header_step)
    assert next(ticks) == "confirmed"
    status = check(r, "InProgress", "Progressing", header_step)
    assert status["headerRoutes"] == [{"header": "x-version", "match": "exact", "value": "v2", "version": "v2"}]
    assert status["gates"] == [{"name": "error_rate", "verdict": "pass", "value": 0.1, "reason": "r"}]
    assert _condition(status, "Reconciling")["lastTransitionTime"] == started  # still reconciling: unchanged

    seen: list[tuple[str, str, int]] = []
    for _ in range(40):  # 3 steps of 10 s at 5 s a tick; bounded so a stuck engine fails instead of hanging
        if r.state.phase == Phase.PROMOTED:
            break
        for stage in r.tick(ok):
            status = r.status or {}
            expected = "Current" if (status["phase"], stage) == ("Promoted", "confirmed") else "InProgress"
            argocd = "Healthy" if expected == "Current" else "Progressing"
            row = [status["phase"], status["step"], "v2", str(status["targetWeight"]), status["reason"], age(r)]
            check(r, expected, argocd, row)
            seen.append((status["phase"], stage, status["targetWeight"]))
    assert ("Progressing", "unconfirmed", 10) in seen and ("Progressing", "unconfirmed", 50) in seen
    assert ("Promoted", "unconfirmed", 100) in seen  # Reconciling (Promoting) until the data plane confirms
    assert seen[-1] == ("Promoted", "confirmed", 100)

    status = check(r, "Current", "Healthy", ["Promoted", "3/3", "v2", "100", "all steps passed: v2 promoted", age(r)])
    assert _condition(status, "Ready") | {"lastTransitionTime": "t"} == {
        "type": "Ready", "status": "True", "reason": "Promoted", "message": "all steps passed: v2 promoted",
        "lastTransitionTime": "t", "observedGeneration": 1,
    }  # fmt: skip
    assert _condition(status, "Ready")["lastTransitionTime"] == _condition(status, "Reconciling")["lastTransitionTime"]
    assert _condition(status, "Ready")["lastTransitionTime"] != started
    assert status["weights"] == {"v1": 0, "v2": 100} and status["headerRoutes"] == []


def age(r: Rollout) -> str:
    created = datetime.strptime(CREATED, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return printer_columns.human_duration((r.now - created).total_seconds())


def status_reason(r: Rollout) -> str:
    return str((r.status or {})["reason"])


def test_a_newer_generation_is_in_progress_until_the_controller_observes_it() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    for _ in range(20):
        list(r.tick(report(Verdict.PASS), seconds=10))
    assert r.state.settled and r.state.phase == Phase.PROMOTED
    obj = r.resource()
    assert kstatus_rules.compute(obj).status == "Current"
    obj["metadata"]["generation"] = 2  # someone edited the spec; the controller has not looked yet
    assert kstatus_rules.compute(obj) == kstatus_rules.Result(
        "InProgress", "RampRollout generation is 2, but latest observed generation is 1"
    )
    assert argocd_health(obj) == {
        "status": "Progressing",
        "message": "waiting for the controller to observe generation 2",
    }
    r.generation = 2
    r.write()
    check(r, "Current", "Healthy", ["Promoted", "3/3", "v2", "100", "all steps passed: v2 promoted", age(r)])


def test_faulty_rollout_is_failed_with_the_breaching_value() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    list(r.tick(report(Verdict.PASS)))
    list(r.tick(report(Verdict.FAIL, "error_rate of v2 is 5.00% > max 2.00%")))
    assert r.state.phase == Phase.ROLLED_BACK
    reason = "gate failed: error_rate of v2 is 5.00% > max 2.00%"
    status = check(r, "Failed", "Degraded", ["RolledBack", "1/3", "v2", "0", reason, "5m10s"])
    assert status["gates"] == [{"name": "error_rate", "verdict": "fail", "value": 5.0, "reason": reason[13:]}]
    assert status["weights"] == {"v1": 100, "v2": 0} and status["headerRoutes"] == []
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {
        "Ready": ("False", "RolledBack"), "Reconciling": ("False", "RolledBack"), "Stalled": ("True", "RolledBack"),
    }  # fmt: skip
    before = json.loads(json.dumps(status))
    list(r.tick(None))  # terminal: nothing moves, and nothing needs writing
    assert not status_changed(before, r.status or {})


def test_approval_and_a_persons_pause_are_suspended_in_argocd_and_in_progress_for_flux() -> None:
    r = Rollout(SPEC_YAML)  # header, 10 %, approval, 50 %
    for _ in range(5):
        if r.state.phase == Phase.PAUSED:
            break
        list(r.tick(report(Verdict.PASS), seconds=10))
    assert r.state.phase == Phase.PAUSED
    row = ["Paused", "3/4", "v2", "10", "step 3/4: waiting for manual approval", age(r)]
    status = check(r, "InProgress", "Suspended", row)
    assert _condition(status, "Reconciling")["reason"] == "WaitingForApproval" and status["paused"] is False

    list(r.tick(report(Verdict.PASS), command=Command.RESUME))  # the approval
    row = ["Progressing", "4/4", "v2", "50", "step 4/4: 50%; gates pass, 5s left", age(r)]
    status = check(r, "InProgress", "Progressing", row)
    assert status["lastCommand"] == {"id": "", "command": "resume", "applied": True, "reason": "approved by user",
                                     "at": "2026-03-01T12:00:35Z"}  # fmt: skip

    list(r.tick(report(Verdict.PASS), command=Command.PAUSE))
    status = check(r, "InProgress", "Suspended", ["Paused", "4/4", "v2", "50", "paused by user", age(r)])
    assert status["paused"] is True and _condition(status, "Reconciling")["reason"] == "PausedByUser"
    assert status["lastCommand"]["command"] == "pause" and status["lastCommand"]["applied"] is True

    list(r.tick(report(Verdict.PASS), command=Command.PAUSE))  # refused: already paused
    assert r.status is not None and r.status["lastCommand"]["applied"] is False
    assert r.status["lastCommand"]["reason"] == "already paused"

    list(r.tick(report(Verdict.PASS), command=Command.ABORT))
    status = check(r, "Failed", "Degraded", ["RolledBack", "4/4", "v2", "0", "aborted by user", age(r)])
    assert status["paused"] is False


def test_holding_is_still_in_progress_with_the_reason() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    list(r.tick(report(Verdict.PASS)))
    list(r.tick(report(Verdict.NO_DATA, "v2 has 3 requests (< 20)")))
    status = check(r, "InProgress", "Progressing", ["HeaderTest", "1/3", "v2", "0", status_reason(r), "5m10s"])
    assert "holding, no data: v2 has 3 requests" in status["reason"]
    assert _condition(status, "Reconciling")["reason"] == "Holding"
    assert status["gates"][0] == {"name": "error_rate", "verdict": "no-data", "reason": "v2 has 3 requests (< 20)"}


def test_failed_rollouts_name_the_progress_deadline() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    list(r.tick(report(Verdict.PASS)))
    now = r.now.timestamp()
    r.state = r.state.moved(Phase.FAILED, r.state.step, now, "progress deadline 10m exceeded: no ready pods for v2")
    r.write()
    status = check(r, "Failed", "Degraded", ["Failed", "1/3", "v2", "0", r.state.reason, "5m5s"])
    assert _condition(status, "Stalled")["reason"] == "ProgressDeadlineExceeded"
    r.state = r.state.model_copy(update={"reason": "routing could not be applied 5 times in a row"})
    assert _condition(r.write(), "Stalled")["reason"] == "Failed"


@pytest.mark.parametrize("kind", ["InvalidSpec", "OwnerClash", "NamespaceNotManaged"])
def test_a_refused_resource_is_failed_for_flux_and_degraded_for_argocd(kind: Any) -> None:
    r = Rollout(NO_APPROVAL_YAML)
    list(r.tick(report(Verdict.PASS)))
    previous = r.status
    message = f"{kind}: spec.steps[0].weight: must be within 0..100\nsecond line"
    r.status = invalid_status(kind, message, 1, previous, r.now)
    status = check(r, "Failed", "Degraded", ["Invalid", "-", "v2", "", message.replace("\n", " "), "5m5s"])
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {
        "Ready": ("False", kind),
        "Reconciling": ("False", kind),
        "Stalled": ("True", kind),
    }
    assert previous is not None
    assert _condition(status, "Ready")["lastTransitionTime"] == _condition(previous, "Ready")["lastTransitionTime"]
    assert "weights" not in status and "targetWeight" not in status


def test_status_changed_skips_only_true_no_ops() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    assert status_changed(None, r.status or {})
    first = json.loads(json.dumps(r.status))
    r.now += timedelta(seconds=30)
    assert not status_changed(first, r.write())  # same state later: identical (no timestamp churn)
    list(r.tick(report(Verdict.PASS)))
    assert status_changed(first, r.status or {})
    r.state = r.state.model_copy(update={"last_gates": []})
    assert status_changed(first | {"phase": "HeaderTest"}, r.write())


def test_statistical_gates_report_their_e_values_and_reasons_are_one_bounded_line() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    gates = GateReport(
        (GateResult("errors-vs-stable", Verdict.PASS, 0.4, 0.3, "e=2.5 < 20", e_value=2.5, e_limit=20.0),
         GateResult("latency", Verdict.PASS, float("nan"), float("inf"), "p99 ok")),
    )  # fmt: skip
    list(r.tick(gates))
    assert r.status is not None and r.status["gates"] == [
        {"name": "errors-vs-stable", "verdict": "pass", "value": 0.4, "stableValue": 0.3, "eValue": 2.5,
         "eLimit": 20.0, "reason": "e=2.5 < 20"},
        {"name": "latency", "verdict": "pass", "reason": "p99 ok"},  # NaN/inf cannot be JSON: absent
    ]  # fmt: skip
    r.state = r.state.model_copy(update={"reason": "x\r\n  y " + "z" * 5000})
    reason = r.write()["reason"]
    assert reason.startswith("x y zzz") and len(reason) == 1024 and reason.endswith("…")


def test_kubectl_get_output() -> None:
    r = Rollout(NO_APPROVAL_YAML)
    for _ in range(4):
        list(r.tick(report(Verdict.PASS)))
    out = printer_columns.table([r.resource()], COLUMNS, r.now)
    assert out.splitlines() == [
        "NAME   PHASE         STEP   TARGET   WEIGHT   REASON                               AGE",
        "shop   Progressing   2/3    v2       10       step 2/3: 10%; gates pass, 5s left   5m20s",
    ]
    assert (r.resource()["apiVersion"], r.resource()["kind"]) == (API_VERSION, KIND)


def test_the_kstatus_transcription_keeps_its_rule_order() -> None:
    """A few cases straight from generic.go, so the transcription itself is pinned."""
    base = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "x", "generation": 2}}
    reconciling = {"type": "Reconciling", "status": "True", "message": "r"}
    stalled = {"type": "Stalled", "status": "True", "message": "s"}
    compute = kstatus_rules.compute
    assert compute(base).status == "Current"  # no status at all: no known condition, generation check skipped
    assert compute(base | {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}).status == "Current"
    assert compute(base | {"status": {"conditions": [stalled, reconciling]}}) == kstatus_rules.Result("Failed", "s")
    assert compute(base | {"status": {"conditions": [reconciling, stalled]}}).status == "InProgress"
    gone = base | {"metadata": {"generation": 2, "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert compute(gone | {"status": {"observedGeneration": 1}}).status == "Terminating"
    with pytest.raises(kstatus_rules.KstatusError):
        compute(base | {"status": {"conditions": "Ready"}})

"""People's commands in cluster mode with a defined outcome: the CLI and a real controller on the same emulator.

The CLI (in-process, real kubeconfig, real `kubernetes` client over HTTP) writes the command annotation
and waits for the outcome the controller (RolloutRunner + IstioBackend, fake clock, ticking on a
background thread) records in the state annotation.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from controller.analysis.metrics import VersionMetrics
from controller.cli import main
from controller.cli_set_weights import ClusterTarget
from controller.engine.commands import CommandRequest
from controller.engine.phases import Command
from controller.observability import configure_logging
from controller.routing.istio import IstioBackend
from tests.k8s.cli_controller import (
    NS,
    SERVICE,
    THREE_VERSIONS_YAML,
    annotations,
    healthy,
    make_controller,
    run_to_end,
    served_weights,
    state_in_cluster,
    ticking,
    write_kubeconfig,
)
from tests.k8s.emulator import KubeHarness, ProxyAnswer
from tests.k8s.helpers import VS, create_deployment, create_pod, kube_api, stored
from tests.unit.engine_fixtures import NO_APPROVAL_YAML, FakeClock, FixedMetrics


@pytest.fixture()
def kubeconfig(kube: KubeHarness, tmp_path: Path) -> str:
    configure_logging(level="warning")  # the controller's logs go to stderr, as the CLI's do
    for version in ("v1", "v2", "v3"):
        create_deployment(kube, NS, SERVICE, version, 1)
    return write_kubeconfig(kube, tmp_path / "kubeconfig")


def ramp(kubeconfig: str, *argv: str) -> int:
    return main([*argv, "-n", NS, "--kubeconfig", kubeconfig])


def test_abort_after_promoted_reverts_to_the_baseline_and_is_recorded(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    runner = make_controller(kube, clock, NO_APPROVAL_YAML, FixedMetrics(healthy("v1", "v2")))
    run_to_end(runner, clock)
    assert state_in_cluster(kube)["phase"] == "Promoted" and served_weights(kube) == {"v2": 100}
    with ticking(runner, clock):
        assert ramp(kubeconfig, "abort", SERVICE, "--wait", "20") == 0
    out = capsys.readouterr().out
    assert out.strip() == "aborted after promotion by user: traffic back to the baseline (v1=100% v2=0%)"
    assert served_weights(kube) == {"v1": 100}
    state = state_in_cluster(kube)
    assert state["phase"] == "RolledBack" and state["last_command"]["applied"] is True
    assert state["last_command"]["command"] == "abort"
    assert state["history"][-1]["phase"] == "RolledBack" and "aborted after promotion" in state["history"][-1]["reason"]
    assert "ramp.dev/command" not in annotations(kube)
    for _ in range(3):  # later ticks keep the baseline
        runner.tick()
        clock.advance(5)
    assert served_weights(kube) == {"v1": 100}
    assert ramp(kubeconfig, "status", SERVICE) == 0
    out = capsys.readouterr().out
    assert "rollout shop: RolledBack" in out and f"last command: abort ({state['last_command']['id']}) applied" in out


def test_set_weights_after_promoted_is_an_override_kept_on_later_ticks_and_changes_only_the_versions_named(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    runner = make_controller(kube, clock, THREE_VERSIONS_YAML, FixedMetrics(healthy("v1", "v2", "v3")))
    run_to_end(runner, clock)
    assert served_weights(kube) == {"v3": 100}
    with ticking(runner, clock):
        assert ramp(kubeconfig, "set-weights", SERVICE, "v1=100", "--wait", "20") == 0
        assert capsys.readouterr().out.strip() == "manual weights v1=100 (50%), v2=0 (0%), v3=100 (50%) set by user"
        # v3=50 changes v3 alone: v1 keeps its relative weight 100 (the old CLI sent 100% to v3)
        assert ramp(kubeconfig, "set-weights", SERVICE, "v3=50", "--wait", "20") == 0
        assert capsys.readouterr().out.strip() == "manual weights v1=100 (67%), v2=0 (0%), v3=50 (33%) set by user"
    assert served_weights(kube) == {"v1": 67, "v3": 33}
    for _ in range(5):
        runner.tick()
        clock.advance(5)
    assert served_weights(kube) == {"v1": 67, "v3": 33}  # not undone by the next ticks
    state = state_in_cluster(kube)
    assert state["phase"] == "Promoted" and state["override"] == {"v1": 100, "v2": 0, "v3": 50}
    assert ramp(kubeconfig, "status", SERVICE) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [line.split()[:3] for line in table[1:4]]
    assert rows == [["v1", "100", "66.7%"], ["v2", "0", "0.0%"], ["v3", "50", "33.3%"]]


def test_a_second_command_while_one_is_pending_is_refused_and_the_first_is_applied(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    runner = make_controller(kube, clock, NO_APPROVAL_YAML, FixedMetrics(healthy("v1", "v2")))
    for _ in range(3):
        runner.tick()
        clock.advance(5)
    assert state_in_cluster(kube)["phase"] == "Progressing"
    assert ramp(kubeconfig, "abort", SERVICE, "--no-wait") == 0
    queued = capsys.readouterr().out
    assert ramp(kubeconfig, "resume", SERVICE, "--wait", "1") == 1
    err = capsys.readouterr().err
    assert "refused: another command is pending: abort (id " in err, err
    assert '"command":"abort"' in annotations(kube)["ramp.dev/command"]  # the first one is untouched
    runner.tick()
    state = state_in_cluster(kube)
    assert state["phase"] == "RolledBack" and state["last_command"]["command"] == "abort"
    assert state["last_command"]["applied"] is True and f"(id {state['last_command']['id']})" in queued
    assert served_weights(kube) == {"v1": 100}


@pytest.mark.parametrize("command", ["promote", "resume"])
def test_promote_and_resume_on_a_rolled_back_rollout_are_refused_with_the_reason(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    clock = FakeClock()
    failing = {"v1": VersionMetrics(200, 0, {}), "v2": VersionMetrics(100, 40, {})}
    runner = make_controller(kube, clock, NO_APPROVAL_YAML, FixedMetrics(failing))
    run_to_end(runner, clock)
    assert state_in_cluster(kube)["phase"] == "RolledBack"
    with ticking(runner, clock):
        assert ramp(kubeconfig, command, SERVICE, "--wait", "20") == 1
    captured = capsys.readouterr()
    reason = state_in_cluster(kube)["last_command"]["reason"]
    assert captured.err.strip() == f"ramp {command}: refused: {reason}" and captured.out == ""
    assert reason.startswith("the rollout is RolledBack")
    assert ("promoting would send all traffic to v2" in reason) == (command == "promote")
    assert served_weights(kube) == {"v1": 100}


def test_a_command_the_controller_does_not_pick_up_stays_queued_with_exit_3(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    runner = make_controller(kube, clock, NO_APPROVAL_YAML, FixedMetrics(healthy("v1", "v2")))
    runner.tick()
    assert ramp(kubeconfig, "pause", SERVICE, "--wait", "0.3") == 3
    err = capsys.readouterr().err
    assert "is still queued: the controller has not ticked within 0.3s" in err
    assert '"command":"pause"' in annotations(kube)["ramp.dev/command"]
    clock.advance(5)
    runner.tick()  # the next tick applies it
    state = state_in_cluster(kube)
    assert state["phase"] == "Paused" and state["last_command"]["applied"] is True


def test_unmanaged_set_weights_edits_only_the_versions_named_and_refuses_bad_names(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "set-weights", SERVICE, "v1=50", "v2=50") == 0
    assert capsys.readouterr().out.strip() == "v1=50 (50.0%), v2=50 (50.0%)"
    assert ramp(kubeconfig, "set-weights", SERVICE, "v3=50") == 0  # v1, v2 keep their relative weights
    assert capsys.readouterr().out.strip() == "v1=50 (33.4%), v2=50 (33.3%), v3=50 (33.3%)"
    assert served_weights(kube) == {"v1": 34, "v2": 33, "v3": 33}
    assert ramp(kubeconfig, "set-weights", SERVICE, "v2=0") == 0  # retire v2 alone
    assert served_weights(kube) == {"v1": 50, "v3": 50}
    capsys.readouterr()
    before = stored(kube, VS, NS, SERVICE)
    for bad in ("../../x=50", "V1=50", "v1=-5", "v1=1e3", "v1=", "v1", "x" * 64 + "=1"):
        assert ramp(kubeconfig, "set-weights", SERVICE, bad) == 2, bad
        assert "ramp set-weights: " in capsys.readouterr().err
    assert ramp(kubeconfig, "set-weights", SERVICE, "../../x=50") == 2
    assert "is not a valid name (a DNS label" in capsys.readouterr().err
    assert stored(kube, VS, NS, SERVICE) == before  # nothing written
    assert ramp(kubeconfig, "set-weights", SERVICE, "v1=0", "v3=0") == 1
    assert "all weights would be 0" in capsys.readouterr().err


def test_a_command_written_between_the_check_and_the_write_is_never_replaced(
    kube: KubeHarness, kubeconfig: str
) -> None:
    clock = FakeClock()
    runner = make_controller(kube, clock, NO_APPROVAL_YAML, FixedMetrics(healthy("v1", "v2")))
    runner.tick()
    args = argparse.Namespace(namespace=NS, service=SERVICE, kubeconfig=kubeconfig, context=None, host=None)
    target = ClusterTarget(args)
    mine = CommandRequest(id="2-mine", command=Command.PROMOTE)
    assert target.prepare(mine) is None  # nothing pending yet
    other = CommandRequest(id="1-other", command=Command.ABORT, by="someone")
    IstioBackend(kube_api(kube)).request_command(NS, SERVICE, other)  # lands before our write
    refusal = target.submit(mine)
    assert refusal is not None and refusal[0] == 1
    assert refusal[1].startswith("refused: another command is pending: abort (id 1-other)")
    assert annotations(kube)["ramp.dev/command"] == other.encode()


def test_ping_fails_a_version_whose_pods_answer_errors_or_too_slowly(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in ("v1", "v2", "v3"):
        create_pod(kube, NS, f"shop-{version}-0", {"app": SERVICE, "version": version}, True, "Running")
    kube.emulator.pod_proxy[f"{NS}/shop-v2-0"] = ProxyAnswer(500, b"boom")
    kube.emulator.pod_proxy[f"{NS}/shop-v3-0"] = ProxyAnswer(delay=3.0)
    assert ramp(kubeconfig, "ping", SERVICE, "--count", "1", "--timeout", "0.5", "--port", "8080") == 1
    line = capsys.readouterr().out.strip()
    assert re.search(r"shop: v1: 1/1 ready, HTTP 200 in \d+ ms; v2: 1/1 ready, HTTP 500 in \d+ ms FAILED; "
                     r"v3: 1/1 ready, FAILED \(", line), line  # fmt: skip
    proxied = sorted(str(r.url.path) for r in kube.requests("get") if "/proxy/" in str(r.url.path))
    assert proxied == [f"/api/v1/namespaces/{NS}/pods/shop-{v}-0:8080/proxy/health" for v in ("v1", "v2", "v3")]
    del kube.emulator.pod_proxy[f"{NS}/shop-v2-0"], kube.emulator.pod_proxy[f"{NS}/shop-v3-0"]
    assert ramp(kubeconfig, "ping", SERVICE, "--count", "1") == 0

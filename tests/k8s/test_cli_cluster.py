"""The cluster CLI in-process, through a real kubeconfig file, against the emulator over HTTP."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.engine.phases import EValue, Phase, RolloutState
from controller.routing.istio_merge import STATE_ANNOTATION, encode_state
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import DR, VS, assert_valid, create_deployment, create_pod, custom_objects, fail_next, stored

NS = "shop"


@pytest.fixture()
def kubeconfig(kube: KubeHarness, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
        "users": [{"name": "tester", "user": {"token": "t"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
    }))
    for version, ready in (("v1", True), ("v2", True), ("v3", True), ("v4", False)):
        create_deployment(kube, NS, "reviews", version, 1 if ready else 0)
        create_pod(kube, NS, f"reviews-{version}-0", {"app": "reviews", "version": version}, ready, "Running")
    return str(path)


def ramp(kubeconfig: str, *argv: str) -> int:
    return main([*argv, "-n", NS, "--kubeconfig", kubeconfig])


def test_set_weights_then_status_shows_relative_weights_and_exact_percentages(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=50", "v2=50", "v3=50") == 0
    assert capsys.readouterr().out.strip() == "v1=50 (33.4%), v2=50 (33.3%), v3=50 (33.3%)"
    vs, dr = stored(kube, VS, NS, "reviews"), stored(kube, DR, NS, "reviews")
    assert_valid(vs)
    assert_valid(dr)
    assert vs is not None
    assert [r["weight"] for r in vs["spec"]["http"][-1]["route"]] == [34, 33, 33]
    assert ramp(kubeconfig, "status", "reviews") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["VERSION", "WEIGHT", "PERCENTAGE", "STATUS", "PODS"]
    assert [line.split() for line in table[1:4]] == [
        ["v1", "50", "33.4%", "Serving", "1/1"],
        ["v2", "50", "33.3%", "Serving", "1/1"],
        ["v3", "50", "33.3%", "Serving", "1/1"],
    ]
    assert table[4].split() == ["v4", "0", "0.0%", "NoReadyPods", "0/1"]
    # retire v2: the record of relative weights follows
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=50", "v2=0", "v3=50") == 0
    capsys.readouterr()
    assert ramp(kubeconfig, "status", "reviews", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["weight"], r["percentage"]) for r in doc["versions"][:3]] == [
        ("v1", 50, 50.0), ("v2", 0, 0.0), ("v3", 50, 50.0)]


def test_set_weights_refuses_versions_without_ready_pods_and_active_rollouts(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=90", "v4=10") == 1
    assert "no ready pods for v4" in capsys.readouterr().err
    assert stored(kube, VS, NS, "reviews") is None  # nothing applied
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=100") == 0
    vs = stored(kube, VS, NS, "reviews")
    assert vs is not None
    active = RolloutState(rollout="reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1)
    vs["metadata"]["annotations"][STATE_ANNOTATION] = encode_state(active)
    custom_objects(kube).replace_namespaced_custom_object("networking.istio.io", "v1", NS, VS, "reviews", vs)
    capsys.readouterr()
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=50", "v2=50") == 1
    assert "a rollout (reviews) is Progressing" in capsys.readouterr().err
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=abc") == 2


def test_commands_are_written_for_the_controller_and_errors_are_clear(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "pause", "reviews") == 1
    assert "no VirtualService or HTTPRoute shop/reviews: no rollout to pause" in capsys.readouterr().err
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=100") == 0
    assert ramp(kubeconfig, "pause", "reviews") == 1  # no rollout manages it: refused at once, nothing written
    assert "no rollout manages shop/reviews" in capsys.readouterr().err
    vs = stored(kube, VS, NS, "reviews")
    assert vs is not None and "ramp.dev/command" not in vs["metadata"]["annotations"]
    vs["metadata"]["annotations"][STATE_ANNOTATION] = encode_state(
        RolloutState(rollout="reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1)
    )
    custom_objects(kube).replace_namespaced_custom_object("networking.istio.io", "v1", NS, VS, "reviews", vs)
    assert ramp(kubeconfig, "pause", "reviews", "--no-wait") == 0
    out = capsys.readouterr().out
    vs = stored(kube, VS, NS, "reviews")
    assert vs is not None
    request = json.loads(vs["metadata"]["annotations"]["ramp.dev/command"])
    assert request["command"] == "pause" and f"pause (id {request['id']}) for reviews queued" in out
    del vs["metadata"]["annotations"]["ramp.dev/command"]
    custom_objects(kube).replace_namespaced_custom_object("networking.istio.io", "v1", NS, VS, "reviews", vs)
    fail_next(kube, "put", 403)
    assert ramp(kubeconfig, "resume", "reviews", "--no-wait") == 1
    err = capsys.readouterr().err
    assert "ramp resume: " in err and "cannot update" in err and "RBAC" in err


def test_ping_reports_per_version_readiness_and_a_real_request_through_the_pod_proxy(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "ping", "reviews", "--count", "2", "--interval", "0.01") == 1  # v4 is down
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    served = r"1/1 ready, HTTP 200 in \d+ ms"
    assert re.search(rf"reviews: v1: {served}; v2: {served}; v3: {served}; v4: 0/1 ready DOWN$", lines[0]), lines[0]
    proxied = [str(r.url.path) for r in kube.requests("get") if "/proxy/" in str(r.url.path)]
    pods = [f"/api/v1/namespaces/{NS}/pods/reviews-{v}-0/proxy/health" for v in ("v1", "v2", "v3")]
    assert sorted(set(proxied)) == pods
    assert len(proxied) == 6  # every ready pod, every round; never the pod that is not ready


def test_status_shows_the_statistical_gates_e_values_as_of_the_last_state_write(
    kube: KubeHarness, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ramp(kubeconfig, "set-weights", "reviews", "v1=90", "v2=10") == 0
    vs = stored(kube, VS, NS, "reviews")
    assert vs is not None
    at = 1_700_000_000.0
    state = RolloutState(rollout="reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1,
                         reason="step 2/4: weight 10%", e_values={"errors": EValue(value=3.25, limit=200.0, at=at)})
    vs["metadata"]["annotations"][STATE_ANNOTATION] = encode_state(state)
    custom_objects(kube).replace_namespaced_custom_object("networking.istio.io", "v1", NS, VS, "reviews", vs)
    capsys.readouterr()
    assert ramp(kubeconfig, "status", "reviews") == 0
    out = capsys.readouterr().out.splitlines()
    when = time.strftime("%H:%M:%S", time.localtime(at))
    assert out[-2:] == [
        "rollout reviews: Progressing, step 2: step 2/4: weight 10%",
        f"e-value errors: 3.25 (rolls back at 200; as of the last state write {when})",
    ]
    assert ramp(kubeconfig, "status", "reviews", "-o", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rollout"]["e_values"] == {"errors": {"value": 3.25, "limit": 200.0, "at": at}}

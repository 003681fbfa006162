"""RampRollout resources end to end: `run_controller` as deployed, the real `kubernetes` client over HTTP, the
emulator serving Ramp's own CRD (schema, CEL rules, status subresource, generation, watches), and a fake
Prometheus on 127.0.0.1.

What `kubectl` users see is checked as they would see it: the rows `kubectl get` prints (the emulator's
Table answer for the CRD's printer columns), the conditions as kstatus reads them (Flux) and the health the
Argo CD Lua check gives, through every phase of a healthy and a faulty rollout; commands by annotation; a
rollout whose new pods never become ready failing at its progress deadline; a clash with a spec file; and
deleting a resource leaving traffic as it was.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.analysis.prometheus import PrometheusSource
from controller.rollout_resource import GROUP, PLURAL, VERSION, resource_from_spec_data
from controller.spec_loader import load_spec, validate_spec_data
from controller.spec_metrics import load_templates
from tests.fakes.prometheus import FakePrometheus, istio, sample, vector
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import VS, create_deployment, stored
from tests.k8s.test_cluster_controller import get, rollout_state, start
from tests.unit.argocd_lua import argocd_health
from tests.unit.kstatus_rules import compute

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "rollout-specs").glob("*.yaml"))
RESOURCE = """\
apiVersion: ramp.dev/v1
kind: RampRollout
metadata: {name: demo, namespace: default}
spec:
  service: demo
  versions: [{name: v1, weight: 100}, {name: v2, weight: 0}]
  target: v2
  steps:
    - {header: {value: v2}, duration: 2s}
    - {weight: 50, duration: 2s}
  gates: [{metric: error_rate, max: 2}]
  schedule: {interval: 500ms}
  analysis: {window: 10s, min_requests: 20}
  rollback: {on_missing_data: hold}
  progress_deadline: 3s
"""
HEALTHY = vector(
    sample(istio("default", "demo", "v1", response_code="200"), 1000),
    sample(istio("default", "demo", "v2", response_code="200"), 100),
)
FAULTY = vector(
    sample(istio("default", "demo", "v1", response_code="200"), 1000),
    sample(istio("default", "demo", "v2", response_code="200"), 60),
    sample(istio("default", "demo", "v2", response_code="503"), 40),
)


def objects(kube: KubeHarness) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def create(kube: KubeHarness, body: dict[str, Any]) -> dict[str, Any]:
    namespace = body["metadata"].get("namespace", "default")
    created: dict[str, Any] = objects(kube).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return created


def read(kube: KubeHarness, name: str = "demo", namespace: str = "default") -> dict[str, Any]:
    found: dict[str, Any] = objects(kube).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return found


def printed(kube: KubeHarness, name: str = "demo") -> dict[str, Any]:
    """The row `kubectl get rr demo` prints, by column header."""
    table = kube.table(PLURAL, "default", name)
    headers = [c["name"] for c in table["columnDefinitions"]]
    (row,) = table["rows"]
    return dict(zip(headers, row["cells"], strict=True))


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


class Observer:
    """Samples the resource while the controller runs: every distinct (phase, printed row, kstatus, Argo CD)."""

    def __init__(self, kube: KubeHarness) -> None:
        self.kube = kube
        self.seen: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                obj = read(self.kube)
                status = obj.get("status") or {}
                entry = {
                    "phase": status.get("phase"), "row": printed(self.kube), "kstatus": compute(obj).status,
                    "argocd": argocd_health(obj)["status"], "generation": obj["metadata"].get("generation"),
                    "observed": status.get("observedGeneration"),
                    "conditions": {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])},
                }  # fmt: skip
                if not self.seen or {**self.seen[-1], "row": None} != {**entry, "row": None}:
                    self.seen.append(entry)
            except Exception:  # the emulator is stopping
                pass
            self.stop.wait(0.05)

    def phases(self) -> list[str | None]:
        return [e["phase"] for e in self.seen]

    def last(self, phase: str) -> dict[str, Any]:
        return next(e for e in reversed(self.seen) if e["phase"] == phase)


@contextmanager
def controller(kube: KubeHarness, tmp_path: Path, answer: dict[str, Any]) -> Iterator[tuple[Observer, int]]:
    (tmp_path / "specs").mkdir(exist_ok=True)
    observer = Observer(kube)
    with FakePrometheus() as prom:
        prom.answer("increase(istio_requests_total", answer)
        source = PrometheusSource(prom.url, timeout_seconds=1.0)
        stop, thread, port = start(kube, tmp_path, "replica-a", prometheus=source, tick_deadline=5.0)
        observer.thread.start()
        try:
            yield observer, port
        finally:
            observer.stop.set()
            stop.set()
            thread.join(30)
            observer.thread.join(5)
    assert not thread.is_alive()


@pytest.fixture()
def crd_kube(kube: KubeHarness) -> KubeHarness:
    kube.install_ramp_crd()
    for version in ("v1", "v2"):
        create_deployment(kube, "default", "demo", version, 1)
    return kube


def events_on_resource(kube: KubeHarness, name: str = "demo") -> list[tuple[str, str]]:
    items = client.CoreV1Api(kube.api_client()).list_namespaced_event("default").items
    return [(e.reason, e.message) for e in items if e.involved_object.kind == "RampRollout"
            and e.involved_object.name == name]  # fmt: skip


# ---------------------------------------------------------------------------------------------- apply


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_applies_as_a_resource_as_it_is(crd_kube: KubeHarness, example: Path) -> None:
    body = resource_from_spec_data(yaml.safe_load(example.read_text()))
    namespace = body["metadata"].get("namespace", "default")
    created = create(crd_kube, body)
    assert created["metadata"]["generation"] == 1
    # The apiserver applied the CRD's defaults: read back, it is still exactly the spec of the file.
    templates = load_templates(example.parent).catalog  # custom-metrics.yaml names a template of the directory
    assert validate_spec_data(created, "stored", templates=templates).spec == load_spec(example)
    row = printed_in(crd_kube, namespace, body["metadata"]["name"])
    assert row["Target"] == body["spec"]["target"] and row["Phase"] is None  # no status before the controller


def printed_in(kube: KubeHarness, namespace: str, name: str) -> dict[str, Any]:
    table = kube.table(PLURAL, namespace, name)
    headers = [c["name"] for c in table["columnDefinitions"]]
    return dict(zip(headers, table["rows"][0]["cells"], strict=True))


def test_the_apiserver_refuses_what_ramp_validate_refuses(crd_kube: KubeHarness) -> None:
    body = yaml.safe_load(RESOURCE)
    bad = copy.deepcopy(body)
    bad["spec"]["target"] = "v9"  # not a listed version: a CEL rule
    with pytest.raises(client.ApiException) as caught:
        create(crd_kube, bad)
    assert caught.value.status == 422 and "target" in caught.value.body
    bad = copy.deepcopy(body)
    bad["spec"]["steps"][0]["duration"] = "soon"  # schema pattern
    with pytest.raises(client.ApiException) as caught:
        create(crd_kube, bad)
    assert caught.value.status == 422 and "duration" in caught.value.body
    assert crd_kube.objects(GROUP, VERSION, PLURAL) == []


# ---------------------------------------------------------------------------------------------- phases


def test_a_healthy_rollout_seen_through_kubectl_flux_and_argo_cd(crd_kube: KubeHarness, tmp_path: Path) -> None:
    create(crd_kube, yaml.safe_load(RESOURCE))
    with controller(crd_kube, tmp_path, HEALTHY) as (observer, port):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "Promoted"
                 and observer.seen and observer.seen[-1]["kstatus"] == "Current", what="promoted")  # fmt: skip
        assert "RampRollout watch: " in get(port, "/readyz")[1]
    phases = [p for i, p in enumerate(observer.phases()) if i == 0 or p != observer.phases()[i - 1]]
    assert phases[-3:] == ["HeaderTest", "Progressing", "Promoted"], phases
    header, progressing, promoted = (observer.last(p) for p in ("HeaderTest", "Progressing", "Promoted"))
    assert (header["row"]["Step"], header["row"]["Weight"], header["row"]["Target"]) == ("1/2", 0, "v2")
    assert (progressing["row"]["Step"], progressing["row"]["Weight"]) == ("2/2", 50)
    assert (promoted["row"]["Phase"], promoted["row"]["Weight"]) == ("Promoted", 100)
    for entry in (header, progressing):
        assert entry["kstatus"] == "InProgress" and entry["argocd"] == "Progressing"
        assert entry["conditions"]["Reconciling"][0] == "True" and entry["conditions"]["Stalled"][0] == "False"
    assert promoted["kstatus"] == "Current" and promoted["argocd"] == "Healthy"
    assert promoted["conditions"]["Ready"] == ("True", "Promoted") and promoted["observed"] == 1
    status = read(crd_kube)["status"]
    assert status["weights"] == {"v1": 0, "v2": 100} and status["headerRoutes"] == []
    assert sorted(reason for reason, _ in events_on_resource(crd_kube)) == ["HeaderTest", "Progressing", "Promoted"]
    assert (rollout_state(crd_kube) or {}).get("phase") == "Promoted"  # the durable state stays on the VS


def test_a_faulty_rollout_rolls_back_and_every_tool_says_failed(crd_kube: KubeHarness, tmp_path: Path) -> None:
    create(crd_kube, yaml.safe_load(RESOURCE))
    with controller(crd_kube, tmp_path, FAULTY) as (observer, _):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "RolledBack", what="rolled back")
        wait_for(lambda: observer.seen[-1]["phase"] == "RolledBack")
    rolled = observer.last("RolledBack")
    assert rolled["row"]["Phase"] == "RolledBack" and rolled["row"]["Weight"] == 0
    assert "gate failed: error_rate" in rolled["row"]["Reason"] and "40.00%" in rolled["row"]["Reason"]
    assert rolled["kstatus"] == "Failed" and rolled["argocd"] == "Degraded"
    assert rolled["conditions"]["Stalled"] == ("True", "RolledBack") and rolled["conditions"]["Ready"][0] == "False"
    vs = stored(crd_kube, VS, "default", "demo")
    assert vs is not None
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "ramp-primary")
    assert {d["destination"]["subset"]: d.get("weight", 0) for d in primary["route"]} == {"v1": 100}
    assert ("RolledBack", rolled["row"]["Reason"]) in [(r, m[: len(rolled["row"]["Reason"])])
                                                       for r, m in events_on_resource(crd_kube)]  # fmt: skip


def test_new_pods_never_ready_fail_at_the_progress_deadline(kube: KubeHarness, tmp_path: Path) -> None:
    kube.install_ramp_crd()
    create_deployment(kube, "default", "demo", "v1", 1)
    create_deployment(kube, "default", "demo", "v2", 0)  # its pods never become ready
    create(kube, yaml.safe_load(RESOURCE))
    with controller(kube, tmp_path, HEALTHY) as (observer, _):
        wait_for(lambda: (read(kube).get("status") or {}).get("phase") == "Failed", what="failed at the deadline")
        wait_for(lambda: observer.seen[-1]["phase"] == "Failed")
    failed = observer.last("Failed")
    assert failed["row"]["Reason"].startswith("progress deadline (3s) exceeded")
    assert "no ready pods for v2" in failed["row"]["Reason"]
    assert failed["conditions"]["Stalled"] == ("True", "ProgressDeadlineExceeded")
    assert failed["kstatus"] == "Failed" and failed["argocd"] == "Degraded"
    assert "Pending" in observer.phases(), "it held (Pending, no ready pods) before failing"
    assert any(reason == "Failed" and "progress deadline" in message for reason, message in events_on_resource(kube))


# ---------------------------------------------------------------------------------------------- commands, owners


def annotate(kube: KubeHarness, value: str | None, name: str = "demo") -> None:
    patch = {"metadata": {"annotations": {"ramp.dev/command": value}}}
    objects(kube).patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name, patch)


def test_kubectl_annotate_pauses_and_resumes_with_the_outcome_in_status_and_events(
    crd_kube: KubeHarness, tmp_path: Path
) -> None:
    body = yaml.safe_load(RESOURCE)
    body["spec"]["steps"][0]["duration"] = "1h"  # stays in the header step
    create(crd_kube, body)
    with controller(crd_kube, tmp_path, HEALTHY) as (observer, _):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "HeaderTest")
        annotate(crd_kube, "pause")
        wait_for(lambda: (read(crd_kube)["status"].get("lastCommand") or {}).get("command") == "pause")
        status = read(crd_kube)["status"]
        assert status["lastCommand"]["applied"] is True and status["phase"] == "Paused" and status["paused"] is True
        assert "ramp.dev/command" not in (read(crd_kube)["metadata"].get("annotations") or {})  # consumed
        wait_for(lambda: observer.seen[-1]["phase"] == "Paused")
        assert observer.seen[-1]["argocd"] == "Suspended" and observer.seen[-1]["kstatus"] == "InProgress"
        annotate(crd_kube, "pause")  # refused: already paused, and said so
        wait_for(lambda: read(crd_kube)["status"]["lastCommand"]["applied"] is False)
        assert read(crd_kube)["status"]["lastCommand"]["reason"] == "already paused"
        annotate(crd_kube, "resume")
        wait_for(lambda: read(crd_kube)["status"]["phase"] == "HeaderTest")
        annotate(crd_kube, "explode")  # unreadable: refused on the resource itself
        wait_for(lambda: "unknown command" in read(crd_kube)["status"]["lastCommand"]["reason"])
    reasons = [reason for reason, _ in events_on_resource(crd_kube)]
    assert reasons.count("CommandApplied") == 2 and reasons.count("CommandRefused") == 2


def test_a_resource_and_a_spec_file_for_one_service_clash_and_neither_runs(
    crd_kube: KubeHarness, tmp_path: Path
) -> None:
    (tmp_path / "specs").mkdir()
    flat = yaml.safe_load(RESOURCE)["spec"]
    (tmp_path / "specs" / "demo.yaml").write_text(yaml.safe_dump({**flat, "namespace": "default"}))
    create(crd_kube, yaml.safe_load(RESOURCE))
    with controller(crd_kube, tmp_path, HEALTHY) as (observer, port):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "Invalid", what="refused")
        status = read(crd_kube)["status"]
        assert status["conditions"][0]["reason"] == "OwnerClash" or any(
            c["type"] == "Stalled" and c["reason"] == "OwnerClash" for c in status["conditions"])
        assert "specs/demo.yaml" in status["reason"] and "also claimed" in status["reason"]
        assert "2 spec problems" in get(port, "/readyz")[1]
        time.sleep(1.0)
        assert stored(crd_kube, VS, "default", "demo") is None, "neither owner ran"
    assert any(reason == "OwnerClash" for reason, _ in events_on_resource(crd_kube))
    assert observer.seen[-1]["kstatus"] == "Failed" and observer.seen[-1]["argocd"] == "Degraded"


def test_while_the_resources_are_not_listed_yet_a_clashing_file_never_moves_traffic(
    crd_kube: KubeHarness, tmp_path: Path
) -> None:
    """The start (or a failover) races the first LIST: the file is known at once, the resource that clashes
    with it only when the LIST answers. Nothing may run before that, or the file moves traffic for a tick."""
    (tmp_path / "specs").mkdir()
    flat = yaml.safe_load(RESOURCE)["spec"]
    (tmp_path / "specs" / "demo.yaml").write_text(yaml.safe_dump({**flat, "namespace": "default"}))
    create(crd_kube, yaml.safe_load(RESOURCE))
    lists = {"failing": True, "refused": 0}

    def refused_list(request: Any) -> bool:
        hit = lists["failing"] and request.method.value == "GET" and f"/{PLURAL}" in str(request.url)
        lists["refused"] += hit
        return bool(hit)

    crd_kube.emulator[refused_list] << 503
    with controller(crd_kube, tmp_path, HEALTHY) as (_, port):
        wait_for(lambda: lists["refused"] >= 2, what="the watch retried its first list")
        wait_for(lambda: "0 rollouts, 1 spec problems" in get(port, "/readyz")[1], what="the wait reported")
        ready, body = get(port, "/readyz")
        assert ready == 503 and "RampRollout watch in namespace 'default': not listed yet" in body, body
        time.sleep(1.0)  # several ticks with the file alone in view
        assert stored(crd_kube, VS, "default", "demo") is None, "the file waited for the list"
        lists["failing"] = False
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "Invalid", what="clash found")
        time.sleep(1.0)
        assert stored(crd_kube, VS, "default", "demo") is None, "neither owner ran, before or after the list"


def test_deleting_the_resource_stops_managing_and_leaves_traffic_as_it_is(
    crd_kube: KubeHarness, tmp_path: Path
) -> None:
    body = yaml.safe_load(RESOURCE)
    body["spec"]["steps"][1]["duration"] = "1h"
    create(crd_kube, body)
    with controller(crd_kube, tmp_path, HEALTHY) as (_, port):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "Progressing")
        objects(crd_kube).delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "demo")
        wait_for(lambda: "0 rollouts" in get(port, "/readyz")[1], what="the controller let go")
        before = stored(crd_kube, VS, "default", "demo")
        time.sleep(1.5)  # several ticks
        assert stored(crd_kube, VS, "default", "demo") == before, "traffic and state left exactly as they were"
    assert before is not None
    primary = next(r for r in before["spec"]["http"] if r["name"] == "ramp-primary")
    assert {d["destination"]["subset"]: d.get("weight", 0) for d in primary["route"]} == {"v1": 50, "v2": 50}


def test_an_edited_spec_is_observed_by_generation(crd_kube: KubeHarness, tmp_path: Path) -> None:
    body = yaml.safe_load(RESOURCE)
    body["spec"]["steps"][0]["duration"] = "1h"
    create(crd_kube, body)
    with controller(crd_kube, tmp_path, HEALTHY) as (observer, _):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("observedGeneration") == 1)
        patch = {"spec": {"gates": [{"metric": "error_rate", "max": 3}]}}
        objects(crd_kube).patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "demo", patch)
        assert read(crd_kube)["metadata"]["generation"] == 2
        wait_for(lambda: read(crd_kube)["status"].get("observedGeneration") == 2, what="generation 2 observed")
    lagging = [e for e in observer.seen if e["generation"] == 2 and e["observed"] == 1]
    assert all(e["kstatus"] == "InProgress" and e["argocd"] == "Progressing" for e in lagging)


def test_ramp_pause_acts_on_the_resource_and_prints_the_outcome(
    crd_kube: KubeHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main

    body = yaml.safe_load(RESOURCE)
    body["spec"]["steps"][0]["duration"] = "1h"
    create(crd_kube, body)
    with controller(crd_kube, tmp_path, HEALTHY) as (_, _port):
        wait_for(lambda: (read(crd_kube).get("status") or {}).get("phase") == "HeaderTest")
        kubeconfig = str(tmp_path / "kubeconfig")
        assert main(["pause", "demo", "-n", "default", "--kubeconfig", kubeconfig, "--wait", "20"]) == 0
        assert "paused by user" in capsys.readouterr().out.splitlines()  # (the controller's logs share stdout here)
        # The command went through the resource: the CLI wrote the annotation on the RampRollout (read from the
        # apiserver's request log: the controller removes it within a tick, too fast to be sure to see it stored).
        on_resource = [r for method in ("patch", "put") for r in crd_kube.requests(method)
                       if str(r.url.path).endswith(f"/{PLURAL}/demo")]  # fmt: skip
        assert any("ramp.dev/command" in json.dumps(r.data) and "pause" in json.dumps(r.data) for r in on_resource), (
            "the command went through the resource"
        )
        assert read(crd_kube)["status"]["phase"] == "Paused"
        assert main(["pause", "demo", "-n", "default", "--kubeconfig", kubeconfig, "--wait", "20"]) == 1
        assert "refused: already paused" in capsys.readouterr().err

"""charts/ramp: hardened pods, probes, leader-election and namespace flags, 2 replicas + PDB, metrics
Service/ServiceMonitor, and a values.schema.json that rejects bad values at render and lint time.
RBAC: test_ramp_rbac.py (and test_ramp_rbac_live.py); the NetworkPolicy: test_ramp_network_policy.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from controller.spec_directory import SpecDirectory
from tests.charts.checks import (
    assert_hardened,
    controller_container,
    controller_pod,
    flags,
    probe_port,
    service_account_name,
    service_monitor_problems,
    watched_namespaces,
)
from tests.charts.rendering import (
    ALL_CI,
    RAMP_CHART,
    RAMP_CI,
    RAMP_NAMESPACE,
    RELEASE,
    _ids,
    ci_values,
    render_ci,
    render_error,
)


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_controller_pod_is_hardened_and_probed(path: Path) -> None:
    rendered = render_ci(path)
    pod = controller_pod(rendered)
    assert_hardened(pod["spec"])
    container = controller_container(rendered)
    assert probe_port(container, container["livenessProbe"]) == 8080
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(container, container["readinessProbe"]) == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    # The controller picks spec changes up by itself: no checksum annotation that would restart it.
    annotations = {
        **rendered.one("Deployment")["metadata"].get("annotations", {}),
        **pod["metadata"].get("annotations", {}),
    }
    assert not [k for k in annotations if "checksum" in k]
    assert rendered.values["podAnnotations"].items() <= annotations.items()


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_controller_flags_env_and_specs_mount(path: Path) -> None:
    rendered = render_ci(path)
    values = rendered.values
    container = controller_container(rendered)
    expected = {
        "--specs": "/etc/ramp/specs",
        "--prometheus": values["prometheus"]["url"],
        "--lease-namespace": "$(POD_NAMESPACE)",
        "--lease-name": values["leaderElection"]["leaseName"],
        "--identity": "$(POD_NAME)",
        "--listen-port": "8080",
    }
    watched = watched_namespaces(rendered)
    if watched is not None:  # the same namespaces as the Roles (test_ramp_rbac.py); absent: all namespaces
        expected["--namespaces"] = ",".join(watched)
    assert flags(container) == expected
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["RAMP_LOG_FORMAT"]["value"] == "json"
    # The rollout specs: the rendered ConfigMap, mounted read-only (no subPath: updates must reach the pod).
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/ramp/specs")
    assert mount["readOnly"] is True and "subPath" not in mount
    pod_spec = controller_pod(rendered)["spec"]
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == rendered.one("ConfigMap")["metadata"]["name"]
    assert pod_spec["serviceAccountName"] == service_account_name(rendered)
    assert pod_spec.get("automountServiceAccountToken", True) is True  # it talks to the apiserver


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_rollout_specs_configmap_is_what_the_controller_loads(path: Path, tmp_path: Path) -> None:
    rendered = render_ci(path)
    configmap = rendered.one("ConfigMap")
    assert configmap["metadata"]["namespace"] == RAMP_NAMESPACE
    specs = rendered.values["rolloutSpecs"]
    data = configmap.get("data") or {}
    assert set(data) == set(specs)
    for name, text in data.items():
        assert yaml.safe_load(text) == specs[name]
        (tmp_path / name).write_text(text, encoding="utf-8")
    # The controller's own spec directory, with the chart's namespace allow-list: every file is accepted.
    watched = watched_namespaces(rendered)
    directory = SpecDirectory(tmp_path, None if watched is None else frozenset(watched))
    directory.refresh()
    assert directory.problems == []
    assert sorted(r.spec.service for r in directory.rollouts) == sorted(s["service"] for s in specs.values())


def test_a_spec_outside_the_watched_namespaces_fails_the_render() -> None:
    spec = {"service": "cart", "namespace": "other", "versions": [{"name": "v1", "weight": 100}], "target": "v1"}
    message = render_error(RAMP_CHART, {"watchNamespaces": ["shop"], "rolloutSpecs": {"cart.yaml": spec}})
    assert 'namespace "other" is not in watchNamespaces (shop)' in message


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_replicas_and_pod_disruption_budget(path: Path) -> None:
    rendered = render_ci(path)
    replicas = rendered.values["replicas"]
    assert rendered.one("Deployment")["spec"]["replicas"] == replicas
    pdbs = rendered.of_kind("PodDisruptionBudget")
    if replicas > 1:
        assert len(pdbs) == 1
        pdb = pdbs[0]
        assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
        pod_labels = controller_pod(rendered)["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert pdb["spec"]["selector"]["matchLabels"] == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    else:
        assert pdbs == []  # minAvailable 1 with one replica would block every node drain


def test_defaults_run_two_replicas_with_a_pdb() -> None:
    rendered = render_ci(RAMP_CHART / "ci" / "defaults-values.yaml")
    assert rendered.one("Deployment")["spec"]["replicas"] == 2
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert rendered.of_kind("ServiceMonitor") == []


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_standard_labels_on_every_object(path: Path) -> None:
    rendered = render_ci(path)
    for manifest in rendered.manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "ramp"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# ---- metrics


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_metrics_service_and_service_monitor(path: Path) -> None:
    rendered = render_ci(path)
    service = rendered.one("Service")
    assert service["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    pod_labels = controller_pod(rendered)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitors = rendered.of_kind("ServiceMonitor")
    if not rendered.values["serviceMonitor"]["enabled"]:
        assert monitors == []
        return
    assert len(monitors) == 1
    monitor = monitors[0]
    assert service_monitor_problems(monitor) == []
    assert monitor["metadata"]["namespace"] == RAMP_NAMESPACE
    assert rendered.values["serviceMonitor"]["labels"].items() <= monitor["metadata"]["labels"].items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RAMP_NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http-metrics",
            "path": "/metrics",
            "interval": rendered.values["serviceMonitor"]["interval"],
            "scrapeTimeout": rendered.values["serviceMonitor"]["scrapeTimeout"],
        }
    ]


def test_service_monitor_ci_file_enables_it() -> None:
    assert len(render_ci(RAMP_CHART / "ci" / "servicemonitor-values.yaml").of_kind("ServiceMonitor")) == 1


def test_notes_name_the_lease_and_namespaces() -> None:
    notes = render_ci(RAMP_CHART / "ci" / "multi-namespace-values.yaml").files["ramp/templates/NOTES.txt"]
    assert "ramp-system/ramp-leader" in notes
    assert "Watched namespaces: shop, payments" in notes
    assert "checkout.yml, reviews.yaml" in notes
    assert "Routers: Istio (VirtualServices) only; set gatewayApi.enabled" in notes


def test_notes_name_the_gateway_api_router_when_enabled() -> None:
    notes = render_ci(RAMP_CHART / "ci" / "gateway-api-values.yaml").files["ramp/templates/NOTES.txt"]
    assert "Routers: Istio (VirtualServices) and the Gateway API (HTTPRoutes" in notes


# ---- values.schema.json


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": 0}, "/replicas"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"watchNamespaces": ["Shop"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": ["shop", "shop"]}, "/watchNamespaces"),
        ({"serviceAccount": {"create": False}}, "/serviceAccount"),
        ({"rolloutSpecs": {"r.json": {"service": "r", "versions": [{}], "target": "v1"}}}, "propertyName 'r.json'"),
        ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
        ({"image": {"repository": "ramp", "tag": 1.0}}, "/image/tag"),
        ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
        ({"watchAllNamespaces": "yes"}, "/watchAllNamespaces"),
        ({"watchAllNamespaces": True, "watchNamespaces": ["shop"]}, "/watchNamespaces"),
    ],
    ids=[
        "replicas-string", "replicas-zero", "unknown-top-level-key", "namespace-uppercase", "namespace-twice",
        "existing-sa-without-name", "spec-file-not-yaml", "prometheus-url-no-scheme", "tag-number",
        "servicemonitor-enabled-string", "watch-all-string", "watch-all-and-a-list",
    ],
)  # fmt: skip
def test_ramp_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    message = render_error(RAMP_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message
    report = helm.lint(RAMP_CHART, values)
    assert any(m["severity"] == 3 and complaint in m["error"] for m in report["messages"]), report


@pytest.mark.parametrize(("chart", "path"), ALL_CI, ids=[f"{c.name}-{p.stem}" for c, p in ALL_CI])
def test_schema_accepts_the_ci_values(chart: Path, path: Path) -> None:
    with helm.Chart.load(chart) as loaded:
        assert loaded.schema is not None and loaded.schema.get("additionalProperties") is False
        loaded.validate_schema(loaded.merge_values(ci_values(path)))  # raises HelmValuesError if invalid

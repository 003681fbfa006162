"""The Helm charts, rendered by the real Helm engine (helm-python-sdk, no helm binary).

- Every values file under `charts/*/ci/` renders, lints clean, and every manifest validates: Kubernetes
  kinds with kubernetes-validate (strict, its default Kubernetes version), Istio kinds against Istio's
  CRDs (controller.routing.crd_schema, strict). Under CI a missing CRD file is a failure.
- charts/ramp: hardened pods, probes, leader-election flags, 2 replicas + PDB, and RBAC that grants
  exactly the least-privilege rule set (resolved through the bindings), nothing more.
- charts/microservice: the VirtualService and DestinationRule equal what the controller renders
  (controller.routing.istio_render) for the same versions, weights and header route.
- values.schema.json rejects bad values at render and lint time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.routing.crd_schema import CRD_ENV_VAR, IstioSchemas, find_crd_file
from controller.routing.istio_render import destination_rule, virtual_service
from controller.routing.model import DesiredRouting, HeaderRoute
from controller.spec_directory import SpecDirectory
from controller.weights import integer_percentages

REPO_ROOT = Path(__file__).resolve().parents[2]
RAMP_CHART = REPO_ROOT / "charts" / "ramp"
MICRO_CHART = REPO_ROOT / "charts" / "microservice"
RELEASE = "ramp"
RAMP_NAMESPACE = "ramp-system"
MICRO_NAMESPACE = "apps"  # the release namespace; a values file without `namespace` lands here
K8S_VERSION = kubernetes_validate.latest_version()  # the version kubernetes-validate checks by default
ISTIO_KINDS = frozenset({"VirtualService", "DestinationRule"})

RAMP_CI = sorted((RAMP_CHART / "ci").glob("*.yaml"))
MICRO_CI = sorted((MICRO_CHART / "ci").glob("*.yaml"))
ALL_CI = [(RAMP_CHART, p) for p in RAMP_CI] + [(MICRO_CHART, p) for p in MICRO_CI]


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    files: dict[str, str]  # template path -> rendered text, as Helm returns it
    manifests: tuple[dict[str, Any], ...]
    values: dict[str, Any]  # the values Helm actually used (chart defaults coalesced with the overrides)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected exactly one {kind}, got {[m['metadata']['name'] for m in found]}"
        return found[0]


def render(chart: Path, values: dict[str, Any] | None = None, namespace: str = RAMP_NAMESPACE) -> Rendered:
    """helm template: Chart.load + Chart.render (which validates values.schema.json first)."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values or {}, name=RELEASE, namespace=namespace)
        merged = loaded.merge_values(values or {})
    manifests = tuple(
        doc
        for path, text in sorted(files.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    )
    return Rendered(files, manifests, merged)


def ci_values(path: Path) -> dict[str, Any]:
    """A values file read by Helm's own YAML parser (as `helm -f` would)."""
    return helm.values_from_yaml(path.read_text(encoding="utf-8"))


@functools.cache
def render_ci(path: Path) -> Rendered:
    chart = path.parent.parent
    namespace = RAMP_NAMESPACE if chart == RAMP_CHART else MICRO_NAMESPACE
    return render(chart, ci_values(path), namespace)


def render_error(chart: Path, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(chart, values)
    return str(caught.value)


def test_ci_values_files_cover_the_required_cases() -> None:
    assert {p.stem for p in RAMP_CI} >= {
        "defaults-values", "single-namespace-values", "multi-namespace-values", "servicemonitor-values",
    }  # fmt: skip
    assert {p.stem for p in MICRO_CI} >= {
        "two-versions-values", "seed-three-versions-values", "retire-v2-values", "single-version-values",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def istio_schemas() -> IstioSchemas:
    path = find_crd_file()
    if path is None:
        message = f"Istio CRD file not found: <repo>/../shared/reference/istio-networking-crds.yaml or ${CRD_ENV_VAR}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must validate Istio manifests against the CRDs, but: {message}", pytrace=False)
        pytest.skip(message)
    return IstioSchemas.load(path)


def _k8s_problem(manifest: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"{manifest['kind']}: {exc.message}"
    return None


_MONITOR_SPEC_FIELDS = frozenset({"namespaceSelector", "selector", "endpoints", "jobLabel"})
_MONITOR_ENDPOINT_FIELDS = frozenset({"port", "path", "interval", "scrapeTimeout", "scheme"})


def _service_monitor_problems(monitor: dict[str, Any]) -> list[str]:
    """No schema for monitoring.coreos.com ships with kubernetes-validate or shared/reference: check it by hand."""
    problems: list[str] = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')!r}")
    if set(monitor) != {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"top-level fields {sorted(monitor)}")
    spec = monitor.get("spec", {})
    if set(spec) - _MONITOR_SPEC_FIELDS:
        problems.append(f"unknown spec fields {sorted(set(spec) - _MONITOR_SPEC_FIELDS)}")
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is required (an empty selector matches every Service)")
    for endpoint in spec.get("endpoints", []):
        if set(endpoint) - _MONITOR_ENDPOINT_FIELDS:
            problems.append(f"unknown endpoint fields {sorted(set(endpoint) - _MONITOR_ENDPOINT_FIELDS)}")
        if not all(isinstance(endpoint.get(k, ""), str) for k in ("port", "path", "interval", "scrapeTimeout")):
            problems.append(f"endpoint fields must be strings: {endpoint}")
    return problems


@pytest.mark.parametrize(("chart", "path"), ALL_CI, ids=[f"{c.name}-{p.stem}" for c, p in ALL_CI])
def test_every_manifest_is_valid_kubernetes(chart: Path, path: Path) -> None:
    rendered = render_ci(path)
    assert rendered.manifests, "nothing rendered"
    problems: list[str] = []
    for manifest in rendered.manifests:
        if manifest["kind"] in ISTIO_KINDS:
            continue  # test_istio_manifests_match_the_crds
        if manifest["kind"] == "ServiceMonitor":
            problems += _service_monitor_problems(manifest)
            continue
        problem = _k8s_problem(manifest)
        if problem:
            problems.append(problem)
    assert problems == []
    names = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in rendered.manifests]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_kubernetes_validation_is_strict() -> None:
    """The validator used above rejects a misspelt field (it would otherwise be silently pruned)."""
    deployment = render_ci(RAMP_CHART / "ci" / "defaults-values.yaml").one("Deployment")
    assert _k8s_problem(deployment) is None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True
    try:
        assert "readOnlyRootFilesytem" in (_k8s_problem(deployment) or "")
    finally:
        del container["securityContext"]["readOnlyRootFilesytem"]


@pytest.mark.parametrize("path", MICRO_CI, ids=_ids(MICRO_CI))
def test_istio_manifests_match_the_crds(path: Path, istio_schemas: IstioSchemas) -> None:
    rendered = render_ci(path)
    istio = [m for m in rendered.manifests if m["kind"] in ISTIO_KINDS]
    assert sorted(m["kind"] for m in istio) == ["DestinationRule", "VirtualService"]
    for manifest in istio:
        assert istio_schemas.validate(manifest) == [], manifest["kind"]


def test_ramp_chart_renders_no_istio_objects() -> None:
    for path in RAMP_CI:
        assert not [m for m in render_ci(path).manifests if m["kind"] in ISTIO_KINDS]


@pytest.mark.parametrize(("chart", "path"), ALL_CI, ids=[f"{c.name}-{p.stem}" for c, p in ALL_CI])
def test_lint_is_clean(chart: Path, path: Path) -> None:
    report = helm.lint(chart, ci_values(path), strict=True, namespace="lint")
    serious = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert serious == [] and report["errors"] == []


# ---------------------------------------------------------------------------------------------- ramp chart


def controller_pod(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("Deployment")["spec"]["template"]


def controller_container(rendered: Rendered) -> dict[str, Any]:
    containers = controller_pod(rendered)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["controller"]
    return containers[0]


def flags(container: dict[str, Any]) -> dict[str, str]:
    """`--name=value` arguments as a dict; every argument must have that form."""
    assert "command" not in container, "the image's ENTRYPOINT (ramp controller) must be kept"
    parsed: dict[str, str] = {}
    for arg in container["args"]:
        name, sep, value = arg.partition("=")
        assert arg.startswith("--") and sep, arg
        assert name not in parsed, f"{name} given twice"
        parsed[name] = value
    return parsed


def assert_hardened(pod_spec: dict[str, Any]) -> None:
    pod = pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert isinstance(pod.get("fsGroup"), int)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod_spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        assert context.get("runAsUser", 10001) == 10001
        resources = container["resources"]
        assert set(resources["requests"]) >= {"cpu", "memory"} and set(resources["limits"]) >= {"cpu", "memory"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "a writable emptyDir at /tmp"
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("hostPID") and not pod_spec.get("hostIPC")


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


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
    if values["watchNamespaces"]:
        expected["--namespaces"] = ",".join(values["watchNamespaces"])
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
    watched = rendered.values["watchNamespaces"]
    directory = SpecDirectory(tmp_path, frozenset(watched) if watched else None)
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


# ---- RBAC


def service_account_name(rendered: Rendered) -> str:
    return str(rendered.one("ServiceAccount")["metadata"]["name"])


Grant = tuple[str | None, str, str, str, str | None]  # (namespace or None = cluster-wide, group, resource, verb, name)

WORKLOAD_RULES = {
    ("networking.istio.io", "virtualservices"): {"get", "list", "watch", "create", "update", "patch"},
    ("networking.istio.io", "destinationrules"): {"get", "list", "watch", "create", "update", "patch"},
    ("apps", "deployments"): {"get", "list"},
    ("", "events"): {"create", "patch"},
}


def expected_grants(values: dict[str, Any]) -> set[Grant]:
    lease = values["leaderElection"]["leaseName"]
    grants: set[Grant] = {
        (RAMP_NAMESPACE, "coordination.k8s.io", "leases", "get", lease),
        (RAMP_NAMESPACE, "coordination.k8s.io", "leases", "update", lease),
        (RAMP_NAMESPACE, "coordination.k8s.io", "leases", "create", None),
    }
    scopes: list[str | None] = list(values["watchNamespaces"]) or [None]
    for scope in scopes:
        for (group, resource), verbs in WORKLOAD_RULES.items():
            grants |= {(scope, group, resource, verb, None) for verb in verbs}
    return grants


def granted(rendered: Rendered) -> set[Grant]:
    """Every permission the controller's ServiceAccount gets, resolved through the rendered bindings."""
    account = (RAMP_NAMESPACE, service_account_name(rendered))
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in rendered.of_kind("Role")}
    cluster_roles = {r["metadata"]["name"]: r for r in rendered.of_kind("ClusterRole")}
    grants: set[Grant] = set()
    bindings = rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding")
    for binding in bindings:
        subjects = {(s["namespace"], s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
        assert subjects == {account} and len(binding["subjects"]) == 1, binding["metadata"]["name"]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        # A binding to a role that is not rendered (or bound twice) raises KeyError here.
        role = roles.pop((namespace, ref["name"])) if ref["kind"] == "Role" else cluster_roles.pop(ref["name"])
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
            names: list[str | None] = list(rule.get("resourceNames") or [None])
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants |= {(namespace, group, resource, verb, name) for name in names}
    assert roles == {} and cluster_roles == {}, "every rendered role is bound (and only once)"
    return grants


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_rbac_is_exactly_least_privilege(path: Path) -> None:
    rendered = render_ci(path)
    grants = granted(rendered)
    assert grants == expected_grants(rendered.values)
    assert not [g for g in grants if "*" in g], "no wildcards"
    assert not {resource for _, _, resource, _, _ in grants} & {"secrets", "pods", "configmaps"}


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_rbac_shape_follows_watch_namespaces(path: Path) -> None:
    rendered = render_ci(path)
    watched = rendered.values["watchNamespaces"]
    role_namespaces = sorted(r["metadata"]["namespace"] for r in rendered.of_kind("Role"))
    if watched:
        assert rendered.of_kind("ClusterRole") == [] and rendered.of_kind("ClusterRoleBinding") == []
        assert role_namespaces == sorted([*watched, RAMP_NAMESPACE])  # one per namespace + the Lease's
    else:
        assert len(rendered.of_kind("ClusterRole")) == 1 and len(rendered.of_kind("ClusterRoleBinding")) == 1
        assert role_namespaces == [RAMP_NAMESPACE]  # only the Lease's


def test_rbac_as_rendered_for_two_namespaces() -> None:
    """The literal rules, as a reader of the chart would see them."""
    rendered = render_ci(RAMP_CHART / "ci" / "multi-namespace-values.yaml")
    rules = {r["metadata"]["namespace"]: r["rules"] for r in rendered.of_kind("Role")}
    workload = [
        {
            "apiGroups": ["networking.istio.io"],
            "resources": ["virtualservices", "destinationrules"],
            "verbs": ["get", "list", "watch", "create", "update", "patch"],
        },
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    assert rules == {
        "shop": workload,
        "payments": workload,
        RAMP_NAMESPACE: [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["ramp-leader"],
                "verbs": ["get", "update"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ],
    }


def test_existing_service_account_is_bound_without_creating_one() -> None:
    rendered = render(RAMP_CHART, {"serviceAccount": {"create": False, "name": "platform-ramp"}})
    assert rendered.of_kind("ServiceAccount") == []
    assert controller_pod(rendered)["spec"]["serviceAccountName"] == "platform-ramp"
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "platform-ramp", "namespace": RAMP_NAMESPACE}]


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
    assert _service_monitor_problems(monitor) == []
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
    ],
    ids=[
        "replicas-string", "replicas-zero", "unknown-top-level-key", "namespace-uppercase", "namespace-twice",
        "existing-sa-without-name", "spec-file-not-yaml", "prometheus-url-no-scheme", "tag-number",
        "servicemonitor-enabled-string",
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


# ---------------------------------------------------------------------------------------------- microservice


def desired_routing(values: dict[str, Any], release_namespace: str) -> DesiredRouting:
    """The controller's model of the routing a chart's values describe."""
    namespace = values.get("namespace") or release_namespace
    service = values["service"]
    names = [v["name"] for v in values["versions"]]
    percentages = integer_percentages({v["name"]: v["weight"] for v in values["versions"]})
    header = values.get("headerRoute")
    header_routes = (
        (
            HeaderRoute(
                header=header.get("name", "x-version"),
                value=header["value"],
                match=header.get("match", "exact"),
                version=header["version"],
            ),
        )
        if header
        else ()
    )
    return DesiredRouting(
        service=service,
        namespace=namespace,
        host=values.get("host") or f"{service}.{namespace}.svc.cluster.local",
        versions=tuple(names),
        header_routes=header_routes,
        weights=tuple((n, percentages[n]) for n in names),
    )


def primary_weights(vs: dict[str, Any]) -> list[tuple[str, int]]:
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "ramp-primary")
    return [(d["destination"]["subset"], d["weight"]) for d in primary["route"]]


MICRO_CASES = [MICRO_CHART / "values.yaml", *MICRO_CI]


@pytest.mark.parametrize("path", MICRO_CASES, ids=["chart-defaults", *_ids(MICRO_CI)])
def test_istio_objects_equal_the_controllers_rendering(path: Path) -> None:
    rendered = render_ci(path) if path.parent.name == "ci" else render(MICRO_CHART, {}, MICRO_NAMESPACE)
    routing = desired_routing(rendered.values, MICRO_NAMESPACE)
    assert rendered.one("VirtualService") == virtual_service(routing)
    assert rendered.one("DestinationRule") == destination_rule(routing)


@pytest.mark.parametrize(
    ("name", "weights", "header"),
    [
        ("two-versions-values", [("v1", 90), ("v2", 10)], None),
        ("seed-three-versions-values", [("v1", 34), ("v2", 33), ("v3", 33)], "v3"),
        ("retire-v2-values", [("v1", 50), ("v3", 50)], "v3"),
        ("single-version-values", [("v1", 100)], None),
        ("rounding-values", [("stable", 100)], "beta"),
    ],
)
def test_weights_as_literal_percentages(name: str, weights: list[tuple[str, int]], header: str | None) -> None:
    """Independent of the controller: the numbers themselves (50/50/50 -> 34/33/33)."""
    rendered = render_ci(MICRO_CHART / "ci" / f"{name}.yaml")
    vs = rendered.one("VirtualService")
    assert primary_weights(vs) == weights
    routes = [r["name"] for r in vs["spec"]["http"]]
    assert routes == ([f"ramp-header-{header}"] if header else []) + ["ramp-primary"]
    if header:
        assert vs["spec"]["http"][0]["route"] == [
            {"destination": {"host": vs["spec"]["hosts"][0], "subset": header}, "weight": 100}
        ]
    subsets = rendered.one("DestinationRule")["spec"]["subsets"]
    assert subsets == [{"name": v["name"], "labels": {"version": v["name"]}} for v in rendered.values["versions"]]


def test_retired_version_keeps_its_subset() -> None:
    rendered = render_ci(MICRO_CHART / "ci" / "retire-v2-values.yaml")
    assert [s["name"] for s in rendered.one("DestinationRule")["spec"]["subsets"]] == ["v1", "v2", "v3"]
    assert "v2" not in dict(primary_weights(rendered.one("VirtualService")))


# Weights drawn from a small pool as well, so equal remainders (the tie-break) come up often.
_weight = st.one_of(st.integers(0, 1_000_000), st.sampled_from([0, 1, 2, 3, 7, 50, 100, 333]))


@st.composite
def _versions(draw: st.DrawFn) -> list[dict[str, Any]]:
    weights = draw(st.lists(_weight, min_size=1, max_size=7).filter(lambda ws: sum(ws) > 0))
    return [{"name": f"v{i + 1}", "weight": w} for i, w in enumerate(weights)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=_versions(), header_index=st.one_of(st.none(), st.integers(0, 6)))
def test_chart_apportionment_equals_the_controllers(versions: list[dict[str, Any]], header_index: int | None) -> None:
    values: dict[str, Any] = {"service": "svc", "namespace": "ns", "versions": versions}
    if header_index is not None:
        target = versions[header_index % len(versions)]["name"]
        values["headerRoute"] = {"value": target, "version": target}
    rendered = render(MICRO_CHART, values, MICRO_NAMESPACE)
    routing = desired_routing(rendered.values, MICRO_NAMESPACE)
    assert rendered.one("VirtualService") == virtual_service(routing)
    assert rendered.one("DestinationRule") == destination_rule(routing)
    assert sum(w for _, w in primary_weights(rendered.one("VirtualService"))) == 100


def _deployments(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    deployments = {d["metadata"]["name"]: d for d in rendered.of_kind("Deployment")}
    assert len(deployments) == len(rendered.values["versions"])
    for version in rendered.values["versions"]:
        yield version, deployments[f"{rendered.values['service']}-{version['name']}"]


@pytest.mark.parametrize("path", MICRO_CI, ids=_ids(MICRO_CI))
def test_one_deployment_per_version(path: Path) -> None:
    rendered = render_ci(path)
    service = rendered.values["service"]
    namespace = rendered.values.get("namespace") or MICRO_NAMESPACE
    for version, deployment in _deployments(rendered):
        labels = {"app": service, "version": version["name"]}
        assert deployment["metadata"]["namespace"] == namespace
        assert labels.items() <= deployment["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"] == labels
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert deployment["spec"]["replicas"] == version.get("replicas", 1)
        pod = deployment["spec"]["template"]["spec"]
        assert_hardened(pod)
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "services.sample_app"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert len(env) == len(container["env"]), "no variable set twice"
        assert env == {"VERSION": version["name"], "PORT": "8080", "HOST": "0.0.0.0", **version.get("env", {})}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
            assert probe_port(container, container[probe]) == 8080


@pytest.mark.parametrize("path", MICRO_CI, ids=_ids(MICRO_CI))
def test_service_selects_every_version(path: Path) -> None:
    rendered = render_ci(path)
    service = rendered.one("Service")
    assert service["metadata"]["name"] == rendered.values["service"]
    assert service["spec"]["selector"] == {"app": rendered.values["service"]}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


def test_replicas_zero_is_kept() -> None:
    replicas = {
        d["metadata"]["labels"]["version"]: d["spec"]["replicas"]
        for d in render_ci(MICRO_CHART / "ci" / "retire-v2-values.yaml").of_kind("Deployment")
    }
    assert replicas == {"v1": 1, "v2": 0, "v3": 1}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"versions": [{"name": "v1", "weight": 1}, {"name": "v1", "weight": 1}]}, '"v1" is listed twice'),
        ({"versions": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 0}]}, "positive sum"),
        (
            {"versions": [{"name": "v1", "weight": 1}], "headerRoute": {"value": "v9", "version": "v9"}},
            'headerRoute.version: "v9" is not one of the versions (v1)',
        ),
    ],
    ids=["duplicate-version", "zero-weights", "header-to-unknown-version"],
)
def test_microservice_template_checks(values: dict[str, Any], complaint: str) -> None:
    assert complaint in render_error(MICRO_CHART, values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"versions": [{"name": "v1", "weight": "50"}]}, "/versions/0/weight"),
        ({"versions": [{"name": "v1", "weight": -1}]}, "/versions/0/weight"),
        ({"versions": [{"name": "v1", "weight": 1.5}]}, "/versions/0/weight"),
        ({"versions": []}, "/versions"),
        ({"versions": [{"name": "V1", "weight": 1}]}, "/versions/0/name"),
        ({"versions": [{"name": "v1", "weight": 1, "env": {"VERSION": "v2"}}]}, "invalid propertyName 'VERSION'"),
        ({"versions": [{"name": "v1", "weight": 1, "env": {"N": 1}}]}, "/versions/0/env/N"),
        ({"headerRoute": {"version": "v1"}}, "/headerRoute"),
        ({"headerRoute": {"value": "v1", "version": "v1", "match": "glob"}}, "/headerRoute/match"),
        ({"weights": {"v1": 100}}, "weights"),
    ],
    ids=[
        "weight-string", "weight-negative", "weight-fraction", "no-versions", "name-uppercase",
        "env-overrides-version", "env-number", "header-without-value", "header-bad-match", "unknown-top-level-key",
    ],
)  # fmt: skip
def test_microservice_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    message = render_error(MICRO_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message

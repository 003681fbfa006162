"""charts/ramp's optional load tester (loadtester.enabled): a hardened Deployment of the same image running
`ramp loadtest`, its Service, a ServiceAccount bound to nothing, and (with networkPolicy.enabled) policies checked by
what they allow. Rendered with the real Helm engine, validated with kubernetes-validate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from controller.cli import build_parser
from tests.charts.checks import assert_hardened, probe_port
from tests.charts.netpol import Endpoint, allows, selector_matches
from tests.charts.rendering import K8S_VERSION, RAMP_CHART, RAMP_CI, RAMP_NAMESPACE, Rendered, _ids, render, render_ci

NETPOL = {"enabled": True, "egress": {"kubernetesApi": {"cidrs": ["10.96.0.1/32"]}}}
ENABLED = {"loadtester": {"enabled": True}}
SHOP_POD = Endpoint.pod("shop", {"app": "reviews", "version": "v2"})


def loadtester(rendered: Rendered, kind: str) -> dict[str, Any]:
    found = [m for m in rendered.of_kind(kind) if m["metadata"]["name"] == "ramp-loadtester"]
    assert len(found) == 1, kind
    return found[0]


def controller_deployment(rendered: Rendered) -> dict[str, Any]:
    return next(m for m in rendered.of_kind("Deployment") if m["metadata"]["name"] == "ramp")


def validate_all(rendered: Rendered) -> None:
    for manifest in rendered.manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_off_by_default(path: Path) -> None:
    rendered = render_ci(path)
    assert rendered.values["loadtester"]["enabled"] is False
    assert not [m for m in rendered.manifests if "loadtester" in m["metadata"]["name"]]


def test_the_deployment_is_hardened_probed_and_runs_ramp_loadtest_with_the_caps() -> None:
    rendered = render(RAMP_CHART, {"loadtester": {"enabled": True, "maxRps": 40, "maxDuration": "5m", "maxRuns": 2}})
    validate_all(rendered)
    deployment = loadtester(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert_hardened(pod)
    assert pod["automountServiceAccountToken"] is False  # it never calls the Kubernetes API
    (container,) = pod["containers"]
    assert container["image"] == controller_deployment(rendered)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["command"] == ["ramp", "loadtest"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path and probe_port(container, container[probe]) == 8080
    # The arguments are what the real `ramp loadtest` parser accepts, with the caps of the values.
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.listen == ("0.0.0.0", 8080) and args.secret_file is None
    assert (args.max_rps, args.max_duration, args.max_runs, args.max_concurrency) == (40, 300, 2, 16)
    service = loadtester(rendered, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # In the mesh, so that Istio's header routes apply to its load; its API port outside the sidecar.
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["sidecar.istio.io/inject"] == "true"
    assert template["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"] == "8080"


def test_its_service_account_is_bound_to_nothing() -> None:
    rendered = render(RAMP_CHART, {**ENABLED, "watchNamespaces": ["shop", "books"]})
    account = loadtester(rendered, "ServiceAccount")
    name = account["metadata"]["name"]
    assert loadtester(rendered, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert name != controller_deployment(rendered)["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding"):
        assert name not in [s["name"] for s in binding["subjects"]], binding["metadata"]["name"]


def test_no_controller_selector_picks_the_load_tester_pods_and_the_reverse() -> None:
    rendered = render(RAMP_CHART, {**ENABLED, "networkPolicy": NETPOL})
    tester_labels = loadtester(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    controller = controller_deployment(rendered)
    controller_labels = controller["spec"]["template"]["metadata"]["labels"]
    selectors = [controller["spec"]["selector"], rendered.one("PodDisruptionBudget")["spec"]["selector"]]
    selectors += [{"matchLabels": s["spec"]["selector"]} for s in rendered.of_kind("Service") if s is not
                  loadtester(rendered, "Service")]  # fmt: skip
    selectors += [p["spec"]["podSelector"] for p in rendered.of_kind("NetworkPolicy")
                  if p["metadata"]["name"] != "ramp-loadtester"]  # fmt: skip
    assert selectors and not any(selector_matches(s, tester_labels) for s in selectors)
    assert not selector_matches(loadtester(rendered, "Deployment")["spec"]["selector"], controller_labels)


def test_the_secret_is_mounted_where_the_flag_reads_it() -> None:
    rendered = render(RAMP_CHART, {"loadtester": {"enabled": True, "secret": {"name": "hook-hmac", "key": "hmac"}}})
    validate_all(rendered)
    pod = loadtester(rendered, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secret")
    volume = next(v for v in pod["volumes"] if v["name"] == "secret")
    assert mount["readOnly"] is True
    assert volume["secret"] == {"secretName": "hook-hmac", "items": [{"key": "hmac", "path": "secret"}]}
    assert args.secret_file == mount["mountPath"] + "/secret"


def policies(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(the load tester's policy, the controller's own, the controller's egress to the load tester)."""
    rendered = render(RAMP_CHART, {**ENABLED, "networkPolicy": NETPOL, **values})
    validate_all(rendered)
    by_name = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert sorted(by_name) == ["ramp", "ramp-loadtester", "ramp-to-loadtester"]
    return by_name["ramp-loadtester"], by_name["ramp"], by_name["ramp-to-loadtester"]


def test_network_policy_ingress_only_from_the_controller_egress_only_to_the_mesh() -> None:
    rendered = render(RAMP_CHART, {**ENABLED, "networkPolicy": NETPOL, "watchNamespaces": ["shop"]})
    tester_pod = Endpoint.pod(
        RAMP_NAMESPACE, loadtester(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    )
    controller_pod = Endpoint.pod(
        RAMP_NAMESPACE, controller_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    )
    tester, own, to_tester = policies({"watchNamespaces": ["shop"]})
    assert allows(tester, "ingress", controller_pod, 8080)
    assert not allows(tester, "ingress", controller_pod, 9090)
    assert not allows(tester, "ingress", Endpoint.pod(RAMP_NAMESPACE, {"app": "other"}), 8080)
    assert not allows(tester, "ingress", Endpoint.pod("shop", {"app": "reviews"}), 8080)
    assert allows(tester, "egress", SHOP_POD, 9080) and allows(tester, "egress", SHOP_POD, 8080)
    assert not allows(tester, "egress", Endpoint.pod("payments", {"app": "ledger"}), 9080)  # not a watched namespace
    assert not allows(tester, "egress", Endpoint.address("203.0.113.9"), 80)
    assert allows(tester, "egress", Endpoint.pod("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
    assert allows(tester, "egress", Endpoint.pod("istio-system", {"app": "istiod"}), 15012)  # the sidecar's xDS
    assert not allows(tester, "egress", Endpoint.pod("istio-system", {"app": "istiod"}), 443)
    # The controller may call the load tester (its hooks), and only on 8080; its own policy is unchanged.
    assert allows(to_tester, "egress", tester_pod, 8080) and not allows(to_tester, "egress", tester_pod, 9090)
    assert not allows(own, "egress", tester_pod, 8080)
    assert to_tester["spec"]["podSelector"] == own["spec"]["podSelector"]
    assert to_tester["spec"]["policyTypes"] == ["Egress"]  # adds egress; never opens the controller's ingress


def test_network_policy_targets_follow_the_values() -> None:
    every, _, _ = policies({"watchAllNamespaces": True})
    assert allows(every, "egress", Endpoint.pod("payments", {"app": "ledger"}), 9080)
    narrow, _, _ = policies({"loadtester": {"enabled": True, "networkPolicy": {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                "podSelector": {"matchLabels": {"app": "reviews"}}}], "ports": [9080], "extraEgress": [],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}}}]}}})  # fmt: skip
    assert allows(narrow, "egress", SHOP_POD, 9080) and not allows(narrow, "egress", SHOP_POD, 8080)
    assert not allows(narrow, "egress", Endpoint.pod("shop", {"app": "ratings"}), 9080)
    assert allows(narrow, "ingress", Endpoint.pod("ci", {"app": "runner"}), 8080)
    assert not allows(
        narrow, "egress", Endpoint.pod("istio-system", {"app": "istiod"}), 15012
    )  # extraEgress: [] drops istiod
    assert not [p for p in render(RAMP_CHART, ENABLED).of_kind("NetworkPolicy")]  # only with networkPolicy.enabled


@pytest.mark.parametrize(
    "values",
    [
        {"loadtester": {"enabled": True, "maxRps": 0}},
        {"loadtester": {"enabled": True, "maxDuration": "1d"}},
        {"loadtester": {"enabled": True, "maxRuns": 0}},
        {"loadtester": {"enabled": True, "rps": 5}},
        {"loadtester": {"enabled": True, "secret": {"name": "Bad_Name"}}},
    ],
)
def test_the_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(RAMP_CHART, values)


def test_lint_is_clean_with_the_load_tester_and_its_policies() -> None:
    report = helm.lint(RAMP_CHART, {**ENABLED, "networkPolicy": NETPOL}, strict=True, namespace="lint")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == []

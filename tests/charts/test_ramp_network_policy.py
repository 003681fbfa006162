"""charts/ramp NetworkPolicy (networkPolicy.enabled, off by default): ingress only to the metrics port from the
configured peers; egress only to the Kubernetes API, Prometheus and DNS. The rules are checked by what they
allow (tests/charts/netpol.py evaluates connections), and every variant validates with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.charts.checks import controller_container, controller_pod
from tests.charts.netpol import Endpoint, allows
from tests.charts.rendering import K8S_VERSION, RAMP_CHART, RAMP_CI, RAMP_NAMESPACE, render, render_ci, render_error

CI_FILE = RAMP_CHART / "ci" / "networkpolicy-values.yaml"
API_SERVERS = ("10.0.0.1", "172.18.0.2")  # the CIDRs of the ci file, /32 each
PROMETHEUS = Endpoint.pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = Endpoint.pod("kube-system", {"k8s-app": "kube-dns"})


def policy(values: dict[str, Any]) -> dict[str, Any]:
    rendered = render(RAMP_CHART, values)
    found: dict[str, Any] = rendered.one("NetworkPolicy")
    kubernetes_validate.validate(found, K8S_VERSION, strict=True)
    return found


def enabled(**overrides: Any) -> dict[str, Any]:
    network: dict[str, Any] = {"enabled": True, "egress": {"kubernetesApi": {"cidrs": ["10.96.0.1/32"]}}}
    network.update(overrides)
    return {"networkPolicy": network}


def test_off_by_default_and_only_the_ci_file_enables_it() -> None:
    for path in RAMP_CI:
        rendered = render_ci(path)
        expected = 1 if rendered.values["networkPolicy"]["enabled"] else 0
        assert len(rendered.of_kind("NetworkPolicy")) == expected, path.name
    assert render_ci(RAMP_CHART / "ci" / "defaults-values.yaml").values["networkPolicy"]["enabled"] is False
    assert render_ci(CI_FILE).values["networkPolicy"]["enabled"] is True


def test_it_selects_exactly_the_controller_pods_in_both_directions() -> None:
    rendered = render_ci(CI_FILE)
    netpol = rendered.one("NetworkPolicy")
    assert netpol["metadata"]["namespace"] == RAMP_NAMESPACE
    selector = netpol["spec"]["podSelector"]["matchLabels"]
    assert selector == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= controller_pod(rendered)["metadata"]["labels"].items()
    assert sorted(netpol["spec"]["policyTypes"]) == ["Egress", "Ingress"]  # default-deny both ways, then the rules


def test_ingress_only_to_the_metrics_port_from_the_configured_peers() -> None:
    rendered = render_ci(CI_FILE)
    netpol = rendered.one("NetworkPolicy")
    metrics_port = next(p["containerPort"] for p in controller_container(rendered)["ports"])
    assert metrics_port == 8080
    assert allows(netpol, "ingress", PROMETHEUS, metrics_port)
    assert not allows(netpol, "ingress", PROMETHEUS, 9090)  # no other port
    assert not allows(netpol, "ingress", PROMETHEUS, metrics_port, "UDP")
    assert not allows(netpol, "ingress", Endpoint.pod("monitoring", {"app": "grafana"}), metrics_port)
    assert not allows(netpol, "ingress", Endpoint.pod("shop", {"app.kubernetes.io/name": "prometheus"}), metrics_port)
    assert not allows(netpol, "ingress", Endpoint.address("203.0.113.9"), metrics_port)


def test_no_metrics_peers_means_no_ingress_at_all() -> None:
    """A rule without `from` would admit everyone: an empty list renders no rule instead."""
    netpol = policy(enabled(metricsFrom=[]))
    assert netpol["spec"]["ingress"] == []
    assert not allows(netpol, "ingress", PROMETHEUS, 8080)


def test_egress_only_to_the_api_server_prometheus_and_dns() -> None:
    netpol = render_ci(CI_FILE).one("NetworkPolicy")
    for server in API_SERVERS:
        assert allows(netpol, "egress", Endpoint.address(server), 443)
        assert allows(netpol, "egress", Endpoint.address(server), 6443)
        assert not allows(netpol, "egress", Endpoint.address(server), 22)
    assert not allows(netpol, "egress", Endpoint.address("10.0.0.2"), 443)  # /32: the next address is out
    assert not allows(netpol, "egress", Endpoint.address("93.184.216.34"), 443)  # the Internet
    assert allows(netpol, "egress", PROMETHEUS, 9090)  # the port of prometheus.url
    assert not allows(netpol, "egress", PROMETHEUS, 9093)
    assert not allows(netpol, "egress", Endpoint.pod("shop", {"app.kubernetes.io/name": "prometheus"}), 9090)
    assert allows(netpol, "egress", KUBE_DNS, 53, "UDP") and allows(netpol, "egress", KUBE_DNS, 53, "TCP")
    assert not allows(netpol, "egress", KUBE_DNS, 9153)
    assert not allows(netpol, "egress", Endpoint.pod("kube-system", {"k8s-app": "metrics-server"}), 53, "UDP")
    assert not allows(netpol, "egress", Endpoint.pod("shop", {"app": "reviews"}), 9080)  # the workloads
    istiod = Endpoint.pod("istio-system", {"app": "istiod"})
    assert allows(netpol, "egress", istiod, 15012) and not allows(netpol, "egress", istiod, 15010)  # extraEgress


def test_every_egress_rule_names_its_peers_and_ports() -> None:
    """No rule that would allow a port to everywhere, or everything to a peer; no catch-all address block."""
    netpol = render_ci(CI_FILE).one("NetworkPolicy")
    for rule in netpol["spec"]["egress"] + netpol["spec"]["ingress"]:
        assert rule.get("to") or rule.get("from"), rule
        assert rule.get("ports"), rule
        for peer in rule.get("to", []) + rule.get("from", []):
            assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0")


@pytest.mark.parametrize(
    ("url", "ports", "allowed"),
    [
        ("http://prometheus.monitoring.svc:9090", [], [9090]),
        ("http://prometheus.monitoring.svc", [], [80]),
        ("https://prometheus.example.com/prefix", [], [443]),
        ("http://[fd00::5]:9091/api", [], [9091]),
        ("http://prometheus.monitoring.svc:9090", [9090, 9091], [9090, 9091]),
    ],
    ids=["explicit-port", "http-default", "https-default", "ipv6-host", "ports-override"],
)
def test_the_prometheus_port_follows_its_url(url: str, ports: list[int], allowed: list[int]) -> None:
    values = enabled(egress={"kubernetesApi": {"cidrs": ["10.96.0.1/32"]}, "prometheus": {"ports": ports}})
    netpol = policy({**values, "prometheus": {"url": url}})
    prometheus = Endpoint.pod("istio-system", {"app": "prometheus"})  # the default peer: the istio-system namespace
    for port in (80, 443, 9090, 9091):
        assert allows(netpol, "egress", prometheus, port) == (port in allowed), port


def test_the_defaults_plus_the_api_server_address_render_a_valid_policy() -> None:
    netpol = policy(enabled())
    assert allows(netpol, "egress", Endpoint.address("10.96.0.1"), 443)
    assert allows(netpol, "egress", Endpoint.pod("istio-system", {"app": "prometheus"}), 9090)
    assert allows(netpol, "ingress", Endpoint.pod("istio-system", {"app": "prometheus"}), 8080)
    assert allows(netpol, "egress", KUBE_DNS, 53, "UDP")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"networkPolicy": {"enabled": True}}, "/networkPolicy/egress/kubernetesApi/cidrs"),
        (enabled(egress={"kubernetesApi": {"cidrs": ["10.96.0.1"]}}), "/networkPolicy/egress/kubernetesApi/cidrs/0"),
        (enabled(egress={"kubernetesApi": {"cidrs": ["10.96.0.1/32"]}, "dns": {"to": []}}), "/networkPolicy/egress"),
        (enabled(egress={"kubernetesApi": {"cidrs": ["1.2.3.4/32"]}, "prometheus": {"to": []}}), "/prometheus/to"),
        (enabled(egress={"kubernetesApi": {"cidrs": ["1.2.3.4/32"], "prometheus": {"to": []}}}), "/networkPolicy"),
        (enabled(metricsFrom=[{}]), "/networkPolicy/metricsFrom/0"),
        (enabled(egress={"kubernetesApi": {"cidrs": ["10.96.0.1/32"], "ports": [0]}}), "/networkPolicy/egress"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
    ],
    ids=[
        "enabled-without-api-server", "cidr-without-prefix", "dns-without-peers", "prometheus-without-peers",
        "unknown-key",
        "empty-peer-admits-all", "port-zero", "enabled-string",
    ],
)  # fmt: skip
def test_unsafe_network_policy_values_are_refused(values: dict[str, Any], complaint: str) -> None:
    message = render_error(RAMP_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message

"""charts/ramp RBAC for the Gateway API router: `gatewayApi.enabled` adds exactly one rule, HTTPRoutes with
get, list, create and update (the VirtualService rule's verbs), in every managed namespace's Role or in the
ClusterRole, and nothing else; without it the controller can do nothing at all in gateway.networking.k8s.io,
and a rolloutSpecs entry with router gateway-api fails the rendering instead of 403s mid-rollout.
test_ramp_rbac.py derives the complete grants from its table of the controller's API calls.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.checks import service_account_name
from tests.charts.rbac import Grant, RequestAttributes, granted, permits
from tests.charts.rendering import RAMP_CHART, RAMP_NAMESPACE, Rendered, render, render_ci, render_error

GATEWAY = "gateway.networking.k8s.io"
HTTP_ROUTES = "httproutes"
VERBS = ("get", "list", "create", "update")
RULE = {"apiGroups": [GATEWAY], "resources": [HTTP_ROUTES], "verbs": list(VERBS)}
SCOPES: dict[str, dict[str, Any]] = {
    "release-namespace": {},
    "two-namespaces": {"watchNamespaces": ["shop", "payments"]},
    "cluster-wide": {"watchAllNamespaces": True},
}
GATEWAY_SPEC = {
    "service": "reviews",
    "namespace": "shop",
    "router": "gateway-api",
    "gateway_api": {"port": 8080},
    "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
    "target": "v2",
}


def controller_grants(rendered: Rendered) -> set[Grant]:
    return granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))


def workload_roles(rendered: Rendered) -> list[dict[str, Any]]:
    """The roles holding ramp.workloadRules: every Role but the Lease's, or the controller's ClusterRole."""
    roles = [r for r in rendered.of_kind("Role") if not r["metadata"]["name"].endswith("-leader-election")]
    return roles + [r for r in rendered.of_kind("ClusterRole") if r["metadata"]["name"] == f"{RAMP_NAMESPACE}-ramp"]


@pytest.mark.parametrize("scope", list(SCOPES))
def test_the_httproute_rule_is_added_only_with_gateway_api_enabled(scope: str) -> None:
    without = render(RAMP_CHART, SCOPES[scope])
    enabled = render(RAMP_CHART, {**SCOPES[scope], "gatewayApi": {"enabled": True}})
    assert without.values["gatewayApi"] == {"enabled": False}, "off by default"
    assert not [g for g in controller_grants(without) if g[1] == GATEWAY], "nothing in the Gateway API group"
    added = controller_grants(enabled) - controller_grants(without)
    assert controller_grants(without) <= controller_grants(enabled), "nothing taken away"
    namespaces: list[str | None] = {
        "release-namespace": [RAMP_NAMESPACE], "two-namespaces": ["shop", "payments"], "cluster-wide": [None],
    }[scope]  # fmt: skip
    assert added == {(ns, GATEWAY, HTTP_ROUTES, verb, None) for ns in namespaces for verb in VERBS}
    roles = workload_roles(enabled)
    assert len(roles) == len(namespaces)
    for role in roles:  # literally one rule, as the chart's reader sees it, right after the Istio rules
        assert [r for r in role["rules"] if GATEWAY in r["apiGroups"]] == [RULE]
        assert role["rules"].index(RULE) == 2
        assert [r for r in role["rules"] if r != RULE] == next(
            w["rules"]
            for w in workload_roles(without)
            if w["metadata"].get("namespace") == role["metadata"].get("namespace")
        )


def test_gateway_api_ci_values_grant_httproutes_in_the_watched_namespace() -> None:
    rendered = render_ci(RAMP_CHART / "ci" / "gateway-api-values.yaml")
    grants = controller_grants(rendered)
    assert {g for g in grants if g[1] == GATEWAY} == {("shop", GATEWAY, HTTP_ROUTES, v, None) for v in VERBS}


@pytest.mark.parametrize(
    ("request_", "allowed"),
    [
        (RequestAttributes("list", GATEWAY, HTTP_ROUTES, "shop", None), True),
        (RequestAttributes("update", GATEWAY, HTTP_ROUTES, "shop", "reviews"), True),
        (RequestAttributes("list", GATEWAY, HTTP_ROUTES, "payments", None), False),  # not a watched namespace
        (RequestAttributes("list", GATEWAY, HTTP_ROUTES, None, None), False),  # not cluster-wide
        (RequestAttributes("watch", GATEWAY, HTTP_ROUTES, "shop", None), False),
        (RequestAttributes("patch", GATEWAY, HTTP_ROUTES, "shop", "reviews"), False),
        (RequestAttributes("delete", GATEWAY, HTTP_ROUTES, "shop", "reviews"), False),
        (RequestAttributes("update", GATEWAY, "httproutes/status", "shop", "reviews"), False),  # the mesh's, not Ramp's
        (RequestAttributes("get", GATEWAY, "gateways", "shop", "public"), False),
        (RequestAttributes("get", GATEWAY, "referencegrants", "shop", None), False),
        (RequestAttributes("update", "", "services", "shop", "reviews-v1"), False),
    ],
    ids=[
        "list", "update", "other-namespace", "cluster-wide-list", "watch", "patch", "delete", "status",
        "gateways", "referencegrants", "services",
    ],
)  # fmt: skip
def test_what_the_gateway_api_grant_allows(request_: RequestAttributes, allowed: bool) -> None:
    """Through the RBAC authorizer's matching: HTTPRoutes in the watched namespace with the four verbs, and not
    a request more (no watch, patch, delete, status, Gateways, ReferenceGrants or Services)."""
    grants = controller_grants(render_ci(RAMP_CHART / "ci" / "gateway-api-values.yaml"))
    assert permits(grants, request_) is allowed


def test_a_gateway_api_spec_needs_gateway_api_enabled() -> None:
    values: dict[str, Any] = {"watchNamespaces": ["shop"], "rolloutSpecs": {"reviews.yaml": GATEWAY_SPEC}}
    message = render_error(RAMP_CHART, values)
    assert "rolloutSpecs.reviews.yaml: router gateway-api needs gatewayApi.enabled: true" in message
    rendered = render(RAMP_CHART, {**values, "gatewayApi": {"enabled": True}})
    assert {g[2] for g in controller_grants(rendered) if g[1] == GATEWAY} == {HTTP_ROUTES}
    istio_spec = {k: v for k, v in GATEWAY_SPEC.items() if k not in ("router", "gateway_api")}
    render(RAMP_CHART, {"watchNamespaces": ["shop"], "rolloutSpecs": {"reviews.yaml": istio_spec}})  # istio: fine


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"gatewayApi": {"enabled": "yes"}}, "/gatewayApi/enabled"),
        ({"gatewayApi": {"enabled": True, "version": "v1"}}, "/gatewayApi"),
        ({"gatewayApi": None}, "missing property 'gatewayApi'"),  # null deletes it; required, so not a nil error
        ({"rolloutSpecs": {"r.yaml": {**GATEWAY_SPEC, "namespace": RAMP_NAMESPACE, "router": "linkerd"}}}, "/router"),
    ],
    ids=["enabled-string", "unknown-field", "deleted", "spec-unknown-router"],
)
def test_schema_rejects_bad_gateway_api_values(values: dict[str, Any], complaint: str) -> None:
    message = render_error(RAMP_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message


def test_the_aggregated_roles_stay_about_ramprollouts() -> None:
    """People's edit/view roles gain nothing on HTTPRoutes: they are the controller's to write."""
    rendered = render(RAMP_CHART, {"gatewayApi": {"enabled": True}, "watchAllNamespaces": True})
    aggregated = [r for r in rendered.of_kind("ClusterRole") if r["metadata"]["name"] != f"{RAMP_NAMESPACE}-ramp"]
    assert aggregated and all(GATEWAY not in rule["apiGroups"] for role in aggregated for rule in role["rules"])

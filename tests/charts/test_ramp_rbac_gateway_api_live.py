"""The controller with a `router: gateway-api` rollout, started with the chart's own arguments, against an
apiserver that serves the packaged HTTPRoute CRD and enforces the chart's rendered RBAC (gatewayApi.enabled):
it lists, creates and updates the HTTPRoute, enters the header step and applies a pause without a single 403,
in the rollout's namespace only. Without the HTTPRoute grant, exactly its HTTPRoute requests are refused and no route is
written: the rule is needed, and it is all the Gateway API router needs. A fake mesh (the test, as an admin)
reports the route Accepted for each parent, as a GAMMA implementation writes status.parents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from controller.cluster_backend import cluster_backend
from controller.engine.phases import Command
from tests.charts.checks import service_account_name
from tests.charts.rbac import Grant, granted
from tests.charts.rbac_apiserver import RbacPolicy, running_rbac_emulator
from tests.charts.rendering import GATEWAY_API_CRD, RAMP_CHART, RAMP_NAMESPACE, Rendered, render
from tests.charts.test_ramp_rbac_live import (
    LEASES,
    TOKEN,
    chart_values,
    controller_options,
    kinds,
    running_controller,
    wait_until,
)
from tests.k8s.emulator import KubeHarness
from tests.k8s.helpers import create_deployment

GATEWAY, VERSION, HTTP_ROUTES = "gateway.networking.k8s.io", "v1", "httproutes"
SPEC = {
    "service": "reviews",
    "namespace": "shop",
    "router": "gateway-api",
    "gateway_api": {"port": 8080},
    "versions": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
    "target": "v2",
    "schedule": {"interval": "1s"},
}
ROUTE_REQUESTS = {("list", GATEWAY, HTTP_ROUTES), ("create", GATEWAY, HTTP_ROUTES), ("update", GATEWAY, HTTP_ROUTES)}


def rendered_chart() -> Rendered:
    values = chart_values({"watchNamespaces": ["shop"], "gatewayApi": {"enabled": True}})
    return render(RAMP_CHART, {**values, "rolloutSpecs": {"reviews.yaml": SPEC}})


def stored_route(kube: KubeHarness) -> dict[str, Any] | None:
    found = [r for r in kube.objects(GATEWAY, VERSION, HTTP_ROUTES) if r["metadata"]["namespace"] == "shop"]
    return next((r for r in found if r["metadata"]["name"] == "reviews"), None)


def accept(kube: KubeHarness) -> None:
    """The mesh's part: status.parents saying every parent Accepted the route's current generation and resolved
    its backends (written with the test's own, unchecked credentials, through the status subresource)."""
    route = stored_route(kube)
    if route is None:
        return
    generation = route["metadata"].get("generation", 1)
    parents = route.get("status", {}).get("parents", [])
    if parents and all(c.get("observedGeneration") == generation for p in parents for c in p["conditions"]):
        return
    conditions = [
        {"type": kind, "status": "True", "reason": kind, "message": "", "observedGeneration": generation,
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
        for kind in ("Accepted", "ResolvedRefs")
    ]  # fmt: skip
    route["status"] = {
        "parents": [
            {"parentRef": parent, "controllerName": "mesh.example.com/gamma", "conditions": conditions}
            for parent in route["spec"]["parentRefs"]
        ]
    }
    api = client.CustomObjectsApi(kube.api_client())
    try:
        api.replace_namespaced_custom_object_status(GATEWAY, VERSION, "shop", HTTP_ROUTES, "reviews", route)
    except client.exceptions.ApiException as exc:
        if exc.status != 409:  # the controller wrote meanwhile: the next poll accepts the new generation
            raise


def phase(kube: KubeHarness) -> str | None:
    accept(kube)
    route = stored_route(kube)
    raw = None if route is None else route["metadata"].get("annotations", {}).get("ramp.dev/state")
    return None if raw is None else str(json.loads(raw).get("phase"))


def run(rendered: Rendered, grants: set[Grant], tmp_path: Path, until: str) -> tuple[RbacPolicy, dict[str, Any] | None]:
    account = service_account_name(rendered)
    policy = RbacPolicy(TOKEN, f"system:serviceaccount:{RAMP_NAMESPACE}:{account}", grants)
    with running_rbac_emulator(policy) as kube:
        (crd,) = [d for d in yaml.safe_load_all(GATEWAY_API_CRD.read_text(encoding="utf-8")) if d]
        kube.install_crd(crd)
        for version in ("v1", "v2"):
            create_deployment(kube, "shop", "reviews", version, 1)
        with running_controller(controller_options(rendered, kube, tmp_path)):
            if until == "paused":
                wait_until(lambda: phase(kube) == "HeaderTest", "the rollout enters its header step")
                # A person's command (their own credentials): the controller consumes it with an HTTPRoute update.
                cluster_backend(kube.api_client()).request_command("shop", "reviews", Command.PAUSE, "gateway-api")
                wait_until(lambda: phase(kube) == "Paused", "the controller applies the pause")
            else:
                wait_until(lambda: ("list", GATEWAY, HTTP_ROUTES) in kinds(policy.denied()), "an HTTPRoute LIST")
                wait_until(lambda: ("update", *LEASES) in kinds([r for r, _ in policy.seen()]), "a Lease renewal")
        return policy, stored_route(kube)


def test_the_gateway_api_router_runs_on_exactly_the_charts_rbac(tmp_path: Path) -> None:
    rendered = rendered_chart()
    policy, route = run(rendered, granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered))), tmp_path,
                        "paused")  # fmt: skip
    assert policy.denied() == []
    requests = [r for r, _ in policy.seen()]
    assert kinds(requests) >= ROUTE_REQUESTS | {("list", "apps", "deployments"), ("create", "", "events")}
    for request in requests:
        if request.group == GATEWAY:
            assert request.resource == HTTP_ROUTES and request.namespace == "shop", request
    assert route is not None and [r["name"] for r in route["spec"]["rules"]] == ["ramp-header-v2", "ramp-primary"]
    assert not [r for r in requests if (r.group, r.resource) == ("networking.istio.io", "virtualservices")]


def test_without_the_httproute_grant_only_route_requests_are_refused(tmp_path: Path) -> None:
    rendered = rendered_chart()
    grants = granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))
    without = {g for g in grants if g[1] != GATEWAY}
    assert len(grants - without) == 4
    policy, route = run(rendered, without, tmp_path, "refused")
    assert policy.denied() and {(r.group, r.resource) for r in policy.denied()} == {(GATEWAY, HTTP_ROUTES)}
    assert route is None, "nothing written"

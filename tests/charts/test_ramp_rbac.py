"""charts/ramp RBAC: exactly least privilege, derived from ONE table that maps every Kubernetes API call in
controller/ to the RBAC rule it needs, plus a scan of controller/ that fails when the code uses a call the
table does not know (so the chart and the code cannot drift apart). Namespaced Roles for the watched
namespaces (the release namespace by default); a ClusterRole only with watchAllNamespaces: true.
The custom-object methods take the API group and plural as arguments, so their rows are per API: the
module making the call says which (its GROUP), and the routers' one request module (KubeRequests) serves
every route resource the routers declare (their KubeResource constants: VirtualServices, DestinationRules,
HTTPRoutes). HTTPRoute rows are granted only with gatewayApi.enabled (test_ramp_rbac_gateway_api.py). The
aggregated self-service ClusterRoles, bound to no one by the chart, are tested in test_ramp_rbac_aggregate.py.
test_ramp_rbac_live.py runs the controller against an apiserver that enforces these grants.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from controller import rollout_resource, routing
from controller.routing.kube_requests import KubeResource
from tests.charts.checks import controller_container, controller_pod, flags, service_account_name, watched_namespaces
from tests.charts.rbac import CallSite, Grant, is_aggregated, kubernetes_calls, references
from tests.charts.rendering import (
    RAMP_CHART,
    RAMP_CI,
    RAMP_NAMESPACE,
    Rendered,
    _ids,
    render,
    render_ci,
    render_error,
)

ISTIO = "networking.istio.io"
VS, DR = "virtualservices", "destinationrules"
GATEWAY = "gateway.networking.k8s.io"
HR = "httproutes"
RAMP = "ramp.dev"
RR, RR_STATUS = "ramprollouts", "ramprollouts/status"
Scope = Literal["watched", "gateway", "lease", "cli"]


@dataclass(frozen=True)
class ApiCall:
    """The RBAC rules one Kubernetes API method needs, and where: `watched` in every managed namespace,
    `gateway` there too but only with gatewayApi.enabled (the Gateway API router), `lease` in the release
    namespace, `cli` never for the controller (the person running `ramp` needs it)."""

    scope: Scope
    rules: frozenset[tuple[str, str, str]]  # (API group, resource, verb)
    why: str
    named: bool = False  # restricted to the Lease's name (resourceNames)


def _call(scope: Scope, why: str, *rules: tuple[str, str, str], named: bool = False) -> ApiCall:
    return ApiCall(scope, frozenset(rules), why, named)


# THE table: every Kubernetes API method the code calls -> the rule it needs. The chart's RBAC must grant
# exactly the union of the controller's rows; the scan below fails on a call missing here. Custom-object
# methods are keyed "<method> <API group>": the group of the module that calls them.
API_CALLS: dict[str, ApiCall] = {
    f"list_namespaced_custom_object {ISTIO}": _call(
        "watched", "IstioBackend.begin_tick: one VirtualService LIST per namespace per tick", (ISTIO, VS, "list")
    ),
    f"get_namespaced_custom_object {ISTIO}": _call(
        "watched", "IstioBackend._get: read a VirtualService / DestinationRule", (ISTIO, VS, "get"), (ISTIO, DR, "get")
    ),
    f"create_namespaced_custom_object {ISTIO}": _call(
        "watched", "IstioBackend._converge: create when absent", (ISTIO, VS, "create"), (ISTIO, DR, "create")
    ),
    f"replace_namespaced_custom_object {ISTIO}": _call(
        "watched",
        "IstioBackend._converge: PUT with resourceVersion (optimistic concurrency)",
        (ISTIO, VS, "update"),
        (ISTIO, DR, "update"),
    ),
    f"list_namespaced_custom_object {GATEWAY}": _call(
        "gateway", "RouteObjectBackend: one HTTPRoute LIST per namespace per tick", (GATEWAY, HR, "list")
    ),
    f"get_namespaced_custom_object {GATEWAY}": _call(
        "gateway", "KubeRequests._get: read an HTTPRoute", (GATEWAY, HR, "get")
    ),
    f"create_namespaced_custom_object {GATEWAY}": _call(
        "gateway", "KubeRequests._converge: create the HTTPRoute when absent", (GATEWAY, HR, "create")
    ),
    f"replace_namespaced_custom_object {GATEWAY}": _call(
        "gateway", "KubeRequests._converge: PUT with resourceVersion (optimistic concurrency)", (GATEWAY, HR, "update")
    ),
    f"list_namespaced_custom_object {RAMP}": _call(
        "watched", "RolloutWatch: list, then watch (watch=True) per namespace", (RAMP, RR, "list"), (RAMP, RR, "watch")
    ),
    f"list_cluster_custom_object {RAMP}": _call(
        "watched", "RolloutWatch with watchAllNamespaces: list, then watch", (RAMP, RR, "list"), (RAMP, RR, "watch")
    ),
    f"get_namespaced_custom_object {RAMP}": _call(
        "watched", "RolloutWrites.get: re-read a resource", (RAMP, RR, "get")
    ),
    f"patch_namespaced_custom_object {RAMP}": _call(
        "watched", "RolloutWrites.remove_command: JSON patch removing the command annotation", (RAMP, RR, "patch")
    ),
    f"patch_namespaced_custom_object_status {RAMP}": _call(
        "watched", "RolloutWrites.patch_status: the status subresource", (RAMP, RR_STATUS, "patch")
    ),
    "list_namespaced_deployment": _call(
        "watched", "DeploymentAvailability.available: version availability", ("apps", "deployments", "list")
    ),
    "create_namespaced_event": _call("watched", "EventRecorder.record", ("", "events", "create")),
    "read_namespaced_lease": _call("lease", "LeaderElector", ("coordination.k8s.io", "leases", "get"), named=True),
    "replace_namespaced_lease": _call(
        "lease", "LeaderElector: renew / take over", ("coordination.k8s.io", "leases", "update"), named=True
    ),
    "create_namespaced_lease": _call(
        "lease",
        "LeaderElector: first acquisition (create cannot be restricted by name)",
        ("coordination.k8s.io", "leases", "create"),
    ),
    # The CLI's calls, made with the user's own credentials: never granted to the controller.
    "list_namespaced_pod": _call("cli", "DeploymentAvailability.pods_by_version: `ramp status`", ("", "pods", "list")),
    "connect_get_namespaced_pod_proxy": _call("cli", "`ramp ping`", ("", "pods/proxy", "get")),
    "connect_get_namespaced_pod_proxy_with_path": _call("cli", "`ramp ping`", ("", "pods/proxy", "get")),
}
CLI_MODULES = ("controller/cli.py", "controller/cli_")


def expected_grants(rendered: Rendered) -> set[Grant]:
    """What the chart must grant, derived from API_CALLS alone."""
    lease = rendered.values["leaderElection"]["leaseName"]
    watched = watched_namespaces(rendered)
    scopes: list[str | None] = [None] if watched is None else list(watched)  # None: cluster-wide
    in_watched: set[Scope] = {"watched", "gateway"} if rendered.values["gatewayApi"]["enabled"] else {"watched"}
    grants: set[Grant] = set()
    for call in API_CALLS.values():
        for group, resource, verb in call.rules:
            if call.scope == "lease":
                grants.add((RAMP_NAMESPACE, group, resource, verb, lease if call.named else None))
            elif call.scope in in_watched:
                grants |= {(scope, group, resource, verb, None) for scope in scopes}
    return grants


def controller_cluster_roles(rendered: Rendered) -> list[dict[str, Any]]:
    """The ClusterRoles for the controller (the aggregated self-service ones are for people)."""
    return [role for role in rendered.of_kind("ClusterRole") if not is_aggregated(role)]


def controller_grants(rendered: Rendered) -> set[Grant]:
    from tests.charts.rbac import granted

    return granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))


# ---- the table covers the code


def route_resources() -> set[tuple[str, str]]:
    """(group, plural) of every route resource the routers declare: the KubeResource constants of the modules
    under controller/routing, the only resources the routers' request module is ever given."""
    found: set[tuple[str, str]] = set()
    for info in pkgutil.iter_modules(routing.__path__, f"{routing.__name__}."):
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, KubeResource):
                found.add((value.group, value.plural))
    return found


def _is_route_requests(module: object) -> bool:
    """The routers' request module: its custom-object calls take a KubeResource (and it declares none itself)."""
    return getattr(module, "KubeResource", None) is KubeResource and getattr(module, "GROUP", None) is None


def _module_groups(site: CallSite) -> list[str]:
    """The API groups a module's custom-object calls address: its GROUP constant, or for the routers' request
    module every route resource's group."""
    module = importlib.import_module(str(site.path).removesuffix(".py").replace("/", "."))
    if _is_route_requests(module):
        return sorted({group for group, _ in route_resources()})
    group = getattr(module, "GROUP", None)
    assert group in (ISTIO, RAMP), f"{site.path}:{site.line} calls a custom-object method without GROUP {ISTIO}/{RAMP}"
    return [str(group)]


def table_calls() -> dict[str, list[CallSite]]:
    """kubernetes_calls() keyed as API_CALLS is: custom-object methods split by the API groups of each caller."""
    calls: dict[str, list[CallSite]] = {}
    for name, sites in kubernetes_calls().items():
        for site in sites:
            groups = _module_groups(site) if name.endswith(CUSTOM_OBJECT_SUFFIXES) else [None]
            for group in groups:
                calls.setdefault(name if group is None else f"{name} {group}", []).append(site)
    return calls


CUSTOM_OBJECT_SUFFIXES = ("_custom_object", "_custom_object_status", "_custom_object_scale")


def test_every_kubernetes_call_in_the_code_is_in_the_table() -> None:
    calls = table_calls()
    assert {"create_namespaced_event", "read_namespaced_lease", f"list_namespaced_custom_object {ISTIO}"} <= set(calls)
    unknown = {name: [f"{s.path}:{s.line}" for s in sites] for name, sites in calls.items() if name not in API_CALLS}
    assert unknown == {}, (
        "controller/ calls Kubernetes API methods that tests/charts/test_ramp_rbac.py::API_CALLS does not map to an"
        " RBAC rule: add them to the table, and to charts/ramp/templates/_helpers.tpl when the controller needs them"
    )
    # No stale row either: a call the controller dropped must leave the chart too.
    stale = sorted(name for name, call in API_CALLS.items() if call.scope != "cli" and name not in calls)
    assert stale == []


def test_cli_calls_are_made_only_by_the_cli() -> None:
    """A `cli` row is a user permission only while the controller never makes that call: each call site is in a
    CLI module, or in a function that only CLI modules use."""
    for name, sites in table_calls().items():
        if name not in API_CALLS or API_CALLS[name].scope != "cli":
            continue
        for site in sites:
            if str(site.path).startswith(CLI_MODULES):
                continue
            assert site.function is not None, f"{name} at {site.path}:{site.line} runs at import time"
            users = [str(p) for p in references(site.function) if p != site.path]
            assert users and all(u.startswith(CLI_MODULES) for u in users), (
                f"{name} ({site.path}:{site.line}, in {site.function}) is reached from {users}: if the controller"
                " makes this call, move its row to scope 'watched' and grant it in the chart"
            )


def test_custom_object_calls_touch_only_route_objects_and_ramprollouts() -> None:
    """The custom-object methods take the resource as an argument: only the routers' request module (the route
    resources the routers declare: VirtualServices, DestinationRules, HTTPRoutes) and the RampRollout modules
    (GROUP/PLURAL of controller.rollout_resource) may call them, and their groups and plurals are exactly the
    table's."""
    sites = kubernetes_calls()
    custom = {str(s.path) for name in sites if name.endswith(CUSTOM_OBJECT_SUFFIXES) for s in sites[name]}
    routes = {path for path in custom if path.startswith("controller/routing/")}
    assert len(routes) == 1, custom
    for path in custom:
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        if path in routes:
            assert _is_route_requests(module), f"{path}: route objects only through KubeResource"
        else:  # the RampRollout modules import the names, never spell them
            assert (module.GROUP, module.PLURAL) == (rollout_resource.GROUP, rollout_resource.PLURAL) == (RAMP, RR)
    assert route_resources() == {(ISTIO, VS), (ISTIO, DR), (GATEWAY, HR)}
    table = {r for n, c in API_CALLS.items() if " " in n for r in c.rules}
    assert {(group, resource) for group, resource, _ in table} == {
        (ISTIO, VS),
        (ISTIO, DR),
        (GATEWAY, HR),
        (RAMP, RR),
        (RAMP, RR_STATUS),
    }


# ---- the chart grants exactly the table


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_rbac_is_exactly_least_privilege(path: Path) -> None:
    rendered = render_ci(path)
    grants = controller_grants(rendered)
    assert grants == expected_grants(rendered)
    assert not [g for g in grants if "*" in g], "no wildcards"
    assert not {resource for _, _, resource, _, _ in grants} & {"secrets", "pods", "pods/proxy", "configmaps"}
    assert not {verb for _, _, _, verb, _ in grants} & {"delete", "deletecollection", "escalate", "bind", "impersonate"}
    # watch and patch only on the controller's own RampRollouts (never on workloads or Istio objects)
    assert {(g, r) for _, g, r, verb, _ in grants if verb in ("watch", "patch")} == {(RAMP, RR), (RAMP, RR_STATUS)}
    assert not [g for g in grants if g[1] == RAMP and g[3] in ("create", "update", "delete")], "people own them"


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_rbac_shape_follows_the_watched_namespaces(path: Path) -> None:
    rendered = render_ci(path)
    watched = watched_namespaces(rendered)
    role_namespaces = sorted(r["metadata"]["namespace"] for r in rendered.of_kind("Role"))
    args = flags(controller_container(rendered))
    if watched is not None:
        assert controller_cluster_roles(rendered) == [] and rendered.of_kind("ClusterRoleBinding") == []
        assert role_namespaces == sorted([*watched, RAMP_NAMESPACE])  # one per namespace + the Lease's
        assert args["--namespaces"].split(",") == watched  # the controller manages exactly where it may write
    else:
        assert rendered.values["watchAllNamespaces"] is True
        assert len(controller_cluster_roles(rendered)) == 1 and len(rendered.of_kind("ClusterRoleBinding")) == 1
        assert role_namespaces == [RAMP_NAMESPACE]  # only the Lease's
        assert "--namespaces" not in args


def test_defaults_grant_only_the_release_namespace() -> None:
    rendered = render_ci(RAMP_CHART / "ci" / "defaults-values.yaml")
    assert rendered.values["watchNamespaces"] == [] and rendered.values["watchAllNamespaces"] is False
    assert controller_cluster_roles(rendered) == [] and rendered.of_kind("ClusterRoleBinding") == []
    assert {scope for scope, *_ in controller_grants(rendered)} == {RAMP_NAMESPACE}
    assert flags(controller_container(rendered))["--namespaces"] == RAMP_NAMESPACE
    notes = rendered.files["ramp/templates/NOTES.txt"]
    assert "Watched namespaces: ramp-system only (a Role there): watchNamespaces is empty" in notes


def test_all_namespaces_only_when_asked_explicitly() -> None:
    rendered = render_ci(RAMP_CHART / "ci" / "watch-all-namespaces-values.yaml")
    (cluster_role,) = controller_cluster_roles(rendered)
    assert cluster_role["metadata"]["name"] == f"{RAMP_NAMESPACE}-ramp"  # unique across releases
    assert {scope for scope, _, resource, *_ in controller_grants(rendered) if resource != "leases"} == {None}
    assert (
        "Watched namespaces: all (a ClusterRole: watchAllNamespaces is true)"
        in rendered.files["ramp/templates/NOTES.txt"]
    )


def test_watch_all_with_a_namespace_list_is_refused() -> None:
    message = render_error(RAMP_CHART, {"watchAllNamespaces": True, "watchNamespaces": ["shop"]})
    assert "/watchNamespaces" in message and "maxItems" in message


def test_a_default_namespace_spec_names_the_release_namespace_rule() -> None:
    spec = {"service": "cart", "versions": [{"name": "v1", "weight": 100}], "target": "v1"}  # namespace: default
    message = render_error(RAMP_CHART, {"rolloutSpecs": {"cart.yaml": spec}})
    assert 'namespace "default" is not in watchNamespaces (ramp-system)' in message
    assert "watchNamespaces is empty, which means the release namespace only" in message
    assert "watchAllNamespaces: true" in message


def test_rbac_as_rendered_for_two_namespaces() -> None:
    """The literal rules, as a reader of the chart would see them."""
    rendered = render_ci(RAMP_CHART / "ci" / "multi-namespace-values.yaml")
    rules = {r["metadata"]["namespace"]: r["rules"] for r in rendered.of_kind("Role")}
    workload: list[dict[str, Any]] = [
        {"apiGroups": [ISTIO], "resources": [VS], "verbs": ["get", "list", "create", "update"]},
        {"apiGroups": [ISTIO], "resources": [DR], "verbs": ["get", "create", "update"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [RAMP], "resources": [RR], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [RAMP], "resources": [RR_STATUS], "verbs": ["patch"]},
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
    bindings = rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding")
    assert len(bindings) == 2  # the Lease's and the release namespace's
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "platform-ramp", "namespace": RAMP_NAMESPACE}]


def test_the_scan_finds_attribute_string_and_raw_calls(tmp_path: Path) -> None:
    """The scan is not blind: a new call in any of these forms is reported (and would fail the test above)."""
    code = tmp_path / "controller" / "k8s"
    code.mkdir(parents=True)
    (code / "new.py").write_text(
        "def purge(api, api_client):\n"
        "    api.core.delete_namespaced_pod('x', 'shop')\n"
        "    fn = getattr(api.apps, 'patch_namespaced_deployment')\n"
        "    api_client.call_api('/api/v1/namespaces/shop/secrets', 'GET')\n"
        "    session.request('GET', 'http://x')  # not a Kubernetes call\n",
        encoding="utf-8",
    )
    calls = kubernetes_calls(tmp_path / "controller")
    assert {name: [(str(s.path), s.line, s.function) for s in sites] for name, sites in calls.items()} == {
        "delete_namespaced_pod": [("controller/k8s/new.py", 2, "purge")],
        "patch_namespaced_deployment": [("controller/k8s/new.py", 3, "purge")],
        "call_api": [("controller/k8s/new.py", 4, "purge")],
    }
    assert not set(calls) & set(API_CALLS)

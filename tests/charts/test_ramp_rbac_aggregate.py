"""Self-service RBAC: the chart's aggregated ClusterRoles (templates/rbac-aggregate.yaml).

Kubernetes folds every ClusterRole labelled `rbac.authorization.k8s.io/aggregate-to-<role>: "true"` into the
built-in `admin`/`edit`/`view` ClusterRoles. So a person bound to `edit` in namespace team-a (a RoleBinding
there) may create and change RampRollouts in team-a and nowhere else, and a `view` user may read them; the
chart binds these roles to no one. Neither role may reach the controller's own resources (its Lease, the
specs ConfigMap, the Istio objects it writes) nor the status the controller alone writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller import rollout_resource
from tests.charts.rbac import Grant, RequestAttributes, is_aggregated, permits, rules_grants
from tests.charts.rendering import RAMP_CI, RAMP_NAMESPACE, Rendered, _ids, render_ci

RAMP, RR, RR_STATUS = rollout_resource.GROUP, rollout_resource.PLURAL, f"{rollout_resource.PLURAL}/status"
EDIT_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list", "watch")
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def aggregated(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Aggregated ClusterRoles by the built-in role they join: admin, edit, view."""
    found: dict[str, dict[str, Any]] = {}
    for role in rendered.of_kind("ClusterRole"):
        if not is_aggregated(role):
            continue
        for label, value in role["metadata"]["labels"].items():
            if label.startswith(AGGREGATE) and value == "true":
                assert label.removeprefix(AGGREGATE) not in found, "one role per built-in role"
                found[label.removeprefix(AGGREGATE)] = role
    return found


def bound_as(rendered: Rendered, builtin: str, namespace: str) -> set[Grant]:
    """What a RoleBinding to the built-in `builtin` ClusterRole in `namespace` gains from this chart."""
    return rules_grants(aggregated(rendered)[builtin]["rules"], namespace)


def request(verb: str, resource: str, namespace: str, group: str = RAMP, name: str | None = "reviews") -> Any:
    return RequestAttributes(verb, group, resource, namespace, None if verb in ("list", "watch", "create") else name)


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_aggregated_roles_exist_in_every_configuration(path: Path) -> None:
    rendered = render_ci(path)
    roles = aggregated(rendered)
    assert set(roles) == {"admin", "edit", "view"}
    assert roles["admin"] is roles["edit"]  # namespace admins can do what editors can
    prefix = f"{RAMP_NAMESPACE}-ramp"  # cluster-scoped: unique across releases, like the controller's ClusterRole
    assert roles["edit"]["metadata"]["name"] == f"{prefix}-ramprollouts-edit"
    assert roles["view"]["metadata"]["name"] == f"{prefix}-ramprollouts-view"
    bound = {b["roleRef"]["name"] for b in rendered.of_kind("RoleBinding") + rendered.of_kind("ClusterRoleBinding")}
    assert not bound & {r["metadata"]["name"] for r in roles.values()}, "the aggregation is the only binding"


def test_editors_manage_rollouts_in_their_namespace_only() -> None:
    grants = bound_as(render_ci(RAMP_CI[0]), "edit", "team-a")
    for verb in EDIT_VERBS:
        assert permits(grants, request(verb, RR, "team-a")), verb
        assert not permits(grants, request(verb, RR, "team-b")), verb
    for verb in ("update", "patch"):
        assert not permits(grants, request(verb, RR_STATUS, "team-a")), "status is the controller's"


def test_viewers_only_read() -> None:
    grants = bound_as(render_ci(RAMP_CI[0]), "view", "team-a")
    for verb in READ_VERBS:
        assert permits(grants, request(verb, RR, "team-a")), verb
        assert permits(grants, request(verb, RR_STATUS, "team-a")), verb
    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not permits(grants, request(verb, RR, "team-a")), verb
        assert not permits(grants, request(verb, RR_STATUS, "team-a")), verb


@pytest.mark.parametrize("path", RAMP_CI, ids=_ids(RAMP_CI))
def test_aggregated_roles_grant_nothing_on_the_controllers_own_resources(path: Path) -> None:
    rendered = render_ci(path)
    for builtin in ("edit", "view"):
        grants = bound_as(rendered, builtin, RAMP_NAMESPACE)
        assert {(group, resource) for _, group, resource, _, _ in grants} <= {(RAMP, RR), (RAMP, RR_STATUS)}
        for group, resource in (
            ("coordination.k8s.io", "leases"), ("", "configmaps"), ("", "serviceaccounts"), ("", "secrets"),
            ("networking.istio.io", "virtualservices"), ("networking.istio.io", "destinationrules"),
            ("rbac.authorization.k8s.io", "roles"), ("apiextensions.k8s.io", "customresourcedefinitions"),
        ):  # fmt: skip
            for verb in EDIT_VERBS:
                assert not permits(grants, request(verb, resource, RAMP_NAMESPACE, group)), (builtin, resource, verb)
    assert not [g for g in bound_as(rendered, "edit", "x") if "*" in g]

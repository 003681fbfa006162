"""charts/ramp `sharding.shards`: passed as `ramp controller --shards`, one Lease per shard granted by name (RBAC),
strategy Recreate while sharded; the default (1) renders exactly as without sharding. The live test runs the
controller with the chart's sharded arguments on an apiserver that enforces the chart's RBAC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.sharding import shard_lease_names
from tests.charts.checks import controller_container, flags, service_account_name
from tests.charts.rbac import granted
from tests.charts.rendering import RAMP_CHART, RAMP_NAMESPACE, Rendered, render, render_error
from tests.charts.test_ramp_rbac_live import LEASES, chart_values, controller_options, run_rollout
from tests.k8s.emulator import running_emulator


def lease_rules(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        rule
        for role in rendered.of_kind("Role")
        if role["metadata"]["namespace"] == RAMP_NAMESPACE
        for rule in role["rules"]
        if "leases" in rule.get("resources", [])
    ]


def test_three_shards_and_three_replicas_render_the_shards_flag_leases_and_recreate() -> None:
    rendered = render(RAMP_CHART, {"sharding": {"shards": 3}, "replicas": 3})
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never old and new shard counts at once
    args = controller_container(rendered)["args"]
    assert [a for a in args if a.startswith("--shards")] == ["--shards=3"]
    assert flags(controller_container(rendered))["--lease-name"] == "ramp-controller"
    names = shard_lease_names("ramp-controller", 3)
    assert names == [f"ramp-controller-shard-{i}-of-3" for i in range(3)]
    assert lease_rules(rendered) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": names,
         "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]  # fmt: skip


def test_the_chart_args_parse_to_a_sharded_controller(tmp_path: Path) -> None:
    rendered = render(RAMP_CHART, {"sharding": {"shards": 3}, "replicas": 3, "leaderElection": {"leaseName": "rl"}})
    with running_emulator() as kube:
        options = controller_options(rendered, kube, tmp_path)
    assert (options.shards, options.lease_name) == (3, "rl")


def test_one_shard_renders_as_without_sharding() -> None:
    default, explicit = render(RAMP_CHART, {}), render(RAMP_CHART, {"sharding": {"shards": 1}})
    for rendered in (default, explicit):
        assert not [a for a in controller_container(rendered)["args"] if a.startswith("--shards")]
        assert rendered.one("Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
        assert lease_rules(rendered)[0]["resourceNames"] == ["ramp-controller"]
    assert default.files == explicit.files


@pytest.mark.parametrize("shards", [0, 65, "3"])
def test_the_schema_refuses_bad_shard_counts(shards: object) -> None:
    assert "shards" in render_error(RAMP_CHART, {"sharding": {"shards": shards}})


def test_a_sharded_controller_runs_on_exactly_the_charts_rbac(tmp_path: Path) -> None:
    """The rollout's shard Lease is acquired and renewed, the rollout runs, and no request is refused."""
    rendered = render(RAMP_CHART, chart_values({"watchNamespaces": ["shop"], "sharding": {"shards": 3},
                                                "replicas": 3}))  # fmt: skip
    grants = granted(rendered, (RAMP_NAMESPACE, service_account_name(rendered)))
    policy = run_rollout(rendered, grants, tmp_path)
    assert policy.denied() == []
    names = set(shard_lease_names("ramp-controller", 3))
    lease_requests = [r for r, _ in policy.seen() if (r.group, r.resource) == LEASES]
    assert lease_requests and {r.name for r in lease_requests} <= names | {None}
    assert {r.verb for r in lease_requests} >= {"get", "create", "update"}

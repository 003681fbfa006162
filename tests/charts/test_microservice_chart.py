"""charts/microservice: the VirtualService and DestinationRule equal what the controller renders
(controller.routing.istio_render) for the same versions, weights and header route; one Deployment per
version; values.schema.json and template checks reject bad values.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.engine.routing_model import DesiredRouting, HeaderRoute
from controller.routing.istio_render import destination_rule, virtual_service
from controller.weights import integer_percentages
from tests.charts.checks import assert_hardened, probe_port
from tests.charts.rendering import (
    MICRO_CHART,
    MICRO_CI,
    MICRO_ISTIO_CI,
    MICRO_NAMESPACE,
    Rendered,
    _ids,
    render,
    render_ci,
    render_error,
)


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
        extra_hosts=tuple(values.get("hosts") or ()),
        gateways=tuple(values.get("gateways") or ()),
    )


def expected_container(values: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    """What a version's container runs, by the rules in values.yaml: its own image fields, else the top-level
    ones; its own resources, else the top-level ones; its own command, else the top-level command while it runs
    the top-level repository, else its image's ENTRYPOINT (no command)."""
    top, own = values["image"], version.get("image", {})
    repository = own.get("repository", top["repository"])
    command = values["command"] if repository == top["repository"] else []
    return {
        "image": f"{repository}:{own.get('tag') or top.get('tag') or '0.1.0'}",
        "imagePullPolicy": own.get("pullPolicy", top["pullPolicy"]),
        "command": version.get("command", command),
        "resources": version.get("resources", values["resources"]),
    }


def primary_weights(vs: dict[str, Any]) -> list[tuple[str, int]]:
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "ramp-primary")
    return [(d["destination"]["subset"], d["weight"]) for d in primary["route"]]


MICRO_CASES = [MICRO_CHART / "values.yaml", *MICRO_ISTIO_CI]  # router gateway-api: test_microservice_gateway_api


@pytest.mark.parametrize("path", MICRO_CASES, ids=["chart-defaults", *_ids(MICRO_ISTIO_CI)])
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


_HOSTS = ["shop.example.com", "api.shop.example.com", "other", "svc.other", "a-b.example.org"]
_GATEWAYS = ["mesh", "istio-system/public-gateway", "ingress", "ns2/gw.internal", "edge"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    versions=_versions(),
    header_index=st.one_of(st.none(), st.integers(0, 6)),
    hosts=st.lists(st.sampled_from(_HOSTS), max_size=4, unique=True),
    gateways=st.lists(st.sampled_from(_GATEWAYS), max_size=4, unique=True),
)
def test_chart_apportionment_equals_the_controllers(
    versions: list[dict[str, Any]], header_index: int | None, hosts: list[str], gateways: list[str]
) -> None:
    """Weights, header route, extra hosts and gateways: the chart renders what the controller renders."""
    values: dict[str, Any] = {"service": "svc", "namespace": "ns", "versions": versions}
    if hosts:
        values["hosts"] = hosts
    if gateways:
        values["gateways"] = gateways
    if header_index is not None:
        target = versions[header_index % len(versions)]["name"]
        values["headerRoute"] = {"value": target, "version": target}
    rendered = render(MICRO_CHART, values, MICRO_NAMESPACE)
    routing = desired_routing(rendered.values, MICRO_NAMESPACE)
    assert rendered.one("VirtualService") == virtual_service(routing)
    assert rendered.one("DestinationRule") == destination_rule(routing)
    assert sum(w for _, w in primary_weights(rendered.one("VirtualService"))) == 100
    vs_spec = rendered.one("VirtualService")["spec"]
    assert vs_spec["hosts"] == ["svc.ns.svc.cluster.local", *hosts]
    assert vs_spec.get("gateways", []) == gateways


def test_ingress_values_bind_the_gateways_and_serve_the_extra_hosts() -> None:
    """Independent of the controller: the literal VirtualService of ci/ingress-values.yaml."""
    vs = render_ci(MICRO_CHART / "ci" / "ingress-values.yaml").one("VirtualService")
    assert vs["spec"]["hosts"] == ["storefront.shop.svc.cluster.local", "shop.example.com"]
    assert vs["spec"]["gateways"] == ["mesh", "istio-system/public-gateway"]
    destinations = {d["destination"]["host"] for route in vs["spec"]["http"] for d in route["route"]}
    assert destinations == {"storefront.shop.svc.cluster.local"}
    defaults = render_ci(MICRO_CHART / "ci" / "two-versions-values.yaml").one("VirtualService")
    assert defaults["spec"]["hosts"] == ["reviews.shop.svc.cluster.local"] and "gateways" not in defaults["spec"]


def test_each_version_runs_its_own_release() -> None:
    """Literal images, commands and resources of ci/per-version-images-values.yaml."""
    rendered = render_ci(MICRO_CHART / "ci" / "per-version-images-values.yaml")
    containers = {
        d["metadata"]["labels"]["version"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in rendered.of_kind("Deployment")
    }
    sample_app = ["python", "-m", "services.sample_app"]
    default_resources = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}}
    v1, v2, v3, v4 = (containers[v] for v in ("v1", "v2", "v3", "v4"))
    assert (v1["image"], v1["imagePullPolicy"], v1["command"]) == ("ramp:0.1.0", "IfNotPresent", sample_app)
    assert v1["resources"] == default_resources
    assert (v2["image"], v2["imagePullPolicy"], v2["command"]) == ("ramp:0.2.0", "Always", sample_app)
    assert v2["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}
    assert {"name": "LATENCY_MS", "value": "5"} in v2["env"] and {"name": "LATENCY_MS", "value": "5"} not in v1["env"]
    assert (v3["image"], v3["imagePullPolicy"]) == ("registry.example.com/shop/ratings:3.0.0-rc.1", "IfNotPresent")
    assert "command" not in v3  # another repository: its image's own ENTRYPOINT
    assert (v4["image"], v4["command"]) == ("registry.example.com/shop/ratings:4.0.0", ["/app/ratings", "--serve"])
    versions = {d["metadata"]["labels"]["version"]: d["metadata"]["labels"] for d in rendered.of_kind("Deployment")}
    assert [versions[v]["app.kubernetes.io/version"] for v in ("v1", "v2", "v3", "v4")] == [
        "0.1.0", "0.2.0", "3.0.0-rc.1", "4.0.0",
    ]  # fmt: skip
    assert {d["spec"]["replicas"] for d in rendered.of_kind("Deployment")} == {3, 1, 0}


def test_values_without_per_version_releases_render_as_before() -> None:
    """Backwards compatible: the chart defaults run the top-level image with the sample app command."""
    rendered = render(MICRO_CHART, {}, MICRO_NAMESPACE)
    (container,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["command"]) == ("ramp:0.1.0", ["python", "-m", "services.sample_app"])
    assert container["resources"] == rendered.values["resources"]


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
        wanted = expected_container(rendered.values, version)
        assert {**container, "command": container.get("command", [])}.items() >= wanted.items()
        assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == wanted["image"].rpartition(":")[2]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert len(env) == len(container["env"]), "no variable set twice"
        assert env == {"VERSION": version["name"], "PORT": "8080", "HOST": "0.0.0.0", **version.get("env", {})}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
            assert probe_port(container, container[probe]) == 8080


@pytest.mark.parametrize("path", MICRO_CI, ids=_ids(MICRO_CI))
def test_service_selects_every_version(path: Path) -> None:
    """The main Service (router gateway-api adds one Service per version: test_microservice_gateway_api)."""
    rendered = render_ci(path)
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    service = services[rendered.values["service"]]
    if path in MICRO_ISTIO_CI:
        assert list(services) == [rendered.values["service"]], "no per-version Services unless asked for"
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
        (
            {"namespace": "apps", "hosts": ["apps-svc.example.com", "sample.apps.svc.cluster.local"]},
            'hosts: "sample.apps.svc.cluster.local" is listed twice (the service\'s own host',
        ),
        ({"namespace": "apps", "hosts": ["sample"]}, 'hosts: "sample" is listed twice (the service\'s own host'),
        ({"namespace": "apps", "gateways": ["gw", "apps/gw"]}, 'gateways: "apps/gw" is listed twice'),
    ],
    ids=[
        "duplicate-version", "zero-weights", "header-to-unknown-version", "own-host-again", "own-short-host",
        "same-gateway-twice",
    ],
)  # fmt: skip
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
        ({"hosts": ["*.example.com"]}, "/hosts/0"),
        ({"hosts": ["Shop.example.com"]}, "/hosts/0"),
        ({"hosts": ["a.example.com", "a.example.com"]}, "/hosts"),
        ({"hosts": "a.example.com"}, "/hosts"),
        ({"gateways": ["shop/mesh"]}, "/gateways/0"),
        ({"gateways": ["a/b/c"]}, "/gateways/0"),
        ({"gateways": ["Public"]}, "/gateways/0"),
        ({"versions": [{"name": "v1", "weight": 1, "image": {"repository": "x"}}]}, "/versions/0/image"),
        ({"versions": [{"name": "v1", "weight": 1, "image": {"tag": "a:b"}}]}, "/versions/0/image/tag"),
        ({"versions": [{"name": "v1", "weight": 1, "image": {"tag": "1", "digest": "x"}}]}, "/versions/0/image"),
        ({"versions": [{"name": "v1", "weight": 1, "command": "run"}]}, "/versions/0/command"),
        ({"versions": [{"name": "v1", "weight": 1, "resources": {"limit": {}}}]}, "/versions/0/resources"),
        ({"versions": [{"name": "v1", "weight": 1, "resources": {"limits": {"cpu": "lots"}}}]}, "/versions/0/"),
    ],
    ids=[
        "weight-string", "weight-negative", "weight-fraction", "no-versions", "name-uppercase",
        "env-overrides-version", "env-number", "header-without-value", "header-bad-match", "unknown-top-level-key",
        "host-wildcard", "host-uppercase", "host-twice", "hosts-not-a-list", "namespaced-mesh", "gateway-two-slashes",
        "gateway-uppercase", "image-without-tag", "image-tag-with-colon", "image-unknown-field", "command-not-a-list",
        "resources-misspelt", "resources-bad-quantity",
    ],
)  # fmt: skip
def test_microservice_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    message = render_error(MICRO_CHART, values)
    assert "values don't meet the specifications of the schema" in message
    assert complaint in message

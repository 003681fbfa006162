"""render_route_configuration and the file router's document (no Envoy process needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.local.envoy_process import LATENCY_BUCKETS_MS, Upstream, render_bootstrap
from controller.routing.envoy import (
    RANDOM_VALUE_HEADER,
    ROUTE_CONFIG_TYPE,
    EnvoyFileRouter,
    cluster_name,
    discovery_response,
    rds_config_source,
    render_route_configuration,
)
from controller.routing.model import PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute


def make(
    weights: tuple[tuple[str, int], ...] = (("v1", 100), ("v2", 0)),
    headers: tuple[HeaderRoute, ...] = (),
    service: str = "demo",
    namespace: str = "default",
) -> DesiredRouting:
    return DesiredRouting(
        service=service,
        namespace=namespace,
        host=f"{service}.{namespace}.svc.cluster.local",
        versions=tuple(v for v, _ in weights),
        header_routes=headers,
        weights=weights,
    )


def test_cluster_name_uses_double_dashes_and_rejects_ambiguous_parts() -> None:
    assert cluster_name("default", "demo", "v2") == "default--demo--v2"
    for bad in (("a.b", "demo", "v1"), ("default", "de--mo", "v1"), ("default", "demo", "")):
        with pytest.raises(ValueError):
            cluster_name(*bad)


def test_virtual_host_domains_and_default_route() -> None:
    config = render_route_configuration([make()])
    assert config["name"] == "ramp-routes"
    (vhost,) = config["virtual_hosts"]
    assert vhost["name"] == "default--demo"
    assert vhost["domains"] == ["demo.default.svc.cluster.local", "demo.default", "demo"]
    (route,) = vhost["routes"]
    assert route["name"] == PRIMARY_ROUTE_NAME
    assert route["match"] == {"prefix": "/"}
    weighted = route["route"]["weighted_clusters"]
    assert weighted["clusters"] == [{"name": "default--demo--v1", "weight": 100}]  # v2 (0%) omitted
    assert weighted["header_name"] == RANDOM_VALUE_HEADER


def test_weighted_clusters_keep_spec_order_and_skip_zero() -> None:
    routing = make((("v1", 60), ("v2", 0), ("v3", 40)))
    route = render_route_configuration([routing])["virtual_hosts"][0]["routes"][-1]
    assert route["route"]["weighted_clusters"]["clusters"] == [
        {"name": "default--demo--v1", "weight": 60},
        {"name": "default--demo--v3", "weight": 40},
    ]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("exact", {"exact": "v2"}),
        ("prefix", {"prefix": "v2"}),
        ("regex", {"safe_regex": {"regex": "v2"}}),
    ],
)
def test_header_match_types(match: str, expected: dict[str, object]) -> None:
    header = HeaderRoute(header="x-version", value="v2", match=match, version="v2")
    routes = render_route_configuration([make(headers=(header,))])["virtual_hosts"][0]["routes"]
    assert len(routes) == 2
    assert routes[0] == {
        "name": "ramp-header-v2",
        "match": {"prefix": "/", "headers": [{"name": "x-version", "string_match": expected}]},
        "route": {"cluster": "default--demo--v2"},
    }
    assert routes[1]["name"] == PRIMARY_ROUTE_NAME


def test_header_routes_keep_model_order() -> None:
    headers = (
        HeaderRoute(header="x-a", value="1", version="v2"),
        HeaderRoute(header="x-b", value="2", match="prefix", version="v1"),
    )
    routes = render_route_configuration([make(headers=headers)])["virtual_hosts"][0]["routes"]
    assert [r["match"]["headers"][0]["name"] for r in routes[:2]] == ["x-a", "x-b"]
    assert [r["route"]["cluster"] for r in routes[:2]] == ["default--demo--v2", "default--demo--v1"]


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        render_route_configuration([make((("v1", 50), ("v2", 0)))])
    with pytest.raises(ValueError, match="unknown version"):
        render_route_configuration([make(headers=(HeaderRoute(header="x", value="y", version="v9"),))])
    with pytest.raises(ValueError, match="unsupported header match"):
        glob = HeaderRoute(header="x", value="y", match="glob", version="v2")
        render_route_configuration([make(headers=(glob,))])
    with pytest.raises(ValueError, match="duplicate"):
        render_route_configuration([make(), make()])


def test_same_service_in_two_namespaces_drops_bare_domain() -> None:
    config = render_route_configuration([make(namespace="a"), make(namespace="b")])
    domains = [vh["domains"] for vh in config["virtual_hosts"]]
    assert domains == [["demo.a.svc.cluster.local", "demo.a"], ["demo.b.svc.cluster.local", "demo.b"]]


def test_discovery_response_and_rds_source(tmp_path: Path) -> None:
    doc = discovery_response([make()], "7")
    assert doc["version_info"] == "7"
    (resource,) = doc["resources"]
    assert resource["@type"] == ROUTE_CONFIG_TYPE and resource["name"] == "ramp-routes"
    source = rds_config_source(tmp_path / "routes.json")
    assert source["route_config_name"] == "ramp-routes"
    assert source["config_source"]["resource_api_version"] == "V3"
    path_source = source["config_source"]["path_config_source"]
    assert path_source == {
        "path": str(tmp_path / "routes.json"),
        "watched_directory": {"path": str(tmp_path)},
    }


def test_initial_file_and_versions_increase(tmp_path: Path) -> None:
    router = EnvoyFileRouter(tmp_path, "http://127.0.0.1:1")
    path = router.initial_file([make()])
    first = json.loads(path.read_text())
    assert first["version_info"] == "1"
    assert router.current("default", "demo") == make()
    # A new router over the same directory continues after the version on disk.
    assert EnvoyFileRouter(tmp_path, "http://127.0.0.1:1").version == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_bootstrap_clusters_listener_and_buckets(tmp_path: Path) -> None:
    upstreams = [Upstream("default", "demo", "v1", 9001), Upstream("default", "demo", "v2", 9002)]
    boot = render_bootstrap(10000, 10001, upstreams, tmp_path / "routes.json")
    clusters = boot["static_resources"]["clusters"]
    assert [c["name"] for c in clusters] == ["default--demo--v1", "default--demo--v2"]
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["strip_any_host_port"] is True
    assert hcm["rds"] == rds_config_source(tmp_path / "routes.json")
    (setting,) = boot["stats_config"]["histogram_bucket_settings"]
    assert setting["buckets"] == list(LATENCY_BUCKETS_MS)
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10001}

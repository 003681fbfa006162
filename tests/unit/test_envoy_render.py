"""render_route_configuration and the file router's document (no Envoy process needed)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.engine.routing_model import PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute
from controller.local.envoy_process import LATENCY_BUCKETS_MS, HealthCheck, Upstream, render_bootstrap
from controller.routing.envoy import (
    RANDOM_VALUE_HEADER,
    ROUTE_CONFIG_TYPE,
    EnvoyFileRouter,
    EnvoyRoutingError,
    cluster_name,
    discovery_response,
    rds_config_source,
    render_route_configuration,
)
from controller.routing.envoy_readback import UnrepresentableRoutes, read_back


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


def test_bootstrap_health_checks_every_version_cluster(tmp_path: Path) -> None:
    upstreams = [Upstream("default", "demo", "v1", 9001), Upstream("default", "demo", "v2", 9002)]
    clusters = render_bootstrap(10000, 10001, upstreams, tmp_path / "r.json")["static_resources"]["clusters"]
    for cluster in clusters:
        (check,) = cluster["health_checks"]
        assert check["http_health_check"] == {"path": "/health"}  # services/sample_app answers it
        assert check["interval"] == check["no_traffic_interval"] == "1s"  # also at 0% weight
        assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (2, 1)
    custom = render_bootstrap(1, 2, upstreams[:1], tmp_path / "r.json", health_check=HealthCheck(interval_s=0.5))
    assert custom["static_resources"]["clusters"][0]["health_checks"][0]["interval"] == "0.5s"
    off = render_bootstrap(1, 2, upstreams[:1], tmp_path / "r.json", health_check=None)
    assert off["static_resources"]["clusters"][0]["health_checks"] == []


# -- read-back: Envoy's config_dump -> DesiredRouting ------------------------------------------


def dump_of(routings: list[DesiredRouting], version: str = "3") -> dict[str, Any]:
    """What Envoy's /config_dump?resource=dynamic_route_configs shows for the routes file."""
    resource = dict(discovery_response(routings, version)["resources"][0])
    return {"configs": [{"version_info": version, "route_config": resource, "last_updated": "now"}]}


ROUND_TRIP = [
    make(),
    make((("v1", 60), ("v2", 0), ("v3", 40))),
    make((("v1", 34), ("v2", 33), ("v3", 33)), (HeaderRoute(header="x-version", value="v3", version="v3"),)),
    make(
        (("v1", 0), ("v2", 100)),
        (
            HeaderRoute(header="x-a", value="^b.*$", match="regex", version="v1"),
            HeaderRoute(header="x-b", value="pre", match="prefix", version="v2"),
        ),
    ),
]


@pytest.mark.parametrize("routing", ROUND_TRIP, ids=lambda r: r.describe())
def test_read_back_round_trips_the_rendered_routing(routing: DesiredRouting) -> None:
    other = make(service="other")
    version, served = read_back(dump_of([other, routing]), "ramp-routes", "default", "demo", routing)
    assert version == "3"
    assert served == routing  # with the desired routing as template: equal exactly when served as desired
    # Without a template (e.g. after a restart with no state) the weights and header routes still match.
    _, bare = read_back(dump_of([routing]), "ramp-routes", "default", "demo")
    assert bare is not None
    assert [(v, bare.weight_of(v)) for v in routing.versions] == list(routing.weights)
    assert bare.header_routes == routing.header_routes


def test_read_back_shows_what_someone_else_wrote() -> None:
    desired = make((("v1", 100), ("v2", 0)), (HeaderRoute(header="x-version", value="v2", version="v2"),))
    dump = dump_of([desired])
    vhost = dump["configs"][0]["route_config"]["virtual_hosts"][0]
    vhost["routes"] = vhost["routes"][1:]  # header route removed
    vhost["routes"][0]["route"]["weighted_clusters"]["clusters"] = [
        {"name": "default--demo--v1", "weight": 1},
        {"name": "default--demo--v2", "weight": 1},
    ]
    vhost["routes"].append({"match": {"prefix": "/"}, "route": {"cluster": "anything"}})  # shadowed: never matches
    _, served = read_back(dump, "ramp-routes", "default", "demo", desired)
    assert served is not None and served != desired
    assert served.weights == (("v1", 50), ("v2", 50)) and served.header_routes == ()
    assert read_back(dump, "ramp-routes", "default", "absent", desired) == ("3", None)
    assert read_back({"configs": []}, "ramp-routes", "default", "demo") == (None, None)


def _mutate(dump: dict[str, Any], edit: str) -> dict[str, Any]:
    dump = copy.deepcopy(dump)
    vhost = dump["configs"][0]["route_config"]["virtual_hosts"][0]
    header_route, default = vhost["routes"]
    edits: dict[str, Callable[[], object]] = {
        "foreign cluster": lambda: default["route"]["weighted_clusters"]["clusters"][0].update(name="evil--x--v1"),
        "direct response": lambda: default.update(direct_response={"status": 503}),
        "path match": lambda: default["match"].update(prefix="/api"),
        "regex path": lambda: default["match"].update(safe_regex={"regex": ".*"}),
        "two headers": lambda: header_route["match"]["headers"].append({"name": "x", "present_match": True}),
        "inverted header": lambda: header_route["match"]["headers"][0].update(invert_match=True),
        "presence header": lambda: header_route["match"]["headers"][0].update(
            {"present_match": True, "string_match": None}
        ),
        "contains header": lambda: header_route["match"]["headers"][0].update(string_match={"contains": "v"}),
        "no catch-all": lambda: vhost.update(routes=[header_route]),
        "zero weights": lambda: default["route"]["weighted_clusters"].update(
            clusters=[{"name": "default--demo--v1", "weight": 0}]
        ),
        "negative weight": lambda: default["route"]["weighted_clusters"]["clusters"][0].update(weight=-5),
        "text weight": lambda: default["route"]["weighted_clusters"]["clusters"][0].update(weight="lots"),
        "routes not a list": lambda: vhost.update(routes={"a": 1}),
        "configs not a list": lambda: dump.update(configs="x"),
        "route not an object": lambda: vhost.update(routes=[7]),
        "version object": lambda: dump["configs"][0].update(version_info={"v": 1}),
    }
    edits[edit]()
    return dump


@pytest.mark.parametrize("edit", [
    "foreign cluster", "direct response", "path match", "regex path", "two headers", "inverted header",
    "presence header", "contains header", "no catch-all", "zero weights", "negative weight", "text weight",
    "routes not a list", "configs not a list", "route not an object", "version object",
])  # fmt: skip
def test_read_back_refuses_what_ramp_cannot_express(edit: str) -> None:
    desired = make((("v1", 90), ("v2", 10)), (HeaderRoute(header="x-version", value="v2", version="v2"),))
    dump = _mutate(dump_of([desired]), edit)
    with pytest.raises(UnrepresentableRoutes):
        read_back(dump, "ramp-routes", "default", "demo", desired)


JUNK: list[Any] = [None, [], {}, "", "x", -1, 0, 2**70, 1.5, True, [None], {"a": [{}]}, "default--demo--v9"]


def _random_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _random_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _random_paths(value, (*path, index))
    return found


def test_read_back_of_hostile_dumps_never_crashes_nor_invents_routing() -> None:
    """2,000 seeded corruptions: each is either read as a valid routing or refused, never another error."""
    desired = make((("v1", 90), ("v2", 10)), (HeaderRoute(header="x-version", value="v2", version="v2"),))
    base = dump_of([desired])
    rng = random.Random(20261126)
    outcomes = {"refused": 0, "read": 0}
    for _ in range(2000):
        dump = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            paths = [p for p in _random_paths(dump) if p]
            path = rng.choice(paths)
            parent = dump
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = copy.deepcopy(rng.choice(JUNK))
        try:
            _, served = read_back(dump, "ramp-routes", "default", "demo", desired)
        except UnrepresentableRoutes:
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        if served is not None:  # whatever was read is a complete routing that Envoy could be serving
            assert sum(w for _, w in served.weights) == 100
            assert set(served.versions) >= {v for v, _ in served.weights}
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"a": 1}',
        b"[" * 100_000,  # nesting deep enough to exhaust the parser
        json.dumps([make((("v1", 50), ("v2", 40))).model_dump(mode="json")]).encode(),  # sums to 90
        json.dumps([make().model_dump(mode="json")] * 2).encode(),  # the same service twice
        b" " * (16 * 1024 * 1024 + 1),
    ],
    ids=["not-json", "object", "deep", "bad-weights", "duplicate", "oversized"],
)
def test_damaged_desired_file_is_refused_not_guessed(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "desired-routings.json").write_bytes(content)
    with pytest.raises(EnvoyRoutingError, match="unreadable desired routings") as raised:
        EnvoyFileRouter(tmp_path, "http://127.0.0.1:1")
    assert "desired-routings.json" in str(raised.value) and len(str(raised.value)) < 600


@pytest.mark.parametrize("content", ['{"version_info": "x"}', "[1]", '{"version_info": -4}', "\x00"])
def test_damaged_routes_file_version_starts_afresh(tmp_path: Path, content: str) -> None:
    (tmp_path / "routes.json").write_text(content)
    assert EnvoyFileRouter(tmp_path, "http://127.0.0.1:1").version == 0


def test_invalid_routing_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    router = EnvoyFileRouter(tmp_path, "http://127.0.0.1:1")
    with pytest.raises(EnvoyRoutingError, match="not a valid routing"):
        router.apply(make((("v1", 50), ("v2", 40))))
    assert not (tmp_path / "routes.json").exists() and router.current("default", "demo") is None

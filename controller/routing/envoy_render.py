"""DesiredRouting -> Envoy v3 RouteConfiguration (pure rendering; the router is `controller.routing.envoy`).

The local data plane runs exactly the routing Ramp would send to Istio: the same
`DesiredRouting` is rendered here into an Envoy RouteConfiguration (header routes
first, in the model's order, then the weighted default route), delivered to Envoy
through a watched RDS file, and confirmed through Envoy's admin `/config_dump`.

Cluster names are `<namespace>--<service>--<version>`: no dots, so Envoy's stats
tag extraction keeps `envoy_cluster_name` intact, and the Prometheus relabelling
in `controller.local.prometheus_process` can split them back into Istio labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.engine.routing_model import PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute
from controller.routing.envoy_readback import CLUSTER_SEPARATOR

ROUTE_CONFIG_NAME = "ramp-routes"
ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Requests may carry a uint64 here to pin the weighted-cluster draw (reproducible splits in
# tests); requests without it use Envoy's own randomness, exactly as in production.
RANDOM_VALUE_HEADER = "x-ramp-random"


def cluster_name(namespace: str, service: str, version: str) -> str:
    """`<namespace>--<service>--<version>`; parts must be non-empty, dot-free and '--'-free."""
    for part in (namespace, service, version):
        if not part or "." in part or CLUSTER_SEPARATOR in part:
            raise ValueError(
                f"cannot build an Envoy cluster name from {part!r}: "
                "parts must be non-empty and contain neither '.' nor '--'"
            )
    return CLUSTER_SEPARATOR.join((namespace, service, version))


def virtual_host_name(routing: DesiredRouting) -> str:
    return f"{routing.namespace}{CLUSTER_SEPARATOR}{routing.service}"


def _string_match(route: HeaderRoute) -> dict[str, Any]:
    if route.match == "exact":
        return {"exact": route.value}
    if route.match == "prefix":
        return {"prefix": route.value}
    if route.match == "regex":
        return {"safe_regex": {"regex": route.value}}
    raise ValueError(f"unsupported header match {route.match!r} (use exact, prefix or regex)")


def _header_route(routing: DesiredRouting, route: HeaderRoute) -> dict[str, Any]:
    if route.version not in routing.versions:
        raise ValueError(f"header route targets unknown version {route.version!r} of {routing.service}")
    return {
        "name": route.route_name,
        "match": {
            "prefix": "/",
            "headers": [{"name": route.header.lower(), "string_match": _string_match(route)}],
        },
        "route": {"cluster": cluster_name(routing.namespace, routing.service, route.version)},
    }


def _default_route(routing: DesiredRouting) -> dict[str, Any]:
    live = routing.live_weights()
    unknown = [v for v, _ in live if v not in routing.versions]
    if unknown:
        raise ValueError(f"weights name unknown versions {unknown} of {routing.service}")
    return {
        "name": PRIMARY_ROUTE_NAME,
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {"name": cluster_name(routing.namespace, routing.service, v), "weight": w} for v, w in live
                ],
                "header_name": RANDOM_VALUE_HEADER,
            }
        },
    }


def _domains(routing: DesiredRouting, short_name_ok: bool) -> list[str]:
    candidates = [routing.host, f"{routing.service}.{routing.namespace}"]
    if short_name_ok:
        candidates.append(routing.service)
    domains: list[str] = []
    for domain in candidates:
        if domain not in domains:
            domains.append(domain)
    return domains


def render_virtual_host(routing: DesiredRouting, short_name_ok: bool = True) -> dict[str, Any]:
    """One virtual host: header routes in the model's order, then the weighted default."""
    routes = [_header_route(routing, r) for r in routing.header_routes]
    routes.append(_default_route(routing))
    return {
        "name": virtual_host_name(routing),
        "domains": _domains(routing, short_name_ok),
        "routes": routes,
    }


def render_route_configuration(routings: Sequence[DesiredRouting], name: str = ROUTE_CONFIG_NAME) -> dict[str, Any]:
    """An Envoy v3 RouteConfiguration with one virtual host per routing.

    The bare `service` domain is only added when no other routing shares that service
    name (in another namespace); Envoy rejects duplicate domains.
    """
    keys = [(r.namespace, r.service) for r in routings]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate (namespace, service) in routings: {keys}")
    service_counts: dict[str, int] = {}
    for routing in routings:
        service_counts[routing.service] = service_counts.get(routing.service, 0) + 1
    return {
        "name": name,
        "virtual_hosts": [render_virtual_host(r, service_counts[r.service] == 1) for r in routings],
    }


def discovery_response(
    routings: Sequence[DesiredRouting], version_info: str, name: str = ROUTE_CONFIG_NAME
) -> dict[str, Any]:
    """The DiscoveryResponse document Envoy reads from an RDS `path_config_source`."""
    config = render_route_configuration(routings, name)
    return {"version_info": version_info, "resources": [{"@type": ROUTE_CONFIG_TYPE, **config}]}


def rds_config_source(routes_file: Path, name: str = ROUTE_CONFIG_NAME) -> dict[str, Any]:
    """The http_connection_manager `rds` block that watches `routes_file`."""
    routes_file = Path(routes_file).resolve()
    return {
        "route_config_name": name,
        "config_source": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(routes_file),
                "watched_directory": {"path": str(routes_file.parent)},
            },
        },
    }

"""DesiredRouting -> Istio VirtualService / DestinationRule manifests (plain dicts).

Ramp's routes are named with MANAGED_ROUTE_PREFIX; the Istio router merges them
into an existing VirtualService and leaves every other route untouched.
"""

from __future__ import annotations

from typing import Any

from controller.engine.routing_model import PRIMARY_ROUTE_NAME, DesiredRouting

API_VERSION = "networking.istio.io/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "ramp"}


def _destination(routing: DesiredRouting, version: str) -> dict[str, Any]:
    return {"host": routing.host, "subset": version}


def managed_http_routes(routing: DesiredRouting) -> list[dict[str, Any]]:
    """The http routes Ramp owns, in match order: header routes, then the weighted default."""
    routes: list[dict[str, Any]] = []
    for header_route in routing.header_routes:
        routes.append(
            {
                "name": header_route.route_name,
                "match": [{"headers": {header_route.header: {header_route.match: header_route.value}}}],
                "route": [{"destination": _destination(routing, header_route.version), "weight": 100}],
            }
        )
    routes.append(
        {
            "name": PRIMARY_ROUTE_NAME,
            "route": [
                {"destination": _destination(routing, version), "weight": weight}
                for version, weight in routing.live_weights()
            ],
        }
    )
    return routes


def virtual_service(routing: DesiredRouting) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": {"name": routing.service, "namespace": routing.namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "hosts": [routing.host, *routing.extra_hosts],
            **({"gateways": list(routing.gateways)} if routing.gateways else {}),
            "http": managed_http_routes(routing),
        },
    }


def destination_rule(routing: DesiredRouting) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": {"name": routing.service, "namespace": routing.namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "host": routing.host,
            "subsets": [{"name": version, "labels": {"version": version}} for version in routing.versions],
        },
    }

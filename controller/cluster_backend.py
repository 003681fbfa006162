"""The one place that builds the cluster backend: the controller and every CLI command use `cluster_backend`.

ROUTERS is the registry of cluster routers by the name specs use (`router:`). A router is one module
implementing `controller.routing.route_kind.RouteKind` (see `routing/istio.py`, `routing/gateway_api.py`) plus
its line here and its name in `controller.spec_routers.ROUTER_NAMES`. Each backend gets fresh router instances
(they cache what they verified).
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes.client import ApiClient

from controller.k8s.client import KubeApi
from controller.routing.crd_schema import IstioSchemas
from controller.routing.gateway_api import GatewayApiRoutes
from controller.routing.istio import IstioRoutes
from controller.routing.object_backend import RouteObjectBackend
from controller.routing.route_kind import RouteKind

ROUTERS: dict[str, Callable[[], RouteKind]] = {
    "istio": IstioRoutes,
    "gateway-api": GatewayApiRoutes,
}
DEFAULT_ROUTER = "istio"


def cluster_backend(
    api: ApiClient | KubeApi, *, schemas: IstioSchemas | None = None, conflict_attempts: int = 5
) -> RouteObjectBackend:
    """TrafficRouter + StateStore + read-back for every registered router; each rollout uses its spec's."""
    routers = {name: make() for name, make in ROUTERS.items()}
    return RouteObjectBackend(
        api, routers, default_router=DEFAULT_ROUTER, schemas=schemas, conflict_attempts=conflict_attempts
    )

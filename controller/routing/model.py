"""The desired-routing model shared by the Istio and Envoy routers.

One `DesiredRouting` describes a service's traffic completely: header routes
first (in order), then the weighted default route. Renderers turn it into an
Istio VirtualService/DestinationRule or an Envoy RouteConfiguration, so the local
data plane runs exactly the routing we would send to Istio.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MANAGED_ROUTE_PREFIX = "ramp-"
PRIMARY_ROUTE_NAME = "ramp-primary"


class HeaderRoute(BaseModel):
    model_config = ConfigDict(frozen=True)

    header: str
    value: str
    match: str = "exact"  # exact | prefix | regex
    version: str

    @property
    def route_name(self) -> str:
        return f"{MANAGED_ROUTE_PREFIX}header-{self.version}"


class DesiredRouting(BaseModel):
    """Traffic for one service; `weights` are integer percentages summing to 100."""

    model_config = ConfigDict(frozen=True)

    service: str
    namespace: str
    host: str
    versions: tuple[str, ...] = Field(description="Every version that has a subset")
    header_routes: tuple[HeaderRoute, ...] = ()
    weights: tuple[tuple[str, int], ...] = Field(description="(version, percent) in spec order")
    extra_hosts: tuple[str, ...] = Field(default=(), description="Hosts served besides `host` (e.g. on an ingress)")
    gateways: tuple[str, ...] = Field(default=(), description="Gateways bound; () = Istio's default, mesh only")

    def weight_of(self, version: str) -> int:
        return dict(self.weights).get(version, 0)

    def live_weights(self) -> list[tuple[str, int]]:
        """Destinations with traffic; a single destination even if all are 0 would be invalid."""
        live = [(v, w) for v, w in self.weights if w > 0]
        if sum(w for _, w in live) != 100:
            raise ValueError(f"weights of {self.service} must sum to 100, got {self.weights}")
        return live

    def traffic(self) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str, str, str], ...]]:
        """What requests experience: the versions with weight, and the header routes in order.

        Two routings with the same traffic serve requests identically (e.g. one read back from the data
        plane and the one Ramp asked for), whatever else differs (listed versions, host spelling).
        """
        live = tuple(sorted((v, w) for v, w in self.weights if w > 0))
        headers = tuple((r.header.lower(), r.value, r.match, r.version) for r in self.header_routes)
        return live, headers

    def describe(self) -> str:
        split = " ".join(f"{v}={w}%" for v, w in self.weights)
        headers = ", ".join(f"{r.header}:{r.value}->{r.version}" for r in self.header_routes)
        return split + (f" [{headers}]" if headers else "")

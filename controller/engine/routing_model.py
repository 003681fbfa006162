"""The desired-routing model, owned by the core and shared by every router.

One `DesiredRouting` describes a service's traffic completely: header routes
first (in order), then the weighted default route. Routers render it: an Istio
VirtualService/DestinationRule, a Gateway API HTTPRoute, an Envoy RouteConfiguration;
so the local data plane runs exactly the routing we would send to a cluster.

`router` names the cluster router that serves it (see controller.cluster_backend);
`parent_refs` and `backends` say where an HTTPRoute attaches and which Service
serves each version (Gateway API weights go to Services, not subsets).
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


GATEWAY_GROUP = "gateway.networking.k8s.io"


class ParentRef(BaseModel):
    """Where an HTTPRoute attaches: a Gateway (listener `section_name`), or a Service for mesh traffic (GAMMA)."""

    model_config = ConfigDict(frozen=True)

    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    name: str
    namespace: str | None = None
    section_name: str | None = None
    port: int | None = None

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        listener = f" ({self.section_name})" if self.section_name else ""
        return f"{self.kind} {where}{listener}"


class ServiceBackends(BaseModel):
    """The Service (and port) that serves each version, for routers that weight Services."""

    model_config = ConfigDict(frozen=True)

    port: int
    services: tuple[tuple[str, str], ...] = Field(description="(version, Service name) in spec order")

    def service_of(self, version: str) -> str:
        found = dict(self.services).get(version)
        if found is None:
            raise ValueError(f"no Service is named for version {version!r}")
        return found

    def version_of(self, service: str) -> str | None:
        return next((version for version, name in self.services if name == service), None)


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
    router: str = Field(default="istio", description="The cluster router serving it (a registered name)")
    parent_refs: tuple[ParentRef, ...] = Field(default=(), description="Where an HTTPRoute attaches")
    backends: ServiceBackends | None = Field(default=None, description="Per-version Services (Gateway API)")

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

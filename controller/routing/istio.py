"""The Istio router: one VirtualService per service (Ramp's `ramp-*` http routes) and its DestinationRule subsets.

Everything routers share (state annotation, commands, batched reads, 409s, confirmation) is in
`object_backend`; this module says how a VirtualService is merged (`istio_merge`), checked and read back
(`istio_shape`), and that the DestinationRule must hold every version's subset before the VirtualService
routes to it (`prepare`, re-checked when the versions change and every `rule_recheck_seconds`, which repairs a
deleted rule). A VirtualService is in effect as soon as it is stored: istiod pushes it to the sidecars.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from kubernetes.client import ApiClient

from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.k8s.client import KubeApi
from controller.routing.crd_schema import IstioSchemas
from controller.routing.istio_merge import merge_destination_rule, merge_virtual_service, parse_routing
from controller.routing.istio_render import destination_rule, virtual_service
from controller.routing.istio_shape import check_virtual_service, observed_routing
from controller.routing.k8s_objects import ClusterRouting
from controller.routing.kube_requests import KubeRequests, KubeResource, Obj
from controller.routing.object_backend import RouteObjectBackend, RoutingNotConfirmed
from controller.routing.route_kind import RouteKind

__all__ = ["DESTINATION_RULES", "VIRTUAL_SERVICES", "IstioBackend", "IstioRoutes", "RoutingNotConfirmed"]

GROUP, VERSION = "networking.istio.io", "v1"
VIRTUAL_SERVICES = KubeResource(GROUP, VERSION, "virtualservices", "VirtualService")
DESTINATION_RULES = KubeResource(GROUP, VERSION, "destinationrules", "DestinationRule")


class IstioRoutes:
    """RouteKind for Istio: VirtualService routes, DestinationRule subsets."""

    router = "istio"
    resource = VIRTUAL_SERVICES

    def __init__(self, rule_recheck_seconds: float = 60.0) -> None:
        # DestinationRules known to hold the subsets a routing needs: (versions, host) -> when verified.
        self._rules_verified: dict[tuple[str, str], tuple[tuple[str, ...], str, float]] = {}
        self.rule_recheck_seconds = rule_recheck_seconds

    def render(self, routing: DesiredRouting) -> list[Obj]:
        return [virtual_service(routing), destination_rule(routing)]

    def check(self, obj: Obj, where: str) -> None:
        check_virtual_service(obj, where)

    def merge(
        self, current: Obj | None, routing: DesiredRouting, notes: Mapping[str, str], remove: Mapping[str, str]
    ) -> Obj:
        return merge_virtual_service(current, routing, notes, remove)

    def observed(self, obj: Obj, namespace: str, service: str, hint: DesiredRouting | None) -> DesiredRouting | None:
        host = hint.host if hint is not None else service
        if hint is None:
            spec = obj.get("spec")
            hosts = spec.get("hosts") if isinstance(spec, Mapping) else None
            if isinstance(hosts, list) and hosts and isinstance(hosts[0], str):
                host = hosts[0]
        return observed_routing(obj, namespace, service, host)

    def not_in_effect(self, obj: Obj, routing: DesiredRouting) -> str | None:
        return None  # istiod pushes a stored VirtualService to the sidecars; nothing reports acceptance

    def prepare(self, requests: KubeRequests, routing: DesiredRouting, deadline: Deadline | None) -> bool:
        """Verify the subsets when the versions change, and every rule_recheck_seconds (repairs deletions)."""
        key = (routing.namespace, routing.service)
        verified = self._rules_verified.get(key)
        now = time.monotonic()
        fresh = verified is not None and now - verified[2] < self.rule_recheck_seconds
        if fresh and verified is not None and verified[:2] == (routing.versions, routing.host):
            return False
        current = requests._get(DESTINATION_RULES, routing.namespace, routing.service, deadline)
        _, written = requests._converge(
            DESTINATION_RULES, routing.namespace, routing.service, current,
            lambda obj: merge_destination_rule(obj, routing), deadline,
        )  # fmt: skip
        self._rules_verified[key] = (routing.versions, routing.host, now)
        return written

    def forget(self, namespace: str, service: str) -> None:
        self._rules_verified.pop((namespace, service), None)

    def parse(self, namespace: str, service: str, obj: Obj | None) -> ClusterRouting:
        return parse_routing(namespace, service, obj)


class IstioBackend(RouteObjectBackend):
    """The cluster backend with the Istio router only (tests and tools that speak only VirtualServices)."""

    def __init__(
        self, api: ApiClient | KubeApi, *, conflict_attempts: int = 5, schemas: IstioSchemas | None = None
    ) -> None:
        self.istio = IstioRoutes()
        routers: dict[str, RouteKind] = {"istio": self.istio}
        super().__init__(api, routers, conflict_attempts=conflict_attempts, schemas=schemas)

    @property
    def rule_recheck_seconds(self) -> float:
        return self.istio.rule_recheck_seconds

    @rule_recheck_seconds.setter
    def rule_recheck_seconds(self, seconds: float) -> None:
        self.istio.rule_recheck_seconds = seconds

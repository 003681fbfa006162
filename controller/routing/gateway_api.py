"""The Gateway API router: one HTTPRoute per service, weighting one Service per version.

Everything routers share (state annotation, commands, batched reads, 409s, confirmation) is in
`object_backend`; this module says how an HTTPRoute is merged (`httproute_merge`: foreign rules, fields, labels
and annotations kept), checked and read back (`httproute_shape`), and when it is in effect: a Gateway API
implementation reports per parent in `status.parents` whether it `Accepted` the route and `ResolvedRefs` (every
version's Service exists); until each of the route's parents says both are True for the route's current
generation, the routing is not confirmed and the rollout holds with the parent's reason (`route_not_accepted`).
Nothing needs to exist first: the version Services are the application's (charts/microservice makes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from controller.deadline import Deadline
from controller.engine.routing_model import GATEWAY_GROUP, DesiredRouting
from controller.routing.httproute_merge import merge_http_route, parse_http_routing
from controller.routing.httproute_render import HTTPROUTE_VERSION, HTTPROUTES, http_route
from controller.routing.httproute_shape import check_http_route, observed_http_routing, route_not_accepted
from controller.routing.k8s_objects import ClusterRouting, MalformedObject
from controller.routing.kube_requests import KubeRequests, KubeResource, Obj

HTTP_ROUTES = KubeResource(GATEWAY_GROUP, HTTPROUTE_VERSION, HTTPROUTES, "HTTPRoute")


class GatewayApiRoutes:
    """RouteKind for the Gateway API: HTTPRoute rules, acceptance read from status.parents."""

    router = "gateway-api"
    resource = HTTP_ROUTES

    def render(self, routing: DesiredRouting) -> list[Obj]:
        return [http_route(routing)]

    def check(self, obj: Obj, where: str) -> None:
        check_http_route(obj, where)

    def merge(
        self, current: Obj | None, routing: DesiredRouting, notes: Mapping[str, str], remove: Mapping[str, str]
    ) -> Obj:
        return merge_http_route(current, routing, notes, remove)

    def observed(self, obj: Obj, namespace: str, service: str, hint: DesiredRouting | None) -> DesiredRouting | None:
        return observed_http_routing(obj, namespace, service, None if hint is None else hint.backends)

    def not_in_effect(self, obj: Obj, routing: DesiredRouting) -> str | None:
        return route_not_accepted(obj, routing.parent_refs, routing.namespace)

    def prepare(self, requests: KubeRequests, routing: DesiredRouting, deadline: Deadline | None) -> bool:
        return False  # the version Services belong to the application; a missing one shows in ResolvedRefs

    def forget(self, namespace: str, service: str) -> None:
        return None

    def parse(self, namespace: str, service: str, obj: Obj | None) -> ClusterRouting:
        """The tolerant view, plus whether the route's own parents accept it (what `ramp status` shows)."""
        found = replace(parse_http_routing(namespace, service, obj), kind=self.resource.kind)
        if obj is None:
            return found
        try:
            seen = observed_http_routing(obj, namespace, service, None)
        except MalformedObject:
            return found  # `problem` already says what is wrong
        if seen is None:
            return found
        return replace(found, not_in_effect=route_not_accepted(obj, seen.parent_refs, namespace))

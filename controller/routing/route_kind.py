"""What a cluster router is: one kind of route object and the rules to render, merge and read it back.

`RouteObjectBackend` (controller.routing.object_backend) does everything the routers share: one LIST per
namespace per tick, the rollout state in an annotation of the route object written in the same update as the
routing, commands in another annotation, optimistic concurrency on 409, schema validation before writing,
confirmation that the stored object holds the routing. A router only says how its object looks:

- `resource`: the custom resource it writes (one object per service, named after the service);
- `render`: the objects `ramp plan` prints for a routing (what a first write creates);
- `check` / `merge` / `observed` / `parse`: structure check, merge of Ramp's routing into what is there
  (foreign parts kept), Ramp's routing read back (drift detection), and the tolerant view `ramp status` shows;
- `prepare`: objects that must exist before the route (Istio's DestinationRule subsets; nothing for HTTPRoutes);
- `not_in_effect`: why a stored route is not serving yet (a Gateway that has not accepted it), else None.

A third router is one module implementing this, plus its line in controller.cluster_backend.ROUTERS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.routing.k8s_objects import ClusterRouting
from controller.routing.kube_requests import KubeRequests, KubeResource, Obj


class RouteKind(Protocol):
    router: str  # the name specs use (`router:`), e.g. "istio"
    resource: KubeResource

    def render(self, routing: DesiredRouting) -> list[Obj]:
        """The complete objects for `routing`, as a first write creates them (`ramp plan` prints these)."""
        ...

    def check(self, obj: Obj, where: str) -> None:
        """MalformedObject (naming the field) when `obj` cannot be read or merged into."""
        ...

    def merge(
        self, current: Obj | None, routing: DesiredRouting, notes: Mapping[str, str], remove: Mapping[str, str]
    ) -> Obj:
        """`current` (None: create) with Ramp's routing and annotations merged in; RouteMergeError to refuse."""
        ...

    def observed(self, obj: Obj, namespace: str, service: str, hint: DesiredRouting | None) -> DesiredRouting | None:
        """Ramp's routing as `obj` holds it (None: none); `hint` is the routing last asked for, when known."""
        ...

    def not_in_effect(self, obj: Obj, routing: DesiredRouting) -> str | None:
        """Why the stored `obj` is not serving `routing` yet although it holds it, or None."""
        ...

    def prepare(self, requests: KubeRequests, routing: DesiredRouting, deadline: Deadline | None) -> bool:
        """Write what must exist before the route can send traffic; True when something was written."""
        ...

    def forget(self, namespace: str, service: str) -> None:
        """Drop what `prepare` remembers for the service (the next prepare re-checks)."""
        ...

    def parse(self, namespace: str, service: str, obj: Obj | None) -> ClusterRouting:
        """Tolerant: what `ramp status` shows; a malformed part is named in `problem`."""
        ...

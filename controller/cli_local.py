"""Local mode for the people's commands: where a `ramp run` / `ramp demo` controller's Envoy is, and what it serves.

The controller writes `local-controller.json` into its state directory (`controller.state.local_info`):
the Envoy admin URL and routes directory. From there `status` and `ping` read what Envoy really
serves (routes read back from `/config_dump`) and its endpoints' health (`/clusters`), each read
bounded by a total deadline. A rollout's namespace/service comes from the controller's spec
directory when the info names one, else from the desired routings in the routes directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.state.local_info import LocalInfo, read_local_info

ENVOY_READ_SECONDS = 3.0


@dataclass
class LocalControllerView:
    """What the CLI knows about a local controller: its info file and rollout locations, or why not."""

    state_dir: Path
    info: LocalInfo | None = None
    problem: str | None = None  # why Envoy cannot be read (no info file, damaged file)
    locations: dict[str, tuple[str, str]] = field(default_factory=dict)  # rollout -> (namespace, service)

    @classmethod
    def load(cls, state_dir: Path) -> LocalControllerView:
        view = cls(state_dir)
        try:
            view.info = read_local_info(state_dir)
        except ValueError as exc:
            view.problem = str(exc)
            return view
        if view.info is None:
            view.problem = (
                f"no local controller info in {state_dir} (start `ramp run --state-dir {state_dir}`): "
                "Envoy's routes and endpoints cannot be read"
            )
            return view
        view.locations = _locations(view.info)
        return view

    def where(self, rollout: str) -> tuple[str, str] | None:
        return self.locations.get(rollout)

    def router_routing(self, rollout: str, deadline: Deadline | None = None) -> DesiredRouting | None:
        """What Envoy serves for the rollout's service right now (EnvoyRoutingError when unreadable)."""
        from controller.routing.envoy import EnvoyFileRouter

        where = self.where(rollout)
        if self.info is None or where is None:
            return None
        router = EnvoyFileRouter(Path(self.info.envoy_routes_dir), self.info.envoy_admin)
        return router.observed(where[0], where[1], deadline or Deadline(ENVOY_READ_SECONDS))

    def endpoints(self, rollout: str, deadline: Deadline | None = None) -> dict[str, list[tuple[str, int, bool]]]:
        """version -> [(host, port, healthy)] as Envoy's health checks see them (EnvoyAvailabilityError)."""
        from controller.local.availability import EnvoyAvailability

        where = self.where(rollout)
        if self.info is None or where is None:
            return {}
        availability = EnvoyAvailability(self.info.envoy_admin)
        return availability.endpoints(where[0], where[1], deadline or Deadline(ENVOY_READ_SECONDS))


def _locations(info: LocalInfo) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    try:
        from controller.routing.envoy import EnvoyFileRouter, EnvoyRoutingError

        try:
            for routing in EnvoyFileRouter(Path(info.envoy_routes_dir), info.envoy_admin).routings():
                found.setdefault(routing.service, (routing.namespace, routing.service))
        except EnvoyRoutingError:
            pass  # damaged desired routings: the specs may still tell
        if info.specs:
            from controller.spec_directory import SpecDirectory

            specs = SpecDirectory(Path(info.specs))
            specs.refresh()
            for rollout in specs.rollouts:
                found[rollout.name] = (rollout.spec.namespace, rollout.spec.service)
    except OSError:
        pass  # an unreadable directory: only what was found so far
    return found


def pods_from_endpoints(endpoints: dict[str, list[tuple[str, int, bool]]]) -> dict[str, tuple[int, int]]:
    """version -> (healthy endpoints, endpoints): the local counterpart of ready pods / pods."""
    return {v: (sum(1 for *_, healthy in hosts if healthy), len(hosts)) for v, hosts in endpoints.items()}

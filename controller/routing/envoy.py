"""DesiredRouting -> Envoy v3 RouteConfiguration, and a file-based RDS router.

The local data plane runs exactly the routing Ramp would send to Istio: the same
`DesiredRouting` is rendered here into an Envoy RouteConfiguration (header routes
first, in the model's order, then the weighted default route), delivered to Envoy
through a watched RDS file, and confirmed through Envoy's admin `/config_dump`.

Cluster names are `<namespace>--<service>--<version>`: no dots, so Envoy's stats
tag extraction keeps `envoy_cluster_name` intact, and the Prometheus relabelling
in `controller.local.prometheus_process` can split them back into Istio labels.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from controller.atomic_file import atomic_write
from controller.routing.model import PRIMARY_ROUTE_NAME, DesiredRouting, HeaderRoute

ROUTE_CONFIG_NAME = "ramp-routes"
ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ROUTES_FILE_NAME = "routes.json"
DESIRED_FILE_NAME = "desired-routings.json"
# Requests may carry a uint64 here to pin the weighted-cluster draw (reproducible splits in
# tests); requests without it use Envoy's own randomness, exactly as in production.
RANDOM_VALUE_HEADER = "x-ramp-random"
CLUSTER_SEPARATOR = "--"


class EnvoyRoutingError(RuntimeError):
    """Envoy did not accept (or did not confirm in time) a route configuration."""


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
                    {"name": cluster_name(routing.namespace, routing.service, v), "weight": w}
                    for v, w in live
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


def render_route_configuration(
    routings: Sequence[DesiredRouting], name: str = ROUTE_CONFIG_NAME
) -> dict[str, Any]:
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


def _admin_get_json(url: str, timeout: float) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _read_desired(path: Path) -> dict[tuple[str, str], DesiredRouting]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        routings = [DesiredRouting.model_validate(item) for item in items]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise EnvoyRoutingError(f"{path}: unreadable desired routings ({exc}); remove it to start afresh") from exc
    return {(r.namespace, r.service): r for r in routings}


def _read_version(path: Path) -> int:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data.get("version_info", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


class EnvoyFileRouter:
    """Keeps the desired routing per (namespace, service) and pushes it to Envoy via a watched RDS file.

    `apply` writes the whole RouteConfiguration (every known service) with a new, monotonically
    increasing `version_info`, then polls the admin `/config_dump` until Envoy reports that version.
    """

    def __init__(
        self,
        routes_dir: Path,
        admin_url: str,
        confirm_timeout: float = 5.0,
        route_config_name: str = ROUTE_CONFIG_NAME,
    ) -> None:
        self.routes_dir = Path(routes_dir)
        self.routes_file = self.routes_dir / ROUTES_FILE_NAME
        self.admin_url = admin_url.rstrip("/")
        self.confirm_timeout = confirm_timeout
        self.route_config_name = route_config_name
        # The desired routings behind the routes file, so a restarted controller knows every service's
        # routes (its first write must not drop other services) and skips writes that change nothing.
        self.desired_file = self.routes_dir / DESIRED_FILE_NAME
        self._routings: dict[tuple[str, str], DesiredRouting] = _read_desired(self.desired_file)
        # Continue after any version already on disk, so a restarted controller never reuses one.
        self._version = _read_version(self.routes_file)
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    def current(self, namespace: str, service: str) -> DesiredRouting | None:
        return self._routings.get((namespace, service))

    def routings(self) -> list[DesiredRouting]:
        return list(self._routings.values())

    def config_source(self) -> dict[str, Any]:
        return rds_config_source(self.routes_file, self.route_config_name)

    def initial_file(self, routings: Iterable[DesiredRouting]) -> Path:
        """Write the routes file before Envoy starts (no confirmation); returns its path."""
        with self._lock:
            for routing in routings:
                self._routings[(routing.namespace, routing.service)] = routing
            self._write(self._next_version())
        return self.routes_file

    def apply(self, routing: DesiredRouting) -> bool:
        """Make Envoy route `routing`; False (nothing written) if it is already in place.

        Raises EnvoyRoutingError if Envoy rejects the config or does not confirm it in time;
        the in-memory state and the file are then put back to the last confirmed routing.
        """
        key = (routing.namespace, routing.service)
        with self._lock:
            previous = self._routings.get(key)
            if previous == routing:
                return False
            render_route_configuration([routing])  # validate before touching anything
            self._routings[key] = routing
            version = self._next_version()
            rejected_before = self._rejected_count()
            try:
                self._write(version)
                self._confirm(version, rejected_before)
            except BaseException:
                if previous is None:
                    del self._routings[key]
                else:
                    self._routings[key] = previous
                with contextlib.suppress(OSError):
                    self._write(self._next_version())
                raise
            return True

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _write(self, version: str) -> None:
        desired = [r.model_dump(mode="json") for r in self._routings.values()]
        atomic_write(self.desired_file, (json.dumps(desired, indent=1) + "\n").encode())
        document = discovery_response(list(self._routings.values()), version, self.route_config_name)
        atomic_write(self.routes_file, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())

    def envoy_route_version(self, timeout: float = 2.0) -> str | None:
        """The version_info Envoy currently reports for our route configuration (None if none)."""
        url = f"{self.admin_url}/config_dump?resource=dynamic_route_configs"
        data = _admin_get_json(url, timeout)
        for entry in data.get("configs", []):
            if entry.get("route_config", {}).get("name") == self.route_config_name:
                version = entry.get("version_info")
                return str(version) if version is not None else None
        return None

    def _rejected_count(self) -> int | None:
        url = f"{self.admin_url}/stats?format=json&filter=rds\\.{self.route_config_name}\\.update_rejected$"
        try:
            data = _admin_get_json(url, 2.0)
        except (OSError, ValueError, urllib.error.URLError):
            return None
        total = 0
        for stat in data.get("stats", []):
            if isinstance(stat, dict) and isinstance(stat.get("value"), int):
                total += stat["value"]
        return total

    def _confirm(self, version: str, rejected_before: int | None) -> None:
        deadline = time.monotonic() + self.confirm_timeout
        last: str = "no answer"
        checks = 0
        while True:
            try:
                seen = self.envoy_route_version()
                if seen == version:
                    return
                last = f"Envoy reports version_info {seen!r}"
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last = f"admin error: {exc}"
            checks += 1
            if rejected_before is not None and checks % 4 == 0:
                rejected = self._rejected_count()
                if rejected is not None and rejected > rejected_before:
                    raise EnvoyRoutingError(
                        f"Envoy rejected route configuration version {version} "
                        f"({self.routes_file}); see the Envoy log"
                    )
            if time.monotonic() >= deadline:
                raise EnvoyRoutingError(
                    f"Envoy at {self.admin_url} did not confirm route configuration version {version} "
                    f"within {self.confirm_timeout:.1f}s ({last}); routes file {self.routes_file}"
                )
            time.sleep(0.02)

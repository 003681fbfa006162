"""Which versions can serve in local mode: Envoy's active health checks, read from its admin API.

Every version cluster `<namespace>--<service>--<version>` has an HTTP health check on the sample
app's `/health` (see `controller.local.envoy_process`). A version is available iff its cluster has
at least one endpoint Envoy considers healthy; a version without a cluster is unavailable. One
`/clusters?format=json` read per tick covers every rollout, bounded by a total deadline and a size
cap. An unreadable answer raises `EnvoyAvailabilityError`: the runner then treats every version
as unavailable (no weight moves while health is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from controller.deadline import Deadline
from controller.routing.envoy_admin import DEFAULT_MAX_BYTES, EnvoyAdminError, admin_get_json
from controller.routing.envoy_readback import CLUSTER_SEPARATOR
from controller.spec import RolloutSpec

# HostHealthStatus flags (envoy.admin.v3) that take a host out of load balancing.
_FAILURE_FLAGS = (
    "failed_active_health_check",
    "failed_outlier_check",
    "failed_eds_health",
    "pending_dynamic_removal",
    "pending_active_hc",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
)
_SERVING_EDS_STATUSES = frozenset({"HEALTHY", "DEGRADED"})


class EnvoyAvailabilityError(RuntimeError):
    """Envoy's cluster health could not be read."""


class RolloutLike(Protocol):
    """What availability needs of a rollout (`controller.engine.ports.ManagedRollout` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> RolloutSpec: ...


class Endpoint(NamedTuple):
    host: str
    port: int
    healthy: bool


def _host_healthy(status: Any) -> bool:
    """Healthy only when Envoy says so explicitly; anything malformed counts as not healthy."""
    if not isinstance(status, dict):
        return False
    health = status.get("health_status")
    if not isinstance(health, dict) or health.get("eds_health_status", "HEALTHY") not in _SERVING_EDS_STATUSES:
        return False
    return not any(health.get(flag) for flag in _FAILURE_FLAGS)


def _endpoint(status: Any) -> Endpoint:
    address = status.get("address") if isinstance(status, dict) else None
    socket_address = address.get("socket_address") if isinstance(address, dict) else None
    host, port = "?", 0
    if isinstance(socket_address, dict):
        if isinstance(socket_address.get("address"), str):
            host = socket_address["address"][:255]
        if isinstance(socket_address.get("port_value"), int) and not isinstance(socket_address["port_value"], bool):
            port = socket_address["port_value"]
    return Endpoint(host, port, _host_healthy(status))


def parse_clusters(data: Any) -> dict[str, list[Endpoint]]:
    """cluster name -> its endpoints, from a `/clusters?format=json` answer (ValueError if it is none)."""
    if not isinstance(data, dict) or not isinstance(data.get("cluster_statuses", []), list):
        raise ValueError("not a /clusters?format=json answer (no cluster_statuses list)")
    clusters: dict[str, list[Endpoint]] = {}
    for cluster in data.get("cluster_statuses", []):
        if not isinstance(cluster, dict) or not isinstance(cluster.get("name"), str):
            continue  # not a cluster we could name: it cannot make a version available
        hosts = cluster.get("host_statuses")
        endpoints = [_endpoint(h) for h in hosts] if isinstance(hosts, list) else []
        clusters.setdefault(cluster["name"], []).extend(endpoints)
    return clusters


class EnvoyAvailability:
    """The engine's VersionAvailability for local mode; also per-version endpoints for `status`/`ping`."""

    def __init__(self, admin_url: str, timeout: float = 2.0, max_answer_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes

    def clusters(self, deadline: Deadline | None = None) -> dict[str, list[Endpoint]]:
        """Every cluster's endpoints, one admin call within min(timeout, deadline)."""
        url = f"{self.admin_url}/clusters?format=json"
        try:
            return parse_clusters(admin_get_json(url, deadline, self.timeout, self.max_answer_bytes))
        except (EnvoyAdminError, ValueError) as exc:
            raise EnvoyAvailabilityError(f"cannot read Envoy's cluster health: {exc}") from None

    def endpoints(
        self, namespace: str, service: str, deadline: Deadline | None = None
    ) -> dict[str, list[tuple[str, int, bool]]]:
        """version -> [(host, port, healthy)] for every cluster of the service Envoy knows."""
        prefix = f"{namespace}{CLUSTER_SEPARATOR}{service}{CLUSTER_SEPARATOR}"
        found: dict[str, list[tuple[str, int, bool]]] = {}
        for name, endpoints in self.clusters(deadline).items():
            version = name[len(prefix) :] if name.startswith(prefix) else ""
            if version and CLUSTER_SEPARATOR not in version:
                found[version] = [(e.host, e.port, e.healthy) for e in endpoints]
        return dict(sorted(found.items()))

    def unavailable_versions(
        self, rollouts: Sequence[RolloutLike], deadline: Deadline | None = None
    ) -> dict[str, frozenset[str]]:
        """Per rollout name, the versions with no healthy endpoint (or no cluster at all)."""
        if not rollouts:
            return {}
        clusters = self.clusters(deadline)
        result: dict[str, frozenset[str]] = {}
        for rollout in rollouts:
            spec = rollout.spec
            result[rollout.name] = frozenset(
                version.name
                for version in spec.versions
                if not any(
                    e.healthy
                    for e in clusters.get(CLUSTER_SEPARATOR.join((spec.namespace, spec.service, version.name)), [])
                )
            )
        return result

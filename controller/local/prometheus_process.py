"""Prometheus for the local stack: scrape Envoy and present its stats as Istio's standard metrics.

Envoy exports, per cluster `<namespace>--<service>--<version>`:

  envoy_cluster_upstream_rq{envoy_response_code="200", envoy_cluster_name="ns--svc--ver"}
  envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="ns--svc--ver", le="..."} (+ _sum, _count)

`metric_relabel_configs` rename these to `istio_requests_total` and
`istio_request_duration_milliseconds_{bucket,sum,count}` with Istio's destination
labels, so the analysis PromQL is identical locally and in a real mesh. Every other
Envoy series is dropped at scrape time.

Optional extra targets (`host:port`, e.g. the controller's own EndpointServer) are scraped
at `/metrics` by a second job, `ramp-controller`, unchanged.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controller.local.processes import ManagedProcess, ProcessError, ProcessGroup, http_get

PROMETHEUS_FALLBACK = "/usr/bin/prometheus"
CONTROLLER_JOB = "ramp-controller"
_CLUSTER_RE = "(.+?)--(.+?)--(.+)"  # namespace--service--version (parts never contain "--")
_KEPT_SERIES = "envoy_cluster_upstream_rq|envoy_cluster_upstream_rq_time_(?:bucket|sum|count)"

# Labels written on every translated series: (target label, replacement over _CLUSTER_RE groups).
ISTIO_DESTINATION_LABELS: tuple[tuple[str, str], ...] = (
    ("destination_workload_namespace", "${1}"),
    ("destination_service_namespace", "${1}"),
    ("destination_service_name", "${2}"),
    ("destination_canonical_service", "${2}"),
    ("destination_app", "${2}"),
    ("destination_version", "${3}"),
    ("destination_canonical_revision", "${3}"),
    ("destination_workload", "${2}-${3}"),
    ("destination_service", "${2}.${1}.svc.cluster.local"),
)
STATIC_LABELS: tuple[tuple[str, str], ...] = (("reporter", "destination"), ("request_protocol", "http"))


def istio_metric_relabel_configs() -> list[dict[str, Any]]:
    """metric_relabel_configs turning Envoy cluster stats into Istio standard metrics."""
    rules: list[dict[str, Any]] = [
        # Keep only the request counter and latency histogram of Ramp-named clusters.
        {
            "source_labels": ["__name__", "envoy_cluster_name"],
            "separator": ";",
            "regex": f"(?:{_KEPT_SERIES});[^;]+--[^;]+--[^;]+",
            "action": "keep",
        },
    ]
    for target, replacement in ISTIO_DESTINATION_LABELS:
        rules.append(
            {
                "source_labels": ["envoy_cluster_name"],
                "regex": _CLUSTER_RE,
                "target_label": target,
                "replacement": replacement,
                "action": "replace",
            }
        )
    for target, value in STATIC_LABELS:
        rules.append(
            {
                "source_labels": ["__name__"],
                "regex": ".+",
                "target_label": target,
                "replacement": value,
                "action": "replace",
            }
        )
    rules += [
        {
            "source_labels": ["envoy_response_code"],
            "regex": "(.+)",
            "target_label": "response_code",
            "replacement": "${1}",
            "action": "replace",
        },
        {
            "source_labels": ["__name__"],
            "regex": "envoy_cluster_upstream_rq",
            "target_label": "__name__",
            "replacement": "istio_requests_total",
            "action": "replace",
        },
        {
            "source_labels": ["__name__"],
            "regex": "envoy_cluster_upstream_rq_time_(bucket|sum|count)",
            "target_label": "__name__",
            "replacement": "istio_request_duration_milliseconds_${1}",
            "action": "replace",
        },
        {"regex": "envoy_cluster_name|envoy_response_code", "action": "labeldrop"},
    ]
    return rules


def render_prometheus_config(
    envoy_admin_targets: list[str],
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job_name: str = "ramp-envoy",
    extra_scrape_targets: Sequence[str] = (),
) -> dict[str, Any]:
    """prometheus.yml as a dict; targets are `host:port` of Envoy admin endpoints.

    `extra_scrape_targets` (`host:port`) are scraped at /metrics every second by the
    `ramp-controller` job, with their series kept as they are.
    """
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": job_name,
            "metrics_path": "/stats/prometheus",
            "params": {"usedonly": [""]},  # only stats that were ever written
            "static_configs": [{"targets": list(envoy_admin_targets)}],
            "metric_relabel_configs": istio_metric_relabel_configs(),
        }
    ]
    if extra_scrape_targets:
        scrape_configs.append(
            {
                "job_name": CONTROLLER_JOB,
                "metrics_path": "/metrics",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": list(extra_scrape_targets)}],
            }
        )
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "scrape_configs": scrape_configs,
    }


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    if Path(PROMETHEUS_FALLBACK).is_file():
        return PROMETHEUS_FALLBACK
    raise ProcessError(
        "prometheus binary not found on PATH or at /usr/bin/prometheus; "
        "install it with `apt-get install prometheus` (or put a prometheus binary on PATH)"
    )


def write_prometheus_config(path: Path, config: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def prometheus_argv(config_path: Path, data_dir: Path, port: int, binary: str | None = None) -> list[str]:
    return [
        binary or prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]


def start_prometheus(
    group: ProcessGroup,
    work_dir: Path,
    port: int,
    envoy_admin_targets: list[str],
    name: str = "prometheus",
    extra_scrape_targets: Sequence[str] = (),
) -> ManagedProcess:
    """Write prometheus.yml and start Prometheus (not waiting; call `wait_prometheus_ready`)."""
    work_dir = Path(work_dir)
    config_path = write_prometheus_config(
        work_dir / "prometheus.yml",
        render_prometheus_config(envoy_admin_targets, extra_scrape_targets=extra_scrape_targets),
    )
    data_dir = work_dir / "prometheus-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return group.start(name, prometheus_argv(config_path, data_dir, port))


def wait_prometheus_ready(process: ManagedProcess, port: int, timeout: float = 20.0) -> None:
    process.wait_http_ready(f"http://127.0.0.1:{port}/-/ready", timeout)


def instant_query(prometheus_url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Run an instant query; returns the `result` vector (raises ProcessError on an API error)."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http_get(url, timeout=timeout)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProcessError(f"Prometheus returned HTTP {status} with a non-JSON body for {promql!r}") from exc
    if status != 200 or data.get("status") != "success":
        raise ProcessError(f"Prometheus query {promql!r} failed (HTTP {status}): {data.get('error')}")
    result: list[dict[str, Any]] = data["data"]["result"]
    return result

"""One controller process, N concurrent rollouts: an in-memory Kubernetes API (own process, see
bench/fast_apiserver.py) + real Prometheus scraping a synthetic mesh (bench/fake_mesh.py).

Per tick (5 s interval): Prometheus queries, Kubernetes writes, CPU seconds of the controller
process, wall time; and the process' peak RSS. Rollouts step every 10 s, so writes happen only
when a step changes.

Every rollout also has a custom gate on the shared `http-4xx-rate` MetricTemplate (rollout-specs/templates.yml):
rollouts sharing a template share ONE query per tick, so `custom_queries_per_tick_max` stays 1 for 1 or 1000
rollouts, and `queries_per_tick_max` is 3 (requests, latency, the template).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from controller.analysis.prometheus import PrometheusSource
from controller.analysis.prometheus_http import PrometheusHTTP
from controller.cluster_backend import cluster_backend
from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.k8s.client import KubeApi
from controller.local.ports import free_port
from controller.local.processes import ProcessGroup, wait_http_ready
from controller.local.prometheus_process import start_prometheus, wait_prometheus_ready
from controller.spec_loader import parse_spec_text
from controller.spec_metrics import load_templates

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "scale"
SPEC = """
service: {name}
namespace: scale
versions: [{{name: v1, weight: 100}}, {{name: v2, weight: 0}}]
target: v2
steps:
  - {{header: {{value: v2}}, duration: 10s}}
  - {{weight: 10, duration: 10s}}
  - {{weight: 50, duration: 10s}}
  - {{weight: 100, duration: 10s}}
gates:
  - {{metric: error_rate, max: 1}}
  - {{metric: latency, quantile: p99, max: 500}}
  - {{metric: custom, template: http-4xx-rate, max: 5}}
schedule: {{interval: 5s}}
analysis: {{window: 30s, min_requests: 20}}
"""


class CountingClient:
    """The real HTTP client, counting the custom gates' queries (they are the ones not on Istio's histogram or
    the built-in requests query)."""

    def __init__(self, url: str) -> None:
        self.http = PrometheusHTTP(url)
        self.custom = 0

    def query(self, promql: str, deadline: Deadline) -> list[Any]:
        if "response_code=~\"4..\"" in promql:
            self.custom += 1
        return self.http.query(promql, deadline)


def run(rollouts: int = 1000, ticks: int = 14) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ramp-scale-") as tmp, ProcessGroup(Path(tmp) / "logs") as group:
        api_port = free_port()
        emulator = subprocess.Popen(
            [sys.executable, "-m", "bench.fast_apiserver", str(api_port)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        try:
            assert emulator.stdout is not None and emulator.stdout.readline().strip() == "ready"
            url = f"http://127.0.0.1:{api_port}"
            mesh_port, prom_port = free_port(), free_port()
            group.start(
                "fake-mesh",
                [sys.executable, "-m", "bench.fake_mesh", str(mesh_port), str(rollouts), NAMESPACE],
                cwd=REPO,
            )
            print(f"scale: {rollouts} rollouts; waiting for Prometheus to fill its window", file=sys.stderr)
            wait_http_ready(f"http://127.0.0.1:{mesh_port}/metrics", 20)
            prometheus = start_prometheus(
                group, Path(tmp), prom_port, [], extra_scrape_targets=[f"127.0.0.1:{mesh_port}"]
            )
            wait_prometheus_ready(prometheus, prom_port, 30)
            time.sleep(35)  # let the 30 s window fill with samples
            config = k8s_client.Configuration()
            config.host = url
            api = KubeApi(k8s_client.ApiClient(config), request_timeout=30)
            backend = cluster_backend(api)  # what `ramp controller` builds
            counting = CountingClient(f"http://127.0.0.1:{prom_port}")
            source = PrometheusSource(f"http://127.0.0.1:{prom_port}", timeout_seconds=30, client=counting)
            templates = load_templates(REPO / "rollout-specs").catalog
            runner = RolloutRunner(router=backend, metrics=source, store=backend)
            runner.set_rollouts(
                [
                    ManagedRollout.from_spec(
                        parse_spec_text(SPEC.format(name=f"svc{i}"), "scale.yaml", templates=templates)
                    )
                    for i in range(rollouts)
                ]
            )
            rows = []
            for _ in range(ticks):
                started_wall, started_cpu = time.monotonic(), time.process_time()
                queries_before, custom_before = source.queries_sent, counting.custom
                writes_before = sum(api.stats.requests.get(v, 0) for v in ("create", "update"))
                events = runner.tick()
                wall = time.monotonic() - started_wall
                rows.append(
                    {
                        "rollouts_ticked": len(events),
                        "queries": source.queries_sent - queries_before,
                        "custom_queries": counting.custom - custom_before,
                        "writes": sum(api.stats.requests.get(v, 0) for v in ("create", "update")) - writes_before,
                        "cpu_s": time.process_time() - started_cpu,
                        "wall_s": wall,
                    }
                )
                print(f"scale: tick {len(rows)}: {rows[-1]}", file=sys.stderr, flush=True)
                time.sleep(max(0.0, 5.0 - wall))
            phases: dict[str, int] = {}
            for rollout in runner.rollouts.values():
                state = backend.load(rollout.name)
                phase = state.phase.value if state else "none"
                phases[phase] = phases.get(phase, 0) + 1
        finally:
            emulator.kill()
            emulator.wait()
    after = rows[1:]  # the first tick creates every VirtualService and DestinationRule
    quiet = [r for r in after if r["writes"] == 0 and r["queries"] > 0]  # judging, nothing to write
    stepping = [r for r in after if r["writes"] > 0]  # all rollouts change step in the same tick
    cpu = [float(str(r["cpu_s"])) for r in after]
    return {
        "rollouts": rollouts,
        "ticks": ticks,
        "queries_per_tick_max": max(r["queries"] for r in rows),
        "custom_gate_rollouts": rollouts,
        "custom_queries_per_tick_max": max(r["custom_queries"] for r in rows),
        "writes_first_tick": rows[0]["writes"],
        "writes_per_tick_quiet": sorted({r["writes"] for r in quiet}),
        "writes_per_tick_stepping": sorted({r["writes"] for r in stepping}),
        "cpu_s_quiet_median": round(statistics.median(float(str(r["cpu_s"])) for r in quiet), 3) if quiet else None,
        "cpu_s_stepping_median": round(statistics.median(float(str(r["cpu_s"])) for r in stepping), 3)
        if stepping
        else None,
        "cpu_cores_quiet": round(statistics.median(float(str(r["cpu_s"])) for r in quiet) / 5.0, 3) if quiet else None,
        "cpu_cores_time_averaged": round(sum(cpu) / (5.0 * len(cpu)), 3),
        "wall_s_per_tick_max": round(max(float(str(r["wall_s"])) for r in after), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_phases": phases,
        "per_tick": rows,
    }


if __name__ == "__main__":
    import json

    from controller.observability import configure_logging

    configure_logging(level="warning")
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2, default=str))

"""The scale curve: one controller process, N concurrent rollouts, for N = 100, 1,000 and 3,000.

Each size runs in a fresh subprocess (`python -m bench.scale N`), so its peak RSS is its own, against an
in-memory Kubernetes API (own process, bench/fast_apiserver.py) and a real Prometheus scraping a synthetic mesh
of N services (bench/fake_mesh.py, 1 s scrape).

The runner is driven as `ramp controller` drives it: `runner.tick()` every second (BASE_TICK_SECONDS), the runner
picking the rollouts due at their 5 s interval. All rollouts start together, so every fifth tick handles all of
them and the four between find nothing due. Rollouts step every 10 s, so every other due tick writes all of them
(a worst case: a real fleet spreads its steps). Per tick: CPU seconds of the whole controller process (all its
threads), wall time, Prometheus queries and answer bytes (counted in `PrometheusHTTP`), Kubernetes requests by
verb (`KubeStats`). The first tick, which creates every VirtualService and DestinationRule, is reported apart and
left out of the averages.

Every rollout also has a custom gate on the shared `http-4xx-rate` MetricTemplate (rollout-specs/templates.yml):
rollouts sharing a template share ONE query per tick, so a due tick sends 3 queries (requests, latency, the
template) for 100 or 3,000 rollouts.

The error gate is in mode `both` (threshold + statistical), so the fast lane (engine.fast_lane: statistical
error gates fed every second from one batched raw-counter query) runs inside the measured ticks: every tick with
nothing due sends that one query for all rollouts in progress, and its CPU is in the run's average. The process
tunes its garbage collector as `ramp controller` does (controller.gc_tuning: thresholds at start, the long-lived
objects frozen once the rollouts are loaded).

Run one size: `.venv/bin/python -m bench.scale 1000 [--seconds 70] [--profile DIR]` (prints the figures as
JSON; --profile writes one cProfile file per due tick, named by what the tick did).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
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
from controller.gc_tuning import freeze_long_lived, tune_for_controller
from controller.k8s.client import KubeApi
from controller.local.ports import free_port
from controller.local.processes import ProcessGroup, wait_http_ready
from controller.local.prometheus_process import start_prometheus, wait_prometheus_ready
from controller.spec_loader import parse_spec_text
from controller.spec_metrics import load_templates

REPO = Path(__file__).resolve().parent.parent
SIZES = (100, 1000, 3000)
NAMESPACE = "scale"
TICK_SECONDS = 1.0  # controller.cluster_controller.BASE_TICK_SECONDS
INTERVAL_SECONDS = 5.0  # the specs' schedule interval
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
  - {{metric: error_rate, mode: both, max: 1}}
  - {{metric: latency, quantile: p99, max: 500}}
  - {{metric: custom, template: http-4xx-rate, max: 5}}
schedule: {{interval: 5s}}
analysis: {{window: 30s, min_requests: 20}}
"""


class CountingClient:
    """The real HTTP client, counting the custom gates' queries (the ones on 4xx codes)."""

    def __init__(self, url: str) -> None:
        self.http = PrometheusHTTP(url)
        self.custom = 0

    def query(self, promql: str, deadline: Deadline) -> list[Any]:
        if "response_code=~\"4..\"" in promql:
            self.custom += 1
        return self.http.query(promql, deadline)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


class CollectorClock:
    """CPU seconds spent in the cyclic garbage collector (all generations, any thread), via gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def _tick_kind(row: dict[str, Any]) -> str:
    """idle: nothing due; settled: due, every rollout finished (no metrics, nothing written); judging: metrics
    fetched, nothing written; stepping: rollouts moved."""
    if row["due"] == 0:
        return "idle"
    if row["writes"] > 0:
        return "stepping"
    return "judging" if row["queries"] > 0 else "settled"


def measure(rollouts: int, seconds: float = 70.0, profile_dir: Path | None = None) -> dict[str, Any]:
    """The figures of one size, measured in THIS process (use `run` for a fresh process per size)."""
    with tempfile.TemporaryDirectory(prefix="ramp-scale-") as tmp, ProcessGroup(Path(tmp) / "logs") as group:
        api_port = free_port()
        group.start("fast-apiserver", [sys.executable, "-m", "bench.fast_apiserver", str(api_port)], cwd=REPO)
        mesh_port, prom_port = free_port(), free_port()
        group.start(
            "fake-mesh", [sys.executable, "-m", "bench.fake_mesh", str(mesh_port), str(rollouts), NAMESPACE], cwd=REPO
        )
        print(f"scale: {rollouts} rollouts; waiting for Prometheus to fill its window", file=sys.stderr)
        wait_http_ready(f"http://127.0.0.1:{api_port}/api/v1/namespaces/{NAMESPACE}/pods/probe", 20,
                        accept=lambda status, _body: status == 404)  # fmt: skip
        wait_http_ready(f"http://127.0.0.1:{mesh_port}/metrics", 20)
        prometheus = start_prometheus(group, Path(tmp), prom_port, [], extra_scrape_targets=[f"127.0.0.1:{mesh_port}"])
        wait_prometheus_ready(prometheus, prom_port, 30)
        time.sleep(35)  # let the 30 s window fill with samples
        config = k8s_client.Configuration()
        config.host = f"http://127.0.0.1:{api_port}"
        api = KubeApi(k8s_client.ApiClient(config), request_timeout=30)
        backend = cluster_backend(api)  # what `ramp controller` builds
        counting = CountingClient(f"http://127.0.0.1:{prom_port}")
        source = PrometheusSource(f"http://127.0.0.1:{prom_port}", timeout_seconds=30, client=counting)
        templates = load_templates(REPO / "rollout-specs").catalog
        tune_for_controller()  # as `ramp controller` does
        runner = RolloutRunner(router=backend, metrics=source, store=backend)
        specs = [parse_spec_text(SPEC.format(name=f"svc{i}"), "s.yaml", templates=templates) for i in range(rollouts)]
        runner.set_rollouts([ManagedRollout.from_spec(spec) for spec in specs])
        freeze_long_lived()  # as the controller loop's on_rollouts does
        collector = CollectorClock()
        rows: list[dict[str, Any]] = []
        run_start_wall = run_start_cpu = 0.0
        next_tick = time.monotonic()
        end = next_tick + seconds
        while time.monotonic() < end:
            started_wall, started_cpu = time.monotonic(), time.process_time()
            queries, custom, answer_bytes = source.queries_sent, counting.custom, counting.http.response_bytes
            requests, collecting = dict(api.stats.requests), collector.seconds
            profiler = cProfile.Profile() if profile_dir is not None else None
            if profiler is not None:
                profiler.enable()
            events = runner.tick()
            if profiler is not None:
                profiler.disable()
            verbs = {v: n - requests.get(v, 0) for v, n in api.stats.requests.items() if n - requests.get(v, 0)}
            row = {
                "due": len(events),
                "queries": source.queries_sent - queries,
                "custom_queries": counting.custom - custom,
                "answer_bytes": counting.http.response_bytes - answer_bytes,
                "kube_requests": verbs,
                "writes": verbs.get("create", 0) + verbs.get("update", 0),
                "cpu_s": round(time.process_time() - started_cpu, 4),
                "gc_s": round(collector.seconds - collecting, 4),
                "wall_s": round(time.monotonic() - started_wall, 3),
            }
            rows.append(row)
            if profiler is not None and profile_dir is not None and row["due"]:
                profile_dir.mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(profile_dir / f"{rollouts}-tick{len(rows):03d}-{_tick_kind(row)}.prof")
            if len(rows) == 1:  # the creating tick is left out of the averages
                run_start_wall, run_start_cpu = time.monotonic(), time.process_time()
            if row["due"]:
                print(f"scale {rollouts}: tick {len(rows)}: {row}", file=sys.stderr, flush=True)
            next_tick += TICK_SECONDS
            time.sleep(max(0.0, next_tick - time.monotonic()))
        run_wall, run_cpu = time.monotonic() - run_start_wall, time.process_time() - run_start_cpu
        collector.close()
        peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        lane = runner.fast_lane
        fast_lane = {"checks": lane.checks if lane else 0, "crossings": lane.crossings if lane else 0}
        phases: dict[str, int] = {}
        for rollout in runner.rollouts.values():
            state = backend.load(rollout.name)
            phase = state.phase.value if state else "none"
            phases[phase] = phases.get(phase, 0) + 1
    return summarize(rollouts, rows, run_cpu, run_wall, fast_lane, phases, peak_rss_mb)


def _steady(judging: list[dict[str, Any]], idle: list[dict[str, Any]]) -> float | None:
    """Cores while every rollout judges and none steps: per 5 s interval one judging tick (median) and four ticks
    with nothing due, which run the fast lane (their mean)."""
    if not judging or not idle:
        return None
    per_interval = statistics.median(r["cpu_s"] for r in judging) + (INTERVAL_SECONDS / TICK_SECONDS - 1) * (
        statistics.mean(r["cpu_s"] for r in idle)
    )
    return round(per_interval / INTERVAL_SECONDS, 3)


def summarize(
    rollouts: int, rows: list[dict[str, Any]], run_cpu: float, run_wall: float, fast_lane: dict[str, Any],
    phases: dict[str, int], peak_rss_mb: float,
) -> dict[str, Any]:  # fmt: skip
    after = rows[1:]
    by_kind: dict[str, list[dict[str, Any]]] = {"judging": [], "stepping": [], "settled": [], "idle": []}
    for row in after:
        by_kind[_tick_kind(row)].append(row)
    due = [*by_kind["judging"], *by_kind["stepping"]]  # rollouts in progress: metrics fetched
    verbs = sorted({v for r in due for v in r["kube_requests"]})
    cores = run_cpu / run_wall if run_wall > 0 else 0.0
    return {
        "rollouts": rollouts,
        "seconds": round(run_wall, 1),
        "ticks": len(rows),
        "due_ticks": {kind: len(found) for kind, found in by_kind.items()},
        "first_tick": {k: rows[0][k] for k in ("due", "kube_requests", "cpu_s", "wall_s")},
        "cpu_s_judging_median": _median([r["cpu_s"] for r in by_kind["judging"]]),
        "cpu_s_stepping_median": _median([r["cpu_s"] for r in by_kind["stepping"]]),
        "cpu_s_settled_median": _median([r["cpu_s"] for r in by_kind["settled"]]),
        "cpu_s_idle_median": _median([r["cpu_s"] for r in by_kind["idle"]]),
        "gc_s_judging_median": _median([r["gc_s"] for r in by_kind["judging"]]),
        "gc_s_stepping_median": _median([r["gc_s"] for r in by_kind["stepping"]]),
        "cpu_s_per_interval": round(cores * INTERVAL_SECONDS, 3),
        "cpu_cores": round(cores, 3),
        # a fleet judging, none stepping: one judging tick and the fast lane's ticks per rollout interval
        "cpu_cores_judging": _steady(by_kind["judging"], by_kind["idle"]),
        "fast_lane_checks": fast_lane["checks"],
        "fast_lane_crossings": fast_lane["crossings"],
        "queries_per_idle_tick": sorted({r["queries"] for r in by_kind["idle"]}),
        "answer_bytes_per_idle_tick": int(statistics.median(r["answer_bytes"] for r in by_kind["idle"]))
        if by_kind["idle"]
        else 0,
        "queries_per_due_tick": sorted({r["queries"] for r in due}),
        "custom_queries_per_due_tick": sorted({r["custom_queries"] for r in due}),
        "answer_bytes_per_due_tick": int(statistics.median(r["answer_bytes"] for r in due)) if due else 0,
        "kube_requests_per_tick": {
            kind: {v: sorted({r["kube_requests"].get(v, 0) for r in found}) for v in verbs}
            for kind, found in by_kind.items()
            if kind in ("judging", "stepping") and found
        },
        "wall_s_per_tick_max": max((r["wall_s"] for r in after), default=0.0),
        "peak_rss_mb": peak_rss_mb,
        "final_phases": phases,
        "per_due_tick": [{"tick": i + 1, **r} for i, r in enumerate(rows) if r["due"]],
    }


def run(rollouts: int, seconds: float = 70.0) -> dict[str, Any]:
    """One size in a fresh subprocess (its peak RSS is its own)."""
    with tempfile.TemporaryDirectory(prefix="ramp-scale-out-") as tmp:
        out = Path(tmp) / "figures.json"
        subprocess.run(
            [sys.executable, "-m", "bench.scale", str(rollouts), "--seconds", str(seconds), "--output", str(out)],
            cwd=REPO, check=True, timeout=seconds + 600,
        )  # fmt: skip
        figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def run_100() -> dict[str, Any]:
    return run(100)


def run_1000() -> dict[str, Any]:
    return run(1000)


def run_3000() -> dict[str, Any]:
    return run(3000)


def curve(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Every size, one after the other (never in parallel: they would share the 2 cores)."""
    return {str(size): run(size) for size in sizes}


def main(argv: list[str]) -> None:
    from controller.observability import configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("rollouts", type=int, nargs="?", default=1000)
    parser.add_argument("--seconds", type=float, default=70.0)
    parser.add_argument("--profile", type=Path, help="write a cProfile file per due tick into this directory")
    parser.add_argument("--output", type=Path, help="write the figures here (default: stdout)")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    figures = measure(args.rollouts, args.seconds, args.profile)
    text = json.dumps(figures, indent=1, default=str)
    if args.output is not None:
        args.output.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])

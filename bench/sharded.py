"""Sharded scale: 3,000 rollouts over 3 shards, three controller processes, each holding its shard's Lease.

The same rig as bench/scale.py (its spec, the in-memory Kubernetes API bench/fast_apiserver.py, a real Prometheus
scraping bench/fake_mesh.py), but the controller is `ramp controller --shards 3` three times over: each replica
is its own process wired as controller.cluster_controller wires a sharded one (ShardLeases with client-go's
default timings, the ControllerLoop with the ShardSelection filter, `runner.may_write` = the tick's shards still
held, the KubeApi write guard), driven every second as the TickScheduler drives it. Every replica reads and parses
ALL the specs (as each pod reads the whole spec directory) and ticks only its shards' rollouts.

The replicas start their elections together (a shared start time after their imports and spec parsing), so the
fair-share rule gives each one shard. Per replica: shards and rollouts held, CPU seconds per tick of the whole
process (judging: due rollouts, no writes; stepping: some writes), peak RSS, longest tick. Whole: the final phase
of every rollout read back from the API (all must be Promoted), and how many rollouts more than one replica
ticked (must be 0).

Run: `.venv/bin/python -m bench.sharded [--rollouts 3000] [--seconds 80]` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s_client

from bench.scale import INTERVAL_SECONDS, NAMESPACE, SPEC, TICK_SECONDS
from controller.analysis.prometheus import PrometheusSource
from controller.cluster_backend import cluster_backend
from controller.controller_loop import ControllerLoop
from controller.deadline import Deadline
from controller.engine.runner import ManagedRollout, RolloutRunner, TickEvent
from controller.gc_tuning import freeze_long_lived, tune_for_controller
from controller.k8s.client import KubeApi
from controller.k8s.shards import ShardLeases, ShardSelection
from controller.local.ports import free_port
from controller.local.processes import ProcessGroup, wait_http_ready
from controller.local.prometheus_process import start_prometheus, wait_prometheus_ready
from controller.routing.state_codec import STATE_ANNOTATION
from controller.spec_loader import parse_spec_text
from controller.spec_metrics import load_templates
from controller.spec_sources import StaticSpecSource

REPO = Path(__file__).resolve().parent.parent
SHARDS = REPLICAS = 3
STARTUP_SECONDS = 45.0  # imports + parsing every spec in each replica (three at once on two cores)


class MeasuredRunner:
    """The RolloutRunner as the loop drives it, measuring each tick (process CPU, wall, due rollouts, writes)."""

    def __init__(self, runner: RolloutRunner, api: KubeApi) -> None:
        self.runner, self.api = runner, api
        self.rows: list[dict[str, Any]] = []
        self.ticked: set[str] = set()

    def base_interval(self) -> float:
        return self.runner.base_interval()

    def set_rollouts(self, rollouts: Sequence[ManagedRollout]) -> None:
        self.runner.set_rollouts(rollouts)

    def tick(self, deadline: Deadline | None = None) -> list[TickEvent]:
        wall, cpu = time.monotonic(), time.process_time()
        requests = dict(self.api.stats.requests)
        events = self.runner.tick(deadline)
        verbs = {v: n - requests.get(v, 0) for v, n in self.api.stats.requests.items() if n - requests.get(v, 0)}
        self.ticked.update(event.rollout.name for event in events)
        self.rows.append({
            "due": len(events), "writes": verbs.get("create", 0) + verbs.get("update", 0),
            "cpu_s": round(time.process_time() - cpu, 4), "wall_s": round(time.monotonic() - wall, 3),
        })  # fmt: skip
        return events


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def replica(index: int, api_url: str, prom_url: str, rollouts: int, start_at: float, seconds: float) -> dict[str, Any]:
    """One controller replica (this process): elect, tick its shards' rollouts for `seconds`, report."""
    config = k8s_client.Configuration()
    config.host = api_url
    api_client = k8s_client.ApiClient(config)
    api = KubeApi(api_client, request_timeout=30)
    backend = cluster_backend(api)
    source = PrometheusSource(prom_url, timeout_seconds=30)
    templates = load_templates(REPO / "rollout-specs").catalog
    tune_for_controller()  # as `ramp controller` does
    runner = RolloutRunner(router=backend, metrics=source, store=backend)
    specs = [parse_spec_text(SPEC.format(name=f"svc{i}"), "s.yaml", templates=templates) for i in range(rollouts)]
    leases = ShardLeases(api_client, namespace="ramp-system", base_name="ramp-controller",
                         identity=f"replica-{index}", shards=SHARDS)  # fmt: skip
    runner.may_write = leases.may_write

    def forget(gained: Sequence[ManagedRollout]) -> None:
        for rollout in gained:
            backend.invalidate(rollout.spec.namespace, rollout.spec.service)

    measured = MeasuredRunner(runner, api)
    loop = ControllerLoop(
        measured, specs=StaticSpecSource(REPO, [ManagedRollout.from_spec(s) for s in specs]),
        should_act=leases.may_write,
        leadership=leases.status, tick_deadline=30.0, interval=TICK_SECONDS,
        select=ShardSelection(leases, on_gained=forget), on_rollouts=freeze_long_lived,
    )  # fmt: skip
    late = round(time.time() - start_at, 2)
    time.sleep(max(0.0, start_at - time.time()))
    stop = threading.Event()
    leases.start(stop)
    held_max, shards_seen = 0, set()
    next_tick = time.monotonic()
    end = next_tick + seconds
    while time.monotonic() < end:
        loop.iterate()
        held_max = max(held_max, len(runner.rollouts))
        shards_seen |= set(leases.held())
        next_tick += TICK_SECONDS
        time.sleep(max(0.0, next_tick - time.monotonic()))
    stop.set()
    leases.join(15)
    rows = measured.rows[1:]  # the first acting tick creates every object: left out, as in bench/scale.py
    judging = [r["cpu_s"] for r in rows if r["due"] and not r["writes"]]
    stepping = [r["cpu_s"] for r in rows if r["writes"]]
    return {
        "replica": f"replica-{index}",
        "late_for_start_s": max(0.0, late),
        "shards_held": sorted(shards_seen),
        "rollouts_held": held_max,
        "rollouts_ticked": sorted(measured.ticked),
        "acting_ticks": len(measured.rows),
        "first_tick": measured.rows[0] if measured.rows else None,
        "cpu_s_judging_median": _median(judging),
        "cpu_s_stepping_median": _median(stepping),
        "cpu_s_per_interval": round(sum(r["cpu_s"] for r in rows) / max(1, len(rows)) * INTERVAL_SECONDS, 3),
        "wall_s_per_tick_max": max((r["wall_s"] for r in rows), default=0.0),
        "loop_ticks_abandoned": loop.abandoned,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _final_phases(api_url: str) -> dict[str, int]:
    config = k8s_client.Configuration()
    config.host = api_url
    objects = k8s_client.CustomObjectsApi(k8s_client.ApiClient(config))
    listed = cast(
        dict[str, Any], objects.list_namespaced_custom_object("networking.istio.io", "v1", NAMESPACE, "virtualservices")
    )
    phases: dict[str, int] = {}
    for item in listed.get("items", []):
        raw = (item.get("metadata", {}).get("annotations") or {}).get(STATE_ANNOTATION)
        phase = json.loads(raw).get("phase", "none") if raw else "none"
        phases[phase] = phases.get(phase, 0) + 1
    return phases


def measure(rollouts: int = 3000, seconds: float = 80.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ramp-sharded-") as tmp, ProcessGroup(Path(tmp) / "logs") as group:
        api_port, mesh_port, prom_port = free_port(), free_port(), free_port()
        group.start("fast-apiserver", [sys.executable, "-m", "bench.fast_apiserver", str(api_port)], cwd=REPO)
        group.start(
            "fake-mesh", [sys.executable, "-m", "bench.fake_mesh", str(mesh_port), str(rollouts), NAMESPACE], cwd=REPO
        )
        api_url, prom_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}"
        wait_http_ready(f"{api_url}/api/v1/namespaces/{NAMESPACE}/pods/probe", 20,
                        accept=lambda status, _body: status == 404)  # fmt: skip
        wait_http_ready(f"http://127.0.0.1:{mesh_port}/metrics", 20)
        prometheus = start_prometheus(group, Path(tmp), prom_port, [], extra_scrape_targets=[f"127.0.0.1:{mesh_port}"])
        wait_prometheus_ready(prometheus, prom_port, 30)
        print(f"sharded: {rollouts} rollouts, {REPLICAS} replicas; Prometheus fills its window", file=sys.stderr)
        start_at = time.time() + STARTUP_SECONDS  # the window (30 s) fills while the replicas parse their specs
        outputs = [Path(tmp) / f"replica-{i}.json" for i in range(REPLICAS)]
        common = ["--api", api_url, "--prometheus", prom_url, "--rollouts", str(rollouts),
                  "--start-at", str(start_at), "--seconds", str(seconds)]  # fmt: skip
        procs = []
        for i in range(REPLICAS):
            argv = [sys.executable, "-m", "bench.sharded", "--replica", str(i), *common, "--output", str(outputs[i])]
            procs.append(group.start(f"replica-{i}", argv, cwd=REPO))
        limit = time.monotonic() + STARTUP_SECONDS + seconds + 120
        while any(p.running for p in procs) and time.monotonic() < limit:
            time.sleep(1)
        failed = {p.name: p.log_tail(1500) for p in procs if p.returncode not in (0, None) or p.running}
        replicas = [json.loads(out.read_text()) for out in outputs if out.exists()]
        phases = _final_phases(api_url)
    ticked: dict[str, int] = {}
    for figures in replicas:
        for name in figures.pop("rollouts_ticked"):
            ticked[name] = ticked.get(name, 0) + 1
    return {
        "rollouts": rollouts,
        "shards": SHARDS,
        "seconds": seconds,
        "replicas": replicas,
        "failed_replicas": failed,
        "final_phases": phases,
        "all_finished": phases.get("Promoted", 0) == rollouts,
        "rollouts_ticked": len(ticked),
        "rollouts_ticked_by_two_replicas": sum(1 for n in ticked.values() if n > 1),
    }


def main(argv: list[str]) -> None:
    from controller.observability import configure_logging

    parser = argparse.ArgumentParser(prog="python -m bench.sharded")
    parser.add_argument("--rollouts", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=80.0)
    parser.add_argument("--replica", type=int, help="(internal) run replica N and write its figures to --output")
    parser.add_argument("--api")
    parser.add_argument("--prometheus")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    if args.replica is not None:
        figures = replica(args.replica, args.api, args.prometheus, args.rollouts, args.start_at, args.seconds)
        args.output.write_text(json.dumps(figures))
        return
    print(json.dumps(measure(args.rollouts, args.seconds), indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])

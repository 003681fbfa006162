"""`ramp controller`: the long-running controller in a cluster (Istio + Kubernetes).

Wiring: spec directory (re-read when files change) -> runner with the Istio backend (VirtualService
routes + rollout state in the same update), Prometheus gates, Deployment availability, Events and
metrics observers -> APScheduler ticks, acting only while this replica holds the leader Lease.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from controller.analysis.prometheus import PrometheusSource
from controller.controller_metrics import ControllerMetrics
from controller.engine.runner import RolloutRunner, TickEvent
from controller.engine.scheduler import TickScheduler
from controller.http_endpoints import EndpointServer
from controller.k8s.availability import DeploymentAvailability
from controller.k8s.client import load_api_client
from controller.k8s.events import EventRecorder, RolloutEventObserver
from controller.k8s.leader import LeaderElector, LeaseConfig
from controller.routing.istio import IstioBackend
from controller.spec_directory import SpecDirectory

log = structlog.get_logger("ramp.controller")
BASE_TICK_SECONDS = 1.0


@dataclass(frozen=True)
class ControllerOptions:
    specs: Path
    prometheus: str
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: frozenset[str] | None = None
    lease_namespace: str = "ramp-system"
    lease_name: str = "ramp-controller"
    identity: str = ""
    listen_port: int = 8080
    listen_host: str = "0.0.0.0"


class ControllerLoop:
    """One tick of the whole controller: pick up spec changes, then run the due rollouts."""

    def __init__(self, specs: SpecDirectory, runner: RolloutRunner, metrics: ControllerMetrics) -> None:
        self.specs = specs
        self.runner = runner
        self.metrics = metrics
        self.last_tick_at: float | None = None

    def base_interval(self) -> float:
        return BASE_TICK_SECONDS  # the runner decides which rollouts are due on each base tick

    def tick(self) -> list[TickEvent]:
        started = time.monotonic()
        if self.specs.refresh():
            for problem in self.specs.problems:
                log.error("spec ignored", problem=str(problem))
            self.runner.set_rollouts(self.specs.rollouts)
            log.info("specs loaded", rollouts=[r.name for r in self.specs.rollouts])
        events = self.runner.tick()
        self.metrics.tick_seconds.observe(time.monotonic() - started)
        self.last_tick_at = time.time()
        return events


def run_controller(options: ControllerOptions, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    api = load_api_client(options.kubeconfig, options.context)
    backend = IstioBackend(api)
    prometheus = PrometheusSource(options.prometheus)
    metrics = ControllerMetrics(
        backends={
            "prometheus": lambda: (prometheus.queries_sent, prometheus.query_errors),
            "kubernetes": backend.call_counts,
        }
    )
    runner = RolloutRunner(
        router=backend,
        metrics=prometheus,
        store=backend,
        availability=DeploymentAvailability(api),
        observers=[metrics, RolloutEventObserver(EventRecorder(api))],
    )
    specs = SpecDirectory(options.specs, options.namespaces)
    loop = ControllerLoop(specs, runner, metrics)
    identity = options.identity or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(api, LeaseConfig(namespace=options.lease_namespace, name=options.lease_name,
                                             identity=identity))
    runner.may_write = elector.is_leader
    election = threading.Thread(target=elector.run, args=(stop,), name="ramp-leader", daemon=True)

    def healthy() -> tuple[bool, str]:
        alive = election.is_alive()
        return alive, "leader election running" if alive else "leader election thread stopped"

    def ready() -> tuple[bool, str]:
        if not options.specs.is_dir():
            return False, f"spec directory {options.specs} not found"
        leader = elector.is_leader()
        return True, f"{len(specs.rollouts)} rollouts, {len(specs.problems)} spec problems, leader={leader}"

    server = EndpointServer(metrics.registry, healthy, ready, host=options.listen_host, port=options.listen_port)
    server.start()
    scheduler = TickScheduler(loop, should_act=elector.is_leader)
    if threading.current_thread() is threading.main_thread():  # signals can only be handled there
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    election.start()
    scheduler.start()
    log.info("controller started", identity=identity, specs=str(options.specs), prometheus=options.prometheus)
    try:
        stop.wait()
    finally:
        scheduler.stop()
        election.join(timeout=15)  # run() releases the Lease on stop, so a successor takes over at once
        server.stop()
        log.info("controller stopped", identity=identity)
    return 0

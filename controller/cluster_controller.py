"""`ramp controller`: the long-running controller in a cluster (Istio + Kubernetes).

Wiring: spec directory (re-read when files change) + RampRollout resources (a watch; see spec_sources for one owner
per service, and k8s/rollout_bridge for their commands and status) -> runner with the cluster backend
(controller.cluster_backend: each spec's router, VirtualService or HTTPRoute, holds its routes + rollout state in
the same update), Prometheus gates, Deployment availability, Events and metrics observers -> the ControllerLoop
(each tick bounded by its deadline), driven by APScheduler, acting only while this replica holds the leader Lease.
/healthz and /readyz come from the loop (see controller_loop) and from leader election.

With `shards` > 1 (`--shards N`) the rollouts are split over N shards, one Lease each (controller/k8s/shards.py):
each replica ticks only the rollouts of the shards it holds for the whole tick, and the RampRollout bridge forwards
commands and publishes status only for them. With 1 shard everything is as without sharding (one Lease, same name).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from kubernetes.client import ApiClient

from controller.analysis.prometheus import PrometheusSource
from controller.cluster_backend import cluster_backend
from controller.controller_loop import DEFAULT_TICK_DEADLINE, ControllerLoop
from controller.controller_metrics import ControllerMetrics
from controller.engine.runner import ManagedRollout, RolloutRunner
from controller.engine.scheduler import TickScheduler
from controller.gc_tuning import freeze_long_lived, tune_for_controller
from controller.hooks.evaluation import HookRounds
from controller.hooks.post_rollout import PostRolloutHooks
from controller.http_endpoints import EndpointServer
from controller.k8s.availability import DeploymentAvailability
from controller.k8s.client import load_api_client
from controller.k8s.events import EventRecorder, RolloutEventObserver
from controller.k8s.leader import LeaderElectionForbidden, LeaderElector, LeaseConfig
from controller.k8s.rollout_bridge import RolloutResourceBridge
from controller.k8s.rollout_watch import RolloutResourceWatch, WatchConfig
from controller.k8s.rollout_writes import RolloutResourceClient
from controller.k8s.shards import ShardedResources, ShardLeases, ShardSelection
from controller.notify.observer import DRAIN_SECONDS, start_notifications
from controller.routing.object_backend import RouteObjectBackend
from controller.sharding import validate_shards
from controller.spec_directory import SpecDirectory
from controller.spec_notify import Notification
from controller.spec_sources import CombinedSpecSource

log = structlog.get_logger("ramp.controller")
BASE_TICK_SECONDS = 1.0  # the loop's cadence; the runner decides which rollouts are due


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
    tick_deadline: float = DEFAULT_TICK_DEADLINE
    prometheus_source: PrometheusSource | None = None  # built from the CLI's --prometheus* options; else from URL
    resources: bool = True  # watch RampRollout custom resources besides the spec directory
    watch_config: WatchConfig | None = None
    notifications: tuple[Notification, ...] = ()  # global ones (--notifications), besides each spec's own
    shards: int = 1  # --shards: 1 = one leader Lease named lease_name (no sharding)
    lease_duration: float = 15.0  # client-go's defaults; shorter only in tests
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    gc_tuning: bool = False  # the process is the controller's own (the CLI): tune the garbage collector (gc_tuning)

    def __post_init__(self) -> None:
        validate_shards(self.shards)


class Election(Protocol):
    """What the controller needs of its election: an ElectionMonitor (one Lease) or ShardLeases."""

    def start(self, stop: threading.Event) -> None: ...
    def join(self, timeout: float) -> None: ...
    def alive(self) -> bool: ...
    def status(self) -> tuple[bool, str]: ...


class ElectionMonitor:
    """Runs leader election (as LeaderElector.run does) and says whether it works, for /readyz and /healthz.

    Broken: the election thread ended, RBAC forbids the Lease (not transient), or no lease request has
    succeeded (won, renewed, or found another live holder) for a whole lease duration.
    """

    def __init__(self, elector: LeaderElector, clock: Callable[[], float] = time.monotonic) -> None:
        self.elector = elector
        self._clock = clock
        self._last_ok = clock()
        self._error: str | None = None
        self._forbidden = False
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self.thread = threading.Thread(target=self._run, args=(stop,), name="ramp-leader", daemon=True)
        self.thread.start()

    def _run(self, stop: threading.Event) -> None:
        config = self.elector.config
        try:
            while not stop.is_set():
                failures = self.elector.failures
                try:
                    self.elector.try_acquire_or_renew()
                    if self.elector.failures == failures:
                        self._last_ok, self._error, self._forbidden = self._clock(), None, False
                    else:
                        self._error = "the last lease request failed (see the logs)"
                except LeaderElectionForbidden as exc:
                    self._error, self._forbidden = str(exc), True
                except Exception as exc:
                    self._error = f"{type(exc).__name__}: {exc}"[:300]
                    log.exception("leader election attempt failed")
                stop.wait(config.retry_period)
        finally:
            self.elector.release()  # stops acting first; a successor takes over at once

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def status(self) -> tuple[bool, str]:
        if not self.alive():
            return False, "leader election thread stopped"
        error = self._error
        if self._forbidden and error is not None:
            return False, error
        quiet = self._clock() - self._last_ok
        if quiet > self.elector.config.lease_duration:
            return False, f"no successful lease request for {quiet:.0f}s: {error or 'none answered'}"
        return True, "leader election working"

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)


def run_controller(options: ControllerOptions, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    if options.gc_tuning:
        tune_for_controller()
    api = load_api_client(options.kubeconfig, options.context)
    backend = cluster_backend(api)
    prometheus = options.prometheus_source or PrometheusSource(options.prometheus)
    if options.tick_deadline < prometheus.timeout_seconds:
        raise ValueError(
            f"the tick deadline ({options.tick_deadline:g}s) must be at least the Prometheus timeout"
            f" ({prometheus.timeout_seconds:g}s)"
        )
    metrics = ControllerMetrics(
        backends={
            "prometheus": lambda: (prometheus.queries_sent, prometheus.query_errors),
            "kubernetes": backend.call_counts,
        }
    )
    recorder = EventRecorder(api)

    def route_object(router: str) -> tuple[str, str]:
        resource = backend.router(router).resource
        return resource.api_version, resource.kind

    # Only the leader ticks, so only the leader notifies; messages go out from the dispatcher's own threads.
    notifier, dispatcher = start_notifications(options.notifications, metrics)
    runner = RolloutRunner(
        router=backend,
        metrics=prometheus,
        store=backend,
        availability=DeploymentAvailability(api),
        observers=[metrics, RolloutEventObserver(recorder, route_object), notifier],
        hook_rounds=HookRounds(),
        post_rollout_hooks=PostRolloutHooks(),
    )
    directory = SpecDirectory(options.specs, options.namespaces)
    specs: SpecDirectory | CombinedSpecSource = directory
    identity = options.identity or f"{socket.gethostname()}-{os.getpid()}"
    election: Election
    selection: ShardSelection | None = None
    describe: Callable[[], str] | None = None
    if options.shards == 1:
        elector = LeaderElector(api, LeaseConfig(
            namespace=options.lease_namespace, name=options.lease_name, identity=identity,
            lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
        ))  # fmt: skip
        election, may_act = ElectionMonitor(elector), elector.is_leader
    else:
        leases = ShardLeases(
            api, namespace=options.lease_namespace, base_name=options.lease_name, identity=identity,
            shards=options.shards, lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
        )  # fmt: skip

        def forget_routing(gained: Sequence[ManagedRollout]) -> None:
            for rollout in gained:  # another replica may have moved them: re-read, never trust what we confirmed
                backend.invalidate(rollout.spec.namespace, rollout.spec.service)

        selection = ShardSelection(leases, on_gained=forget_routing)
        election, may_act, describe = leases, leases.may_write, leases.describe
    runner.may_write = may_act
    watch: RolloutResourceWatch | None = None
    hooks: RolloutResourceBridge | None = None
    if options.resources:
        watch = RolloutResourceWatch(api, options.namespaces, options.watch_config)
        combined = CombinedSpecSource(directory, watch)
        specs = combined
        hooks = _bridge(combined, api, backend, recorder, selection)
    loop = ControllerLoop(
        runner,
        specs=specs,
        metrics=metrics,
        should_act=may_act,
        leadership=election.status,
        tick_deadline=options.tick_deadline,
        interval=BASE_TICK_SECONDS,
        hooks=hooks,
        select=selection,
        on_rollouts=freeze_long_lived if options.gc_tuning else None,
    )

    def healthy() -> tuple[bool, str]:
        if not election.alive():
            return False, "leader election thread stopped"
        ok, body = loop.health()
        return ok, body if describe is None else f"{body}, {describe()}"

    def ready() -> tuple[bool, str]:
        ok, body = loop.readiness()
        if describe is not None:
            body = f"{body}, {describe()}"
        if watch is None:
            return ok, body
        watching, detail = watch.status()
        if not watching:
            return False, f"not ready: RampRollout watch: {detail} | {body}"
        return ok, f"{body}, RampRollout watch: {detail}"

    server = EndpointServer(metrics.registry, healthy, ready, host=options.listen_host, port=options.listen_port)
    server.start()
    scheduler = TickScheduler(loop)
    if threading.current_thread() is threading.main_thread():  # signals can only be handled there
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    election.start(stop)
    if watch is not None:
        watch.start(stop)
    log.info(
        "controller starting",
        identity=identity,
        specs=str(options.specs),
        prometheus=prometheus.url,
        tick_deadline=options.tick_deadline,
        listen=f"{options.listen_host}:{server.port}",
    )
    try:
        scheduler.start()
        stop.wait()
    finally:
        stop.set()
        scheduler.stop()
        loop.wait_idle(options.tick_deadline)  # a tick still running ends (or is left) before the Lease goes
        dispatcher.stop(DRAIN_SECONDS)  # what the last ticks queued goes out, within a bound
        runner.close(DRAIN_SECONDS)  # post-rollout hooks too
        election.join(15)  # it releases the Lease(s) on stop, so a successor takes over at once
        if watch is not None:
            watch.join(timeout=5)
        server.stop()
        log.info("controller stopped", identity=identity)
    return 0


def _bridge(
    source: CombinedSpecSource, api: ApiClient, backend: RouteObjectBackend, recorder: EventRecorder,
    selection: ShardSelection | None,
) -> RolloutResourceBridge:  # fmt: skip
    """The RampRollout bridge; sharded, its commands, status writes and Events only for the shards of the tick."""
    writes = RolloutResourceClient(api)
    if selection is None:
        return RolloutResourceBridge(source, writes, backend, recorder)
    owned = ShardedResources(selection, lambda: source.rollouts, lambda: source.objects)
    return RolloutResourceBridge(source, owned.writes(writes), owned.commands(backend), owned.events(recorder))


def run_controller_from_args(args: argparse.Namespace) -> int:
    """`ramp controller ...` (options registered in cli_cluster); exit 2 with a safe message for bad options."""
    from controller.analysis.prometheus_auth import prometheus_source_from_args
    from controller.cli_run import check_tick_deadline, global_notifications, listen_address
    from controller.observability import configure_logging

    configure_logging(level="info")
    try:
        source = prometheus_source_from_args(args)
        check_tick_deadline(args.tick_deadline, source.timeout_seconds)
    except ValueError as exc:
        print(f"ramp controller: {exc}", file=sys.stderr)
        return 2
    notifications = global_notifications(args, "controller")
    if notifications is None:
        return 2
    host, port = listen_address(args) or ("0.0.0.0", 8080)
    namespaces = frozenset(n.strip() for n in args.namespaces.split(",") if n.strip()) or None
    options = ControllerOptions(
        specs=args.specs, prometheus=source.url, kubeconfig=args.kubeconfig, context=args.context,
        namespaces=namespaces, lease_namespace=args.lease_namespace, lease_name=args.lease_name,
        identity=args.identity, listen_port=port, listen_host=host, tick_deadline=args.tick_deadline,
        prometheus_source=source, resources=not args.no_resources, notifications=tuple(notifications),
        shards=args.shards, gc_tuning=True,
    )  # fmt: skip
    return run_controller(options)

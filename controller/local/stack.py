"""LocalStack: sample apps + real Envoy (file RDS) + Prometheus on loopback.

    with LocalStack("demo", "default", {"v1": VersionKnobs(), "v2": VersionKnobs()}, work_dir) as stack:
        stack.router.apply(routing)              # same DesiredRouting the Istio router takes
        send_requests(stack.api_url, stack.host_header, 100)
        stack.set_fault("v2", error_rate=1.0)
        stack.stop_version("v2")                 # Envoy's health checks then report v2 unavailable
        stack.availability.unavailable_versions(rollouts)   # the engine's VersionAvailability port

For a local controller (`ramp run`) the stack exposes `envoy_admin_url` and `routes_dir`.

Every process the stack starts is stopped on exit, also on exceptions, KeyboardInterrupt
and (as a safety net) interpreter exit.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.deadline import Deadline
from controller.engine.routing_model import DesiredRouting
from controller.local.availability import EnvoyAvailability, EnvoyAvailabilityError
from controller.local.envoy_process import Upstream, start_envoy, wait_envoy_ready
from controller.local.ports import free_ports
from controller.local.processes import ManagedProcess, ProcessError, ProcessGroup
from controller.local.prometheus_process import start_prometheus, wait_prometheus_ready
from controller.routing.envoy import EnvoyFileRouter
from controller.routing.envoy_admin import EnvoyAdminError, bounded_request

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class VersionKnobs:
    """Fault injection a version's app starts with (changeable later with set_fault)."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    seed: int | None = None


def default_routing(service: str, namespace: str, versions: list[str]) -> DesiredRouting:
    """All traffic to the first version, no header routes."""
    return DesiredRouting(
        service=service,
        namespace=namespace,
        host=f"{service}.{namespace}.svc.cluster.local",
        versions=tuple(versions),
        weights=tuple((v, 100 if i == 0 else 0) for i, v in enumerate(versions)),
    )


class LocalStack:
    """Context manager running one service's versions behind Envoy, scraped by Prometheus."""

    def __init__(
        self,
        service: str,
        namespace: str,
        versions: dict[str, VersionKnobs],
        work_dir: Path | None = None,
        initial_routing: DesiredRouting | None = None,
        with_prometheus: bool = True,
        ready_timeout: float = 20.0,
        extra_scrape_targets: Sequence[str] = (),
    ) -> None:
        """`extra_scrape_targets`: `host:port` endpoints Prometheus also scrapes at /metrics
        (job `ramp-controller`, every second), e.g. the controller's own EndpointServer."""
        if not versions:
            raise ValueError("LocalStack needs at least one version")
        self.service = service
        self.namespace = namespace
        self.versions = dict(versions)
        self.with_prometheus = with_prometheus
        self.extra_scrape_targets = list(extra_scrape_targets)
        self.ready_timeout = ready_timeout
        self._own_work_dir = work_dir is None
        if work_dir is None:
            work_dir = Path(tempfile.mkdtemp(prefix="ramp-local-"))
        self.work_dir = Path(work_dir)
        routing = initial_routing or default_routing(service, namespace, list(versions))
        if (routing.service, routing.namespace) != (service, namespace):
            raise ValueError("initial_routing must be for the stack's service and namespace")
        missing = set(routing.versions) - set(versions)
        if missing:
            raise ValueError(f"initial_routing names versions the stack does not run: {sorted(missing)}")
        self.initial_routing = routing
        ports = free_ports(len(versions) + 3)
        self.app_ports: dict[str, int] = dict(zip(versions, ports, strict=False))
        self.envoy_port, self.envoy_admin_port, self.prometheus_port = ports[-3:]
        self.router = EnvoyFileRouter(self.work_dir / "routes", self.envoy_admin_url)
        self.availability = EnvoyAvailability(self.envoy_admin_url)
        self._group = ProcessGroup(self.work_dir / "logs")
        self._started = False
        self.startup_seconds: float | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_admin_port}"

    @property
    def routes_dir(self) -> Path:
        """The directory of Envoy's watched routes file (what `ramp run --envoy-routes-dir` takes)."""
        return self.router.routes_dir

    @property
    def prometheus_url(self) -> str:
        if not self.with_prometheus:
            raise ProcessError("this LocalStack was started without Prometheus")
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def api_url(self) -> str:
        """Envoy URL of the sample app's versioned endpoint; send `Host: <host_header>`."""
        return f"{self.envoy_url}/api/version"

    @property
    def host_header(self) -> str:
        return self.service

    def app_url(self, version: str) -> str:
        return f"http://127.0.0.1:{self.app_ports[version]}"

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._group.processes)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalStack:
        if self._started:
            raise RuntimeError("LocalStack already started")
        self._started = True
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            apps = {v: self._start_app(v, knobs) for v, knobs in self.versions.items()}
            routes_file = self.router.initial_file([self.initial_routing])
            upstreams = [Upstream(self.namespace, self.service, v, p) for v, p in self.app_ports.items()]
            prometheus = None
            if self.with_prometheus:
                prometheus = start_prometheus(
                    self._group,
                    self.work_dir,
                    self.prometheus_port,
                    [f"127.0.0.1:{self.envoy_admin_port}"],
                    extra_scrape_targets=self.extra_scrape_targets,
                )
            for version, proc in apps.items():
                proc.wait_http_ready(f"{self.app_url(version)}/health", self.ready_timeout)
            # Envoy starts once the apps answer, so its first health checks already pass.
            envoy = start_envoy(
                self._group, self.work_dir, self.envoy_port, self.envoy_admin_port, upstreams, routes_file
            )
            wait_envoy_ready(envoy, self.envoy_admin_port, self.ready_timeout)
            self.wait_available(set(self.versions), self.ready_timeout)
            if prometheus is not None:
                wait_prometheus_ready(prometheus, self.prometheus_port, self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_app(self, version: str, knobs: VersionKnobs) -> ManagedProcess:
        env = {
            "VERSION": version,
            "PORT": str(self.app_ports[version]),
            "ERROR_RATE": str(knobs.error_rate),
            "LATENCY_MS": str(knobs.latency_ms),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        if knobs.seed is not None:
            env["SEED"] = str(knobs.seed)
        return self._group.start(
            f"app-{version}", [sys.executable, "-m", "services.sample_app"], env=env, cwd=REPO_ROOT
        )

    def _app_process(self, version: str) -> ManagedProcess | None:
        if version not in self.app_ports:
            raise KeyError(f"unknown version {version!r}; the stack runs {sorted(self.app_ports)}")
        found = [p for p in self._group.processes if p.name == f"app-{version}"]
        return found[-1] if found else None

    def stop_version(self, version: str) -> None:
        """Stop one version's app (its Envoy cluster stays; health checks then fail)."""
        proc = self._app_process(version)
        if proc is not None:
            proc.stop(self._group.grace)  # still tracked if this raises: stop() retries it
            self._group.processes.remove(proc)

    def start_version(self, version: str) -> None:
        """Start a stopped version's app again, on its port, with its current knobs; waits for /health."""
        current = self._app_process(version)
        if current is not None and current.running:
            return
        if current is not None:
            current.stop(self._group.grace)
            self._group.processes.remove(current)
        proc = self._start_app(version, self.versions[version])
        proc.wait_http_ready(f"{self.app_url(version)}/health", self.ready_timeout)

    def unavailable_versions(self, deadline: Deadline | None = None) -> frozenset[str]:
        """The stack's versions Envoy's health checks report without a healthy endpoint."""
        endpoints = self.availability.endpoints(self.namespace, self.service, deadline)
        return frozenset(v for v in self.versions if not any(healthy for _, _, healthy in endpoints.get(v, [])))

    def wait_available(self, versions: set[str], timeout: float) -> None:
        """Wait until Envoy reports every one of `versions` healthy (ProcessError after `timeout`)."""
        deadline = Deadline(timeout)
        last = "no answer"
        while True:
            try:
                down = self.unavailable_versions(Deadline(min(2.0, max(0.05, deadline.remaining()))))
                if not down & versions:
                    return
                last = f"unhealthy: {sorted(down & versions)}"
            except EnvoyAvailabilityError as exc:
                last = str(exc)
            if deadline.expired:
                raise ProcessError(f"Envoy did not report {sorted(versions)} healthy within {timeout:.1f}s ({last})")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every process this stack started (idempotent)."""
        atexit.unregister(self.stop)
        try:
            self._group.stop_all()
        finally:
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- knobs -----------------------------------------------------------------------------
    def set_fault(
        self, version: str, error_rate: float | None = None, latency_ms: float | None = None
    ) -> dict[str, Any]:
        """Change a running version's injected error rate / latency; returns the app's new knobs."""
        if version not in self.app_ports:
            raise KeyError(f"unknown version {version!r}; the stack runs {sorted(self.app_ports)}")
        body: dict[str, float] = {}
        if error_rate is not None:
            body["error_rate"] = error_rate
        if latency_ms is not None:
            body["latency_ms"] = latency_ms
        try:
            status, answer = bounded_request(
                f"{self.app_url(version)}/admin/fault",
                cap=5.0,
                max_bytes=64 * 1024,
                method="POST",
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            result = json.loads(answer) if status == 200 else None
        except (EnvoyAdminError, ValueError) as exc:
            raise ProcessError(f"set_fault({version}) failed: {exc}") from None
        if not isinstance(result, dict):
            raise ProcessError(f"set_fault({version}) failed: HTTP {status} {answer[:200]!r}")
        return result

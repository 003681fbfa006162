"""`ramp ping SERVICE`: per-version readiness AND a real HTTP request to each version, in both modes.

Cluster mode: the service's Pods (label `app=<service>`, by `version`), and a GET of `--path` on each
version's ready pods through the apiserver's pod proxy (`pods/proxy`, the user's own RBAC).
Local mode (`--state-dir`): the endpoints Envoy lists for each version (with its health-check view),
and a GET of `--path` on each of them. Every request has a TOTAL deadline (`--timeout`). One line
per round; exit 1 when any version failed in any round (no ready pod, or a request that failed).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli_common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, finite, kube_flags, printable
from controller.deadline import Deadline

if TYPE_CHECKING:
    from controller.cli_local import LocalControllerView
    from controller.k8s.client import KubeApi

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

MAX_PROBES_PER_VERSION = 3
MAX_ANSWER_BYTES = 64 * 1024


def register(subparsers: Subparsers) -> None:
    ping = subparsers.add_parser(
        "ping", help="per-version readiness and a real HTTP request to each version, repeating",
        epilog="exit codes: 0 every version answered in every round; 1 a version had no ready pod or failed a "
        "request; 2 bad arguments",
    )  # fmt: skip
    ping.add_argument("service", help="the service (local mode: the rollout name)")
    ping.add_argument("--count", type=int, default=5, help="rounds (0 = until interrupted)")
    ping.add_argument("--interval", type=float, default=2.0)
    ping.add_argument("--path", default="/health", help="path requested from each version (default /health)")
    ping.add_argument("--port", type=int, help="cluster: the pod port to request (default: the pod's first)")
    ping.add_argument("--timeout", type=float, default=2.0, help="total seconds per request")
    kube_flags(ping)
    ping.add_argument("--state-dir", type=Path, help="local mode: the controller's state directory")
    ping.set_defaults(handler=_ping)


@dataclass
class Probe:
    status: int | None  # HTTP status; None when no answer
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        if self.status is None:
            return f"FAILED ({printable(self.error, 120)})"
        return f"HTTP {self.status} in {self.seconds * 1000:.0f} ms" + ("" if self.ok else " FAILED")


@dataclass
class VersionHealth:
    ready: int
    total: int
    probes: list[Probe]

    @property
    def ok(self) -> bool:
        return self.ready > 0 and bool(self.probes) and all(p.ok for p in self.probes)

    def describe(self, version: str) -> str:
        text = f"{printable(version, 63)}: {self.ready}/{self.total} ready"
        if self.probes:
            text += ", " + ", ".join(p.describe() for p in self.probes)
        return text + ("" if self.ready else " DOWN")


def _ping(args: argparse.Namespace) -> int:
    bad_port = args.port is not None and not 0 < args.port < 65536
    numbers_ok = finite(args.timeout) and finite(args.interval) and args.timeout > 0 and args.interval >= 0
    path_ok = args.path.startswith("/") and args.path.isascii() and args.path.isprintable() and " " not in args.path
    if args.count < 0 or not numbers_ok or not path_ok or bad_port:
        print("ramp ping: needs --count >= 0, --timeout > 0, --interval >= 0 (finite), --port 1-65535 and a --path "
              "of printable ASCII starting with /", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if args.state_dir is not None:
        from controller.cli_local import LocalControllerView

        view = LocalControllerView.load(args.state_dir)
        if view.info is None:
            print(f"ramp ping: {view.problem}", file=sys.stderr)
            return EXIT_REFUSED
        if view.where(args.service) is None:
            print(f"ramp ping: no rollout {args.service!r} known to the local controller", file=sys.stderr)
            return EXIT_REFUSED
        return _rounds(args, lambda: _local_round(view, args))
    from controller.cli_common import kube_api

    api = kube_api(args, request_timeout=args.timeout)
    return _rounds(args, lambda: _cluster_round(api, args))


def _rounds(args: argparse.Namespace, one_round: Any) -> int:
    failed = False
    rounds = 0
    while True:
        versions: dict[str, VersionHealth] = one_round()
        stamp = time.strftime("%H:%M:%S")
        parts = [health.describe(version) for version, health in versions.items()]
        print(f"{stamp} {args.service}: " + ("; ".join(parts) or "no pods"), flush=True)
        failed = failed or not versions or not all(h.ok for h in versions.values())
        rounds += 1
        if args.count and rounds >= args.count:
            return EXIT_REFUSED if failed else EXIT_OK
        time.sleep(args.interval)


# --- local --------------------------------------------------------------------------------------


def _local_round(view: LocalControllerView, args: argparse.Namespace) -> dict[str, VersionHealth]:
    from controller.local.availability import EnvoyAvailabilityError

    try:
        endpoints = view.endpoints(args.service, Deadline(args.timeout))
    except EnvoyAvailabilityError as exc:
        print(f"ramp ping: {exc}", file=sys.stderr)
        return {}
    result = {}
    for version, hosts in endpoints.items():
        probes = [http_probe(f"http://{host}:{port}{args.path}", args.timeout)
                  for host, port, _ in hosts[:MAX_PROBES_PER_VERSION]]  # fmt: skip
        result[version] = VersionHealth(sum(1 for *_, healthy in hosts if healthy), len(hosts), probes)
    return result


def http_probe(url: str, timeout: float) -> Probe:
    """GET `url` within `timeout` seconds in TOTAL (connect, request, the whole answer, size-capped)."""
    from controller.http_deadline import HttpError, bounded_request

    started = time.monotonic()
    try:
        answer = bounded_request(
            "GET", url, deadline=Deadline(timeout), headers={"User-Agent": "ramp-ping"}, max_bytes=MAX_ANSWER_BYTES
        )
    except HttpError as exc:
        return Probe(None, time.monotonic() - started, str(exc) or type(exc).__name__)
    return Probe(answer.status, time.monotonic() - started)


# --- cluster ------------------------------------------------------------------------------------


def _cluster_round(api: KubeApi, args: argparse.Namespace) -> dict[str, VersionHealth]:
    from controller.k8s.client import KubeError

    try:
        pods = ready_pods(api, args.namespace, args.service)
    except KubeError as exc:
        print(f"ramp ping: {exc}", file=sys.stderr)
        return {}
    result = {}
    for version, (ready, total) in pods.items():
        probes = [_proxy_probe(api, args, name) for name in ready[:MAX_PROBES_PER_VERSION]]
        result[version] = VersionHealth(len(ready), total, probes)
    return result


def ready_pods(api: KubeApi, namespace: str, service: str) -> dict[str, tuple[list[str], int]]:
    """version -> (names of ready pods, pods), from one Pod LIST; finished pods are not counted."""
    from controller.k8s.availability import APP_LABEL, VERSION_LABEL, _items, _labels

    response = api.retrying(
        "list", "pods", namespace, None,
        api.core.list_namespaced_pod, namespace, label_selector=f"{APP_LABEL}={service}", _preload_content=False,
    )  # fmt: skip
    found: dict[str, tuple[list[str], int]] = {}
    for pod in _items(response, "pods"):
        labels, status = _labels(pod), pod.get("status") or {}
        version, name = labels.get(VERSION_LABEL), (pod.get("metadata") or {}).get("name")
        if labels.get(APP_LABEL) != service or not isinstance(version, str) or not isinstance(name, str):
            continue
        if not isinstance(status, dict) or status.get("phase") in ("Succeeded", "Failed"):
            continue
        conditions = status.get("conditions") or []
        ready = isinstance(conditions, list) and any(
            isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
        names, total = found.get(version, ([], 0))
        found[version] = ([*names, name] if ready else names, total + 1)
    return dict(sorted(found.items()))


def _proxy_probe(api: KubeApi, args: argparse.Namespace, pod: str) -> Probe:
    from controller.k8s.client import KubeError

    target = pod if args.port is None else f"{pod}:{args.port}"
    started = time.monotonic()
    try:
        answer = api.call(
            "get", "pods/proxy", args.namespace, pod,
            api.core.connect_get_namespaced_pod_proxy_with_path, target, args.namespace, args.path.lstrip("/"),
            deadline=Deadline(args.timeout), _preload_content=False,
        )  # fmt: skip
    except KubeError as exc:
        return Probe(exc.status, time.monotonic() - started, exc.describe())
    status = getattr(answer, "status", 200)
    return Probe(status if isinstance(status, int) else 200, time.monotonic() - started)

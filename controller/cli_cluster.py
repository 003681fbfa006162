"""Cluster commands: `ramp controller`, `status`, `set-weights`, `pause|resume|abort|promote`, `ping`.

They talk to the cluster through kubeconfig (or in-cluster config). `status` and the rollout
commands also work on a local-mode state directory when `--state-dir` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.engine.phases import Command, RolloutState
from controller.weights import display_percentages, integer_percentages

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from controller.routing.istio_merge import ClusterRouting

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _kube_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")


def register(subparsers: Subparsers) -> None:
    ctl = subparsers.add_parser("controller", help="run the controller in a cluster (Istio + leader election)")
    ctl.add_argument("--specs", type=Path, required=True, help="directory of rollout specs (e.g. a ConfigMap)")
    ctl.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ctl.add_argument("--namespaces", default="", help="comma-separated namespaces to manage (default: all)")
    ctl.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "ramp-system"))
    ctl.add_argument("--lease-name", default="ramp-controller")
    ctl.add_argument("--identity", default=os.environ.get("POD_NAME", ""), help="leader election identity")
    ctl.add_argument("--listen-port", type=int, default=8080, help="port for /metrics, /healthz, /readyz")
    ctl.add_argument("--kubeconfig")
    ctl.add_argument("--context")
    ctl.set_defaults(handler=_controller)

    status = subparsers.add_parser("status", help="versions, weights, rollout phase and pods of a service")
    status.add_argument("service", nargs="?")
    _kube_flags(status)
    status.add_argument("--state-dir", type=Path, help="local mode: read this state directory instead")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(handler=_status)

    weights = subparsers.add_parser("set-weights", help="set relative weights directly, e.g. v1=50 v2=50 v3=50")
    weights.add_argument("service")
    weights.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    weights.add_argument("--host", help="service host (default <service>.<namespace>.svc.cluster.local)")
    weights.add_argument("--force", action="store_true", help="even during a rollout, or to versions without pods")
    _kube_flags(weights)
    weights.set_defaults(handler=_set_weights)

    for command in Command:
        sub = subparsers.add_parser(command.value, help=f"{command.value} a rollout (applied on the next tick)")
        sub.add_argument("service", help="the rollout's service (local mode: the rollout name)")
        _kube_flags(sub)
        sub.add_argument("--state-dir", type=Path, help="local mode: the controller's state directory")
        sub.set_defaults(handler=_command, command_value=command)

    ping = subparsers.add_parser("ping", help="per-version pod health of a service, repeating")
    ping.add_argument("service")
    ping.add_argument("--count", type=int, default=5, help="rounds (0 = until interrupted)")
    ping.add_argument("--interval", type=float, default=2.0)
    _kube_flags(ping)
    ping.set_defaults(handler=_ping)


def _api(args: argparse.Namespace) -> ApiClient:
    from controller.k8s.client import load_api_client

    return load_api_client(args.kubeconfig, args.context)


def _controller(args: argparse.Namespace) -> int:
    from controller.cluster_controller import ControllerOptions, run_controller
    from controller.observability import configure_logging

    configure_logging(level="info")
    namespaces = frozenset(n.strip() for n in args.namespaces.split(",") if n.strip()) or None
    options = ControllerOptions(
        specs=args.specs, prometheus=args.prometheus, kubeconfig=args.kubeconfig, context=args.context,
        namespaces=namespaces, lease_namespace=args.lease_namespace, lease_name=args.lease_name,
        identity=args.identity, listen_port=args.listen_port,
    )  # fmt: skip
    return run_controller(options)


RELATIVE_WEIGHTS_ANNOTATION = "ramp.dev/relative-weights"


def relative_weights(routing: ClusterRouting, recorded: str | None) -> dict[str, int]:
    """The relative weights set by `ramp set-weights` while they still describe the live split, else the percents."""
    live = dict(routing.weights)
    try:
        relative = {str(k): int(v) for k, v in json.loads(recorded or "null").items()}
    except (ValueError, TypeError, AttributeError):
        return live
    if sum(relative.values()) <= 0 or any(v < 0 for v in relative.values()):
        return live
    percents = integer_percentages(relative)
    if {v: w for v, w in percents.items() if w} != {v: w for v, w in live.items() if w}:
        return live  # a rollout moved the weights since: the record is stale
    return relative


def status_rows(
    routing: ClusterRouting, pods: dict[str, tuple[int, int]], recorded_weights: str | None = None
) -> list[dict[str, Any]]:
    """The seed's `list` table: Version | Weight (relative) | Percentage | Status | Pods."""
    weights = relative_weights(routing, recorded_weights)
    versions = list(dict.fromkeys([*weights, *pods, *(r.version for r in routing.header_routes)]))
    shares = display_percentages(weights) if sum(weights.values()) > 0 else {}
    rows = []
    for version in versions:
        headers = [f"{r.header}: {r.value}" for r in routing.header_routes if r.version == version]
        ready, total = pods.get(version, (0, 0))
        if total and not ready:
            status = "NoReadyPods"
        elif weights.get(version, 0) > 0:
            status = "Serving"
        elif headers:
            status = "HeaderOnly (" + ", ".join(headers) + ")"
        else:
            status = "Idle"
        rows.append({"version": version, "weight": weights.get(version, 0), "percentage": shares.get(version, 0.0),
                     "status": status, "pods": f"{ready}/{total}"})
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'VERSION':<10} {'WEIGHT':>6} {'PERCENTAGE':>10}  {'STATUS':<28} PODS"]
    for row in rows:
        lines.append(f"{row['version']:<10} {row['weight']:>6} {row['percentage']:>9.1f}%  {row['status']:<28} "
                     f"{row['pods']}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    if args.state_dir is not None:
        return _local_status(args)
    from controller.k8s.availability import DeploymentAvailability
    from controller.routing.istio import IstioBackend

    if not args.service:
        print("ramp status: name a SERVICE (or use --state-dir for local rollouts)", file=sys.stderr)
        return 2
    api = _api(args)
    routing = IstioBackend(api).read_routing(args.namespace, args.service)
    if not routing.found:
        print(f"no VirtualService {args.namespace}/{args.service}", file=sys.stderr)
        return 1
    pods = DeploymentAvailability(api).pods_by_version(args.namespace, args.service)
    rows = status_rows(routing, pods, routing.annotations.get(RELATIVE_WEIGHTS_ANNOTATION))
    state = routing.state
    if args.output == "json":
        doc = {"service": args.service, "namespace": args.namespace, "versions": rows,
               "rollout": None if state is None else state.model_dump(mode="json", exclude={"history"})}
        print(json.dumps(doc, indent=2))
        return 0
    print(render_table(rows))
    if state is not None:
        print(f"\nrollout {state.rollout}: {state.phase.value}, step {state.step + 1}: {state.reason}")
        for line in e_value_lines(state, "as of the last state write "):
            print(line)
    if routing.state_error:
        print(f"\nrollout state unreadable: {routing.state_error}", file=sys.stderr)
    if routing.command:
        print(f"pending command: {routing.command}")
    return 0


def e_value_lines(state: RolloutState, note: str = "") -> list[str]:
    """One line per statistical gate: its e-value, the e-value that rolls back (K/alpha) and when."""
    lines = []
    for gate, e in state.e_values.items():
        at = time.strftime("%H:%M:%S", time.localtime(e.at))
        lines.append(f"e-value {gate}: {e.value:.3g} (rolls back at {e.limit:g}; {note}{at})")
    return lines


def parse_weights(items: list[str]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in items:
        version, _, number = item.partition("=")
        if not version or not number.isdigit() or version in weights:
            raise ValueError(f"{item!r}: expected VERSION=WEIGHT with a whole number >= 0, each version once")
        weights[version] = int(number)
    if sum(weights.values()) == 0:
        raise ValueError("all weights are 0: at least one version must carry traffic")
    return weights


def _set_weights(args: argparse.Namespace) -> int:
    from controller.k8s.availability import DeploymentAvailability
    from controller.routing.istio import IstioBackend
    from controller.routing.model import DesiredRouting

    try:
        relative = parse_weights(args.weights)
    except ValueError as exc:
        print(f"ramp set-weights: {exc}", file=sys.stderr)
        return 2
    api = _api(args)
    backend = IstioBackend(api)
    current = backend.read_routing(args.namespace, args.service)
    state = current.state
    if state is not None and not state.terminal and not args.force:
        print(f"a rollout ({state.rollout}) is {state.phase.value}: use ramp abort/promote first, or --force",
              file=sys.stderr)
        return 1
    live = [v for v, w in relative.items() if w > 0]
    available = DeploymentAvailability(api).available(args.namespace, [args.service])
    missing = [v for v in live if (args.service, v) not in available]
    if missing and not args.force:
        print(f"no ready pods for {', '.join(missing)}: refusing to send traffic there (--force to override)",
              file=sys.stderr)
        return 1
    percent = integer_percentages(relative)
    routing = DesiredRouting(
        service=args.service, namespace=args.namespace,
        host=args.host or f"{args.service}.{args.namespace}.svc.cluster.local",
        versions=tuple(relative), header_routes=current.header_routes,
        weights=tuple(percent.items()),
    )  # fmt: skip
    written = backend.apply(routing)
    backend.annotate(args.namespace, args.service, {RELATIVE_WEIGHTS_ANNOTATION: json.dumps(relative)})
    shares = display_percentages(relative)
    print(", ".join(f"{v}={relative[v]} ({shares[v]:.1f}%)" for v in relative)
          + ("" if written else " (already in place)"))
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.state_dir is not None:
        from controller.state.file_store import FileStateStore

        store = FileStateStore(args.state_dir)
        if store.load(args.service) is None:
            print(f"no rollout {args.service!r} in {args.state_dir}", file=sys.stderr)
            return 1
        store.request(args.service, args.command_value)
    else:
        from controller.routing.istio import IstioBackend

        IstioBackend(_api(args)).request_command(args.namespace, args.service, args.command_value)
    print(f"{args.command_value.value} requested for {args.service}; the controller applies it on its next tick")
    return 0


def _ping(args: argparse.Namespace) -> int:
    from controller.k8s.availability import DeploymentAvailability

    availability = DeploymentAvailability(_api(args))
    rounds = 0
    while True:
        pods = availability.pods_by_version(args.namespace, args.service)
        stamp = time.strftime("%H:%M:%S")
        parts = [f"{v}: {ready}/{total} ready" + ("" if ready else " DOWN") for v, (ready, total) in pods.items()]
        print(f"{stamp} {args.service}: " + ("; ".join(parts) or "no pods"), flush=True)
        rounds += 1
        if args.count and rounds >= args.count:
            return 0 if pods and all(ready for ready, _ in pods.values()) else 1
        time.sleep(args.interval)


def _local_status(args: argparse.Namespace) -> int:
    from controller.state.file_store import FileStateStore

    states = FileStateStore(args.state_dir).all_states()
    if args.service:
        states = [s for s in states if s.rollout == args.service]
        if not states:
            print(f"no rollout {args.service!r} in {args.state_dir}", file=sys.stderr)
            return 1
    if args.output == "json":
        print(json.dumps([s.model_dump(mode="json") for s in states], indent=2))
        return 0
    print(f"{'ROLLOUT':<20} {'PHASE':<12} {'STEP':>4}  REASON")
    for s in states:
        print(f"{s.rollout:<20} {s.phase.value:<12} {s.step + 1:>4}  {s.reason}")
        for gate in s.last_gates:
            value = "n/a" if gate.value is None else f"{gate.value:.2f}"
            e = s.e_values.get(gate.gate)
            evidence = "" if e is None else f" e-value={e.value:.3g} (rolls back at {e.limit:g})"
            print(f"{'':20}   gate {gate.gate:<16} {gate.verdict:<8} value={value}{evidence}")
    return 0

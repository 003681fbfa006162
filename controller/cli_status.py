"""`ramp status`: versions, weights, pods and the rollout of a service, the same table in both modes.

    VERSION  WEIGHT  PERCENTAGE  STATUS  PODS

Cluster mode reads the VirtualService (routing, state annotation, pending command) and the Pods.
Local mode (`--state-dir`) reads the state files, and what Envoy serves (routes read back from its
admin API) and its endpoints' health checks (`controller.cli_local`). One damaged state file never
hides the others: its problem is printed, and the exit code is non-zero only when the rollout asked
for is the damaged one (or is absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli_common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, kube_api, kube_flags, printable
from controller.deadline import Deadline
from controller.engine.phases import RolloutState
from controller.engine.routing_model import HeaderRoute
from controller.weights import display_percentages, integer_percentages

if TYPE_CHECKING:
    from controller.cli_local import LocalControllerView

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

RELATIVE_WEIGHTS_ANNOTATION = "ramp.dev/relative-weights"
LOCAL_STATUS_SECONDS = 6.0


def register(subparsers: Subparsers) -> None:
    status = subparsers.add_parser(
        "status", help="versions, weights, rollout phase and pods of a service",
        epilog="exit codes: 0 shown; 1 no such service/rollout, or its state is damaged; 2 bad arguments",
    )  # fmt: skip
    status.add_argument("service", nargs="?", help="the service (local mode: the rollout; default: all)")
    kube_flags(status)
    status.add_argument("--state-dir", type=Path, help="local mode: read this state directory instead")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(handler=_status)


def parse_recorded(recorded: str | None) -> dict[str, int] | None:
    """The `ramp.dev/relative-weights` annotation (None when absent or not a map of weights >= 0)."""
    try:
        relative = {str(k): int(v) for k, v in json.loads(recorded or "null").items()}
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        return None
    if not relative or sum(relative.values()) <= 0 or any(v < 0 for v in relative.values()):
        return None
    return relative


def relative_weights(live: Mapping[str, int], recorded: Mapping[str, int] | None) -> dict[str, int]:
    """The recorded relative weights while they still describe the live split (percentages), else the live split."""
    if not recorded or sum(recorded.values()) <= 0 or any(v < 0 for v in recorded.values()):
        return dict(live)
    percents = integer_percentages(recorded)
    if {v: w for v, w in percents.items() if w} != {v: w for v, w in live.items() if w}:
        return dict(live)  # the weights moved since (a rollout, a person): the record is stale
    return dict(recorded)


def status_rows(
    live: Mapping[str, int],
    header_routes: Sequence[HeaderRoute],
    pods: Mapping[str, tuple[int, int]],
    recorded: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Version | Weight (relative) | Percentage | Status | Pods, for what the data plane serves."""
    weights = relative_weights(live, recorded)
    versions = list(dict.fromkeys([*weights, *pods, *(r.version for r in header_routes)]))
    shares = display_percentages(weights) if sum(weights.values()) > 0 else {}
    rows = []
    for version in versions:
        headers = [f"{r.header}: {r.value}" for r in header_routes if r.version == version]
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
                     "status": status, "pods": f"{ready}/{total}"})  # fmt: skip
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'VERSION':<10} {'WEIGHT':>6} {'PERCENTAGE':>10}  {'STATUS':<28} PODS"]
    for row in rows:
        lines.append(f"{printable(row['version'], 63):<10} {row['weight']:>6} {row['percentage']:>9.1f}%  "
                     f"{printable(row['status'], 200):<28} {row['pods']}")  # fmt: skip
    return "\n".join(lines)


def e_value_lines(state: RolloutState, note: str = "") -> list[str]:
    """One line per statistical gate: its e-value, the e-value that rolls back (K/alpha) and when."""
    lines = []
    for gate, e in state.e_values.items():
        at = time.strftime("%H:%M:%S", time.localtime(e.at))
        lines.append(f"e-value {gate}: {e.value:.3g} (rolls back at {e.limit:g}; {note}{at})")
    return lines


def command_line(state: RolloutState) -> str | None:
    """The last command's outcome: what was asked, applied or refused, and why."""
    last = state.last_command
    if last is None:
        return None
    at = time.strftime("%H:%M:%S", time.localtime(last.at))
    verdict = "applied" if last.applied else "REFUSED"
    return f"last command: {last.command} ({last.id or 'no id'}) {verdict} at {at}: {printable(last.reason)}"


def _status(args: argparse.Namespace) -> int:
    if args.state_dir is not None:
        return _local_status(args)
    from controller.cluster_backend import cluster_backend
    from controller.k8s.availability import DeploymentAvailability

    if not args.service:
        print("ramp status: name a SERVICE (or use --state-dir for local rollouts)", file=sys.stderr)
        return EXIT_USAGE
    api = kube_api(args)
    backend = cluster_backend(api)
    router = backend.locate(args.namespace, args.service)
    if router is None:
        kinds = " or ".join(kind.resource.kind for kind in backend.routers.values())
        print(f"no {kinds} {args.namespace}/{args.service}", file=sys.stderr)
        return EXIT_REFUSED
    routing = backend.read_routing(args.namespace, args.service, router)
    pods = DeploymentAvailability(api).pods_by_version(args.namespace, args.service)
    state = routing.state
    recorded = state.override if state is not None and state.override else None
    if recorded is None:
        recorded = parse_recorded(routing.annotations.get(RELATIVE_WEIGHTS_ANNOTATION))
    rows = status_rows(dict(routing.weights), routing.header_routes, pods, recorded)
    if args.output == "json":
        doc = {"service": args.service, "namespace": args.namespace, "router": router, "versions": rows,
               "rollout": None if state is None else state.model_dump(mode="json", exclude={"history"}),
               "state_error": routing.state_error, "pending_command": routing.command,
               "not_in_effect": routing.not_in_effect}  # fmt: skip
        print(json.dumps(doc, indent=2))
        return EXIT_REFUSED if routing.state_error else EXIT_OK
    print(render_table(rows))
    if routing.problem:
        print(f"\nnote: {printable(routing.problem)}")
    if routing.not_in_effect:
        print(f"\nnot in effect: {printable(routing.not_in_effect)}")
    if state is not None:
        print(f"\nrollout {printable(state.rollout, 100)}: {state.phase.value}, step {state.step + 1}: "
              f"{printable(state.reason)}")  # fmt: skip
        for line in e_value_lines(state, "as of the last state write "):
            print(line)
        extra: list[str | None] = [command_line(state), state.drift and f"drift: {printable(state.drift)}"]
        for note in extra:
            if note:
                print(note)
    if routing.command:
        print(f"pending command: {printable(routing.command, 300)}")
    if routing.state_error:
        print(f"\nrollout state unreadable: {printable(routing.state_error)}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _local_status(args: argparse.Namespace) -> int:
    from controller.cli_local import LocalControllerView
    from controller.state.file_store import FileStateStore

    if not args.state_dir.is_dir():
        print(f"no state directory {printable(args.state_dir)} (give the one `ramp run --state-dir` uses)",
              file=sys.stderr)  # fmt: skip
        return EXIT_REFUSED
    store = FileStateStore(args.state_dir)
    try:
        states, problems = store.states_and_problems()
    except OSError as exc:
        print(f"cannot read {printable(args.state_dir)}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.service:
        states = [s for s in states if s.rollout == args.service]
        problems = {name: p for name, p in problems.items() if name == args.service}
        if not states and not problems:
            print(f"no rollout {args.service!r} in {args.state_dir}", file=sys.stderr)
            return EXIT_REFUSED
    view = LocalControllerView.load(args.state_dir)
    envoy_reads = Deadline(LOCAL_STATUS_SECONDS)  # every Envoy read of this command together, however many rollouts
    docs = [_local_doc(view, state, envoy_reads) for state in states]
    if args.output == "json":
        print(json.dumps({"rollouts": docs, "damaged": problems, "routing_problem": view.problem}, indent=2))
    else:
        for index, (state, doc) in enumerate(zip(states, docs, strict=True)):
            if index:
                print()
            _print_local(state, doc)
        if view.problem and states:
            print(f"\nnote: {view.problem}")
    for name, problem in problems.items():
        print(f"rollout {printable(name, 100)}: state DAMAGED (the controller fails safe to the baseline): "
              f"{printable(problem)}", file=sys.stderr)  # fmt: skip
    return EXIT_REFUSED if args.service and problems else EXIT_OK


def _local_doc(view: LocalControllerView, state: RolloutState, deadline: Deadline) -> dict[str, Any]:
    """One rollout: its state, and what Envoy serves for it (or why that is unknown)."""
    from controller.local.availability import EnvoyAvailabilityError
    from controller.routing.envoy import EnvoyRoutingError

    doc: dict[str, Any] = {"rollout": state.model_dump(mode="json", exclude={"history", "sequential"})}
    where = view.where(state.rollout)
    doc["namespace"], doc["service"] = where if where else (None, None)
    if view.info is None:
        return doc
    if where is None:
        doc["routing_error"] = f"no routes or spec for {state.rollout} in the local controller's directories"
        return doc
    from controller.cli_local import pods_from_endpoints

    pods: dict[str, tuple[int, int]] = {}
    try:
        pods = pods_from_endpoints(view.endpoints(state.rollout, deadline))
    except EnvoyAvailabilityError as exc:
        doc["pods_error"] = str(exc)
    try:
        served = view.router_routing(state.rollout, deadline)
    except EnvoyRoutingError as exc:
        doc["routing_error"] = str(exc)
        return doc
    if served is None:
        doc["routing_error"] = f"Envoy serves no routes for {where[0]}/{where[1]}"
        return doc
    doc["versions"] = status_rows(dict(served.weights), served.header_routes, pods, state.override)
    return doc


def _print_local(state: RolloutState, doc: dict[str, Any]) -> None:
    where = f" ({doc['namespace']}/{doc['service']})" if doc.get("service") else ""
    print(f"rollout {printable(state.rollout, 100)}{where}: {state.phase.value}, step {state.step + 1}: "
          f"{printable(state.reason)}")  # fmt: skip
    if "versions" in doc:
        print(render_table(doc["versions"]))
    for key in ("routing_error", "pods_error"):
        if doc.get(key):
            print(f"{key.replace('_', ' ')}: {printable(doc[key])}")
    for gate in state.last_gates:
        value = "n/a" if gate.value is None else f"{gate.value:.2f}"
        e = state.e_values.get(gate.gate)
        evidence = "" if e is None else f" e-value={e.value:.3g} (rolls back at {e.limit:g})"
        print(f"  gate {printable(gate.gate, 64):<16} {printable(gate.verdict, 16):<8} value={value}{evidence}")
    lines: list[str | None] = [
        command_line(state),
        state.unconfirmed and f"routing UNCONFIRMED: {printable(state.unconfirmed)}",
        state.drift and f"drift: {printable(state.drift)}",
        state.last_apply_error
        and f"last apply error ({state.apply_failures} in a row): {printable(state.last_apply_error)}",
    ]
    for line in lines:
        if line:
            print(line)

"""`ramp pause|resume|abort|promote|set-weights SERVICE`: a command with a defined outcome.

The CLI writes a `CommandRequest` with a fresh id (local mode: the command file in `--state-dir`;
cluster mode: the `ramp.dev/command` annotation of the service's VirtualService or HTTPRoute), refusing at once
while another command is still pending, then waits for the controller's recorded outcome
(`state.last_command` with that id): applied (exit 0, the reason on stdout), refused (exit 1, the
reason on stderr) or not picked up within `--wait` (exit 3: still queued, the controller has not
ticked). `--no-wait` only queues it.

`set-weights` changes only the versions named; the others keep their relative weights. On a service
a rollout manages it is a command like the others (a manual override the controller keeps until a new
rollout starts); on an unmanaged service in a cluster it writes the VirtualService or HTTPRoute directly
(`controller.cli_set_weights`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from controller.cli_common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_QUEUED,
    EXIT_REFUSED,
    EXIT_USAGE,
    finite,
    kube_flags,
    new_request_id,
    parse_weights,
    printable,
    requester,
)
from controller.deadline import Deadline
from controller.engine.commands import CommandRequest
from controller.engine.phases import ACTIVE_PHASES, Command, CommandOutcome, RolloutState

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_WAIT_SECONDS = 30.0
LOST = (
    "the command is no longer pending but its outcome is not recorded (removed by hand, or a later command's "
    "outcome replaced it: see `ramp status`)"
)
LOCAL_POLL_SECONDS = 0.2
CLUSTER_POLL_SECONDS = 0.5

_HELP = {
    Command.PAUSE: "pause a running rollout (its step is observed in full again on resume)",
    Command.RESUME: "resume a paused rollout, or approve an approval step",
    Command.ABORT: "roll a running rollout back; revert a promoted one to its baseline",
    Command.PROMOTE: "promote a running rollout now (never onto versions without ready pods)",
}


def register(subparsers: Subparsers) -> None:
    for command, text in _HELP.items():
        sub = subparsers.add_parser(command.value, help=text, description=text, epilog=EXIT_CODES_HELP)
        sub.add_argument("service", help="the rollout's service (local mode: the rollout name)")
        _common_flags(sub)
        sub.set_defaults(handler=_command, command_value=command)
    weights = subparsers.add_parser(
        "set-weights",
        help="change the relative weights of the versions named, e.g. v3=50 (the others keep theirs)",
        description="Change the relative weights of the versions named; the others keep theirs, as when one "
        "line of TRAFFIC.yaml is edited. On a service a rollout manages, the controller applies it as a manual "
        "override kept until a new rollout starts.",
        epilog=EXIT_CODES_HELP,
    )
    weights.add_argument("service", help="the service (local mode: the rollout name)")
    weights.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    weights.add_argument("--host", help="service host (default <service>.<namespace>.svc.cluster.local)")
    weights.add_argument(
        "--force", action="store_true",
        help="during a rollout (it is then paused), or to versions without ready pods",
    )  # fmt: skip
    _common_flags(weights)
    weights.set_defaults(handler=_command, command_value=Command.SET_WEIGHTS)


def _common_flags(parser: argparse.ArgumentParser) -> None:
    kube_flags(parser)
    parser.add_argument("--state-dir", type=Path, help="local mode: the controller's state directory")
    parser.add_argument(
        "--wait", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
        help=f"wait this long for the controller's outcome (default {DEFAULT_WAIT_SECONDS:g})",
    )  # fmt: skip
    parser.add_argument("--no-wait", action="store_true", help="only queue the command")


@dataclass
class Poll:
    outcome: CommandOutcome | None = None
    lost: str | None = None  # the command is gone without an outcome
    problem: str | None = None  # a read failed (retried until the wait ends)


class CommandTarget(Protocol):
    def prepare(self, request: CommandRequest) -> tuple[int, str] | None:
        """(exit code, message) when it ends before a command is written: refused (non-zero), or done
        without the controller (0: set-weights on an unmanaged service)."""
        ...

    def submit(self, request: CommandRequest) -> tuple[int, str] | None:
        """Write the request; (exit code, message) when refused (another command pending) or not written."""
        ...

    def poll(self, request_id: str) -> Poll: ...


def _command(args: argparse.Namespace) -> int:
    command: Command = args.command_value
    name = f"ramp {command.value}"
    if not finite(args.wait) or args.wait < 0:
        print(f"{name}: --wait must be a number of seconds >= 0", file=sys.stderr)
        return EXIT_USAGE
    weights = None
    if command == Command.SET_WEIGHTS:
        try:
            weights = parse_weights(args.weights)
        except ValueError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    request = CommandRequest(
        id=new_request_id(), command=command, weights=weights, force=bool(getattr(args, "force", False)),
        requested_at=time.time(), by=requester(),
    )  # fmt: skip
    target = _target(args)
    ended = target.prepare(request)
    if ended is None:
        ended = target.submit(request)
    if ended is not None:
        code, message = ended
        if code == EXIT_OK:
            print(printable(message, 2000))
        else:
            print(f"{name} {printable(args.service, 100)}: {printable(message, 2000)}", file=sys.stderr)
        return code
    what = f"{command.value} (id {request.id}) for {printable(args.service, 100)}"
    if args.no_wait:
        print(f"{what} queued; the controller applies or refuses it on its next tick")
        return EXIT_OK
    return _wait(target, request, what, args.wait, LOCAL_POLL_SECONDS if args.state_dir else CLUSTER_POLL_SECONDS)


def _wait(target: CommandTarget, request: CommandRequest, what: str, seconds: float, interval: float) -> int:
    deadline = Deadline(seconds)
    problem = None
    while True:
        poll = target.poll(request.id)
        if poll.outcome is not None:
            if poll.outcome.applied:
                print(printable(poll.outcome.reason, 2000))
                return EXIT_OK
            print(f"ramp {request.command.value}: refused: {printable(poll.outcome.reason, 2000)}", file=sys.stderr)
            return EXIT_REFUSED
        if poll.lost is not None:
            print(f"ramp {request.command.value}: {what}: {printable(poll.lost)}", file=sys.stderr)
            return EXIT_REFUSED
        problem = poll.problem or problem
        if deadline.expired:
            note = f" (last read failed: {printable(problem, 300)})" if problem else ""
            print(
                f"{what} is still queued: the controller has not ticked within {seconds:g}s (is it running?){note}; "
                "it is applied or refused on its next tick (`ramp status` shows it)",
                file=sys.stderr,
            )
            return EXIT_QUEUED
        time.sleep(min(interval, max(0.0, deadline.remaining())))


def _target(args: argparse.Namespace) -> CommandTarget:
    if args.state_dir is not None:
        return LocalTarget(args.state_dir, args.service)
    from controller.cli_set_weights import ClusterTarget

    if args.command_value == Command.SET_WEIGHTS:
        return ClusterTarget(args)
    from controller.cli_resource_target import ResourceAwareTarget

    return ResourceAwareTarget(args)


def active_refusal(state: RolloutState, request: CommandRequest) -> tuple[int, str] | None:
    """set-weights during a running rollout without --force: refused at once (the controller would refuse it)."""
    if request.command == Command.SET_WEIGHTS and state.phase in ACTIVE_PHASES and not request.force:
        return EXIT_REFUSED, (
            f"a rollout ({state.rollout}) is {state.phase.value} at step {state.step + 1}: "
            "use ramp pause/abort/promote first, or --force (the rollout is then paused; resume drops the weights)"
        )
    return None


class LocalTarget:
    """A local controller's state directory: the command file, and the state file's `last_command`."""

    def __init__(self, state_dir: Path, rollout: str) -> None:
        from controller.state.file_store import FileStateStore

        self.store = FileStateStore(state_dir)
        self.state_dir = state_dir
        self.rollout = rollout

    def prepare(self, request: CommandRequest) -> tuple[int, str] | None:
        from controller.engine.state_port import StateStoreError

        if not self.rollout or "/" in self.rollout or self.rollout.startswith("."):
            return EXIT_USAGE, f"{self.rollout!r} is not a rollout name"
        try:
            state = self.store.load(self.rollout)
        except StateStoreError as exc:
            return (
                EXIT_REFUSED,
                f"refused: the rollout's state is damaged ({exc}); the controller fails safe to "
                "the baseline and keeps the file aside",
            )
        if state is None:
            return EXIT_REFUSED, f"no rollout {self.rollout!r} in {self.state_dir}"
        return active_refusal(state, request)

    def submit(self, request: CommandRequest) -> tuple[int, str] | None:
        from controller.engine.state_port import CommandPending

        try:
            self.store.request(self.rollout, request)
        except CommandPending as exc:
            return EXIT_REFUSED, f"refused: another command is pending: {exc}"
        except OSError as exc:
            return EXIT_REFUSED, f"cannot write the command into {self.state_dir}: {exc.strerror or exc}"
        return None

    def poll(self, request_id: str) -> Poll:
        from controller.engine.commands import CommandError
        from controller.engine.state_port import StateStoreError

        try:
            try:
                pending = self.store.pending_command(self.rollout)
            except CommandError:
                return Poll(problem="the command file is unreadable")
            if pending is not None and pending.id == request_id:
                # Not decided yet, or decided and not yet cleared: either way a next command would be refused
                # as pending, so the outcome is reported only once the controller has cleared this one.
                return Poll()
            state = self.store.load(self.rollout)  # the controller saves the outcome, then clears the command
            if _outcome(state, request_id):
                return Poll(outcome=_outcome(state, request_id))
        except (StateStoreError, OSError) as exc:
            return Poll(problem=str(exc))
        return Poll(lost=LOST)


def _outcome(state: RolloutState | None, request_id: str) -> CommandOutcome | None:
    if state is None or state.last_command is None or state.last_command.id != request_id:
        return None
    return state.last_command

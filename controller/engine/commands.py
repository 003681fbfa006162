"""People's commands: what was asked (`CommandRequest`), and the pure rules that apply or refuse it.

Every command gets a defined outcome, recorded in the state as `last_command` (id, applied, reason) so
the CLI can print it: nothing is silently overwritten or ignored.

- `pause` / `resume`: only on a running rollout; `resume` also gives an approval step's approval.
- `abort`: a running rollout rolls back; a promoted one reverts to its baseline (the previous version);
  a manual override is dropped and the outcome's routing restored.
- `promote`: a running rollout is promoted (never onto versions without ready pods); a rolled-back or
  failed one is refused (its target failed: change the spec to try again).
- `set-weights`: changes only the versions named, the others keep their relative weights (an edit of
  one line of TRAFFIC.yaml). On a finished rollout it is a manual override kept until a new rollout
  starts; on a running one it is refused unless forced, which pauses the rollout (resume drops it).
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.engine.phases import ACTIVE_PHASES, Command, CommandOutcome, Phase, RolloutState
from controller.engine.routing_model import DesiredRouting
from controller.plan import Plan
from controller.weights import integer_percentages

MAX_COMMAND_BYTES = 4096
_VERSION = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


_VersionName = Annotated[str, Field(pattern=_VERSION, max_length=63)]
_RelativeWeight = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]


class CommandError(ValueError):
    """A stored command that cannot be read; it is refused (and reported), never acted on."""


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    command: Command
    weights: dict[_VersionName, _RelativeWeight] | None = Field(default=None, max_length=32)
    force: bool = False
    requested_at: float | None = None
    by: str = Field(default="", max_length=128)

    def encode(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    @classmethod
    def decode(cls, raw: str) -> CommandRequest:
        """JSON (this format) or a bare command word (older clients); CommandError otherwise."""
        if len(raw.encode("utf-8", "replace")) > MAX_COMMAND_BYTES:
            raise CommandError(f"command larger than {MAX_COMMAND_BYTES} bytes")
        text = raw.strip()
        if re.fullmatch(r"[a-z-]{1,16}", text):
            try:
                return cls(command=Command(text))
            except ValueError:
                raise CommandError(f"unknown command {text!r}") from None
        try:
            request = cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not JSON"
            raise CommandError(f"unreadable command: {first}") from None
        if request.command == Command.SET_WEIGHTS and not request.weights:
            raise CommandError("set-weights without weights")
        return request


def describe_pending(raw: str) -> str:
    """A pending command's raw annotation or file text, for a "still waiting" refusal: `pause (id ...)`."""
    try:
        decoded = CommandRequest.decode(raw)
    except CommandError:
        return "an unreadable command"
    return f"{decoded.command.value} (id {decoded.id or '?'})"


def as_request(command: Command | CommandRequest) -> CommandRequest:
    return command if isinstance(command, CommandRequest) else CommandRequest(command=command)


def relative_weights(plan: Plan, state: RolloutState, base: DesiredRouting) -> dict[str, int]:
    """The relative weights in force: the override, else the percentages of the routing in force."""
    names = list(plan.baseline.versions)
    if state.override:
        return {n: state.override.get(n, 0) for n in names}
    current = dict(base.weights)
    return {n: current.get(n, 0) for n in names}


def edited_weights(plan: Plan, state: RolloutState, base: DesiredRouting, request: CommandRequest) -> dict[str, int]:
    """`set-weights`: the named versions get their new relative weight, the others keep theirs."""
    weights = relative_weights(plan, state, base)
    weights.update(request.weights or {})
    return weights


def override_routing(base: DesiredRouting, override: dict[str, int]) -> DesiredRouting:
    """`base` (header routes and all) with the override's weights, as integer percentages."""
    percent = integer_percentages(override)
    return base.model_copy(update={"weights": tuple((v, percent.get(v, 0)) for v in base.versions)})


def set_weights_refusal(
    plan: Plan, state: RolloutState, base: DesiredRouting, request: CommandRequest, unavailable: frozenset[str]
) -> str | None:
    known = list(plan.baseline.versions)
    unknown = sorted(set(request.weights or {}) - set(known))
    if unknown:
        return f"unknown version(s) {', '.join(unknown)} (this rollout has {', '.join(known)})"
    if state.phase in ACTIVE_PHASES and not request.force:
        return (
            f"rollout is {state.phase.value} at step {state.step + 1}: pause or abort it first, "
            "or use --force (the rollout is then paused; resume drops the manual weights)"
        )
    if state.phase == Phase.PENDING:
        return "rollout has not started yet"
    weights = edited_weights(plan, state, base, request)
    if sum(weights.values()) <= 0:
        return "all weights would be 0: at least one version must carry traffic"
    down = sorted(v for v, w in weights.items() if w > 0 and v in unavailable)
    if down and not request.force:
        return f"no ready pods for {', '.join(down)}: refusing to send traffic there (--force to override)"
    return None


def describe_weights(weights: dict[str, int]) -> str:
    percent = integer_percentages(weights)
    return ", ".join(f"{v}={w} ({percent[v]}%)" for v, w in weights.items())


def outcome(request: CommandRequest, applied: bool, reason: str, now: float) -> CommandOutcome:
    return CommandOutcome(id=request.id, command=request.command.value, applied=applied, reason=reason, at=now)

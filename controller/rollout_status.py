"""The `status` of a RampRollout, built from the engine's state: what people and GitOps tools read.

Pure: no I/O and no clock of its own (`now` is passed in), so the writer can compute the status every tick and
skip the write when `status_changed` says nothing changed.

The durable progress stays in the VirtualService annotation (atomic with the weights); this status only mirrors
it, so nothing here is read back by the engine.

Conditions follow the Kubernetes API conventions that kstatus (sigs.k8s.io/cli-utils/pkg/kstatus) reads, which
is what Flux's `wait: true` and `healthChecks` use with no configuration:

- `Reconciling` True  -> kstatus InProgress (the rollout is still moving, holding, or waiting for a person);
- `Stalled` True      -> kstatus Failed (rolled back, failed, or the resource was refused);
- neither             -> kstatus Current, which we allow only when the target is promoted and the data plane
  has confirmed it (`Ready` True).

The two are never True together: kstatus takes whichever comes first in the list, so both True would make the
answer depend on list order. `lastTransitionTime` moves only when a condition's status changes (the API
conventions), so a steady rollout produces the same status tick after tick and causes no writes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from controller.engine.decide import routing_for
from controller.engine.phases import CommandOutcome, GateSnapshot, Phase, RolloutState
from controller.engine.ports import ManagedRollout
from controller.engine.routing_model import DesiredRouting

MAX_REASON_CHARS = 1024  # status.reason and every condition message / gate reason
INVALID_PHASE = "Invalid"  # not an engine phase: the controller refuses the resource
PROGRESS_DEADLINE_PREFIX = "progress deadline"  # the engine's reason when it fails a rollout for its deadline

InvalidKind = Literal["InvalidSpec", "OwnerClash", "NamespaceNotManaged"]
ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")

_PENDING_TEXT = "waiting for the controller's first tick of this rollout"
_LINE_BREAKS = re.compile(r"\s*[\r\n\f\v]+\s*")


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    m = moment.astimezone(UTC)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def _epoch_rfc3339(seconds: float) -> str:
    """Epoch seconds as RFC 3339. A value no calendar holds (only a damaged state has one) is clamped to the
    calendar's ends (NaN: the epoch): the same state must always give the same text, or every write differs."""
    if math.isnan(seconds):
        seconds = 0.0
    try:
        return rfc3339(datetime.fromtimestamp(seconds, UTC))
    except (ValueError, OverflowError, OSError):
        return rfc3339(datetime.max if seconds > 0 else datetime.min)


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line and at most `limit` characters: kubectl cuts a cell at its first line break, and the
    CRD schema bounds the length. Truncation is marked with an ellipsis so a reader knows text is missing."""
    flat = _LINE_BREAKS.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"


def _finite(value: float | None) -> float | None:
    """JSON (and the API server) cannot carry NaN or infinities: such a value is reported as absent."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _routing(rollout: ManagedRollout, state: RolloutState) -> DesiredRouting:
    """The routing in force. A damaged manual override (the engine never stores one) falls back to the plan's
    routing rather than leaving the resource without a status."""
    try:
        return routing_for(rollout.plan, state)
    except (ValueError, ArithmeticError):
        return routing_for(rollout.plan, state.model_copy(update={"override": None}))


def _step_fields(rollout: ManagedRollout, state: RolloutState) -> dict[str, Any]:
    total = len(rollout.plan.steps)
    if state.phase == Phase.PENDING or state.step < 0:
        current = 0
    elif state.phase == Phase.PROMOTED:
        current = total
    else:
        current = min(state.step + 1, total)
    return {"step": f"{current}/{total}" if current else "-", "currentStep": current, "totalSteps": total}


def _gates(snapshots: list[GateSnapshot], state: RolloutState) -> list[dict[str, Any]]:
    gates: list[dict[str, Any]] = []
    for snap in snapshots:
        gate: dict[str, Any] = {"name": snap.gate, "verdict": snap.verdict}
        e_value = state.e_values.get(snap.gate)
        numbers = {
            "value": snap.value,
            "stableValue": snap.stable_value,
            "eValue": None if e_value is None else e_value.value,
            "eLimit": None if e_value is None else e_value.limit,
        }
        gate.update({k: v for k, v in numbers.items() if _finite(v) is not None})
        gate["reason"] = one_line(snap.reason)
        gates.append(gate)
    return gates


def _last_command(command: CommandOutcome) -> dict[str, Any]:
    return {
        "id": command.id,
        "command": command.command,
        "applied": command.applied,
        "reason": one_line(command.reason),
        "at": _epoch_rfc3339(command.at),
    }


def _holding(state: RolloutState) -> bool:
    """Whether an active rollout is held (no data, gates holding, routing unconfirmed, pods not ready, a failed
    check below the limit) rather than advancing on schedule. Display only: it picks the condition's reason."""
    text = state.reason.lower()
    return (
        state.unconfirmed is not None
        or state.missing_data_since is not None
        or "holding" in text
        or text.startswith("failed check")
    )


def _stalled_reason(state: RolloutState) -> str:
    if state.phase == Phase.ROLLED_BACK:
        return "RolledBack"
    if state.reason.strip().lower().startswith(PROGRESS_DEADLINE_PREFIX):
        return "ProgressDeadlineExceeded"
    return "Failed"


def _reconciling_reason(state: RolloutState) -> str:
    if state.phase == Phase.PENDING:
        return "Pending"
    if state.phase == Phase.PROMOTED:
        return "Promoting"  # promoted, but the data plane has not confirmed the routing yet
    if state.phase == Phase.PAUSED:
        return "PausedByUser" if state.paused_by_user else "WaitingForApproval"
    return "Holding" if _holding(state) else "Progressing"


def _wanted(state: RolloutState) -> dict[str, tuple[ConditionStatus, str]]:
    """(status, reason) of each condition for an engine state."""
    if state.phase == Phase.PROMOTED and state.unconfirmed is None:
        return {"Ready": ("True", "Promoted"), "Reconciling": ("False", "Promoted"), "Stalled": ("False", "Promoted")}
    if state.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        reason = _stalled_reason(state)
        return {"Ready": ("False", reason), "Reconciling": ("False", reason), "Stalled": ("True", reason)}
    reason = _reconciling_reason(state)
    return {"Ready": ("False", reason), "Reconciling": ("True", reason), "Stalled": ("False", reason)}


def _previous_conditions(previous: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The previous status's conditions by type; anything malformed is ignored (the status is rebuilt)."""
    if not isinstance(previous, Mapping):
        return {}
    conditions = previous.get("conditions")
    if not isinstance(conditions, list):
        return {}
    found: dict[str, Mapping[str, Any]] = {}
    for condition in conditions:
        if isinstance(condition, Mapping) and isinstance(condition.get("type"), str):
            found.setdefault(condition["type"], condition)
    return found


def conditions(
    wanted: Mapping[str, tuple[ConditionStatus, str]],
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Ready, Reconciling, Stalled in that order; each keeps its previous `lastTransitionTime` when its status
    did not change."""
    before = _previous_conditions(previous)
    stamp = rfc3339(now)
    built: list[dict[str, Any]] = []
    for kind in CONDITION_TYPES:
        status, reason = wanted[kind]
        old = before.get(kind)
        since = stamp
        if old is not None and old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
            since = old["lastTransitionTime"]
        built.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return built


def rollout_status(
    rollout: ManagedRollout,
    state: RolloutState,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status of a RampRollout whose rollout is in `state`; `previous` is the status now on the resource
    (or None), `generation` the metadata.generation this status describes."""
    routing = _routing(rollout, state)
    reason = one_line(state.reason) or (_PENDING_TEXT if state.phase == Phase.PENDING else state.phase.value)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": state.phase.value,
        **_step_fields(rollout, state),
        "targetWeight": routing.weight_of(rollout.plan.target),
        "weights": dict(routing.weights),
        "headerRoutes": [
            {"header": r.header, "match": r.match, "value": r.value, "version": r.version}
            for r in routing.header_routes
        ],
        "reason": reason,
        "gates": _gates(state.last_gates, state),
        # The engine keeps `paused_by_user` through a person's promote; only a paused rollout is paused.
        "paused": state.paused_by_user and state.phase == Phase.PAUSED,
    }
    if state.last_command is not None:
        status["lastCommand"] = _last_command(state.last_command)
    status["conditions"] = conditions(_wanted(state), reason, generation, previous, now)
    return status


def invalid_status(
    kind: InvalidKind,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status of a resource the controller refuses (invalid spec, namespace not managed, another owner of
    the service): phase Invalid and Stalled True, so kstatus reports Failed and Argo CD Degraded.

    The controller does not manage the service's traffic then, so no weights are reported; a command outcome
    already on the resource is kept (it is history a person may still be looking for).
    """
    text = one_line(message) or kind
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": INVALID_PHASE,
        "step": "-",
        "currentStep": 0,
        "totalSteps": 0,
        "reason": text,
        "gates": [],
        "paused": False,
    }
    if isinstance(previous, Mapping) and isinstance(previous.get("lastCommand"), Mapping):
        status["lastCommand"] = _plain(previous["lastCommand"])
    wanted: dict[str, tuple[ConditionStatus, str]] = {
        "Ready": ("False", kind), "Reconciling": ("False", kind), "Stalled": ("True", kind),
    }  # fmt: skip
    status["conditions"] = conditions(wanted, text, generation, previous, now)
    return status


def _plain(value: Any) -> Any:
    """Mappings and lists as plain dicts and lists (API client objects compare unequal to dicts otherwise)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` over `old` changes anything (every field counts, timestamps included).

    Timestamps only move on a real transition (see `conditions`), so an unchanged rollout compares equal and
    the writer can skip the API call.
    """
    if old is None:
        return True
    return bool(_plain(old) != _plain(new))

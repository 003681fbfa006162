"""The `ramp.dev/state` annotation: encoding, size cap, decoding and the damaged-state copy.

Kubernetes limits ALL annotations of an object together to 256 KiB. The state annotation is capped far
below that (MAX_STATE_BYTES, 32 KiB): when its encoding is larger, the oldest history entries are dropped
(counted in `dropped_history`) and, as a last resort, long texts are shortened, so a service that sees
thousands of rollouts never hits the apiserver's limit. Comparisons (`same_durable_state`) use the capped
form, so a capped state does not cause a write per tick. A writer encodes a state once (`encoded`: the text and
its durable view) and compares with that; a stored text identical to it needs no decoding.

A state annotation that cannot be read raises StateStoreError (a StateDamaged: the runner fails safe to
the baseline); its raw text is kept aside, truncated to MAX_DAMAGED_BYTES, in `ramp.dev/state-damaged`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.engine.phases import RolloutState
from controller.engine.state_port import StateStoreError

STATE_ANNOTATION = "ramp.dev/state"
DAMAGED_ANNOTATION = "ramp.dev/state-damaged"
MAX_STATE_BYTES = 32 * 1024  # the encoded state annotation never exceeds this
MAX_DAMAGED_BYTES = 16 * 1024  # the copy of a damaged state kept for inspection
MAX_ANNOTATIONS_BYTES = 256 * 1024  # Kubernetes' limit for all annotations of an object together
_TEXT_LIMITS = {"reason": 2048, "drift": 1024}


def persisted_view(state: RolloutState) -> dict[str, object]:
    """The durable state as written with the routing it stands for.

    It is only ever written together with that routing in one successful update, so at that
    moment there are no outstanding apply failures: the counter is stored as 0.
    """
    view = state.durable()
    view["apply_failures"] = 0
    view["last_apply_error"] = None
    view["unconfirmed"] = None
    return view


def _payload(state: RolloutState) -> str:
    payload = {**persisted_view(state), **state.model_dump(mode="json", include={"reason", "e_values"})}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class EncodedState:
    """A state as it is written, computed once: the annotation text and its durable view (for comparisons)."""

    text: str
    view: dict[str, object]


def _capped_payload(state: RolloutState, limit: int) -> tuple[RolloutState, str]:
    """(`state` as it fits in `limit` bytes, its payload): each candidate is encoded once."""
    payload = _payload(state)
    if len(payload.encode()) <= limit:
        return state, payload
    history = list(state.history)
    dropped = state.dropped_history
    while history:
        # Drop enough entries at once to fit (estimated by their size), at least one: a few encodings at most.
        excess = len(_payload(state.model_copy(update={"history": history})).encode()) - limit
        if excess <= 0:
            break
        cut, freed = 0, 0
        while cut < len(history) and freed < excess:
            freed += len(history[cut].model_dump_json()) + 1
            cut += 1
        history, dropped = history[cut:], dropped + cut
    state = state.model_copy(update={"history": history, "dropped_history": dropped})
    payload = _payload(state)
    if len(payload.encode()) <= limit:
        return state, payload
    update: dict[str, Any] = {k: _shortened(getattr(state, k) or "", n) or None for k, n in _TEXT_LIMITS.items()}
    update["reason"] = update["reason"] or ""
    if state.last_command is not None:
        update["last_command"] = state.last_command.model_copy(
            update={"reason": _shortened(state.last_command.reason, 1024), "id": state.last_command.id[:64]}
        )
    state = state.model_copy(update={**update, "e_values": {}})
    return state, _payload(state)


def capped(state: RolloutState, limit: int = MAX_STATE_BYTES) -> RolloutState:
    """`state` as it fits in `limit` bytes of annotation: oldest history dropped first, then long texts cut."""
    return _capped_payload(state, limit)[0]


def encode_state(state: RolloutState) -> str:
    """The persisted view, plus the reason and the statistical gates' e-values as of this write (for status),
    at most MAX_STATE_BYTES (see `capped`)."""
    return _capped_payload(state, MAX_STATE_BYTES)[1]


def encoded(state: RolloutState) -> EncodedState:
    """`encode_state(state)` with the durable view it stands for, for writers that compare and write it."""
    fitting, text = _capped_payload(state, MAX_STATE_BYTES)
    return EncodedState(text, persisted_view(fitting))


def durable_view(raw: object) -> dict[str, object] | None:
    """The durable view held by annotation `raw`; None when it is not a readable state within MAX_STATE_BYTES."""
    if not isinstance(raw, str) or len(raw) > MAX_STATE_BYTES:
        return None
    try:
        return persisted_view(RolloutState.model_validate_json(raw))
    except ValidationError:
        return None


def decode_state(raw: object, where: str) -> RolloutState:
    """The state in a `ramp.dev/state` annotation; StateStoreError when it cannot be read."""
    if not isinstance(raw, str):
        raise StateStoreError(f"{where}: annotation {STATE_ANNOTATION} must be a string, got {kind_of(raw)}")
    if len(raw) > MAX_ANNOTATIONS_BYTES:
        raise StateStoreError(
            f"{where}: annotation {STATE_ANNOTATION} is {len(raw)} bytes, more than Kubernetes allows for all "
            f"annotations ({MAX_ANNOTATIONS_BYTES}); remove it to start the rollout over"
        )
    try:
        return RolloutState.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in exc.errors()[:3])
        raise StateStoreError(
            f"{where}: annotation {STATE_ANNOTATION} is unreadable ({problems}); "
            "fix it or remove the annotation to start the rollout over"
        ) from exc


def same_durable_state(raw: object, state: RolloutState | EncodedState) -> bool:
    """True when annotation `raw` already holds `state`'s durable view as it would be written (the reason may
    differ). Text identical to the encoding is that view without decoding it."""
    if not isinstance(raw, str) or len(raw) > MAX_STATE_BYTES:
        return False
    written = state if isinstance(state, EncodedState) else encoded(state)
    if raw == written.text:
        return True
    view = durable_view(raw)
    return view is not None and view == written.view


def damaged_copy(raw: object, limit: int = MAX_DAMAGED_BYTES) -> str:
    """A damaged annotation's text (JSON of it when it is not a string), cut to `limit` UTF-8 bytes."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=repr)
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def kind_of(value: object) -> str:
    """How a JSON value's type reads in an error message: 'a mapping', 'a list', 'a string', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return f"a {type(value).__name__}"

"""state_codec's encode-once path and k8s_objects.json_copy: the same answers as the slow paths they replace."""

from __future__ import annotations

import copy

from controller.engine.phases import Phase, PhaseChange, RolloutState
from controller.routing.k8s_objects import json_copy
from controller.routing.state_codec import (
    MAX_STATE_BYTES,
    capped,
    durable_view,
    encode_state,
    encoded,
    persisted_view,
    same_durable_state,
)


def state(history: int = 3, reason: str = "step 1 of 4") -> RolloutState:
    changes = [PhaseChange(phase=Phase.PROGRESSING, step=i, at=float(i), reason="x" * 300) for i in range(history)]
    return RolloutState(rollout="shop/reviews", spec_digest="d", phase=Phase.PROGRESSING, step=1, reason=reason,
                        history=changes)  # fmt: skip


def test_encoded_is_encode_state_with_the_capped_durable_view() -> None:
    for current in (state(), state(history=200, reason="r" * 5000)):  # the second one is capped
        written = encoded(current)
        assert written.text == encode_state(current)
        assert len(written.text.encode()) <= MAX_STATE_BYTES
        assert written.view == persisted_view(capped(current))
        assert durable_view(written.text) == written.view


def test_same_durable_state_from_the_text_or_the_encoding() -> None:
    current = state()
    text = encode_state(current)
    other_reason = encode_state(current.model_copy(update={"reason": "held: no data"}))
    moved = encode_state(current.model_copy(update={"step": 2}))
    for given in (current, encoded(current)):
        assert same_durable_state(text, given)  # identical text: no decoding needed
        assert same_durable_state(other_reason, given)  # the reason is not durable
        assert not same_durable_state(moved, given)
        assert not same_durable_state("{not json", given)
        assert not same_durable_state(None, given)
        assert not same_durable_state(text + " " * MAX_STATE_BYTES, given)  # over the cap: never the same


def test_json_copy_is_a_deep_copy() -> None:
    obj = {"metadata": {"name": "a", "annotations": {"k": "v"}}, "spec": {"http": [{"route": [{"weight": 1}]}]},
           "flags": [True, None, 1.5, "s"]}  # fmt: skip
    copied = json_copy(obj)
    assert copied == obj == copy.deepcopy(obj)
    copied["spec"]["http"][0]["route"][0]["weight"] = 2
    copied["metadata"]["annotations"]["k"] = "changed"
    assert obj["spec"]["http"][0]["route"][0]["weight"] == 1 and obj["metadata"]["annotations"]["k"] == "v"
    odd = {"t": (1, [2])}  # never in an answer: still copied deeply
    copied_odd = json_copy(odd)
    assert copied_odd == odd and copied_odd["t"][1] is not odd["t"][1]

"""Notification formats: what Slack, Teams and a generic webhook receive for a transition."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from controller.engine.phases import GateSnapshot, Phase
from controller.engine.ports import Transition
from controller.notify import slack, teams, webhook
from controller.notify.registry import NOTIFIERS
from controller.spec_notify import ALL_EVENTS, DEFAULT_EVENTS, Notification
from controller.webhook_signing import sign

ROLLBACK = Transition(
    kind="rolled_back", rollout="shop", namespace="prod", service="shop", target="v2", phase=Phase.ROLLED_BACK,
    from_phase=Phase.PROGRESSING, step=1, steps=4,
    reason="gate failed: error_rate of v2 is 20.00% > max 5.00%", at=1_767_225_600.0,
    weights=(("v1", 100), ("v2", 0)),
    gates=(GateSnapshot(gate="error_rate", verdict="fail", value=20.0, stable_value=0.1, reason="too many errors"),),
)  # fmt: skip


def test_slack_message_says_what_happened_to_which_rollout_and_why() -> None:
    body = json.loads(slack.render(ROLLBACK))
    assert body["text"] == (
        "prod/shop was rolled back (v2, step 2/4): gate failed: error_rate of v2 is 20.00% &gt; max 5.00%"
    )
    section, context = body["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"].startswith(":red_circle: *prod/shop was rolled back (v2, step 2/4)*\n")
    assert "error_rate: fail, 20 (stable 0.1)" in context["elements"][0]["text"]
    assert "v1 100%, v2 0%" in context["elements"][0]["text"]


def test_slack_escapes_its_control_characters_so_a_hostile_text_pings_nobody() -> None:
    hostile = Transition(**{**ROLLBACK.__dict__, "target": "<!channel>", "reason": "a & b <@U123>\n\x1b[31m"})
    text = slack.render(hostile).decode()
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&lt;@U123&gt;" in text
    assert "a &amp; b" in text and "\\u001b" not in text and "\\n\\u001b" not in text


def test_teams_message_is_an_adaptive_card_for_a_workflow() -> None:
    body = json.loads(teams.render(ROLLBACK))
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title, why, facts = card["body"]
    assert title["text"] == "prod/shop was rolled back (v2, step 2/4)" and title["color"] == "Attention"
    assert why["text"] == ROLLBACK.reason
    assert {"title": "Gates", "value": "error_rate: fail, 20 (stable 0.1)"} in facts["facts"]


def test_webhook_payload_is_documented_data_and_can_be_signed() -> None:
    raw = webhook.render(ROLLBACK)
    body = json.loads(raw)
    assert body == {
        "schema": "ramp.notification/v1", "event": "rolled_back",
        "message": "prod/shop was rolled back (v2, step 2/4)",
        "rollout": {"name": "shop", "namespace": "prod", "service": "shop", "target": "v2"},
        "phase": "RolledBack", "from_phase": "Progressing", "step": 2, "steps": 4, "reason": ROLLBACK.reason,
        "at": 1_767_225_600.0, "weights": {"v1": 100, "v2": 0},
        "gates": [{"gate": "error_rate", "verdict": "fail", "value": 20.0, "stable_value": 0.1,
                   "reason": "too many errors"}],
    }  # fmt: skip
    assert sign(raw, b"k").startswith("sha256=") and NOTIFIERS["webhook"].signed
    assert not NOTIFIERS["slack"].signed and not NOTIFIERS["teams"].signed


def test_webhook_payload_never_carries_nan() -> None:
    gate = GateSnapshot(gate="latency", verdict="no_data", value=float("nan"), stable_value=float("inf"))
    body = json.loads(webhook.render(Transition(**{**ROLLBACK.__dict__, "gates": (gate,)})))
    assert body["gates"][0]["value"] is None and body["gates"][0]["stable_value"] is None


def test_every_kind_has_a_headline_in_every_format() -> None:
    for kind in ALL_EVENTS:
        t = Transition(**{**ROLLBACK.__dict__, "kind": kind})
        for notifier in NOTIFIERS.values():
            assert json.loads(notifier.render(t))


def test_long_reasons_are_cut() -> None:
    long = Transition(**{**ROLLBACK.__dict__, "reason": "x" * 10_000})
    assert len(slack.render(long)) < 6_000 and len(webhook.render(long)) < 4_000


def test_notification_model_keeps_chat_urls_out_of_specs() -> None:
    with pytest.raises(ValidationError, match="is a secret: give it in url_file"):
        Notification(name="chat", type="slack", url="https://hooks.slack.com/services/T/B/X")
    with pytest.raises(ValidationError, match="exactly one of url and url_file"):
        Notification(name="chat", type="webhook")
    with pytest.raises(ValidationError, match="secret_file signs generic webhooks only"):
        Notification(name="chat", type="teams", url_file="/f", secret_file="/s")
    with pytest.raises(ValidationError, match="more than once"):
        Notification(name="chat", type="teams", url_file="/f", events=["failed", "failed"])
    with pytest.raises(ValidationError):
        Notification(name="chat", type="teams", url_file="/f", events=["exploded"])  # type: ignore[list-item]
    assert tuple(Notification(name="chat", type="slack", url_file="/f").events) == DEFAULT_EVENTS

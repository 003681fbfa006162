"""Microsoft Teams, through a Workflows (Power Automate) webhook: the "Post to a channel when a webhook request is
received" template (its URL carries a signature: a secret, from `url_file`).

Workflows take Adaptive Cards only (not the retired connectors' MessageCard): the body is a `message` whose one
attachment is an Adaptive Card (contentType `application/vnd.microsoft.card.adaptive`) with the headline, the
reason and a FactSet (rollout, phase, step, traffic, gates). The workflow answers 202 Accepted.
"""

from __future__ import annotations

import json

from controller.engine.ports import Transition
from controller.notify.message import SEVERITY, facts, headline, reason

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
_COLOR = {"bad": "Attention", "warning": "Warning", "good": "Good"}


def card(t: Transition) -> dict[str, object]:
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": headline(t), "weight": "Bolder", "size": "Medium", "wrap": True,
             "color": _COLOR.get(SEVERITY.get(t.kind, ""), "Default")},
            {"type": "TextBlock", "text": reason(t), "wrap": True},
            {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in facts(t)]},
        ],
    }  # fmt: skip


def render(t: Transition) -> bytes:
    payload = {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card(t)}],
    }
    return json.dumps(payload, ensure_ascii=False).encode()

"""Slack incoming webhook (`https://hooks.slack.com/services/...`, a secret: from `url_file`).

The body is Slack's message payload: `text` (the notification and fallback text) plus `blocks`: a section with the
headline and the reason, and a context block with step, traffic and gates. Slack's mrkdwn treats `&`, `<` and `>`
as control characters, so every text is escaped (a version named `<!channel>` pings nobody). Slack answers 200
`ok`; 429 carries Retry-After (delivery honours it); it allows about one message per second per webhook
(the rate in the registry).
"""

from __future__ import annotations

import json

from controller.engine.ports import Transition
from controller.notify.message import SEVERITY, facts, headline, reason

_ICON = {"bad": ":red_circle:", "warning": ":large_yellow_circle:", "good": ":large_green_circle:"}


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(t: Transition) -> bytes:
    icon = _ICON.get(SEVERITY.get(t.kind, ""), ":information_source:")
    title, why = escape(headline(t)), escape(reason(t))
    context = " | ".join(f"*{escape(name)}:* {escape(value)}" for name, value in facts(t)[1:])
    payload = {
        "text": f"{title}: {why}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{title}*\n{why}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context[:2900]}]},
        ],
    }
    return json.dumps(payload, ensure_ascii=False).encode()

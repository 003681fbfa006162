"""The notifiers, by the `type` a Notification names: how a transition is rendered and how fast one destination may
be sent to. A new notifier is one module with a `render(Transition) -> bytes` and one line here (and its name in
`spec_notify.Notification.type`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.engine.ports import Transition
from controller.notify import slack, teams, webhook


@dataclass(frozen=True)
class Notifier:
    render: Callable[[Transition], bytes]
    per_second: float  # sustained rate per destination (token bucket)
    burst: int  # messages sent at once before the rate applies
    signed: bool = False  # HMAC-signed with the notification's secret_file


NOTIFIERS: dict[str, Notifier] = {
    "slack": Notifier(slack.render, per_second=1.0, burst=3),  # Slack: about 1 message/s per webhook
    "teams": Notifier(teams.render, per_second=1.0, burst=3),
    "webhook": Notifier(webhook.render, per_second=5.0, burst=10, signed=True),
}

"""Notifications (the `notifications:` list of a spec, or the controller's global list given with
`--notifications FILE`): Slack, Microsoft Teams or a generic JSON webhook, told about the transitions chosen in
`events`. Sent from a queue outside the tick (see controller.notify); a notification that cannot be delivered is
logged and counted, and never changes the rollout.

A Slack or Teams webhook URL is a credential (whoever has it can post to the channel): it must be given in
`url_file` (re-read when rotated), never in a spec. `url` is for generic webhooks, whose URL carries no secret;
they are HMAC-SHA256 signed with `secret_file`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.spec_hooks import WebhookUrl
from controller.spec_rules import DNS_LABEL_PATTERN

MAX_NOTIFICATIONS = 10
NotificationEvent = Literal[
    "started", "step", "approval", "paused", "resumed", "holding", "rolled_back", "failed", "promoted", "restarted"
]
# Sent when `events` is not given: what a team wants to hear about an unattended rollout.
DEFAULT_EVENTS: tuple[NotificationEvent, ...] = ("started", "step", "approval", "holding", "rolled_back", "failed",
                                                 "promoted")  # fmt: skip
ALL_EVENTS: tuple[NotificationEvent, ...] = (*DEFAULT_EVENTS, "paused", "resumed", "restarted")


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
    type: Literal["slack", "teams", "webhook"]
    url: WebhookUrl | None = Field(default=None, max_length=2048, description="webhook only: a URL with no secret")
    url_file: str | None = Field(
        default=None, max_length=4096, description="File holding the URL (a secret for Slack and Teams)"
    )
    secret_file: str | None = Field(default=None, max_length=4096, description="webhook: HMAC-SHA256 secret file")
    events: list[NotificationEvent] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        max_length=len(ALL_EVENTS),
        description="Transitions to send (default: " + ", ".join(DEFAULT_EVENTS) + ")",
    )

    @model_validator(mode="after")
    def _one_url(self) -> Notification:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of url and url_file")
        if self.type != "webhook" and self.url is not None:
            raise ValueError(f"a {self.type} webhook URL is a secret: give it in url_file, never in a spec")
        if self.type != "webhook" and self.secret_file is not None:
            raise ValueError("secret_file signs generic webhooks only (type: webhook)")
        if len(set(self.events)) != len(self.events):
            raise ValueError("events are listed more than once")
        return self
